# 182_bulk_ops.pl: operations on many jobs in one call (0.5).
# qlater_retry_dead(queue, older_than): 100,000 dead jobs made pending in
# one call, without a lock per job, then run exactly once; a tenant
# retries only its own (as qlater_retry(id): not a consumer of an external
# queue), an admin every role's; older_than; keys settled as qlater_retry
# settles one (a live job of the key keeps it; of several dead ones the
# newest); a paused queue keeps them waiting; a rolled back call leaves
# everything as it was; listeners of an external queue are woken; bad
# arguments.  Bulk cancel: 100,000 pending and dead jobs cancelled in one
# transaction (qlater_cancel per job), each 'cancelled' in the history.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('bulk');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE app LOGIN;
CREATE ROLE watcher LOGIN IN ROLE qlater_admin;
CREATE TABLE done (label int, who text);
GRANT INSERT, SELECT ON done TO PUBLIC;
CREATE FUNCTION ok(label int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user) $$;
ALTER FUNCTION ok(int) OWNER TO alice;
});

# as role (undef: the superuser that runs the tests)
sub as
{
	my ($role, $q) = @_;
	return $node->safe_psql('postgres', $q, defined $role ? (extra_params => [ '-U', $role ]) : ());
}

# psql as role: (stdout, stderr) of a query that may fail
sub try_as
{
	my ($role, $q) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $q, extra_params => [ '-U', $role ]);
	return ($out, $err);
}

# jobs of a queue made dead, as the workers leave them, died $ago
sub kill_jobs
{
	my ($where, $ago) = @_;
	as(undef, qq{UPDATE qlater_job SET dead = true, attempts = max_attempts, crashes = 1,
	             last_error = '{"message": "boom"}', run_at = now() - interval '$ago'
	             WHERE $where});
}

as('alice', q{SELECT qlater_create_queue('many', batch_size => 64);
              SELECT qlater_register('ok(int)', queue => 'many');
              SELECT qlater_pause_queue('many')});

### a cancel left open keeps the workers off the job (the row's lock, not a claim)
# (the job is due in 3 seconds: the cancel's psql starts before, however
# slowly; the cancel stays open 2 seconds past it)
my $soon = as('alice', q{SELECT qlater_enqueue('ok', '[-7]', queue => 'soon', run_at => clock_timestamp() + interval '3 seconds')});
my ($out, $err) = try_as('alice', qq{BEGIN; SELECT qlater_cancel($soon); SELECT pg_sleep(5);
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036 AND granted AND pid <> pg_backend_pid();
ROLLBACK;});
is($out, "t

0", 'while a cancel of a job due meanwhile is open, no worker claims it');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM done WHERE label = -7}),
	'... rolled back, the job runs');
as(undef, q{DELETE FROM done});

### bulk cancel: 100,000 jobs in one transaction
is( as(
		'alice', q{SELECT count(*) FROM qlater_enqueue_many('ok',
		  (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 100000) g))}),
	'100000', '100,000 pending jobs in a paused queue');
kill_jobs(q{id % 10 = 0}, '1 hour');
($out, $err) = try_as('alice', q{BEGIN;
SELECT count(*) FILTER (WHERE c) FROM (SELECT qlater_cancel(id) AS c FROM qlater_jobs WHERE queue = 'many') s;
COMMIT;});
is($out, '100000', 'qlater_cancel of 100,000 jobs (dead ones among them) in one transaction');
is($err, '', '... without running out of the lock table');
is(as('alice', q{SELECT count(*) FROM qlater_jobs}), '0', '... they are gone');
is(as('alice', q{SELECT count(*) FROM qlater_history WHERE outcome = 'cancelled' AND queue = 'many'}),
	'100000', '... each cancelled in the history');

### qlater_retry_dead: 100,000 dead jobs in one call
is( as(
		'alice', q{SELECT count(*) FROM qlater_enqueue_many('ok',
		  (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 100000) g))}),
	'100000', '100,000 jobs');
# every one of them keyed (no enqueue could take 100,000 keys' locks at once)
as(undef, q{UPDATE qlater_job SET key = 'k' || (args->>0) WHERE queue = 'many'});
kill_jobs(q{queue = 'many'}, '2 days');
my $bobs = as('bob', q{SELECT qlater_enqueue('ok', '[-1]')});
kill_jobs(qq{id = $bobs}, '2 days');
is(as('bob', q{SELECT queue FROM qlater_jobs WHERE id = } . $bobs), 'many', "bob's job, in alice's queue");

is(as('bob', q{SELECT qlater_retry_dead('many')}), '1', "bob retries his own job, none of alice's");
is(as(undef, qq{SELECT dead FROM qlater_job WHERE id = $bobs}), 'f', '... his own is pending');
kill_jobs(qq{id = $bobs}, '2 days');
is(as('app', q{SELECT qlater_retry_dead()}), '0', 'nor does a role without jobs');
is(as('alice', q{SELECT qlater_retry_dead('many', '3 days')}), '0', 'none died 3 days ago');
is(as('alice', q{SELECT qlater_retry_dead('many', '100000000 years')}), '0', 'a huge older_than retries nothing');
is(as('alice', q{SELECT qlater_purge_dead('many', '100000000 years')}), '0', '... and purges nothing');
is(as('alice', q{SELECT qlater_retry_dead('many', '1 day')}), '100000', 'alice retries her 100,000 in one call');
is( as(
		undef, q{SELECT count(*) FROM qlater_job WHERE NOT dead AND attempts = 0 AND crashes = 0
		  AND run_at <= now() AND last_error->>'message' = 'boom' AND key = 'k' || (args->>0)}),
	'100000', '... pending, due now, attempts reset, last_error and key kept');
is(as(undef, qq{SELECT dead FROM qlater_job WHERE id = $bobs}), 't', "bob's dead job is still dead");
is(as('alice', q{SELECT qlater_retry_dead('many')}), '0', 'a second call finds none');
is(as('alice', q{SELECT qlater_enqueue('ok', '[7]', key => 'k7') = (SELECT id FROM qlater_jobs WHERE key = 'k7')}),
	't', 'a retried job holds its key: an enqueue of it returns the job');
sleep 2;
is(as(undef, q{SELECT count(*) FROM done}), '0', 'the queue is paused: nothing runs');
as('alice', q{SELECT qlater_resume_queue('many')});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM qlater_jobs WHERE queue = 'many' AND state <> 'dead'}, 't'),
	'resumed, the workers run them');
is( as(undef, q{SELECT count(*) || ' ' || count(DISTINCT label) || ' ' || min(label) || ' ' || max(label) FROM done WHERE who = 'alice'}),
	'100000 100000 1 100000', '... each exactly once, as alice');

### arguments a tenant may pass: odd queue names
is(as('alice', q{SELECT qlater_retry_dead('many''; DROP TABLE done; --')}), '0', 'a queue name is a value, not SQL');
is(as('alice', q{SELECT qlater_retry_dead('')}), '0', 'an empty queue name: none');

### visibility, admins
is(as('watcher', q{SELECT qlater_retry_dead()}), '1', 'an admin retries every role\'s');
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM done WHERE label = -1 AND who = 'bob'}),
	"... and bob's job runs as bob");
# a job whose role is gone (dropped while its jobs were in another database)
my $ghost = as('alice', q{SELECT qlater_enqueue('ok', '[-9]', queue => 'soon', run_at => now() + interval '1 day')});
as(undef, qq{UPDATE qlater_job SET role = 'ghost' WHERE id = $ghost});
kill_jobs(qq{id = $ghost}, '1 hour');
is(as('alice', q{SELECT qlater_retry_dead()}), '0', 'a tenant does not retry a job whose role is gone');
is(as('watcher', q{SELECT qlater_retry_dead('soon')}), '1', '... an admin does');
ok( $node->poll_query_until(
		'postgres', qq{SELECT last_error->>'message' = 'role "ghost" does not exist' AND attempts > 0
		  FROM qlater_jobs WHERE id = $ghost}),
	'... and it fails as its role is gone, run by nobody');
is(as(undef, q{SELECT count(*) FROM done WHERE label = -9}), '0', '... nothing ran');
as(undef, qq{DELETE FROM qlater_job WHERE id = $ghost});
as('alice', q{SELECT qlater_pause_queue('many')});

### keys: as qlater_retry settles them
my %k;
for my $j ([ 'solo', 'a' ], [ 'blocked', 'b' ], [ 'old', 'c' ], [ 'new', 'c' ], [ 'single', 'd' ])
{
	$k{ $j->[0] } = as('alice', qq{SELECT qlater_enqueue('ok', '[1]', key => '$j->[1]')});
	kill_jobs(qq{id = $k{$j->[0]}}, '1 hour');
}
$k{live} = as('alice', q{SELECT qlater_enqueue('ok', '[2]', key => 'b')});
my $before = q{SELECT string_agg(concat_ws(' ', id, dead, attempts, crashes, run_at, key), ', ' ORDER BY id) FROM qlater_job};
my $was = as(undef, $before);
is(as('alice', q{BEGIN; SELECT qlater_retry_dead('many'); ROLLBACK}), '5', 'a call rolled back retried five');
is(as(undef, $before), $was, '... and left every job as it was');
is(as('alice', qq{SELECT qlater_retry($k{single})}), 't', 'qlater_retry of one keyed job');
is(as('alice', q{SELECT qlater_retry_dead('many')}), '4', 'the other four retried at once');
is( as(
		'alice', qq{SELECT string_agg(coalesce(key, '-'), ' ' ORDER BY id) FROM qlater_jobs
		  WHERE id IN ($k{solo}, $k{blocked}, $k{old}, $k{new}, $k{single}, $k{live})}),
	'a - - c d b',
	'the key of a retried job is its own, but when a live job has it; of two, the newest keeps it');
is(as('alice', q{SELECT qlater_enqueue('ok', '[3]', key => 'c')}), $k{new}, '... and an enqueue of it returns that one');
as('alice', q{SELECT qlater_cancel(id) FROM qlater_jobs});

### external queues: the owner retries, a consumer does not; listeners are woken
as('alice', q{SELECT qlater_create_queue('ext', external => true); SELECT qlater_grant_queue('ext', 'app')});
my $ext = as('alice', q{SELECT qlater_enqueue('Work', '[1]', queue => 'ext')});
kill_jobs(qq{id = $ext}, '1 hour');
($out, $err) = try_as('app', qq{SELECT qlater_retry($ext)});
like($err, qr/permission denied for job $ext/, 'a consumer may not qlater_retry a job of its queue');
is(as('app', q{SELECT qlater_retry_dead('ext')}), '0', '... nor retry it in bulk');
($out, $err) = try_as('alice', q{SELECT qlater_listen('ext') IS NOT NULL; SELECT qlater_retry_dead('ext')});
like($out, qr/Asynchronous notification "qlater_\d+_\w+" with payload "\{"queue": "ext", "id": $ext\}"/,
	'the retry wakes a listener of the queue');
is(as('app', q{SELECT id FROM qlater_lock('ext', 10)}), $ext, 'the consumer claims it');

### arguments
($out, $err) = try_as('alice', q{SELECT qlater_retry_dead('many', NULL)});
like($err, qr/older_than must not be null/, 'a NULL older_than is refused');
($out, $err) = try_as('alice', q{SELECT qlater_retry_dead('many', '-1 second')});
like($err, qr/older_than must not be negative/, 'a negative older_than is refused');
($out, $err) = try_as('alice', q{SELECT qlater_retry_dead('many', '1 day -1 second')});
like($err, qr/older_than must not be negative/, '... mixed signs too');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process ended on a signal');
done_testing();
