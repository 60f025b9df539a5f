# 030_retries.pl: failed attempts, last_error, backoff, dead jobs,
# qlater_retry, qlater_cancel (pending and running), timeouts, and workers
# that survive all of it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('retries');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$node->start;

# Sequences are not transactional: the handlers use them to leave a trace
# of what they did in an attempt that was rolled back.
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE TABLE written (label text);
CREATE TABLE switches (name text PRIMARY KEY);
CREATE SEQUENCE started;
CREATE SEQUENCE caught;
CREATE SEQUENCE caught_cancel;

CREATE FUNCTION failer(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written VALUES (label);
    RAISE EXCEPTION 'failer % failed', label
        USING ERRCODE = 'QL001', DETAIL = 'the detail', HINT = 'the hint';
END
$$;
SELECT qlater_register('failer(text)');

-- fails until its switch is on
CREATE FUNCTION fail_unless(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written VALUES (label);
    IF NOT EXISTS (SELECT FROM switches WHERE name = label) THEN
        RAISE EXCEPTION 'switch % is off', label;
    END IF;
END
$$;
SELECT qlater_register('fail_unless(text)', max_attempts => 1);

CREATE FUNCTION sleeper(label text, secs float8) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written VALUES (label);
    PERFORM nextval('started');
    PERFORM pg_sleep(secs);
END
$$;
SELECT qlater_register('sleeper(text,float8)');

-- catches the cancel of its timeout and returns normally
CREATE FUNCTION stubborn(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written VALUES (label);
    BEGIN
        PERFORM pg_sleep(5);
    EXCEPTION WHEN query_canceled THEN
        PERFORM nextval('caught');
        INSERT INTO written VALUES (label || ' caught');
    END;
    INSERT INTO written VALUES (label || ' after');
END
$$;
SELECT qlater_register('stubborn(text)', timeout => '200 ms', max_attempts => 1);

-- catches a cancel and returns normally; no timeout
CREATE FUNCTION catcher(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written VALUES (label);
    BEGIN
        PERFORM pg_sleep(30);
    EXCEPTION WHEN query_canceled THEN
        PERFORM nextval('caught_cancel');
        INSERT INTO written VALUES (label || ' caught');
    END;
END
$$;
SELECT qlater_register('catcher(text)');

-- does not catch it
CREATE FUNCTION slowpoke(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written VALUES (label);
    PERFORM pg_sleep(10);
END
$$;
SELECT qlater_register('slowpoke(text)', timeout => '200 ms', max_attempts => 1);

CREATE FUNCTION raise_div0() RETURNS void LANGUAGE plpgsql AS $$
BEGIN RAISE division_by_zero; END $$;
CREATE FUNCTION select_div0() RETURNS void LANGUAGE plpgsql AS $$
DECLARE x int;
BEGIN SELECT 1/0 INTO x; END $$;
CREATE FUNCTION bad_cast() RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM 'not a number'::int; END $$;
SELECT qlater_register('raise_div0()', max_attempts => 1);
SELECT qlater_register('select_div0()', max_attempts => 1);
SELECT qlater_register('bad_cast()', max_attempts => 1);

CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO written VALUES (label) $$;
SELECT qlater_register('ok(text)');
});
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'postgres'}),
	'4 workers run');
my $workers_before = $node->safe_psql('postgres',
	"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'qlater worker'"
);

sub q1 { return $node->safe_psql('postgres', $_[0]); }

### a failing handler: attempts, last_error, backoff
my $a2 = q1("SELECT qlater_enqueue('failer', '[\"two\"]', max_attempts => 2)");
my $a3 = q1("SELECT qlater_enqueue('failer', '[\"three\"]', max_attempts => 3)");
ok( $node->poll_query_until(
		'postgres', "SELECT attempts = 1 FROM qlater_jobs WHERE id = $a2"),
	'a failed attempt is counted');
ok( $node->poll_query_until(
		'postgres', "SELECT attempts = 1 FROM qlater_jobs WHERE id = $a3"),
	'a failed attempt is counted (second job)');
is( q1(
		qq{SELECT concat_ws('|', state, last_error->>'sqlstate', last_error->>'message',
                 last_error->>'detail', last_error->>'hint', last_error->>'attempt')
             FROM qlater_jobs WHERE id = $a2}),
	'pending|QL001|failer two failed|the detail|the hint|1',
	'last_error has sqlstate, message, detail, hint and attempt; the job is pending again');
like(
	q1("SELECT last_error->>'context' FROM qlater_jobs WHERE id = $a2"),
	qr/PL\/pgSQL function failer\(text\) line \d+ at RAISE/,
	'last_error has the context');
my $backoff1 = q1(
	"SELECT extract(epoch FROM run_at - (last_error->>'at')::timestamptz) FROM qlater_jobs WHERE id = $a2"
);
cmp_ok(abs($backoff1 - 4), '<', 0.05,
	"the retry after attempt 1 is 1^4 + 3 = 4 s later (got $backoff1)");
is(q1("SELECT count(*) FROM written WHERE label IN ('two', 'three')"),
	'0', 'the writes of a failed attempt are rolled back');
my $run_at1 = q1("SELECT run_at FROM qlater_jobs WHERE id = $a2");

### max_attempts => 1: dead at once
my $dead1 = q1("SELECT qlater_enqueue('fail_unless', '[\"retry-me\"]')");
ok( $node->poll_query_until(
		'postgres', "SELECT state = 'dead' FROM qlater_jobs WHERE id = $dead1"),
	'a job that fails its only attempt is dead');
is( q1(
		"SELECT concat_ws('|', attempts, last_error->>'message', last_error->>'attempt') FROM qlater_jobs WHERE id = $dead1"
	),
	'1|switch retry-me is off|1',
	'a dead job keeps its attempts and last_error');

### qlater_retry puts a dead job back
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT qlater_retry($a3)");
like($stderr, qr/55000/, 'qlater_retry of a job that is not dead is refused');
is(q1('SELECT qlater_retry(-1)'), 'f', 'qlater_retry of no job returns false');
q1("INSERT INTO switches VALUES ('retry-me')");
is(q1("SELECT qlater_retry($dead1)"), 't', 'qlater_retry of a dead job returns true');
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE id = $dead1"),
	'the retried job runs and is removed');
is(q1("SELECT count(*) FROM written WHERE label = 'retry-me'"),
	'1', 'the retried job took effect once');

### qlater_cancel of a pending job
my $future = q1(
	"SELECT qlater_enqueue('ok', '[\"never\"]', run_at => now() + interval '1 hour')");
is(q1("SELECT state FROM qlater_jobs WHERE id = $future"), 'pending', 'a future job is pending');
is(q1("SELECT qlater_cancel($future)"), 't', 'qlater_cancel of a pending job returns true');
is(q1("SELECT count(*) FROM qlater_jobs WHERE id = $future"), '0', 'the cancelled job is gone');
is(q1("SELECT qlater_cancel($future)"), 'f', 'qlater_cancel of no job returns false');
# a dead job can be cancelled too
my $dead2 = q1("SELECT qlater_enqueue('raise_div0')");
ok( $node->poll_query_until(
		'postgres', "SELECT state = 'dead' FROM qlater_jobs WHERE id = $dead2"),
	'raise_div0 ends dead');
is( q1("SELECT last_error->>'sqlstate' FROM qlater_jobs WHERE id = $dead2"),
	'22012', 'RAISE division_by_zero is recorded as 22012');
is(q1("SELECT qlater_cancel($dead2)"), 't', 'qlater_cancel of a dead job returns true');
is(q1("SELECT count(*) FROM qlater_jobs WHERE id = $dead2"), '0', 'the dead job is gone');

### qlater_cancel of a running job
my $run = q1("SELECT qlater_enqueue('sleeper', '[\"cancel-me\", 30]')");
ok( $node->poll_query_until(
		'postgres', qq{
SELECT j.state = 'running' AND a.wait_event = 'PgSleep'
  FROM qlater_jobs j JOIN pg_stat_activity a ON a.pid = j.locked_by
 WHERE j.id = $run}),
	'the sleeper is running');
my $run_pid = q1("SELECT locked_by FROM qlater_jobs WHERE id = $run");
my $t0 = time;
is(q1("SELECT qlater_cancel($run)"), 't', 'qlater_cancel of a running job returns true');
ok( $node->poll_query_until(
		'postgres', qq{
SELECT count(*) = 0 FROM pg_stat_activity
 WHERE pid = $run_pid AND (wait_event = 'PgSleep' OR state <> 'idle')}),
	'the cancelled attempt stops');
cmp_ok(time - $t0, '<', 10, 'the cancelled attempt stopped long before its 30 s sleep ended');
is(q1("SELECT count(*) FROM qlater_jobs WHERE id = $run"), '0',
	'the cancelled running job is gone');
is(q1("SELECT count(*) FROM written WHERE label = 'cancel-me'"),
	'0', 'the cancelled attempt\'s writes are rolled back');
is(q1("SELECT count(*) FROM pg_stat_activity WHERE pid = $run_pid"),
	'1', 'the worker that ran the cancelled job lives on');

### qlater_cancel of a running job whose handler catches the cancel
my $catch = q1("SELECT qlater_enqueue('catcher', '[\"catch-cancel\"]')");
ok( $node->poll_query_until(
		'postgres', qq{
SELECT j.state = 'running' AND a.wait_event = 'PgSleep'
  FROM qlater_jobs j JOIN pg_stat_activity a ON a.pid = j.locked_by
 WHERE j.id = $catch}),
	'the catcher is running');
my $catch_pid = q1("SELECT locked_by FROM qlater_jobs WHERE id = $catch");
$t0 = time;
is(q1("SELECT qlater_cancel($catch)"), 't', 'qlater_cancel of the catcher returns true');
ok( $node->poll_query_until(
		'postgres', qq{
SELECT count(*) = 0 FROM pg_stat_activity
 WHERE pid = $catch_pid AND (wait_event = 'PgSleep' OR state <> 'idle')}),
	'the cancelled catcher stops');
cmp_ok(time - $t0, '<', 10, 'the catcher stopped long before its 30 s sleep ended');
is(q1("SELECT is_called FROM caught_cancel"), 't', 'the catcher did catch the cancel');
is(q1("SELECT count(*) FROM written WHERE label LIKE 'catch-cancel%'"),
	'0', 'the writes of a cancelled attempt that caught the cancel are rolled back');
is(q1("SELECT count(*) FROM qlater_jobs WHERE id = $catch"), '0',
	'the cancelled catcher job is gone');

### a timeout that the handler catches still fails the job
my $stub = q1("SELECT qlater_enqueue('stubborn', '[\"stubborn\"]')");
ok( $node->poll_query_until(
		'postgres', "SELECT state = 'dead' FROM qlater_jobs WHERE id = $stub"),
	'a job whose handler caught its timeout is failed (dead with max_attempts 1)');
is(q1("SELECT is_called FROM caught"), 't',
	'the handler did catch the cancel and went on');
like(q1("SELECT last_error->>'message' FROM qlater_jobs WHERE id = $stub"),
	qr/timed out/, 'last_error says the job timed out');
is(q1("SELECT last_error->>'sqlstate' FROM qlater_jobs WHERE id = $stub"),
	'57014', 'with SQLSTATE 57014');
is(q1("SELECT count(*) FROM written WHERE label LIKE 'stubborn%'"),
	'0', 'the writes of the timed out attempt are rolled back');
cmp_ok(
	q1(
		"SELECT extract(epoch FROM (last_error->>'at')::timestamptz - enqueued_at) FROM qlater_jobs WHERE id = $stub"
	),
	'<', 4.5,
	'the timeout cut the 5 s sleep short');

my $slow = q1("SELECT qlater_enqueue('slowpoke', '[\"slowpoke\"]')");
ok( $node->poll_query_until(
		'postgres', "SELECT state = 'dead' FROM qlater_jobs WHERE id = $slow"),
	'a job that runs past its timeout is failed');
like(q1("SELECT last_error->>'message' FROM qlater_jobs WHERE id = $slow"),
	qr/timed out/, 'last_error says the job timed out');
cmp_ok(
	q1(
		"SELECT extract(epoch FROM (last_error->>'at')::timestamptz - enqueued_at) FROM qlater_jobs WHERE id = $slow"
	),
	'<', 5,
	'the timeout cut the 10 s sleep short');
is(q1("SELECT count(*) FROM written WHERE label = 'slowpoke'"),
	'0', 'the writes of the timed out attempt are rolled back');

### more kinds of errors
my $d1 = q1("SELECT qlater_enqueue('raise_div0')");
my $d2 = q1("SELECT qlater_enqueue('select_div0')");
my $d3 = q1("SELECT qlater_enqueue('bad_cast')");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 3 FROM qlater_jobs WHERE id IN ($d1, $d2, $d3) AND state = 'dead'"),
	'the erroring jobs end dead');
is( q1(
		"SELECT string_agg(last_error->>'sqlstate', ',' ORDER BY id) FROM qlater_jobs WHERE id IN ($d1, $d2, $d3)"
	),
	'22012,22012,22P02',
	'each records its SQLSTATE');

### the second attempt of the failing jobs, after the 4 s backoff
ok( $node->poll_query_until(
		'postgres', "SELECT state = 'dead' FROM qlater_jobs WHERE id = $a2"),
	'max_attempts => 2: dead after the second failure');
is( q1(
		"SELECT concat_ws('|', attempts, last_error->>'attempt', (last_error->>'at')::timestamptz >= '$run_at1') FROM qlater_jobs WHERE id = $a2"
	),
	'2|2|t',
	'the second attempt ran no earlier than the backoff allowed');
ok( $node->poll_query_until(
		'postgres', "SELECT attempts = 2 FROM qlater_jobs WHERE id = $a3"),
	'max_attempts => 3: second failure counted');
is(q1("SELECT state FROM qlater_jobs WHERE id = $a3"), 'pending',
	'max_attempts => 3: still pending after 2 failures');
my $backoff2 = q1(
	"SELECT extract(epoch FROM run_at - (last_error->>'at')::timestamptz) FROM qlater_jobs WHERE id = $a3"
);
cmp_ok(abs($backoff2 - 19), '<', 0.05,
	"the retry after attempt 2 is 2^4 + 3 = 19 s later (got $backoff2)");
q1("SELECT qlater_cancel($a3)");

### the workers survived all of it and keep running jobs
q1("SELECT qlater_enqueue('ok', jsonb_build_array('after-' || g)) FROM generate_series(1, 20) g");
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 20 FROM written WHERE label LIKE 'after-%'"),
	'later jobs run');
is( q1(
		"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'qlater worker'"
	),
	$workers_before,
	'the same 4 worker processes are still there');
is(q1("SELECT count(*) FROM qlater_jobs WHERE state <> 'dead'"), '0', 'no job left pending');

$node->stop;
done_testing();
