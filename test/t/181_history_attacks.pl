# 181_history_attacks.pl: a hostile review of the history (0.4): outcomes
# left to a role created later under a dropped or renamed role's name, to
# the new owner of a dropped queue's name, or to the owner of a queue
# turned external after other roles' jobs ran in it; the tables written or
# emptied by a tenant; qlater_job_status of other roles' jobs; savepoints;
# a batch of 64 with a failing job, a cancel racing a batch, a consume
# grant revoked, a kill -9 in the middle of a batch (every job done exactly
# once, with exactly one 'done'); expiry with keep_history a minute then 3
# seconds while jobs run (no row removed before its expires_at); DROP and
# CREATE EXTENSION with history rows.  The four bugs it found (marked
# FIXED; each failed before) all came from outcomes belonging to a role and
# a queue by name, with nothing keeping the names from passing to someone
# else while outcomes remain.  Fixed: DROP ROLE removes the role's outcomes
# in the database, ALTER ROLE ... RENAME gives them the new name
# (ql_check_role_drop); an outcome is a queue's consumers' only if the
# queue was external when it was recorded (qlater_outcome.external) and is
# the queue it was (created before it).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('history_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\nrestart_after_crash = on\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN;
CREATE ROLE dave LOGIN;
CREATE TABLE done (label text, who text);
GRANT INSERT, SELECT ON done TO PUBLIC;
CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user) $$;
CREATE FUNCTION ok2(label text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user) $$;
CREATE FUNCTION bad(label text) RETURNS void LANGUAGE plpgsql
  AS $$ BEGIN RAISE EXCEPTION 'bad %', label; END $$;
CREATE FUNCTION nap(label text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user); SELECT pg_sleep(0.2) $$;
ALTER FUNCTION ok(text) OWNER TO alice;
ALTER FUNCTION ok2(text) OWNER TO alice;
ALTER FUNCTION bad(text) OWNER TO alice;
ALTER FUNCTION nap(text) OWNER TO alice;
});

# as role (undef: the superuser that runs the tests)
sub as
{
	my ($role, $q) = @_;
	return $node->safe_psql('postgres', $q, defined $role ? (extra_params => [ '-U', $role ]) : ());
}

# psql as role: (stdout, stderr)
sub try_as
{
	my ($role, $q) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $q, defined $role ? (extra_params => [ '-U', $role ]) : ());
	return ($out, $err);
}

sub wait_outcome
{
	my ($id, $outcome) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT count(*) > 0 FROM qlater_history WHERE id = $id AND outcome = '$outcome'});
}

as('alice', q{SELECT qlater_register('ok(text)'); SELECT qlater_register('bad(text)');
              SELECT qlater_register('nap(text)')});

### a role dropped, and one created later under its name
my $c1 = as('carol', q{SELECT qlater_enqueue('ok', '["carol secret"]')});
ok(wait_outcome($c1, 'done'), "carol's job done");
my ($out, $err) = try_as(undef, 'DROP ROLE carol');
is($err, '', 'DROP ROLE of a role with only outcomes left');
as(undef, 'CREATE ROLE carol LOGIN') if $err eq '';
# FIXED (failed before): DROP ROLE of a role whose only trace is its history is allowed (the
# check counts jobs, schedules, queues and grants, not outcomes), and a
# role created later under the same name sees the outcomes, args included.
# Expected: the drop refused (as for jobs), or the new role sees none.
is(as('carol', "SELECT count(*) FROM qlater_history WHERE id = $c1"), '0',
	'a role created under a dropped role\'s name does not see its outcomes');
is(as('carol', "SELECT count(*) FROM qlater_job_status($c1) WHERE id IS NOT NULL"), '0',
	'... nor its qlater_job_status');

### a role renamed, and one created later under its old name
my $d1 = as('dave', q{SELECT qlater_enqueue('ok', '["dave secret"]')});
ok(wait_outcome($d1, 'done'), "dave's job done");
($out, $err) = try_as(undef, 'ALTER ROLE dave RENAME TO dave_old');
is($err, '', 'ALTER ROLE RENAME of a role with only outcomes left');
as(undef, 'CREATE ROLE dave LOGIN') if $err eq '';
# FIXED (failed before): the rename is allowed; the renamed role loses its outcomes and a new
# role under the old name gets them.
is(as('dave', "SELECT count(*) FROM qlater_history WHERE id = $d1"), '0',
	'a role created under a renamed role\'s old name does not see its outcomes');

### a queue dropped, and its name taken by another role as an external queue
as('alice', q{SELECT qlater_create_queue('dq')});
my $a1 = as('alice', q{SELECT qlater_enqueue('ok', '["alice secret"]', queue => 'dq')});
ok(wait_outcome($a1, 'done'), "alice's job in her queue dq done");
as('alice', q{SELECT qlater_drop_queue('dq')});
($out, $err) = try_as('bob', q{SELECT qlater_create_queue('dq', external => true)});
note("bob creates dq: $err");
# FIXED (failed before): the name of a dropped queue is free while its outcomes remain;
# bob, creating an external queue of that name, owns "its" outcomes and
# sees alice's, args included.
is(as('bob', "SELECT count(*) FROM qlater_history WHERE id = $a1"), '0',
	'the new owner of a dropped queue\'s name does not see its outcomes');

### a queue turned external by its owner once other roles' jobs in it ran
as('alice', q{SELECT qlater_create_queue('aq'); SELECT qlater_register('ok2(text)', queue => 'aq')});
my $b1 = as('bob', q{SELECT qlater_enqueue('ok2', '["bob secret"]')});
ok(wait_outcome($b1, 'done'), "bob's job in alice's queue aq done");
is(as('alice', "SELECT count(*) FROM qlater_history WHERE id = $b1"), '0',
	'the owner of an in-server queue does not see the outcomes of other roles\' jobs in it');
as('alice', q{SELECT qlater_unregister('ok2(text)')});
($out, $err) = try_as('alice', q{SELECT qlater_alter_queue('aq', external => true)});
note("alice turns aq external: $err");
# FIXED (failed before): allowed (no job of bob's waits any more), and alice then sees the
# outcome of bob's in-server job, args included, as the owner of an
# external queue.
is(as('alice', "SELECT count(*) FROM qlater_history WHERE id = $b1"), '0',
	'turning the queue external does not show its owner other roles\' past outcomes');

### a tenant writes or empties the history
for my $q (
	'TRUNCATE qlater_outcome_0',
	'DELETE FROM qlater_outcome',
	'UPDATE qlater_outcome_1 SET role = current_user',
	'BEGIN; LOCK TABLE qlater_outcome_2 IN ACCESS EXCLUSIVE MODE; COMMIT',
	q{INSERT INTO qlater_outcome VALUES (0, 1, 'default', 'x', 'alice', NULL, now(), now(), NULL, now(), 1, 'done', NULL, now() + '1 day')})
{
	($out, $err) = try_as('bob', $q);
	like($err, qr/permission denied/, "a tenant cannot: $q");
}
($out, $err) = try_as('bob', q{SELECT qlater_alter_queue('default', keep_history => '0')});
like($err, qr/permission denied|owner/, "a tenant cannot switch off 'default's history");

### qlater_job_status of other roles' jobs, waiting, dead or done
my $wait = as('alice', q{SELECT qlater_enqueue('ok', '["later"]', run_at => now() + '1 hour')});
my $dead = as('alice', q{SELECT qlater_enqueue('bad', '["dead"]', max_attempts => 1)});
ok(wait_outcome($dead, 'dead'), 'a dead job');
for my $id ($wait, $dead)
{
	is(as('bob', "SELECT count(*) FROM qlater_job_status($id) WHERE id IS NOT NULL OR state IS NOT NULL"),
		'0', "qlater_job_status($id) of another role's job shows bob nothing");
}

### savepoints
as('alice', qq{BEGIN; SAVEPOINT s; SELECT qlater_cancel($wait); ROLLBACK TO s; COMMIT;});
is(as('alice', "SELECT count(*) FROM qlater_history WHERE id = $wait"), '0',
	'a cancel rolled back to a savepoint leaves no outcome');
as('alice', qq{BEGIN; SAVEPOINT s; SELECT qlater_cancel($wait); RELEASE s; ROLLBACK;});
is(as('alice', "SELECT count(*) FROM qlater_history WHERE id = $wait"), '0',
	'a cancel in a released savepoint of a rolled back transaction leaves none');
as('alice', qq{SELECT qlater_cancel($wait)});
is(as('alice', "SELECT string_agg(outcome, ',') FROM qlater_history WHERE id = $wait"), 'cancelled',
	'a cancel that commits: one outcome');
is(as('alice', "SELECT state FROM qlater_job_status($wait)"), 'cancelled', '... and its status');

### a batch of 64, one job failing
as('alice', q{SELECT qlater_create_queue('b64', batch_size => 64, batch_delay => '2 seconds');
              SELECT qlater_pause_queue('b64');
              SELECT qlater_register('ok(text)', queue => 'b64');
              SELECT qlater_register('bad(text)', queue => 'b64')});
as('alice', q{SELECT count(CASE WHEN g = 30 THEN qlater_enqueue('bad', jsonb_build_array('b' || g), max_attempts => 1)
                                ELSE qlater_enqueue('ok', jsonb_build_array('b' || g)) END)
              FROM generate_series(1, 64) g});
as('alice', q{SELECT qlater_resume_queue('b64')});
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 64 FROM qlater_history WHERE queue = 'b64'}), 'the batch: 64 outcomes');
is(as(undef, q{SELECT string_agg(outcome || ':' || n, ' ' ORDER BY outcome) FROM
  (SELECT outcome, count(*) n FROM qlater_history WHERE queue = 'b64' GROUP BY outcome) s}),
	'dead:1 done:63', 'the batch: 63 done, 1 dead');
is(as(undef, q{SELECT count(*) FROM (SELECT id FROM qlater_history WHERE queue = 'b64' GROUP BY id HAVING count(*) > 1) s}),
	'0', 'no job of the batch has two outcomes');
is(as(undef, q{SELECT count(*) FROM done WHERE label ~ '^b[0-9]+$'}), '63', 'the work of 63 jobs');
is(as(undef, q{SELECT count(*) FROM qlater_history h WHERE queue = 'b64' AND outcome = 'done'
                 AND NOT EXISTS (SELECT FROM done d WHERE d.label = h.args->>0)}),
	'0', 'every done outcome has its work');

### a cancel racing a batch: of a job the batch has done (not committed
### yet), and of the job it runs
as('alice', q{SELECT qlater_create_queue('bc', batch_size => 64, batch_delay => '10 seconds');
              SELECT qlater_pause_queue('bc');
              SELECT qlater_register('ok(text)', queue => 'bc');
              SELECT qlater_register('nap(text)', queue => 'bc')});
my $first = as('alice', q{SELECT qlater_enqueue('ok', '["c0"]', priority => 1)});
as('alice', q{SELECT count(qlater_enqueue('nap', jsonb_build_array('c' || g), priority => 2)) FROM generate_series(1, 20) g});
as('alice', q{SELECT qlater_resume_queue('bc')});
ok($node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM qlater_workers() w JOIN qlater_jobs j ON j.id = w.job_id WHERE j.queue = 'bc' AND j.handler LIKE '%nap%'}),
	'the batch runs its slow jobs');
my $running = as(undef, q{SELECT w.job_id FROM qlater_workers() w JOIN qlater_jobs j ON j.id = w.job_id WHERE j.queue = 'bc' LIMIT 1});
as('alice', "SELECT qlater_cancel($running)");
is(as('alice', "SELECT qlater_cancel($first)"), 'f',
	'a cancel of a job the batch did waits for the batch, and finds it gone');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM qlater_jobs WHERE queue = 'bc'}), 'the batch ends');
is(as(undef, q{SELECT count(*) FROM (SELECT id FROM qlater_history WHERE queue = 'bc' GROUP BY id HAVING count(*) <> 1) s}),
	'0', 'every job of the batch has exactly one outcome');
is(as(undef, qq{SELECT string_agg(outcome, ',') FROM qlater_history WHERE id = $first}), 'done',
	'the job done: done, not cancelled');
is(as(undef, qq{SELECT outcome FROM qlater_history WHERE id = $running}), 'cancelled', 'the job cancelled while it ran: cancelled');
is(as(undef, q{SELECT count(*) FROM qlater_history h WHERE queue = 'bc'
                 AND (outcome = 'done') <> EXISTS (SELECT FROM done d WHERE d.label = h.args->>0)}),
	'0', 'done outcomes and the work agree');

### a consume grant revoked
as('alice', q{SELECT qlater_create_queue('ext', external => true); SELECT qlater_grant_queue('ext', 'bob')});
my $e1 = as('alice', q{SELECT qlater_enqueue('W', '{"s": 1}', queue => 'ext')});
as('bob', q{SELECT qlater_complete(id) FROM qlater_lock('ext', 1)});
is(as('bob', "SELECT outcome FROM qlater_history WHERE id = $e1"), 'done', 'a consumer sees what it completed');
as('alice', q{SELECT qlater_revoke_queue('ext', 'bob')});
is(as('bob', "SELECT count(*) FROM qlater_history WHERE id = $e1"), '0', '... not once its grant is revoked');
is(as('bob', "SELECT count(*) FROM qlater_job_status($e1) WHERE id IS NOT NULL"), '0', '... nor its status');

### kill -9 of a worker in the middle of a batch
as('alice', q{SELECT qlater_create_queue('bk', batch_size => 64, batch_delay => '10 seconds');
              SELECT qlater_pause_queue('bk');
              SELECT qlater_register('nap(text)', queue => 'bk')});
as('alice', q{SELECT count(qlater_enqueue('nap', jsonb_build_array('k' || g))) FROM generate_series(1, 40) g});
as('alice', q{SELECT qlater_resume_queue('bk')});
ok($node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM qlater_workers() w JOIN qlater_jobs j ON j.id = w.job_id WHERE j.queue = 'bk'}),
	'the batch runs');
sleep(2);
my $pid = as(undef, q{SELECT w.pid FROM qlater_workers() w JOIN qlater_jobs j ON j.id = w.job_id WHERE j.queue = 'bk' LIMIT 1});
ok(kill('KILL', $pid), "SIGKILL to worker $pid in the middle of a batch");
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM qlater_jobs WHERE queue = 'bk'}), 'every job of the batch ends after the restart');
is(as(undef, q{SELECT count(*) FROM (SELECT id FROM qlater_history WHERE queue = 'bk' AND outcome = 'done'
                 GROUP BY id HAVING count(*) > 1) s}), '0', 'no job done twice in the history');
is(as(undef, q{SELECT count(DISTINCT id) FROM qlater_history WHERE queue = 'bk' AND outcome = 'done'}),
	'40', 'every job of the killed batch has its done outcome');
is(as(undef, q{SELECT count(*) FROM done WHERE label ~ '^k[0-9]+$'}), '40', 'and its work once');
is(as(undef, q{SELECT count(*) FROM qlater_history WHERE queue = 'bk' AND outcome = 'crashed'}), '1',
	'one crashed attempt: the job that ran, not those the batch had done before');

### expiry never removes a row before its expires_at: keep_history of
### every queue a minute (slots of 5 s), then 3 seconds, while jobs run
as(undef, q{SELECT count(qlater_alter_queue(name, keep_history => '1 minute')) FROM qlater_queues});
as('alice', q{SELECT count(qlater_enqueue('ok', jsonb_build_array('L' || g))) FROM generate_series(1, 10) g});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 10 FROM qlater_history WHERE args->>0 ~ '^L[0-9]+$'}),
	'10 outcomes kept a minute');
as(undef, q{SELECT count(qlater_alter_queue(name, keep_history => '3 seconds')) FROM qlater_queues});
for my $round (1 .. 4)
{
	as('alice', qq{SELECT count(qlater_enqueue('ok', jsonb_build_array('S$round-' || g))) FROM generate_series(1, 10) g});
	sleep(4);
}
is(as(undef, q{SELECT count(*) FROM qlater_outcome WHERE args->>0 ~ '^L[0-9]+$'}), '10',
	'after 16 s, slots of 5 s: the rows kept a minute are all there');
# each job writes its outcome in the transaction of its work: once the
# work of all is seen, each outcome was written, then hidden 3 s later
ok($node->poll_query_until('postgres', q{SELECT (SELECT count(*) FROM done WHERE label ~ '^S') = 40
  AND (SELECT count(*) FROM qlater_history WHERE args->>0 ~ '^S') = 0}),
	'the rows kept 3 seconds are hidden once expired');
is(as(undef, q{SELECT count(*) FROM done WHERE label ~ '^S'}), '40', 'jobs done meanwhile');

### DROP EXTENSION and CREATE EXTENSION with history rows, workers running
as(undef, 'DROP EXTENSION qlater CASCADE');
as(undef, 'CREATE EXTENSION qlater');
as('alice', q{SELECT qlater_register('ok(text)')});
my $again = as('alice', q{SELECT qlater_enqueue('ok', '["again"]')});
ok(wait_outcome($again, 'done'), 'a fresh extension records outcomes');
is(as(undef, 'SELECT count(*) FROM qlater_outcome'), '1', '... only its own');

$node->stop;
my $log = slurp_file($node->logfile);
my @sig = grep { !/signal 9/ } ($log =~ /^.*terminated by signal.*$/mg);
is(join("\n", @sig), '', 'no server process ended on a signal but the one killed on purpose');
unlike($log, qr/TRAP:|PANIC:/, 'no TRAP, no PANIC');
done_testing();
