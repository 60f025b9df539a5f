# 025_batches.pl: a queue with batches commits several jobs together, each
# in a subtransaction of its own.  Every job still takes effect exactly
# once; a failure is the failing job's alone; deferred constraints are
# checked at the end of each job; settings do not leak from one job into
# the next; procedures run alone; batch_delay bounds a batch; and a batch
# that fails to commit runs again one job at a time.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('batches');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$node->start;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

sub drained
{
	my ($queue, $msg) = @_;
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 0 FROM qlater_jobs WHERE queue = '$queue' AND state <> 'dead'"),
		$msg);
}

q1(q{
CREATE EXTENSION qlater;
SELECT qlater_create_queue('fast', batch_size => 64, batch_delay => '50 ms');
-- every row records the top-level transaction that committed it
CREATE TABLE hits (k int NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
                   pid int NOT NULL DEFAULT pg_backend_pid());
CREATE FUNCTION hit(k int) RETURNS void LANGUAGE sql
AS $$ INSERT INTO hits (k) VALUES (k) $$;
SELECT qlater_register('hit(int)', queue => 'fast', max_attempts => 1);
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'4 workers run');

### exactly once, in batches
my $n = 20000;
my $t0 = time;
for my $part (0 .. 3)
{
	my $lo = $part * 5000 + 1;
	my $hi = $lo + 4999;
	q1("SELECT count(*) FROM qlater_enqueue_many('hit', "
		  . "(SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series($lo, $hi) g))");
}
drained('fast', 'the queue drains');
my $elapsed = time - $t0;
note sprintf('%d jobs in %.1f s (%.0f jobs/s)', $n, $elapsed, $n / $elapsed);
is(q1('SELECT count(*), count(DISTINCT k), min(k), max(k) FROM hits'),
	"$n|$n|1|$n", 'every job took effect exactly once');
is(q1('SELECT count(*) FROM qlater_jobs'), '0', 'no job is left, dead or pending');
my $xids = q1('SELECT count(DISTINCT xid) FROM hits');
note "$n jobs committed in $xids transactions";
cmp_ok($xids, '<', $n / 4, 'jobs were committed together');
cmp_ok(q1('SELECT max(c) FROM (SELECT count(*) c FROM hits GROUP BY xid) b'),
	'<=', 64, 'at most batch_size jobs a transaction');
q1('TRUNCATE hits');

### a failure is the failing job's alone
q1(q{
CREATE FUNCTION flaky(k int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO hits (k) VALUES (k);
    IF k % 10 = 0 THEN
        RAISE EXCEPTION 'boom %', k USING ERRCODE = 'QL001';
    END IF;
END $$;
SELECT qlater_register('flaky(int)', queue => 'fast', max_attempts => 1);
SELECT count(*) FROM qlater_enqueue_many('flaky',
    (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 300) g));
});
drained('fast', 'jobs that fail and jobs that succeed, in the same batches');
is( q1(
		"SELECT count(*), bool_and((args->>0)::int % 10 = 0), "
		  . "bool_and(last_error->>'sqlstate' = 'QL001'), bool_and(attempts = 1) "
		  . "FROM qlater_jobs WHERE state = 'dead'"),
	'30|t|t|t',
	'the 30 failing jobs are dead, with their error and one attempt');
is(q1('SELECT count(*), count(*) FILTER (WHERE k % 10 = 0) FROM hits'),
	'270|0', 'the others took effect; nothing of the failing ones stayed');
cmp_ok(q1('SELECT count(DISTINCT xid) FROM hits'),
	'<', 270, 'and they were committed in batches');
q1("SELECT qlater_cancel(id) FROM qlater_jobs WHERE state = 'dead'; TRUNCATE hits");

### deferred constraints are checked at the end of each job
q1(q{
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED,
                    xid xid8 NOT NULL DEFAULT pg_current_xact_id());
-- the child comes first, its parent after: fine for even k, a violation
-- for odd k
CREATE FUNCTION link(k int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO child (id) VALUES (k);
    IF k % 2 = 0 THEN
        INSERT INTO parent VALUES (k);
    END IF;
END $$;
SELECT qlater_register('link(int)', queue => 'fast', max_attempts => 1);
SELECT count(*) FROM qlater_enqueue_many('link',
    (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 200) g));
});
drained('fast', 'jobs with deferred constraints');
is( q1(
		"SELECT count(*), bool_and((args->>0)::int % 2 = 1), "
		  . "bool_and(last_error->>'sqlstate' = '23503') FROM qlater_jobs WHERE state = 'dead'"),
	'100|t|t',
	'each job that violates a deferred constraint fails alone (23503)');
is(q1('SELECT count(*), count(*) FILTER (WHERE id % 2 = 1) FROM child'),
	'100|0', 'the jobs that kept it took effect');
cmp_ok(q1('SELECT count(DISTINCT xid) FROM child'), '<', 100, 'in batches');
q1("SELECT qlater_cancel(id) FROM qlater_jobs WHERE state = 'dead'");

### settings do not leak from one job into the next
q1(q{
CREATE TABLE seen (k int, what text, session_value text, local_value text,
                   xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
                   pid int NOT NULL DEFAULT pg_backend_pid());
CREATE FUNCTION setter(k int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('app.leak', 'leaked', false);
    PERFORM set_config('app.leak_local', 'leaked', true);
    SET work_mem = '77MB';
    INSERT INTO seen (k, what) VALUES (k, 'set');
END $$;
CREATE FUNCTION reader(k int) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen (k, what, session_value, local_value)
    VALUES (k, current_setting('work_mem'),
            current_setting('app.leak', true), current_setting('app.leak_local', true));
$$;
SELECT qlater_register('setter(int)', queue => 'fast');
SELECT qlater_register('reader(int)', queue => 'fast');
BEGIN;
SELECT count(qlater_enqueue(CASE WHEN g % 2 = 0 THEN 'setter' ELSE 'reader' END,
                            jsonb_build_array(g)))
  FROM generate_series(1, 400) g;
COMMIT;
});
drained('fast', 'setters and readers, one after the other');
is(q1("SELECT count(*) FROM seen WHERE what <> 'set'"), '200', 'every reader ran');
is( q1(
		"SELECT count(*) FROM seen WHERE what <> 'set' AND (what = '77MB' "
		  . "OR coalesce(session_value, '') <> '' OR coalesce(local_value, '') <> '')"),
	'0',
	'no reader saw what a setter SET');
cmp_ok(
	q1(
		"SELECT count(*) FROM seen r JOIN seen s ON s.xid = r.xid AND s.k = r.k - 1 "
		  . "WHERE r.what <> 'set' AND s.what = 'set'"),
	'>', 0,
	'readers ran right after setters in the same batch');

### procedures run in batches like functions, and may not COMMIT
q1(q{
CREATE PROCEDURE two_steps(k int) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO hits (k) VALUES (k);
    COMMIT;
    INSERT INTO hits (k) VALUES (-k);
END $$;
CREATE PROCEDURE one_step(k int) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO hits (k) VALUES (k);
END $$;
SELECT qlater_register('two_steps(int)', queue => 'fast', max_attempts => 1);
SELECT qlater_register('one_step(int)', queue => 'fast', max_attempts => 1);
BEGIN;
SELECT count(qlater_enqueue(CASE WHEN g % 10 = 0 THEN 'two_steps'
                                 WHEN g % 10 = 5 THEN 'one_step' ELSE 'hit' END,
                            jsonb_build_array(100000 + g)))
  FROM generate_series(1, 200) g;
COMMIT;
});
drained('fast', 'procedures among functions in a queue with batches');
is(q1("SELECT count(*) FROM qlater_jobs WHERE state = 'dead'"), '20',
	'every procedure that COMMITs failed');
is( q1(
		"SELECT count(*) FROM qlater_jobs WHERE state = 'dead' "
		  . "AND last_error->>'sqlstate' = '2D000' AND handler LIKE '%two_steps%'"),
	'20',
	'with invalid transaction termination');
is(q1('SELECT count(*) FROM hits WHERE k < 0 OR k % 10 = 0'), '0',
	'and none of their work stayed');
is(q1('SELECT count(*) FROM hits WHERE k % 10 = 5'), '20', 'the other procedures ran');
cmp_ok(
	q1(
		'SELECT count(*) FROM hits p JOIN hits o ON o.xid = p.xid AND o.k <> p.k '
		  . 'WHERE p.k % 10 = 5'),
	'>', 0,
	'in batches with functions');
q1("DELETE FROM qlater_job WHERE dead; TRUNCATE hits");

### batch_delay bounds a batch
# (jobs of 200 ms and a delay of 500 ms: a busy machine slows a job by
# much less than the 300 ms that would keep a second job out of a batch)
q1(q{
SELECT qlater_create_queue('slow', batch_size => 64, batch_delay => '500 ms');
CREATE FUNCTION nap(k int) RETURNS void LANGUAGE sql AS $$
    SELECT pg_sleep(0.2);
    INSERT INTO hits (k) VALUES (k);
$$;
SELECT qlater_register('nap(int)', queue => 'slow');
SELECT count(*) FROM qlater_enqueue_many('nap',
    (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 40) g));
});
drained('slow', 'jobs of 200 ms');
# the first ends at t; more join while less than 500 ms have passed since:
# the 2nd ends after t + 200 ms, the 3rd after t + 400, the 4th after t + 600
my $per_xact = q1('SELECT max(c) FROM (SELECT count(*) c FROM hits GROUP BY xid) b');
cmp_ok($per_xact, '<=', 4, 'no batch held a finished job back more than batch_delay');
cmp_ok($per_xact, '>=', 2, 'and some jobs were committed together');
q1('TRUNCATE hits');

### a batch that fails to commit runs again, one job at a time
q1(q{
-- a commit-time failure: a deferred trigger on the job table itself, which
-- fires when the transaction that removed a poisoned job commits
CREATE FUNCTION poison_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.args = '[-1]' THEN
        RAISE EXCEPTION 'poisoned job %', OLD.id;
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER poison AFTER DELETE ON qlater_job
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION poison_check();
SELECT count(*) FROM qlater_enqueue_many('hit',
    (SELECT jsonb_agg(jsonb_build_array(CASE WHEN g = 100 THEN -1 ELSE g END))
       FROM generate_series(1, 200) g));
});
drained('fast', 'a batch with a poisoned job');
is( q1(
		"SELECT concat_ws('|', args, last_error->>'message') FROM qlater_jobs WHERE state = 'dead'"),
	'[-1]|poisoned job ' . q1("SELECT id FROM qlater_jobs WHERE args = '[-1]'"),
	'the poisoned job failed alone');
is(q1('SELECT count(*), count(DISTINCT k) FROM hits WHERE k > 0'),
	'199|199', 'the other jobs took effect once');
ok($node->log_contains('qlater jobs failed to commit: poisoned job'),
	'the failed batch is in the log');
q1('DROP TRIGGER poison ON qlater_job');

is( q1("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'4', 'all 4 workers are still there');

$node->stop;
done_testing();
