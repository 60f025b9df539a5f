# 050_crash.pl: a job running in a process that crashed the server is
# counted (attempts + 1, crashes + 1) and runs again later; the other jobs
# that were running are victims and are not counted; a job that crashes
# every time ends dead after qlater.max_crashes; an immediate shutdown
# under load loses nothing and does nothing twice.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n"
	  . "qlater.max_crashes = 3\n"
	  . "restart_after_crash = on\n"
	  . "max_prepared_transactions = 2\n");
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE TABLE marks (label text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE pass (name text PRIMARY KEY);
CREATE TABLE hits (k int NOT NULL);

-- waits (up to 60 s) until its label is in pass
CREATE FUNCTION hold(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO marks VALUES (label || ' start');
    FOR i IN 1..600 LOOP
        EXIT WHEN EXISTS (SELECT FROM pass WHERE name = label);
        PERFORM pg_sleep(0.1);
    END LOOP;
    INSERT INTO marks VALUES (label || ' done');
END
$$;
SELECT qlater_register('hold(text)');

CREATE FUNCTION hit(k int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO hits VALUES (k);
    PERFORM pg_sleep(0.002);
END
$$;
SELECT qlater_register('hit(int)');

CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO marks VALUES (label) $$;
SELECT qlater_register('ok(text)');
});

sub q1 { return $node->safe_psql('postgres', $_[0]); }

sub wait_workers
{
	my $msg = shift;
	ok( $node->poll_query_until(
			'postgres', q{
SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'postgres'}),
		$msg);
}

# wait until a worker is running job $id (past its claim) and return its pid
sub running_pid
{
	my $id = shift;
	$node->poll_query_until(
		'postgres', qq{
SELECT count(*) = 1 FROM qlater_jobs j JOIN pg_stat_activity a ON a.pid = j.locked_by
 WHERE j.id = $id AND a.backend_type = 'qlater worker' AND a.state = 'active'
   AND a.query LIKE 'qlater job $id:%'})
	  or return undef;
	return q1("SELECT locked_by FROM qlater_jobs WHERE id = $id");
}

# SIGKILL a process and wait for the crash-restart to finish
sub crash_with
{
	my ($pid, $msg) = @_;
	my $offset = -s $node->logfile;
	ok(kill('KILL', $pid), "SIGKILL to worker $pid ($msg)");
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
	ok($node->poll_query_until('postgres', 'SELECT 1', '1'),
		"the server is back after the crash ($msg)");
	return $offset;
}

wait_workers('4 workers run');

### an immediate shutdown under load
my $n = 5000;
q1("SELECT count(qlater_enqueue('hit', jsonb_build_array(g))) FROM generate_series(1, $n) g");
ok($node->poll_query_until('postgres', 'SELECT count(*) >= 300 FROM hits'),
	'the workers are busy');
my $log_offset = -s $node->logfile;
$node->stop('immediate');
$node->start;
my $done_at_stop = q1('SELECT count(*) FROM hits');
note "$done_at_stop of $n jobs were done at the immediate shutdown";
cmp_ok($done_at_stop, '<', $n, 'the shutdown came while jobs were left');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM qlater_jobs'),
	'the queue drains after the restart');
is(q1('SELECT count(*), count(DISTINCT k), min(k), max(k) FROM hits'),
	"$n|$n|1|$n", 'after an immediate shutdown every job was done exactly once');
my $log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/counting a server crash|was running when the server crashed/,
	'no job was blamed for the immediate shutdown');
wait_workers('4 workers run after the restart');

### SIGKILL of a worker in the middle of a job
my $k1 = q1("SELECT qlater_enqueue('hold', '[\"k1\"]')");
my $victim = q1("SELECT qlater_enqueue('hold', '[\"victim\"]')");
my $pid = running_pid($k1);
ok(defined $pid, 'k1 is running');
ok(defined running_pid($victim), 'victim is running too');
$log_offset = crash_with($pid, 'k1');

ok( $node->poll_query_until(
		'postgres', "SELECT crashes = 1 FROM qlater_jobs WHERE id = $k1"),
	'the crash is counted against the job that ran in the killed process');
is( q1(
		"SELECT concat_ws('|', attempts, crashes, state, last_error->>'sqlstate', last_error->>'attempt') FROM qlater_jobs WHERE id = $k1"
	),
	'1|1|pending|XX000|1',
	'k1: attempts 1, crashes 1, pending (not running again at once)');
like(q1("SELECT last_error->>'message' FROM qlater_jobs WHERE id = $k1"),
	qr/server crashed/, 'k1: last_error says the server crashed');
my $backoff = q1(
	"SELECT extract(epoch FROM run_at - (last_error->>'at')::timestamptz) FROM qlater_jobs WHERE id = $k1"
);
cmp_ok(abs($backoff - 4), '<', 0.05, "k1 retries after 1^4 + 3 = 4 s (got $backoff)");
is( q1(
		"SELECT concat_ws('|', attempts, crashes, last_error IS NULL) FROM qlater_jobs WHERE id = $victim"
	),
	'0|0|t',
	'the victim job is not counted');
is(q1("SELECT count(*) FROM marks WHERE label LIKE 'k1%' OR label LIKE 'victim%'"),
	'0', 'the writes of the crashed attempts are not visible');
$log = slurp_file($node->logfile, $log_offset);
like($log, qr/counting a server crash against qlater job $k1\b/,
	'the log says which job was blamed');
unlike($log, qr/counting a server crash against qlater job $victim\b/,
	'the log blames no victim');

q1("INSERT INTO pass VALUES ('k1'), ('victim')");
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE id IN ($k1, $victim)"),
	'k1 and the victim run again and finish');
is( q1(
		"SELECT string_agg(label, ',' ORDER BY label) FROM marks WHERE label LIKE 'k1%' OR label LIKE 'victim%'"
	),
	'k1 done,k1 start,victim done,victim start',
	'each took effect once');
cmp_ok(
	q1(
		"SELECT extract(epoch FROM at - (SELECT at FROM marks WHERE label = 'k1 start')) FROM marks WHERE label = 'k1 done'"
	),
	'>=', 0, 'k1 reran');
wait_workers('4 workers run after the crash');

### the crashed job does not run again before its crash is counted
# After the crash-restart one worker counts the crash (attempts + 1,
# crashes + 1, run_at after the backoff, or dead); until that commits the
# other workers must not claim the job, or it runs again at once, without
# backoff and even after max_crashes.  A prepared transaction keeps a lock on
# the job's row across the crash, so that the count waits for it: this
# widens a window that is otherwise a few milliseconds wide.
my $recount = q1("SELECT qlater_enqueue('hold', '[\"recount\"]')");
$pid = running_pid($recount);
ok(defined $pid, 'recount is running');
q1( "BEGIN; SELECT id FROM qlater_job WHERE id = $recount FOR UPDATE; "
	  . "PREPARE TRANSACTION 'hold_row'");
$log_offset = crash_with($pid, 'recount');
$node->wait_for_log(qr/counting a server crash against qlater job $recount\b/, $log_offset);
wait_workers('4 workers run while the count of the crash waits');
q1('SELECT pg_sleep(1)');
is( q1(
		"SELECT concat_ws('|', state, attempts, crashes) FROM qlater_jobs WHERE id = $recount"
	),
	'pending|0|0',
	'no worker runs the crashed job again while its crash is being counted');
q1("ROLLBACK PREPARED 'hold_row'");
ok( $node->poll_query_until(
		'postgres', "SELECT crashes = 1 FROM qlater_jobs WHERE id = $recount"),
	'the crash is counted once the row is free');
q1("INSERT INTO pass VALUES ('recount')");
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE id = $recount"),
	'recount finishes');
is(q1("SELECT count(*) FROM marks WHERE label = 'recount done'"), '1',
	'recount took effect once');
wait_workers('4 workers run after the recount crash');

### a job that crashes its process every time ends dead
my $bad = q1("SELECT qlater_enqueue('hold', '[\"crasher\"]')");
for my $i (1 .. 3)
{
	$pid = running_pid($bad);
	ok(defined $pid, "crasher runs (attempt $i)");
	crash_with($pid, "crasher attempt $i");
	ok( $node->poll_query_until(
			'postgres', "SELECT crashes = $i FROM qlater_jobs WHERE id = $bad"),
		"crash $i counted");
	is(q1("SELECT attempts FROM qlater_jobs WHERE id = $bad"),
		$i, "attempts = $i after crash $i");
	if ($i < 3)
	{
		is(q1("SELECT state FROM qlater_jobs WHERE id = $bad"),
			'pending', "pending again after crash $i");
		my $expect = $i**4 + 3;
		$backoff = q1(
			"SELECT extract(epoch FROM run_at - (last_error->>'at')::timestamptz) FROM qlater_jobs WHERE id = $bad"
		);
		cmp_ok(abs($backoff - $expect), '<', 0.05,
			"retry after $i^4 + 3 = $expect s (got $backoff)");
		# do not wait for the backoff
		q1("UPDATE qlater_job SET run_at = now() WHERE id = $bad");
	}
}
is( q1(
		"SELECT concat_ws('|', state, attempts, crashes, last_error->>'detail') FROM qlater_jobs WHERE id = $bad"
	),
	'dead|3|3|Crash 3 of at most 3.',
	'after qlater.max_crashes = 3 crashes the job is dead');
wait_workers('4 workers run after 3 more crashes');
q1("SELECT qlater_enqueue('ok', jsonb_build_array('after-' || g)) FROM generate_series(1, 10) g");
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 10 FROM marks WHERE label LIKE 'after-%'"),
	'other jobs still run');
is(q1("SELECT count(*) FROM qlater_jobs WHERE state <> 'dead'"), '0', 'nothing left pending');
is(q1("SELECT count(*) FROM qlater_jobs"), '1', 'only the crasher is left, dead');

$node->stop;
done_testing();
