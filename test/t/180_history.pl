# 180_history.pl: every outcome of a job in qlater_history (0.4): done,
# failed, dead, timeout and crashed attempts of in-server jobs, done,
# failed and lapsed (timeout) ones of external consumers, cancelled jobs;
# each in the transaction of the outcome (a rolled back completion leaves
# none); who sees what (as qlater_jobs: a role its own, consumers of an
# external queue its jobs, admins all; the table itself nobody);
# keep_history '0' and history_args false; qlater_job_status; expiry by
# TRUNCATE of whole slots once every row of one has expired, never while
# a reader holds the slot, never holding up a completion; a dump and its
# restore into a cluster whose workers run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('history');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\nrestart_after_crash = on\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE app LOGIN;
CREATE ROLE watcher LOGIN IN ROLE qlater_admin;
CREATE TABLE done (label text, who text);
GRANT INSERT, SELECT ON done TO PUBLIC;
CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user) $$;
CREATE FUNCTION bad(label text) RETURNS void LANGUAGE plpgsql
  AS $$ BEGIN RAISE EXCEPTION 'bad %', label USING HINT = 'a hint'; END $$;
CREATE FUNCTION slow(label text) RETURNS void LANGUAGE sql
  AS $$ SELECT pg_sleep(30) $$;
CREATE FUNCTION tmo(label text) RETURNS void LANGUAGE sql
  AS $$ SELECT pg_sleep(30) $$;
ALTER FUNCTION tmo(text) OWNER TO alice;
ALTER FUNCTION ok(text) OWNER TO alice;
ALTER FUNCTION bad(text) OWNER TO alice;
ALTER FUNCTION slow(text) OWNER TO alice;
});
for my $f ('ok(text)', 'bad(text)', 'slow(text)')
{
	$node->safe_psql('postgres', "SELECT qlater_register('$f')", extra_params => [ '-U', 'alice' ]);
}
$node->safe_psql('postgres', "SELECT qlater_register('tmo(text)', timeout => '300 ms')",
	extra_params => [ '-U', 'alice' ]);
$node->safe_psql(
	'postgres', q{
SELECT qlater_create_queue('ext', external => true);
SELECT qlater_grant_queue('ext', 'app');
}, extra_params => [ '-U', 'alice' ]);

# as role (undef: the superuser that runs the tests)
sub as
{
	my ($role, $q) = @_;
	return $node->safe_psql('postgres', $q, defined $role ? (extra_params => [ '-U', $role ]) : ());
}

# one line per outcome of job $id: outcome:attempt:error message
sub outcomes
{
	my ($id, $role) = @_;
	return as($role,
		qq{SELECT string_agg(concat_ws(':', outcome, attempt, error->>'message'), ' '
		                     ORDER BY finished_at, attempt)
		   FROM qlater_history WHERE id = $id});
}

sub wait_outcome
{
	my ($id, $outcome) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT count(*) > 0 FROM qlater_history WHERE id = $id AND outcome = '$outcome'});
}

### in-server jobs
my $ok = as('alice', q{SELECT qlater_enqueue('ok', '["one"]')});
ok(wait_outcome($ok, 'done'), 'a job done');
is(outcomes($ok, 'alice'), 'done:1', 'done: one row, attempt 1, no error');
is( as(
		'alice', qq{SELECT concat_ws('|', queue, handler, role, args, enqueued_at <= run_at,
		  started_at >= run_at, finished_at >= started_at, runtime >= '0', expires_at = finished_at + '1 day')
		  FROM qlater_history WHERE id = $ok}),
	'default|public.ok(text)|alice|["one"]|t|t|t|t|t',
	'done: queue, handler, role, args, times, and a day of keep by default');
is(as('alice', qq{SELECT concat_ws(' ', state, attempts, finished_at IS NOT NULL) FROM qlater_job_status($ok)}),
	'done 1 t', 'qlater_job_status of a job done');

my $dead = as('alice', q{SELECT qlater_enqueue('bad', '["two"]', max_attempts => 1)});
ok(wait_outcome($dead, 'dead'), 'a job dead at its only attempt');
is(outcomes($dead, 'alice'), 'dead:1:bad two', 'dead: its error');
is(as('alice', qq{SELECT error->>'hint' FROM qlater_history WHERE id = $dead}),
	'a hint', 'dead: the error has the keys of last_error');
is(as('alice', qq{SELECT state FROM qlater_job_status($dead)}), 'dead',
	'qlater_job_status of a dead job: from the job itself');

my $failed = as('alice', q{SELECT qlater_enqueue('bad', '["three"]', max_attempts => 5)});
ok(wait_outcome($failed, 'failed'), 'a failed attempt, to be retried');
is( as(
		'alice', qq{SELECT concat_ws('|', h.attempt, h.run_at = j.enqueued_at, j.run_at > h.finished_at)
		  FROM qlater_history h JOIN qlater_jobs j USING (id) WHERE id = $failed}),
	'1|t|t', 'failed: its attempt was due when enqueued; the retry is later');
is(as('alice', qq{SELECT state || ' ' || attempts FROM qlater_job_status($failed)}),
	'pending 1', 'qlater_job_status of a job waiting for its retry');

my $slow = as('alice', q{SELECT qlater_enqueue('tmo', '["four"]', max_attempts => 3)});
ok(wait_outcome($slow, 'timeout'), 'an attempt that ran out of its timeout');
like(outcomes($slow, 'alice'), qr/^timeout:1:job timed out after/, 'timeout: its error');

my $later = as('alice', q{SELECT qlater_enqueue('ok', '["five"]', run_at => now() + interval '1 hour')});
as('alice', "SELECT qlater_cancel($later)");
is(outcomes($later, 'alice'), 'cancelled:0', 'a job cancelled before it ran: attempt 0');
is(as('alice', qq{SELECT state || ' ' || attempts FROM qlater_job_status($later)}),
	'cancelled 0', 'qlater_job_status of a cancelled job');
my $rolled = as('alice', q{SELECT qlater_enqueue('ok', '["six"]', run_at => now() + interval '1 hour')});
as('alice', "BEGIN; SELECT qlater_cancel($rolled); ROLLBACK;");
is(outcomes($rolled, 'alice'), '', 'a cancel rolled back leaves no outcome');

### a batch of 16 jobs in one transaction, one of which fails
as('alice', q{SELECT qlater_create_queue('bq', batch_size => 16, batch_delay => '1 s')});
as('alice', q{SELECT count(qlater_enqueue(CASE WHEN g = 8 THEN 'bad' ELSE 'ok' END,
                                           jsonb_build_array('b' || g), queue => 'bq', max_attempts => 5))
              FROM generate_series(1, 16) g});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 16 FROM qlater_history WHERE queue = 'bq'}),
	'a batch: 16 outcomes');
is( as(
		'alice', q{SELECT string_agg(outcome || ':' || n, ' ' ORDER BY outcome)
		  FROM (SELECT outcome, count(*) n FROM qlater_history WHERE queue = 'bq' GROUP BY 1) o}),
	'done:15 failed:1', 'a batch: 15 done, the one that failed failed, once each');
is(as('alice', q{SELECT args->>0 FROM qlater_history WHERE queue = 'bq' AND outcome = 'failed'}),
	'b8', 'a batch: the failed one is the bad job');
is(as('alice', q{SELECT count(DISTINCT id) FROM qlater_history WHERE queue = 'bq' AND started_at IS NOT NULL AND attempt = 1}),
	'16', 'a batch: each with its own start, attempt 1');
as('alice', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'bq'});
as('alice', q{SELECT qlater_drop_queue('bq')});

### external jobs
my ($e1, $e2, $e3, $e4) =
  map { as('alice', qq{SELECT qlater_enqueue('Work', '{"n": $_}', queue => 'ext')}) } 1 .. 4;
as('app', qq{SELECT qlater_complete(id) FROM qlater_lock('ext', 1)});
is(outcomes($e1, 'app'), 'done:1', 'a consumer completes a job: done');
as('app', qq{BEGIN; SELECT qlater_complete(id) FROM qlater_lock('ext', 1); ROLLBACK;});
is(outcomes($e2, 'app'), '', 'a completion rolled back leaves no outcome');
as('app', qq{SELECT qlater_fail(id, 'no luck') FROM qlater_lock('ext', 1)});
is(outcomes($e2, 'app'), 'failed:1:no luck', 'a consumer fails a job: failed');
as('app', q{SELECT qlater_complete_many(array_agg(id)) FROM qlater_lock('ext', 2)});
is(outcomes($e3, 'app') . ' ' . outcomes($e4, 'app'), 'done:1 done:1', 'qlater_complete_many: done, each');
my $e5 = as('alice', q{SELECT qlater_enqueue('Work', '{"n": 5}', queue => 'ext')});
is(as('app', q{SELECT id FROM qlater_lock('ext', 1, lease => '1 second')}), $e5, 'a lease of a second');
sleep(2);
as('app', q{SELECT count(qlater_unlock(id)) FROM qlater_lock('ext', 1)});
like(outcomes($e5, 'app'), qr/^timeout:1:lease of job \d+ ran out/, 'a lease that ran out: timeout, counted by the next claim');

### who sees what
is(as('bob', 'SELECT count(*) FROM qlater_history'), '0', 'bob sees none of alice\'s outcomes');
is(as('bob', "SELECT count(*) FROM qlater_job_status($ok) WHERE id IS NOT NULL"), '0',
	'qlater_job_status of a job of another role: NULL');
is(as('app', q{SELECT string_agg(DISTINCT queue, ',') FROM qlater_history}), 'ext',
	'a consumer sees the outcomes of the queue it consumes, no others');
is(as('watcher', q{SELECT count(DISTINCT id) FROM qlater_history}),
	as(undef, q{SELECT count(DISTINCT id) FROM qlater_history}), 'a qlater_admin sees all');
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM qlater_outcome', extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied for table qlater_outcome/, 'the table itself is nobody\'s to read');
($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM qlater_outcome_3', extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied for table qlater_outcome_3/, 'nor its partitions');
($ret, $out, $err) = $node->psql('postgres', q{INSERT INTO qlater_outcome_3 SELECT 3, 1, 'ext', 'X', 'bob', NULL, now(), now(), NULL, now(), 1, 'done', NULL, now() + '1 day'},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied/, 'nor to write: no forged outcome');
is(as(undef, 'SELECT count(*) FROM qlater_job_status(999999)'), '1', 'qlater_job_status of an unknown job: one row');
is(as(undef, 'SELECT id IS NULL FROM qlater_job_status(999999)'), 't', '... that is NULL');

### settings
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_alter_queue('ext', keep_history => '-1 day')},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/keep_history must be between 0 and 10 years/, 'a negative keep_history is refused');
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_alter_queue('ext', keep_history => '11 years')},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/keep_history must be between 0 and 10 years/, 'too long a keep_history is refused');
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_alter_queue('ext', keep_history => '1 hour')},
	extra_params => [ '-U', 'bob' ]);
like($err, qr/permission denied|must be the owner|owner/, 'another role cannot change it');
as('alice', q{SELECT qlater_alter_queue('ext', keep_history => '90 minutes 0.2 seconds', history_args => false)});
is(as('alice', q{SELECT keep_history || ' ' || history_args FROM qlater_queues WHERE name = 'ext'}),
	'01:30:01 false', 'keep_history is kept in whole seconds');
my $e6 = as('alice', q{SELECT qlater_enqueue('Work', '{"secret": 1}', queue => 'ext')});
as('app', q{SELECT qlater_complete(id) FROM qlater_lock('ext', 1)});
is( as(
		'app', qq{SELECT concat_ws('|', outcome, args IS NULL, expires_at - finished_at)
		  FROM qlater_history WHERE id = $e6}),
	'done|t|01:30:01', 'history_args false keeps no args; keep_history sets the expiry');
as('alice', q{SELECT qlater_alter_queue('ext', keep_history => '0')});
my $e7 = as('alice', q{SELECT qlater_enqueue('Work', '{}', queue => 'ext')});
as('app', q{SELECT qlater_complete(id) FROM qlater_lock('ext', 1)});
is(outcomes($e7), '', "keep_history '0' keeps nothing");

### a crash: the attempt that ran is 'crashed'
my $crash = as('alice', q{SELECT qlater_enqueue('slow', '["crash"]', max_attempts => 3)});
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM qlater_workers() WHERE job_id = $crash"),
	'the slow job runs');
my $pid = as(undef, "SELECT pid FROM qlater_workers() WHERE job_id = $crash");
ok(kill('KILL', $pid), "SIGKILL to worker $pid, which runs it: the server restarts");
ok(wait_outcome($crash, 'crashed'), 'the attempt is recorded as crashed after the restart');
is(as('alice', qq{SELECT error->>'message' FROM qlater_history WHERE id = $crash AND outcome = 'crashed'}),
	'the server crashed while the job ran', 'crashed: its error');
as(undef, "SELECT qlater_cancel($crash)");

### expiry: every queue keeps 3 seconds
as(undef, q{SELECT qlater_alter_queue('default', keep_history => '3 seconds')});
as('alice', q{SELECT qlater_alter_queue('ext', keep_history => '3 seconds')});
my $before = as(undef, 'SELECT count(*) FROM qlater_outcome');
cmp_ok($before, '>', 0, 'the history holds rows');
as('alice', q{SELECT count(qlater_enqueue('ok', jsonb_build_array('x' || g))) FROM generate_series(1, 50) g});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 50 FROM done WHERE label LIKE 'x%'}), '50 jobs done');
# a reader of the history holds its slots: they are not emptied meanwhile,
# and jobs go on being done
my $reader = $node->background_psql('postgres');
$reader->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
my $held = $reader->query_safe('SELECT count(*) FROM qlater_outcome');
sleep(5);
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM qlater_history WHERE args->>0 LIKE 'x%'}),
	'the view hides the outcomes once expired');
as('alice', q{SELECT count(qlater_enqueue('ok', jsonb_build_array('y' || g))) FROM generate_series(1, 20) g});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 20 FROM done WHERE label LIKE 'y%'}),
	'jobs are done while a reader holds the history');
sleep(3);
cmp_ok(as(undef, q{SELECT count(*) FROM qlater_outcome WHERE args->>0 LIKE 'x%'}), '==', 50,
	'no slot the reader holds is emptied');
$reader->query_safe('COMMIT');
$reader->quit;
# (a slot written before the retentions were shortened may also hold rows
# of a day: it waits for them; every slot whose rows have all expired goes)
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 0 FROM qlater_outcome o
		  WHERE (args->>0 LIKE 'x%' OR args->>0 LIKE 'y%')
		    AND NOT EXISTS (SELECT FROM qlater_outcome l WHERE l.slot = o.slot AND l.expires_at > now())}),
	'once the reader is gone, the slots whose rows have all expired are emptied');
is( as(
		undef, q{SELECT coalesce(sum(n_tup_del + n_tup_upd), 0) FROM pg_stat_user_tables
		  WHERE relname LIKE 'qlater_outcome%'}),
	'0', 'no row of the history was ever deleted or updated: the slots were truncated');

### a dump, restored into a database of the same cluster (its workers run)
as(undef, q{SELECT qlater_alter_queue('default', keep_history => '1 day')});
as('alice', q{SELECT qlater_alter_queue('ext', keep_history => '1 day')});
my $kept = as('alice', q{SELECT qlater_enqueue('ok', '["kept"]')});
ok(wait_outcome($kept, 'done'), 'an outcome to dump');
my $dump = PostgreSQL::Test::Utils::tempdir . '/history.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
is($node->safe_psql('restored', qq{SELECT outcome || ' ' || role FROM qlater_history WHERE id = $kept}),
	'done alice', 'the history is in the dump, and restored');
$node->safe_psql('restored', q{SELECT qlater_enqueue('ok', '["after restore"]')});
ok( $node->poll_query_until(
		'restored', q{SELECT count(*) = 1 FROM qlater_history WHERE args->>0 = 'after restore' AND outcome = 'done'}),
	'the restored database records new outcomes');

### qlater_purge_dead: 100,000 dead jobs in one call
as('alice', q{SELECT qlater_create_queue('many', external => true)});
is( as(
		'alice', q{SELECT count(*) FROM qlater_enqueue_many('Work',
		  (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 100000) g), queue => 'many')}),
	'100000', '100,000 jobs');
as(undef, q{UPDATE qlater_job SET dead = true, attempts = 25, run_at = now() - interval '2 days'
            WHERE queue = 'many'});
as('bob', q{SELECT qlater_create_queue('bobq', external => true)});
my $bobs = as('bob', q{SELECT qlater_enqueue('Work', '[0]', queue => 'bobq')});
as(undef, qq{UPDATE qlater_job SET dead = true, run_at = now() - interval '2 days' WHERE id = $bobs});
is(as('bob', q{SELECT qlater_purge_dead('many')}), '0', 'bob purges none of alice\'s dead jobs');
is(as('alice', q{SELECT qlater_purge_dead('many', '3 days')}), '0', 'none died 3 days ago');
is(as('alice', q{SELECT qlater_purge_dead('many', '1 day')}), '100000', 'alice purges her 100,000 in one call');
is(as('alice', q{SELECT count(*) FROM qlater_jobs WHERE queue = 'many'}), '0', '... they are gone');
is( as(
		'alice', q{SELECT outcome || ' ' || count(*) || ' ' || min(attempt) FROM qlater_history
		  WHERE queue = 'many' GROUP BY outcome}),
	'purged 100000 25', '... each purged in the history, with its attempts');
is(as(undef, qq{SELECT dead FROM qlater_job WHERE id = $bobs}), 't', "bob's dead job is still there");
is(as('bob', q{SELECT qlater_purge_dead()}), '1', 'bob purges his own, of every queue');
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_purge_dead('many', '-1 day')}, extra_params => [ '-U', 'alice' ]);
like($err, qr/older_than must not be negative/, 'a negative older_than is refused');

$node->stop;
my $log = slurp_file($node->logfile);
my @sig = grep { !/signal 9/ } ($log =~ /^.*terminated by signal.*$/mg);
is(join("\n", @sig), '', 'no server process ended on a signal but the one killed on purpose');
done_testing();
