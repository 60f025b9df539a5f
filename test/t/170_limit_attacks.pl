# 170_limit_attacks.pl: attacks on pause and concurrency limits of queues
# (limits.c, claim.c, consumer.c), as a hostile tenant and as a DBA.
#
# Each break found is a TODO block that fails on the code it was found on
# (the integrator removes the TODO with the fix); the attacks that held are
# plain tests.
#
# Breaks (TODO):
# - a lease claimed inside a savepoint that is rolled back keeps its slot
#   until the lease's end: no job runs, yet the queue counts as full;
# - leases that ran out still take room in the table of slots (only a claim
#   of their own queue while it looks full removes them): one tenant's
#   lapsed leases refuse every limited queue of every database, for ever;
# - one tenant takes every slot of the cluster-wide table with its own
#   queue's leases (max_running as large as it likes, lease as long as it
#   likes): another role's limited queue in another database waits;
# - qlater_cancel of a leased job frees no slot (the DBA cannot free the
#   table short of a restart);
# - a consumer in a REPEATABLE READ transaction whose snapshot is older than
#   a pause claims from the paused queue;
# - a rolled back qlater_extend keeps the slot counting until the new end;
# - a qlater_complete rolled back to a savepoint frees the slot at commit,
#   and the limit is passed (2 jobs of a queue limited to 1 leased).
#
# qlater.poll_interval is 10 minutes: whatever ran was woken, not polled.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $started = time;
my $node = PostgreSQL::Test::Cluster->new('limit_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 12\n"
	  . "qlater.poll_interval = '10min'\n"
	  . "qlater.max_limited_jobs = 6\n");
$node->start;

sub su
{
	my ($sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql);
}

sub as
{
	my ($role, $sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql, extra_params => [ '-U', $role ]);
}

sub try_as
{
	my ($role, $sql, $db) = @_;
	my ($ret, $out, $err) =
	  $node->psql($db // 'postgres', $sql, extra_params => [ '-U', $role ]);
	return ($ret, $out, $err);
}

# wait_for(sql, db, secs): whether sql returns 't' within secs seconds
sub wait_for
{
	my ($sql, $db, $secs) = @_;
	my $until = time + $secs;
	while (time < $until)
	{
		return 1 if su($sql, $db) eq 't';
		sleep(0.1);
	}
	return 0;
}

su(q{
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE EXTENSION qlater;
CREATE TABLE runs (db text, q text, k int);
GRANT ALL ON runs TO PUBLIC;
CREATE FUNCTION job(q text, k int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.runs VALUES (current_database(), q, k) $$;
GRANT EXECUTE ON FUNCTION job(text, int) TO PUBLIC;
SELECT qlater_register('job(text,int)');
-- alice keeps the tokens of her leases in a table of hers
CREATE SCHEMA alice AUTHORIZATION alice;
CREATE DATABASE other;
});
su(q{
CREATE EXTENSION qlater;
CREATE TABLE runs (db text, q text, k int);
GRANT ALL ON runs TO PUBLIC;
CREATE FUNCTION job(q text, k int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.runs VALUES (current_database(), q, k) $$;
GRANT EXECUTE ON FUNCTION job(text, int) TO PUBLIC;
SELECT qlater_register('job(text,int)');
}, 'other');

# --- held: a consumer's pause, limit and exhaustion --------------------

as('alice', q{
SELECT qlater_create_queue('aext', external => true);
SELECT qlater_alter_queue('aext', max_running => 1);
SELECT qlater_enqueue('X', '{}', queue => 'aext', priority => 10);
SELECT qlater_enqueue('X', '{}', queue => 'aext', priority => 10);
});
# (the lease's token is its holder's: qlater_lock returns it, qlater_jobs
# shows it to admins only)
is( as('alice', q{
CREATE TABLE aext_leases AS SELECT id, claim_token FROM qlater_lock('aext', 5, lease => '1 hour') x;
SELECT count(*) FROM aext_leases;
}),
	'1',
	'a consumer asking for 5 jobs of a queue limited to 1 gets 1');
is(as('alice', q{SELECT count(*) FROM qlater_lock('aext', 5) x}),
	'0', 'and a second consumer gets none while the lease holds');
as('alice', q{SELECT qlater_unlock(id, claim_token) FROM aext_leases});
as('alice', q{SELECT qlater_pause_queue('aext')});
is(as('alice', q{SELECT count(*) FROM qlater_lock('aext', 5) x}),
	'0', 'a paused queue gives a consumer nothing');
as('alice', q{SELECT qlater_resume_queue('aext')});

# a consumer session terminated frees its session-mode slot
{
	my $s = $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', 'alice' ]);
	my $pid = $s->query_safe(q{
SELECT pg_backend_pid() FROM qlater_lock('aext', 1) x});
	is(as('alice', q{SELECT count(*) FROM qlater_lock('aext', 1) x}),
		'0', 'a session-mode claim holds the one slot');
	su("SELECT pg_terminate_backend($pid)");
	$s->quit;
	ok( wait_for(q{SELECT NOT EXISTS (SELECT FROM pg_stat_activity
	                 WHERE application_name = '' AND usename = 'alice' AND state IS NOT NULL
	                   AND backend_type = 'client backend' AND pid <> pg_backend_pid())}, 'postgres', 10),
		'the consumer is gone');
	my $got = as('alice', q{
BEGIN;
SELECT count(*) FROM qlater_lock('aext', 1) x;
ROLLBACK;});
	is($got, '1', 'its slot came back with pg_terminate_backend');
}

# --- break: a lease claimed in a savepoint rolled back keeps its slot -----
#
# The lease's row write is undone by ROLLBACK TO SAVEPOINT, but its slot is
# remembered in xact_leases and released only if the top transaction aborts:
# it counts until lease_until.  A job that sorts before the lost one finds
# the queue full though nothing runs.
as('alice', q{
SELECT qlater_create_queue('sp', external => true);
SELECT qlater_alter_queue('sp', max_running => 1);
SELECT qlater_enqueue('X', '{}', queue => 'sp', priority => 10);
});
as('alice', q{
BEGIN;
SAVEPOINT s;
SELECT count(*) FROM qlater_lock('sp', 1, lease => '1 hour') x;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT qlater_enqueue('X', '{}', queue => 'sp', priority => 5);
});
is( as('alice', q{SELECT count(*) FROM qlater_jobs WHERE queue = 'sp' AND lease_until IS NULL}),
	'2', 'savepoint: both jobs of sp are unclaimed');
is(as('alice', q{SELECT count(*) FROM qlater_lock('sp', 1) x}),
	'1', 'savepoint: a consumer of sp gets a job (nothing runs)');
as('alice', q{
SELECT qlater_unlock(id) FROM qlater_jobs WHERE queue = 'sp' AND locked_by IS NOT NULL;
});

# --- held: exhausting the table is an error with a hint for a consumer ----

as('alice', q{
SELECT qlater_create_queue('big', external => true);
SELECT qlater_alter_queue('big', max_running => 100);
SELECT qlater_enqueue('X', '{}', queue => 'big') FROM generate_series(1, 8);
});
# (6 slots, of which a role that is no admin holds at most half; the leases
# hold over the next psql's start-up)
is( as('alice', q{SELECT count(*) FROM qlater_lock('big', 8, lease => '5 seconds') x}),
	'3', "a consumer gets as many jobs as its role's share of the table (half) allows");
{
	my ($ret, $out, $err) = try_as('alice', q{SELECT count(*) FROM qlater_lock('big', 1) x});
	like($err, qr/too many jobs of queues with a limit are running.*HINT/s,
		'the table full: an error with a hint');
}

# --- break: lapsed leases keep their room in the table ------------------
#
# ql_take counts hash_get_num_entries(limit_slots) against
# qlater.max_limited_jobs: the lapsed leases of 'big' count until a claim
# of 'big' itself finds it full.  Bob's queue, in another database, is
# refused although no lease holds any more.
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM qlater_job WHERE queue = 'big' AND lease_until >= now()}),
	'the leases of big run out');
as('bob', q{
SELECT qlater_create_queue('bext', external => true);
SELECT qlater_alter_queue('bext', max_running => 1);
SELECT qlater_enqueue('X', '{}', queue => 'bext');
}, 'other');
my ($ret, $out, $err) =
  try_as('bob', q{SELECT count(*) FROM qlater_lock('bext', 1) x}, 'other');
is($out, '1', "lapsed leases: another role's consumer in another database gets its job")
  or diag($err);
# and a worker of another database waits for them too
as('bob', q{
SELECT qlater_create_queue('bq');
SELECT qlater_alter_queue('bq', max_running => 1);
SELECT qlater_enqueue('job', '["bq", 1]', queue => 'bq');
}, 'other');
ok(wait_for(q{SELECT count(*) = 1 FROM runs WHERE q = 'bq'}, 'other', 5),
	"lapsed leases: another database's limited in-server job runs");
# nothing sweeps them but a claim of 'big' while it looks full (never, with
# max_running 100: a claim of one of its jobs frees that job's own lapsed
# slot and takes it again); a restart does
$node->restart;
ok(wait_for(q{SELECT count(*) = 1 FROM runs WHERE q = 'bq'}, 'other', 30),
	"after a restart the other database's job runs");

# --- break: one tenant takes every slot of the cluster --------------------
#
# No bound per role or per database: alice's own queue, max_running as high
# as she likes, leases as long as she likes, holds the whole table; every
# limited queue of every database waits (workers log and retry each second).
as('alice', q{
SELECT qlater_alter_queue('big', max_running => 1000000);
CREATE TABLE big_leases AS SELECT id, claim_token FROM qlater_lock('big', 6, lease => '100 years') x;
});
as('bob', q{SELECT qlater_enqueue('job', '["bq", 2]', queue => 'bq')}, 'other');
ok(wait_for(q{SELECT count(*) = 2 FROM runs WHERE q = 'bq'}, 'other', 5),
	"one tenant's leases: another role's limited job in another database runs");
# held: a lease given back with its token makes room, and the worker that
# left bob's job for want of room takes it (it looks again every second)
as('alice', q{
SELECT qlater_unlock(id, claim_token) FROM big_leases LIMIT 1;
});
ok(wait_for(q{SELECT count(*) = 2 FROM runs WHERE q = 'bq'}, 'other', 20),
	'a lease given back: the job left for want of room runs');
{
	# bob's worker frees its slot right after its commit: try for a while
	my $got = '';
	my $until = time + 10;
	while (time < $until)
	{
		my ($ret, $out, $err) = try_as('alice',
			q{SELECT count(*) FROM qlater_lock('big', 6, lease => '100 years') x});
		$got = $out;
		last if $ret == 0 && $out eq '1';
		sleep(0.1);
	}
	is($got, '1', 'alice takes the freed slot again');
}
as('bob', q{SELECT qlater_enqueue('job', '["bq", 3]', queue => 'bq')}, 'other');

# --- break: a cancelled leased job keeps its slot until the lease's end ---
#
# qlater_cancel deletes the job but frees no slot: the DBA cancelling the
# tenant's jobs does not free the table (100 years); only a restart does.
su(q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'big'});
is(su(q{SELECT count(*) FROM qlater_jobs WHERE queue = 'big'}), '0',
	'cancel: the leased jobs are gone');
ok(wait_for(q{SELECT count(*) = 3 FROM runs WHERE q = 'bq'}, 'other', 5),
	'cancel: after the leased jobs are cancelled the other job runs');
$node->restart;
ok(wait_for(q{SELECT count(*) = 3 FROM runs WHERE q = 'bq'}, 'other', 30),
	'a restart clears the slots and the job runs');

# --- break: a consumer's REPEATABLE READ snapshot older than the pause ----
#
# The candidates' "NOT paused" is read under the transaction's snapshot:
# one taken before the pause committed claims as if there were none (the
# max_running, read from the cached queue rows, held).
as('alice', q{
SELECT qlater_create_queue('rr', external => true);
SELECT qlater_enqueue('X', '{}', queue => 'rr') FROM generate_series(1, 3);
SELECT qlater_create_queue('rl', external => true);
SELECT qlater_enqueue('X', '{}', queue => 'rl') FROM generate_series(1, 3);
});
{
	my $s = $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', 'alice' ]);
	$s->query_safe(q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM qlater_jobs});
	as('alice', q{SELECT qlater_pause_queue('rr')});
	as('alice', q{SELECT qlater_alter_queue('rl', max_running => 1)});
	my $paused = $s->query_safe(q{SELECT count(*) FROM qlater_lock('rr', 3, lease => '1 hour') x});
	my $limited = $s->query_safe(q{SELECT count(*) FROM qlater_lock('rl', 3, lease => '1 hour') x});
	$s->query_safe('COMMIT');
	$s->quit;
	is($paused, '0', 'repeatable read: no claim from a queue paused before the claim');
	is($limited, '1', 'repeatable read: a queue limited to 1 before the claim gives 1');
	as('alice', q{
SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue IN ('rr', 'rl');
SELECT qlater_resume_queue('rr');});
}

# --- break: qlater_extend rolled back still extends the slot --------------
#
# ql_slot_extend moves the slot's lease_until in shared memory at once; the
# row's lease does not move if the transaction rolls back, and the job is
# claimable at its old end, but the slot counts until the new one.
as('alice', q{
SELECT qlater_create_queue('ex', external => true);
SELECT qlater_alter_queue('ex', max_running => 1);
SELECT qlater_enqueue('X', '{}', queue => 'ex', priority => 10);
});
{
	# the renewing session is open before the lease is taken: it renews at
	# once, long before the lease runs out
	my $s = $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', 'alice' ]);
	my ($id, $token) = split /\|/,
	  as('alice', q{SELECT id, claim_token FROM qlater_lock('ex', 1, lease => '2 seconds')});
	$s->query_safe("BEGIN; SELECT qlater_extend($id, '$token', '1 hour'); ROLLBACK;");
	$s->quit;
	ok($node->poll_query_until('postgres', "SELECT lease_until < now() FROM qlater_job WHERE id = $id"),
		'extend rolled back: the lease runs out at its old end');
	as('alice', q{SELECT qlater_enqueue('X', '{}', queue => 'ex', priority => 5)});
	is(as('alice', q{BEGIN; SELECT count(*) FROM qlater_lock('ex', 1) x; ROLLBACK;}),
		'1', 'extend rolled back: the lease ran out, another job of ex is claimed');
}

# --- break: a completion rolled back to a savepoint still frees the slot --
#
# qlater_complete (and qlater_fail) queue the slot's release for the top
# transaction's commit; ROLLBACK TO SAVEPOINT undoes the completion but not
# the release: the job is still leased (running), and a second job of the
# queue limited to 1 is claimed beside it.
as('alice', q{
SELECT qlater_create_queue('sv', external => true);
SELECT qlater_alter_queue('sv', max_running => 1);
SELECT qlater_enqueue('X', '{}', queue => 'sv') FROM generate_series(1, 2);
});
{
	my ($id, $token) = split /\|/,
	  as('alice', q{SELECT id, claim_token FROM qlater_lock('sv', 1, lease => '1 hour')});
	as('alice', qq{
BEGIN;
SAVEPOINT s;
SELECT qlater_complete($id, '$token');
ROLLBACK TO SAVEPOINT s;
COMMIT;});
	is(as('alice', qq{SELECT count(*) FROM qlater_jobs WHERE id = $id AND lease_until > now()}),
		'1', 'savepoint complete: the job is still leased');
	is(as('alice', q{SELECT count(*) FROM qlater_lock('sv', 1, lease => '1 hour') x}),
		'0', 'savepoint complete: no second job of a queue limited to 1 is claimed');
}

# --- held: a worker terminated in a limited job frees its slot at once ----
su(q{
SELECT qlater_create_queue('t');
SELECT qlater_alter_queue('t', max_running => 1);
ALTER TABLE runs ADD COLUMN n serial;
-- job 1 sleeps on its first run only (a sequence survives the rollback):
-- run again after its worker is terminated, it ends at once
CREATE SEQUENCE first_run;
CREATE FUNCTION slow(k int) RETURNS void LANGUAGE sql
  AS $$ SELECT pg_sleep(CASE WHEN k = 1 AND nextval('first_run') = 1 THEN 300 ELSE 0 END);
        INSERT INTO runs VALUES (current_database(), 't', k) $$;
SELECT qlater_register('slow(int)');
SELECT qlater_enqueue('slow', '[1]', queue => 't', priority => 10);
});
ok(wait_for(q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'qlater job%slow%'}, 'postgres', 20),
	'terminate: the long job of t runs');
su(q{
SELECT qlater_enqueue('slow', '[2]', queue => 't', priority => 5);
SELECT qlater_enqueue('job', '["fence2", 1]');
});
ok(wait_for(q{SELECT count(*) = 1 FROM runs WHERE q = 'fence2'}, 'postgres', 20),
	'terminate: a job behind the full queue ran');
su(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'qlater job%slow%'});
ok(wait_for(q{SELECT count(*) = 2 FROM runs WHERE q = 't'}, 'postgres', 20),
	'terminate: both jobs of t ran after the terminate');
# job 2 sorts first: had the terminated worker kept its slot, only job 1
# (whose claim frees its own earlier slot) could have run first
is(su(q{SELECT string_agg(k::text, ',' ORDER BY n) FROM runs WHERE q = 't'}), '2,1',
	'terminate: the waiting job of t ran first, its slot freed by the exit')
  or diag(su(q{SELECT id, queue, handler, args, state, attempts, run_at > now(), locked_by, last_error FROM qlater_jobs WHERE handler LIKE '%slow%'}) . "\n" . su(q{SELECT * FROM runs WHERE q = 't'}) . "\n" . su(q{SELECT pid, backend_type, query FROM pg_stat_activity WHERE backend_type LIKE 'qlater%'}));

# --- held: workers keep the limit, and a raised limit runs at once ------

su(q{
SELECT qlater_create_queue('w');
SELECT qlater_alter_queue('w', max_running => 0);
SELECT qlater_enqueue('job', jsonb_build_array('w', g), queue => 'w') FROM generate_series(1, 5) g;
SELECT qlater_enqueue('job', '["fence", 1]');
});
ok(wait_for(q{SELECT count(*) = 1 FROM runs WHERE q = 'fence'}, 'postgres', 20),
	'max_running 0: the fence behind ran');
is(su(q{SELECT count(*) FROM runs WHERE q = 'w'}), '0', 'no job of w ran');
su(q{SELECT qlater_alter_queue('w', max_running => 2)});
ok(wait_for(q{SELECT count(*) = 5 FROM runs WHERE q = 'w'}, 'postgres', 20),
	'a raised limit runs the waiting jobs without the poll');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process crashed');
note(sprintf('run time %.1f s', time - $started));
done_testing();
