# 061_demand.pl: with more databases than workers, workers go where the
# work is: 8 databases x 2,000 jobs with 4 workers drain exactly once; a
# database that gets the extension while the others are busy gets its jobs
# run; a schedule in a database without a worker fires, each tick once; a
# crash-restart in the middle of a drain loses no database; DROP DATABASE
# and DROP EXTENSION work while the workers move; a database that waits
# long for a worker is logged, once.
#
# Two checks wait for the launcher's own clocks (a database logged after
# 30 s without a worker; databases found by its look at pg_database every
# 10 s): each runs on a server of its own, set up first and checked later,
# so that those waits pass while the first server runs the other checks.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('demand');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n"
	  . "restart_after_crash = on\n");
$node->start;

my $setup = q{
CREATE EXTENSION qlater;
CREATE TABLE done (i int, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION work(i int) RETURNS void LANGUAGE sql
AS $$ INSERT INTO done (i) VALUES (i) $$;
SELECT qlater_register('work(int)');
CREATE FUNCTION nap(secs float8) RETURNS void LANGUAGE sql
AS $$ SELECT pg_sleep(secs) $$;
SELECT qlater_register('nap(float8)');
CREATE TABLE ticks (tick timestamptz, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION rec() RETURNS void LANGUAGE sql
AS $$ INSERT INTO ticks (tick)
      SELECT run_at FROM qlater_jobs WHERE locked_by = pg_backend_pid() $$;
SELECT qlater_register('rec()');
};

my @dbs = map { "d$_" } 1 .. 8;
my $nworkers = q{(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qlater worker')};
for my $db (@dbs)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, $setup);
}

### a database that waits long for a worker is logged, once (set up here,
# checked at the end): on a second server with 4 workers and 5 databases,
# jobs of d1 that hold their worker until the test releases them take every
# worker, and a job of d2 waits
my $starve = PostgreSQL::Test::Cluster->new('starve');
$starve->init;
$starve->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$starve->start;
for my $db (@dbs[0 .. 4])
{
	$starve->safe_psql('postgres', "CREATE DATABASE $db");
	$starve->safe_psql($db, $setup);
}
# hold(): sleeps until a row is in released (at most 10 minutes)
$starve->safe_psql('d1', q{
CREATE TABLE released (at timestamptz);
CREATE FUNCTION hold() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	WHILE NOT EXISTS (SELECT FROM released) AND clock_timestamp() < t0 + interval '10 minutes'
	LOOP
		PERFORM pg_sleep(0.2);
	END LOOP;
END $$;
SELECT qlater_register('hold()');
});
ok($starve->poll_query_until('postgres', "SELECT $nworkers = 4"), 'starve: 4 workers for 5 databases');
my $starve_offset = -s $starve->logfile;
$starve->safe_psql('d1', "SELECT qlater_enqueue('hold') FROM generate_series(1, 4)");
ok( $starve->poll_query_until(
		'postgres', q{SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'd1' AND wait_event = 'PgSleep'}),
	'with more databases than workers, a backlog takes every idle worker');
$starve->safe_psql('d2', "SELECT qlater_enqueue('work', '[42]')");

ok($node->poll_query_until('postgres', "SELECT $nworkers = 4"), '4 workers for 8 databases');

### with a poll interval of 10 minutes, nothing waits for the poll:
# DROP EXTENSION makes the database's workers leave at once, and a copy of
# a template database that holds a job, which no CREATE EXTENSION
# announces, is found and its job run.  On a third server whose poll
# interval is 10 minutes (set up here, checked in steps between the checks
# of the first server, so that its waits for the launcher's look at
# pg_database every 10 s pass meanwhile).
my $pnode = PostgreSQL::Test::Cluster->new('poll');
$pnode->init;
$pnode->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n"
	  . "qlater.poll_interval = '10min'\n");
$pnode->start;
for my $db (qw(tmpl d5))
{
	$pnode->safe_psql('postgres', "CREATE DATABASE $db");
	$pnode->safe_psql($db, $setup);
}
# due in 30 s: the worker of tmpl leaves long before (the launcher looks at
# pg_database every 10 s), so that the job is copied, not run in tmpl; and
# the copy, made once it left, is found before the job is due, so that its
# worker waits for the job's time, not for the poll
$pnode->safe_psql('tmpl', "SELECT qlater_enqueue('work', '[7]', run_at => now() + interval '30 seconds')");
$pnode->safe_psql('postgres', 'ALTER DATABASE tmpl WITH ALLOW_CONNECTIONS false');

# every database's done table, as "db:count:distinct,..."
sub tally
{
	return join(',',
		map { "$_:" . $node->safe_psql($_, 'SELECT count(*) || \':\' || count(DISTINCT i) FROM done') }
		  @_);
}

# wait until each database has n jobs done
sub wait_done
{
	my ($n, $msg, @in) = @_;
	my $ok = 1;
	for my $db (@in)
	{
		$ok &&= $node->poll_query_until($db, "SELECT count(*) >= $n FROM done");
	}
	ok($ok, $msg) or diag tally(@in);
}

### 8 databases x 2,000 jobs, all enqueued at once
$node->safe_psql($_, "SELECT count(*) FROM qlater_enqueue_many('work', (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 2000) g))")
  for @dbs;
wait_done(2000, '8 databases x 2,000 jobs with 4 workers: every database drains', @dbs);
is(tally(@dbs), join(',', map { "$_:2000:2000" } @dbs), 'each job ran exactly once');
is(join(',', map { $node->safe_psql($_, 'SELECT count(*) FROM qlater_jobs') } @dbs),
	join(',', map { 0 } @dbs), 'and no job is left');

### a database given the extension while the others are busy
# 4 databases keep every worker busy for about 30 s
for my $db (@dbs[0 .. 3])
{
	$node->safe_psql($db, "SELECT qlater_enqueue('nap', '[1]') FROM generate_series(1, 30)");
}
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND wait_event = 'PgSleep'}),
	'every worker is busy');
$node->safe_psql('postgres', 'CREATE DATABASE late');
$node->safe_psql('late', $setup);
$node->safe_psql('late', "SELECT qlater_enqueue('work', jsonb_build_array(g)) FROM generate_series(1, 5) g");
wait_done(5, 'the new database gets its jobs run', 'late');
my $left = 0;
$left += $node->safe_psql($_, 'SELECT count(*) FROM qlater_jobs') for @dbs[0 .. 3];
cmp_ok($left, '>', 0, "while the busy databases still had jobs ($left left)");

# the rest of the naps are not needed
$node->safe_psql($_, 'SELECT count(qlater_cancel(id)) FROM qlater_jobs') for @dbs[0 .. 3];
for my $db (@dbs[0 .. 3])
{
	$node->poll_query_until($db, 'SELECT count(*) = 0 FROM qlater_jobs')
	  or diag "$db: naps left";
}

### (the third server, with a poll interval of 10 minutes)
ok( $pnode->poll_query_until(
		'postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'tmpl'"
	),
	'no worker stays in a database that no longer allows connections');
$pnode->safe_psql('postgres', 'CREATE DATABASE copy TEMPLATE tmpl');
# (found by the launcher's next look at pg_database, before its job is due)
my $copied_at = $pnode->safe_psql('postgres', 'SELECT clock_timestamp()');

### a schedule in a database that has no worker
# 7 databases keep the workers busy with short naps for about 20 s; d8 has
# only its schedule, so its worker leaves between ticks
for my $db (@dbs[0 .. 6])
{
	$node->safe_psql($db, "SELECT qlater_enqueue('nap', '[0.2]') FROM generate_series(1, 60)");
}
$node->safe_psql('d8', "SELECT qlater_schedule('every2', '2 seconds', 'rec')");
# watched for at most 14 s, until d8 has been seen without a worker and
# its schedule has fired 4 times
my $t0 = time;
my ($with, $without) = (0, 0);
while (time - $t0 < 14)
{
	my $n = $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'd8'");
	$n > 0 ? $with++ : $without++;
	last if $without > 0 && $node->safe_psql('d8', 'SELECT count(*) >= 4 FROM ticks') eq 't';
	usleep(100_000);
}
$node->safe_psql('d8', "SELECT qlater_unschedule('every2')");
cmp_ok($without, '>', 0, "d8 had no worker at times ($without of " . ($with + $without) . ' samples)');
my ($nticks, $distinct, $late) = split /\|/,
  $node->safe_psql('d8', 'SELECT count(*), count(DISTINCT tick), max(extract(epoch FROM at - tick)) FROM ticks');
cmp_ok($nticks, '>=', 4, "its schedule fired meanwhile ($nticks ticks in 14 s, every 2 s)");
is($distinct, $nticks, 'each tick once');
cmp_ok($late, '<', 6, "each tick ran soon after its time (at most $late s late)");
$node->safe_psql($_, 'SELECT count(qlater_cancel(id)) FROM qlater_jobs') for @dbs[0 .. 6];

### a crash-restart in the middle of a drain
$node->safe_psql($_, 'TRUNCATE done') for @dbs;
# (and after them, 100 naps of 20 ms per database: some worker is in a
# job for a while, however fast the machine drains the quick ones)
$node->safe_psql($_, "SELECT count(*) FROM qlater_enqueue_many('work', (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 1500) g))")
  for @dbs;
$node->safe_psql($_, "SELECT count(*) FROM qlater_enqueue_many('nap', (SELECT jsonb_agg(jsonb_build_array(0.02)) FROM generate_series(1, 100)))")
  for @dbs;
ok( $node->poll_query_until(
		'd1', 'SELECT count(*) > 0 FROM done'),
	'the drain has begun');
my $before = 0;
$before += $node->safe_psql($_, 'SELECT count(*) FROM done') for @dbs;
my $crash_offset = -s $node->logfile;
# workers come and go: kill one that runs a job
my $killed = 0;
for (1 .. 500)
{
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND query LIKE 'qlater job %' LIMIT 1");
	$killed = $pid if $pid && kill('KILL', $pid);
	last if $killed;
	usleep(20_000);
}
ok($killed, "SIGKILL to a worker in a job ($before of 12,000 jobs done)");
ok( $node->wait_for_log(
		qr/all server processes terminated; reinitializing(?s:.*)database system is ready to accept connections/,
		$crash_offset),
	'the server restarts');
wait_done(1500, 'after the crash-restart every database drains', @dbs);
is(tally(@dbs), join(',', map { "$_:1500:1500" } @dbs), 'each job ran exactly once');

### DROP DATABASE and DROP EXTENSION while workers move
$node->safe_psql($_, 'TRUNCATE done') for @dbs;
$node->safe_psql($_, "SELECT qlater_enqueue('nap', '[0.05]') FROM generate_series(1, 100)") for @dbs;
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE d7');
is($ret, 0, 'DROP DATABASE of a database with jobs and workers');
note $err if $ret;
($ret, $out, $err) = $node->psql('d6', 'DROP EXTENSION qlater CASCADE');
is($ret, 0, 'DROP EXTENSION in a database with jobs');
note $err if $ret;
my @rest = grep { $_ ne 'd7' && $_ ne 'd6' } @dbs;
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname IN ('d6', 'd7')"
	),
	'no worker stays in d6 or d7');
# the naps left there are not needed: the job enqueued next need not wait
# for them
$node->safe_psql($_, 'SELECT count(qlater_cancel(id)) FROM qlater_jobs') for @rest;
$node->safe_psql($_, "SELECT qlater_enqueue('work', '[1]')") for @rest;
wait_done(1, 'the other databases keep running their jobs', @rest);

### (the third server, with a poll interval of 10 minutes)
ok($pnode->poll_query_until('copy', 'SELECT count(*) = 1 FROM done WHERE i = 7'),
	'the job of a copy of a template database runs');
is($pnode->safe_psql('copy', "SELECT count(*) FROM done WHERE i = 7 AND at > '$copied_at'"),
	'1', 'in the copy (it was not run in tmpl before the copy)');
$pnode->safe_psql('d5', "SELECT qlater_enqueue('work', '[5]')");
ok( $pnode->poll_query_until(
		'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'd5'"
	),
	'd5 has a worker');
# an idle worker wakes every minute at most on its own (schedules): the
# bound of 30 s is well under it
my $t_drop = time;
$pnode->safe_psql('d5', 'DROP EXTENSION qlater CASCADE');
ok( $pnode->poll_query_until(
		'postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'd5'"
	),
	'after DROP EXTENSION its workers leave');
cmp_ok(time - $t_drop, '<', 30, 'without waiting for the poll or the next look at schedules');
$pnode->stop;

### the launcher ended by a DBA while a job runs: the job, rolled back with
# its worker, runs again without waiting for a revisit.  The job sleeps
# until the test releases it, which it does once its first worker is gone.
$node->safe_psql('d2', 'TRUNCATE done');
$node->safe_psql('d2', q{CREATE TABLE released (at timestamptz);
CREATE FUNCTION holdwork(i int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	WHILE NOT EXISTS (SELECT FROM released) AND clock_timestamp() < t0 + interval '10 minutes'
	LOOP
		PERFORM pg_sleep(0.2);
	END LOOP;
	INSERT INTO done (i) VALUES (i);
END $$;
SELECT qlater_register('holdwork(int)');
SELECT qlater_enqueue('holdwork', '[44]')});
ok($node->poll_query_until('d2', "SELECT count(*) = 1 FROM qlater_jobs WHERE state = 'running'"),
	'd2 runs a job');
my $jpid = $node->safe_psql('d2', "SELECT locked_by FROM qlater_jobs WHERE state = 'running'");
my $lpid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'qlater launcher'");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($lpid)");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater launcher' AND pid <> $lpid"),
	'a new launcher starts');
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $jpid"),
	'the worker that ran the job is gone');
my $t_l = time;
$node->safe_psql('d2', 'INSERT INTO released VALUES (now())');
ok($node->poll_query_until('d2', 'SELECT count(*) = 1 FROM done WHERE i = 44'),
	'the job its worker ran runs again');
cmp_ok(time - $t_l, '<', 60, 'without waiting for a revisit of the database');

### ALTER DATABASE ... RENAME and CREATE DATABASE ... TEMPLATE need the
# database without sessions: the workers there make room, as for DROP
# DATABASE; a role that may not run them moves nothing
$node->safe_psql('d3', "SELECT qlater_enqueue('work', '[3]')");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'd3'"
	),
	'd3 has a worker');
my $wpid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'd3' LIMIT 1");
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN CREATEDB');
my ($r2, $o2, $e2) = $node->psql('postgres', 'ALTER DATABASE d3 RENAME TO d3x', extra_params => ['-U', 'mallory']);
like($e2, qr/must be owner of database d3/, 'a role that does not own d3 may not rename it');
($r2, $o2, $e2) = $node->psql('postgres', 'CREATE DATABASE stolen TEMPLATE d3', extra_params => ['-U', 'mallory']);
like($e2, qr/permission denied to copy database "d3"/, 'nor copy it');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $wpid"),
	'1', 'and the worker of d3 stayed');
($r2, $o2, $e2) = $node->psql('postgres', 'CREATE DATABASE d3copy TEMPLATE d3');
is($r2, 0, 'CREATE DATABASE ... TEMPLATE of a database with a qlater worker');
note $e2 if $r2;
$node->safe_psql('d3', "SELECT qlater_enqueue('work', '[33]')");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'd3'"
	),
	'd3 has a worker again');
$node->safe_psql('d3', "SELECT qlater_enqueue('work', '[34]')");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'd3'"
	),
	'd3 has a worker once more');
my $tsdir = PostgreSQL::Test::Utils::tempdir_short();
$node->safe_psql('postgres', "CREATE TABLESPACE ts LOCATION '$tsdir'");
($r2, $o2, $e2) = $node->psql('postgres', 'ALTER DATABASE d3 SET TABLESPACE ts');
is($r2, 0, 'ALTER DATABASE ... SET TABLESPACE of a database with a qlater worker');
note $e2 if $r2;
$node->safe_psql('d3', "SELECT qlater_enqueue('work', '[35]')");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'd3'"
	),
	'd3 has a worker after the move');
($r2, $o2, $e2) = $node->psql('postgres', 'ALTER DATABASE d3 RENAME TO d3r');
is($r2, 0, 'ALTER DATABASE ... RENAME of a database with a qlater worker');
note $e2 if $r2;
ok($node->poll_query_until('d3r', 'SELECT count(*) = 4 FROM done WHERE i IN (3, 33, 34, 35)'),
	'its jobs run after the move and the rename');

### a database that waits long for a worker is logged, once (the second
# server, set up at the start: its d2 has waited since)
ok( $starve->wait_for_log(qr/jobs of database "d2" have waited 30 seconds for a worker/, $starve_offset),
	'a database whose jobs wait 30 s for a worker is logged');
like(slurp_file($starve->logfile, $starve_offset), qr/HINT:  Raise "qlater.max_workers"/, 'with what to do');
is($starve->safe_psql('d2', 'SELECT count(*) FROM done'), '0', 'while every worker is held in d1');
$starve->safe_psql('d1', 'INSERT INTO released VALUES (now())');
ok($starve->poll_query_until('d2', 'SELECT count(*) = 1 FROM done WHERE i = 42'),
	'its job runs once a worker is free');
my @logged = (slurp_file($starve->logfile, $starve_offset) =~ /database "d2" have waited 30 seconds/g);
is(scalar @logged, 1, 'logged once');

$node->stop;
$starve->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal (?!9)/,
	'no process but the killed worker ended by a signal');
unlike(slurp_file($starve->logfile), qr/terminated by signal/, 'starve: no process ended by a signal');
unlike(slurp_file($pnode->logfile), qr/terminated by signal/, 'poll: no process ended by a signal');
done_testing();
