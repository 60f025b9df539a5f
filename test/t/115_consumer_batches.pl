# 115_consumer_batches.pl: external consumers in batch mode.  One
# transaction claims several jobs (qlater_lock(queue, n)), runs each in a
# savepoint, records the failures with qlater_fail after ROLLBACK TO
# SAVEPOINT and completes the others with one qlater_complete_many, then
# commits: a failing job rolls back alone, the others' writes commit with
# their completion (exactly once), a session killed before COMMIT leaves
# every job of its batch claimable and nothing done.  The same with
# PL/pgSQL exception blocks, with leases (one that runs out finishes
# nothing), for a role that may not consume, and on a queue with a
# max_running (its slots follow the claims across savepoints).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('consumer_batches');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
SELECT qlater_create_queue('app', external => true);
CREATE TABLE done (job bigint, n int, by_pid int);
GRANT SELECT, INSERT ON done TO PUBLIC;
CREATE ROLE app_worker LOGIN;
CREATE ROLE intruder LOGIN;
SELECT qlater_grant_queue('app', 'app_worker');
-- a job of the application: its write, and an error for n = 3
CREATE FUNCTION run_job(id bigint, n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.done VALUES (id, n, pg_backend_pid());
    IF n = 3 THEN
        RAISE EXCEPTION 'job % fails', n;
    END IF;
END
$$;
GRANT EXECUTE ON FUNCTION run_job(bigint, int) TO PUBLIC;
});

sub enqueue
{
	my ($queue, $n) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_enqueue_many('Job',
		     (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, $n) g),
		     queue => '$queue') id});
}

sub advisory_locks
{
	return $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036});
}

### 1. the batch protocol with SAVEPOINTs: the third job fails
my @ids = split /,/, enqueue('app', 5);
my $s = $node->background_psql('postgres', on_error_stop => 0);
$s->query_safe('BEGIN');
is($s->query_safe(q{CREATE TEMP TABLE batch AS SELECT id, (args->>0)::int AS n FROM qlater_lock('app', 5);
	SELECT count(*) FROM batch}),
	'5', 'batch: five jobs claimed in one transaction');
my @ok;
for my $i (0 .. 4)
{
	my $id = $ids[$i];
	$s->query_safe('SAVEPOINT job');
	my ($out, $err) = $s->query("SELECT run_job($id, n) FROM batch WHERE id = $id");
	if ($err)
	{
		like($s->{stderr}, qr/job 3 fails/, 'batch: the third job fails');
		$s->{stderr} = '';
		$s->query_safe('ROLLBACK TO SAVEPOINT job');
		$s->query_safe("SELECT qlater_fail($id, 'RuntimeError: job 3 fails')");
	}
	else
	{
		$s->query_safe('RELEASE SAVEPOINT job');
		push @ok, $id;
	}
}
is(scalar(@ok), 4, 'batch: four jobs ran');
is($s->query_safe('SELECT qlater_complete_many(ARRAY[' . join(',', @ok) . '])'),
	'4', 'batch: qlater_complete_many completes the four');
is(advisory_locks(), '5', 'batch: the claims are held until COMMIT');
is($node->safe_psql('postgres', 'SELECT count(*) FROM done'),
	'0', 'batch: nothing is seen before COMMIT');
$s->query_safe('COMMIT');
is($node->safe_psql('postgres', 'SELECT string_agg(n::text, \',\' ORDER BY n) FROM done'),
	'1,2,4,5', 'batch: the writes of the jobs that succeeded commit, the failed one is rolled back alone');
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(concat_ws(':', args->>0, state, attempts, last_error->>'message'), ' ')
		  FROM qlater_jobs WHERE queue = 'app'}),
	'3:pending:1:RuntimeError: job 3 fails',
	'batch: the failure is recorded, the others are gone');
is(advisory_locks(), '0', 'batch: every claim is released at COMMIT');
$node->safe_psql('postgres', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'app'});
$node->safe_psql('postgres', 'TRUNCATE done');

### 2. a session killed before COMMIT: its whole batch is claimable again
@ids = split /,/, enqueue('app', 6);
$s->query_safe('BEGIN');
$s->query_safe(q{CREATE TEMP TABLE b2 AS SELECT id, (args->>0)::int AS n FROM qlater_lock('app', 4)});
for my $i (0 .. 3)
{
	$s->query_safe("SAVEPOINT j; SELECT run_job($ids[$i], 10 + $i); RELEASE SAVEPOINT j");
}
is($s->query_safe(q{SELECT qlater_complete_many(ARRAY(SELECT id FROM b2))}),
	'4', 'killed: the batch is completed, not committed');
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"),
	'killed: the consumer is gone');
eval { $s->quit };
is($node->safe_psql('postgres', 'SELECT count(*) FROM done'),
	'0', 'killed: none of its jobs took effect');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FILTER (WHERE state = 'pending') || '/' || count(*) FROM qlater_jobs WHERE queue = 'app'}),
	'6/6', 'killed: all six jobs are there, pending (claims released)');
# another consumer takes them all, in batch mode, with PL/pgSQL blocks
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION consume_batch(q text, n int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    j record;
    ok bigint[] := '{}';
BEGIN
    FOR j IN SELECT id, args FROM qlater_lock(q, n) LOOP
        BEGIN
            PERFORM run_job(j.id, (j.args->>0)::int);
            ok := ok || j.id;
        EXCEPTION WHEN OTHERS THEN
            PERFORM qlater_fail(j.id, SQLERRM);
        END;
    END LOOP;
    RETURN qlater_complete_many(ok);
END
$$;
GRANT EXECUTE ON FUNCTION consume_batch(text, int) TO PUBLIC;
});
is($node->safe_psql('postgres', q{SELECT consume_batch('app', 64)}, extra_params => [ '-U', 'app_worker' ]),
	'5', 'killed: another consumer claims the six again and completes five in one call');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) || ' ' || count(DISTINCT job) || ' ' || string_agg(n::text, ',' ORDER BY n) FROM done}),
	'5 5 1,2,4,5,6', 'killed: each job ran once, its write committed with its completion');
is( $node->safe_psql(
		'postgres', q{SELECT concat_ws(':', args->>0, state, attempts) FROM qlater_jobs WHERE queue = 'app'}),
	'3:pending:1', 'killed: the failing job is recorded by qlater_fail in the exception block');
$node->safe_psql('postgres', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'app'});
$node->safe_psql('postgres', 'TRUNCATE done');

### 3. leases: a lease that ran out completes nothing; the batch rolls back
@ids = split /,/, enqueue('app', 3);
$s = $node->background_psql('postgres', on_error_stop => 0);
$s->query_safe('BEGIN');
$s->query_safe(q{CREATE TEMP TABLE l AS SELECT id, claim_token FROM qlater_lock('app', 3, lease => '1 second')});
$s->query_safe(q{SELECT run_job(id, 20) FROM l});
sleep(2);
my ($out, $err) = $s->query(q{SELECT qlater_complete_many(ARRAY(SELECT id FROM l ORDER BY id), ARRAY(SELECT claim_token FROM l ORDER BY id))});
like($s->{stderr}, qr/lease of job \d+ has run out/, 'lease: complete_many after the lease ran out is refused');
$s->{stderr} = '';
$s->query_safe('ROLLBACK');
is($node->safe_psql('postgres', 'SELECT count(*) FROM done'), '0', 'lease: the work rolls back with it');
is($node->safe_psql('postgres', q{SELECT count(*) FROM qlater_lock('app', 10)}),
	'3', 'lease: the jobs are claimable again');
# in time: tokens in the order of the ids
is( $node->safe_psql(
		'postgres', q{
CREATE TEMP TABLE l AS SELECT id, claim_token FROM qlater_lock('app', 3, lease => '5 minutes');
BEGIN;
SELECT count(run_job(id, 21)) FROM l;
SELECT qlater_complete_many(ARRAY(SELECT id FROM l ORDER BY id), ARRAY(SELECT claim_token FROM l ORDER BY id));
COMMIT;
SELECT count(*) FROM qlater_jobs WHERE queue = 'app';
SELECT count(*) FROM done;}),
	"3\n3\n0\n3", 'lease: completed in time, from another session than the claim');

### 4. another role: no consume right, or another session's claims
@ids = split /,/, enqueue('app', 2);
$s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 2)});
my $list = 'ARRAY[' . join(',', @ids) . ']';
my ($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT qlater_complete_many($list)",
	extra_params => [ '-U', 'intruder' ]);
like($stderr, qr/permission denied for job $ids[0]/, 'intruder: a role without consume completes nothing');
($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT qlater_unlock_many($list)",
	extra_params => [ '-U', 'intruder' ]);
like($stderr, qr/permission denied for job $ids[0]/, 'intruder: nor gives claims back');
($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT qlater_complete_many($list)",
	extra_params => [ '-U', 'app_worker' ]);
like($stderr, qr/job $ids[0] is not claimed by this session/,
	'a consumer completes nothing another session claimed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM qlater_jobs WHERE queue = 'app' AND state = 'running'}),
	'2', 'the jobs are still claimed by their session');
is($s->query_safe("SELECT qlater_unlock_many($list)"), '2',
	'the holder gives its unstarted claims back at once');
is(advisory_locks(), '0', 'no claim is left');
$node->safe_psql('postgres', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'app'});

### 5. a queue with a max_running: slots follow the claims across savepoints
$node->safe_psql('postgres', q{
SELECT qlater_create_queue('lim', external => true);
SELECT qlater_alter_queue('lim', max_running => 2);
SELECT qlater_grant_queue('lim', 'app_worker');
});
enqueue('lim', 6);
my $other = $node->background_psql('postgres');
$s->query_safe('BEGIN');
is($s->query_safe(q{CREATE TEMP TABLE m AS SELECT id, (args->>0)::int AS n FROM qlater_lock('lim', 5);
	SELECT count(*) FROM m}), '2', 'limited: a batch claims max_running jobs at most');
$s->query_safe(q{SAVEPOINT a; SELECT run_job(id, n) FROM m WHERE n = 1; RELEASE SAVEPOINT a});
$s->query_safe(q{SAVEPOINT b; SELECT run_job(id, 100) FROM m WHERE n = 2});
$s->query_safe(q{ROLLBACK TO SAVEPOINT b; SELECT qlater_fail(id, 'Error: b') FROM m WHERE n = 2});
is($other->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 5)}),
	'0', 'limited: the claims survive ROLLBACK TO SAVEPOINT: no slot for another session');
is($s->query_safe(q{SELECT qlater_complete_many(ARRAY(SELECT id FROM m WHERE n = 1))}), '1',
	'limited: complete_many in the batch');
is($other->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 5)}),
	'0', 'limited: the slots are held until COMMIT');
$s->query_safe('COMMIT');
is($other->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 5)}),
	'2', 'limited: released at COMMIT, for another session');
is($other->query_safe(q{SELECT qlater_unlock_many(ARRAY(SELECT id FROM qlater_jobs WHERE queue = 'lim' AND locked_by = pg_backend_pid()))}),
	'2', 'limited: given back');
# leases: taken in a savepoint rolled back, they are given back; taken
# before it, they stay
$s->query_safe('BEGIN');
$s->query_safe(q{SAVEPOINT c; SELECT count(*) FROM qlater_lock('lim', 2, lease => '5 minutes'); ROLLBACK TO SAVEPOINT c});
is($other->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 5, lease => '5 minutes')}),
	'2', 'limited: leases taken in a savepoint rolled back leave their slots');
$other->query_safe(q{SELECT qlater_unlock_many(array_agg(id ORDER BY id), array_agg(claim_token ORDER BY id))
	FROM qlater_jobs WHERE queue = 'lim' AND claim_token IS NOT NULL});
$s->query_safe(q{CREATE TEMP TABLE ml AS SELECT id, claim_token, (args->>0)::int AS n FROM qlater_lock('lim', 2, lease => '5 minutes')});
$s->query_safe(q{SAVEPOINT d; SELECT run_job(id, 30 + n) FROM ml; ROLLBACK TO SAVEPOINT d});
is($other->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 5, lease => '5 minutes')}),
	'0', 'limited: leases taken before a savepoint rolled back keep their slots');
is($s->query_safe(q{SELECT qlater_complete_many(array_agg(id ORDER BY id), array_agg(claim_token ORDER BY id)) FROM ml}),
	'2', 'limited: completed with their tokens');
$s->query_safe('COMMIT');
is($other->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 5)}),
	'2', 'limited: the lease slots are released at COMMIT');
is($node->safe_psql('postgres', q{SELECT count(*) FROM qlater_jobs WHERE queue = 'lim'}),
	'3', 'limited: three jobs completed, three left');

### 6. a completion rolled back to a savepoint keeps its claims and slots
is($other->query_safe(q{SELECT qlater_unlock_many(ARRAY(SELECT id FROM qlater_jobs WHERE queue = 'lim' AND locked_by = pg_backend_pid()))}),
	'2', 'rolled back: another session gives its claims back');
$s->query_safe('BEGIN');
is($s->query_safe(q{CREATE TEMP TABLE r AS SELECT id FROM qlater_lock('lim', 5); SELECT count(*) FROM r}),
	'2', 'rolled back: two claimed');
$s->query_safe(q{SAVEPOINT e; SELECT qlater_complete_many(ARRAY(SELECT id FROM r)); ROLLBACK TO SAVEPOINT e});
$s->query_safe('COMMIT');
is($s->query_safe(q{SELECT count(*) FROM qlater_jobs WHERE locked_by = pg_backend_pid()}),
	'2', 'rolled back: a completion rolled back to a savepoint leaves the claims held after COMMIT');
is($other->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 5)}),
	'0', 'rolled back: and their slots');
is($s->query_safe(q{SELECT qlater_complete_many(ARRAY(SELECT id FROM r))}),
	'2', 'rolled back: the holder completes them later');
is(advisory_locks(), '0', 'rolled back: no claim is left');
$other->quit;
$s->quit;

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no server process was terminated by a signal');
done_testing();
