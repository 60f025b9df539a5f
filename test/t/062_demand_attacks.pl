# 062_demand_attacks.pl: a reviewer's attacks on the demand-driven sharing
# of workers among databases as first committed (31e81b5), each a promise
# of README "Workers and databases" that did not hold then (each fixed
# since):
#   1. a worker idle in another database moves in tens of milliseconds:
#      it waited for the launcher's 10 s rescan (the launcher is not woken
#      when a worker it could move becomes idle);
#   2. a database waiting on a worker that runs a long job gets another
#      busy worker whose slice is over (not only the one asked first);
#   3. a database without a worker for qlater.revisit_interval (5 minutes
#      by default) is looked at (jobs that reached it without a commit
#      qlater saw): some "looked at" databases were never given the
#      worker;
#   4. a schedule, qlater_retry and copied jobs in a database created from
#      a template that has qlater: never run (only qlater_enqueue
#      announces a database the launcher does not know);
#   5. jobs of a database whose ALLOW_CONNECTIONS went false and back to
#      true: never run (the launcher forgot the database);
#   6. pg_terminate_backend of the launcher: the job its workers were
#      running (rolled back) waits for the 5-minute revisit;
#   7. ALTER DATABASE ... RENAME and CREATE DATABASE ... TEMPLATE of a
#      database where an idle worker waits: refused, where DROP DATABASE
#      makes the workers leave;
#   8. more than 1024 databases, few with qlater: the launcher's table is
#      full of databases without qlater, and CREATE EXTENSION in another
#      one silently gets no worker, ever.
# No bound below is under several seconds; each is far above what README
# promises.
#
# The checks that wait run on servers of their own, set up first and
# checked later, so that their waits pass while the other checks run: 8's
# databases are made by a session in the background from the start; 3's
# server looks at databases without a worker every hour until a reload
# (checked to take effect) makes it every second; 5's job, due 40 s later,
# waits while 4, 7, 8's restart and 2 run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use File::Temp;

# the files of 8's databases (a directory on /dev/shm, if used, is
# removed even if the test dies)
my $many_shm;
my $many_data;

sub remove_many
{
	# rm: File::Path (clean_node) takes minutes over their 220,000 files
	system('rm', '-rf', $many_shm) if defined $many_shm && -d $many_shm;
	system('rm', '-rf', $many_data) if defined $many_data && -d $many_data;
	return;
}
END
{
	local $?;
	system('rm', '-rf', $many_shm) if defined $many_shm && -d $many_shm;
}

my $setup = q{
CREATE EXTENSION qlater;
CREATE TABLE done (i int, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION work(i int) RETURNS void LANGUAGE sql
AS $$ INSERT INTO done (i) VALUES (i) $$;
SELECT qlater_register('work(int)');
CREATE FUNCTION nap(secs float8) RETURNS void LANGUAGE sql
AS $$ SELECT pg_sleep(secs) $$;
SELECT qlater_register('nap(float8)');
CREATE FUNCTION napwork(secs float8, i int) RETURNS void LANGUAGE sql
AS $$ SELECT pg_sleep(secs); INSERT INTO done (i) VALUES (i) $$;
SELECT qlater_register('napwork(float8,int)');
CREATE TABLE ticks (tick timestamptz, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION rec() RETURNS void LANGUAGE sql
AS $$ INSERT INTO ticks (tick)
      SELECT run_at FROM qlater_jobs WHERE locked_by = pg_backend_pid() $$;
SELECT qlater_register('rec()');
};

my $workers_in = q{SELECT coalesce(string_agg(datname, ',' ORDER BY datname), '')
  FROM pg_stat_activity WHERE backend_type = 'qlater worker'};

sub new_node
{
	my ($name, $nworkers, $conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'qlater'\n"
		  . "qlater.max_workers = $nworkers\n"
		  . "max_worker_processes = 16\n"
		  . ($conf // ''));
	$node->start;
	return $node;
}

# wait_for: poll a query of db until it returns 't', at most $max seconds
# (at least once); returns the seconds it took, or undef
sub wait_for
{
	my ($node, $db, $query, $max) = @_;
	my $t0 = time;
	for (;;)
	{
		return time - $t0 if $node->safe_psql($db, $query) eq 't';
		last if time - $t0 >= $max;
		sleep 1;
	}
	return undef;
}

# a job as a restore or a plain INSERT writes it: no qlater function, so no
# wake-up of any worker or of the launcher
my $plain_insert = q{INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role)
VALUES ('default', 'public.work(integer)', '[7]', 100, now(), 25, current_user)};

###########################################################################
# 8 (started first: its databases take a minute to make).  1,030
# databases without qlater (a host with a database per customer): after a
# restart the launcher's table (QL_MAX_DATABASES, 1024) is full of them,
# probed and found without qlater, and kept.  A database that gets qlater
# then is served by no worker, and nothing says so.  They are copies
# (STRATEGY FILE_COPY: no WAL of their blocks) of a template with less in
# it (no information_schema, no comments, its catalogs compacted): 5 GB,
# not 8.  Written to disk, they took minutes to remove: they are kept in
# memory, in a tablespace on /dev/shm, when it has room for them, and
# removed as soon as they are checked.
my $many = new_node('many', 2);
$many_data = $many->data_dir;
my $many_ts = '';
if (-d '/dev/shm' && -w '/dev/shm'
	&& (`df -Pk /dev/shm 2>/dev/null` =~ /\n\S+\s+\d+\s+\d+\s+(\d+)/ ? $1 : 0) > 8 * 1024 * 1024)
{
	$many_shm = File::Temp::tempdir('qlater_062_XXXXXX', DIR => '/dev/shm');
	$many->safe_psql('postgres', "CREATE TABLESPACE many LOCATION '$many_shm'");
	$many_ts = ' TABLESPACE many';
}
$many->safe_psql('postgres', 'CREATE DATABASE tiny');
$many->safe_psql('tiny', q{SET client_min_messages = warning;
DROP SCHEMA information_schema CASCADE;
DELETE FROM pg_description;
VACUUM FULL});
$many->safe_psql('postgres', 'ALTER DATABASE tiny IS_TEMPLATE true ALLOW_CONNECTIONS false');
my $many_sql = $many->basedir . '/many.sql';
append_to_file($many_sql,
	join('', map { "CREATE DATABASE p$_ TEMPLATE tiny$many_ts STRATEGY FILE_COPY;\n" } 1 .. 1030));
my ($many_out, $many_err) = ('', '');
my $many_make = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $many->connstr('postgres'), '-f', $many_sql ],
	'>', \$many_out, '2>', \$many_err);

###########################################################################
# 3 (set up here, checked later).  One worker, four databases; jobs reach
# the three without a worker by plain INSERTs.  README: "A database
# without a worker for 5 minutes [qlater.revisit_interval] is looked at
# when a worker is idle, in case jobs reached it without a commit qlater
# saw (a restore, a plain INSERT INTO qlater_job)."  The server starts
# with an interval of an hour, and a reload makes it a second later on.
my $rev = new_node('revisit', 1, "qlater.revisit_interval = '1h'\n");
my @rdbs = map { "r$_" } 1 .. 4;
for my $db (@rdbs)
{
	$rev->safe_psql('postgres', "CREATE DATABASE $db");
	$rev->safe_psql($db, $setup);
}
ok($rev->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND wait_event = 'Extension'"),
	'revisit: one worker, idle');
sleep 2;
my $rw = $rev->safe_psql('postgres', $workers_in);
my @rwithout = grep { $_ ne $rw } @rdbs;
is(scalar @rwithout, 3, "revisit: the worker is in $rw, three databases have none");
$rev->safe_psql($_, $plain_insert) for @rwithout;
my $rev_inserted = $rev->safe_psql('postgres', 'SELECT now()');

###########################################################################
# 1. One worker, eight databases, one quick job each: the worker is idle
# after each job, so each database should wait the time of a move (tens
# of milliseconds), not the launcher's 10 s rescan.
my $node = new_node('hop', 1);
is($node->safe_psql('postgres', 'SHOW qlater.revisit_interval'), '5min',
	'qlater.revisit_interval is 5 minutes by default');
my @dbs = map { "h$_" } 1 .. 8;
for my $db (@dbs)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, $setup);
}
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND wait_event = 'Extension'"),
	'hop: one worker, idle');
my $offset = -s $node->logfile;
my $t0 = time;
$node->safe_psql($_, "SELECT qlater_enqueue('work', '[1]')") for @dbs;
my $ndone = sub {
	my $n = 0;
	$n += $node->safe_psql($_, 'SELECT count(*) FROM done') for @dbs;
	return $n;
};
while (time - $t0 < 150 && $ndone->() < 8) { sleep 1; }
my $elapsed = time - $t0;
is($ndone->(), 8, 'hop: every database ran its job');
cmp_ok($elapsed, '<', 20,
	sprintf('hop: 8 databases x 1 quick job with 1 idle worker done in under 20 s (took %.1f s)', $elapsed));
my @starved = (slurp_file($node->logfile, $offset) =~ /jobs of database "(\w+)" have waited 30 seconds/g);
is(scalar @starved, 0,
	'hop: no database is logged as waiting 30 s for a worker while the only worker was idle')
  or diag "logged: @starved";

###########################################################################
# 5 (checked after 4, 7, 8 and 2, which run while its job is not yet due).
# ALLOW_CONNECTIONS false, then true again: the database's waiting jobs
# must still run.
$node->safe_psql('h1', "SELECT qlater_enqueue('work', '[2]')");
ok(defined wait_for($node, 'postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'h1'", 60),
	'allow_connections: the worker is in h1');
$node->safe_psql('h1', "SELECT qlater_enqueue('work', '[3]', run_at => now() + interval '40 seconds')");
$node->safe_psql('postgres', 'ALTER DATABASE h1 ALLOW_CONNECTIONS false');
ok(defined wait_for($node, 'postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'h1'", 60),
	'allow_connections false: the worker leaves h1');
$node->safe_psql('postgres', 'ALTER DATABASE h1 ALLOW_CONNECTIONS true');
my $allow_t0 = time;

###########################################################################
# 4. A database created from a template that has qlater: the launcher
# never heard of it (no CREATE EXTENSION there).
$node->safe_psql('postgres', 'CREATE DATABASE tp');
$node->safe_psql('tp', $setup);
$node->safe_psql('tp', "SELECT qlater_enqueue('work', '[1]')");
ok(defined wait_for($node, 'tp', 'SELECT count(*) = 1 FROM done', 60), 'template: tp runs jobs');
# a dead job, to be copied
$node->safe_psql('tp', q{CREATE FUNCTION boom() RETURNS void LANGUAGE sql AS $$ SELECT 1/0 $$;
SELECT qlater_register('boom()');
SELECT qlater_enqueue('boom', max_attempts => 1)});
ok(defined wait_for($node, 'tp', "SELECT count(*) = 1 FROM qlater_jobs WHERE state = 'dead'", 60),
	'template: tp has a dead job');
$node->safe_psql('tp', 'TRUNCATE done');
$node->safe_psql('postgres', 'ALTER DATABASE tp IS_TEMPLATE true');
# no worker may be in tp for CREATE DATABASE ... TEMPLATE tp: retry
my $created = 0;
for (1 .. 30)
{
	my ($ret) = $node->psql('postgres', 'CREATE DATABASE tc TEMPLATE tp');
	if ($ret == 0) { $created = 1; last; }
	sleep 1;
}
ok($created, 'template: CREATE DATABASE tc TEMPLATE tp');
# a session of tc that schedules, and retries the copied dead job, and
# does not enqueue (which alone announces the database)
$node->safe_psql('tc', "SELECT qlater_schedule('every2', '2 seconds', 'rec')");
my $failed_at = $node->safe_psql('tc', "SELECT last_error->>'at' FROM qlater_jobs WHERE handler LIKE '%boom%'");
$node->safe_psql('tc', "SELECT qlater_retry(id) FROM qlater_jobs WHERE state = 'dead'");
my $w = wait_for($node, 'tc', 'SELECT count(*) >= 2 FROM ticks', 60);
ok(defined $w, 'template: the schedule of tc fires (2 ticks within 60 s)')
  or diag 'ticks: ' . $node->safe_psql('tc', 'SELECT count(*) FROM ticks');
$w = wait_for($node, 'tc',
	"SELECT count(*) = 1 FROM qlater_jobs WHERE state = 'dead' AND handler LIKE '%boom%' AND last_error->>'at' <> '$failed_at'", 60);
ok(defined $w, 'template: the retried job of tc runs again (and fails again) within 60 s');
$node->safe_psql('tc', "SELECT qlater_unschedule('every2')");

###########################################################################
# 7. ALTER DATABASE ... RENAME, CREATE DATABASE ... TEMPLATE: a DBA's
# commands that need the database without sessions, as DROP DATABASE does.
$node->safe_psql('h7', "SELECT qlater_enqueue('work', '[45]')");
ok(defined wait_for($node, 'postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'h7' AND wait_event = 'Extension'", 60),
	'rename: the worker waits, idle, in h7');
my ($ret, $out, $err) = $node->psql('postgres', 'CREATE DATABASE h7copy TEMPLATE h7');
is($ret, 0, 'CREATE DATABASE ... TEMPLATE of a database where a qlater worker waits, idle')
  or diag $err;
($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE h7 RENAME TO h7renamed');
is($ret, 0, 'ALTER DATABASE ... RENAME of a database where a qlater worker waits, idle')
  or diag $err;

###########################################################################
# 3, the reload: nothing was looked at while the interval was an hour
# (the launcher made passes meanwhile: it looks at pg_database every
# 10 s); then a reload sets it to a second, and the running launcher must
# use it.
$rev->poll_query_until('postgres', "SELECT now() > '$rev_inserted'::timestamptz + interval '12 seconds'");
is(join(',', map { $rev->safe_psql($_, 'SELECT count(*) FROM done') } @rwithout), '0,0,0',
	'revisit: with an interval of an hour, no database without a worker is looked at');
$rev->append_conf('postgresql.conf', "qlater.revisit_interval = '1s'\n");
$rev->reload;
ok($rev->poll_query_until('postgres', q{SELECT current_setting('qlater.revisit_interval') = '1s'}),
	'revisit: a reload sets qlater.revisit_interval to 1 s');
# the bound, on the server's clock: when each job ran is in done.at
my $rev_bound = $rev->safe_psql('postgres', "SELECT pg_conf_load_time() + interval '60 seconds'");

###########################################################################
# 8, once its databases are made: a restart, then a database that gets
# qlater (its job is checked at the end).
ok($many_make->finish, 'many: 1,030 databases made')
  or diag $many_err;
my $many_offset = -s $many->logfile;
$many->restart;
$many->safe_psql('postgres', 'CREATE DATABASE q1');
my ($mret, $mout, $merr) = $many->psql('q1', $setup);
is($mret, 0, 'many: CREATE EXTENSION qlater in a database created after 1,030 others');
$many->safe_psql('q1', "SELECT qlater_enqueue('work', '[1]')");
my $many_t0 = time;

###########################################################################
# 2. Two workers, three databases.  a runs one long job and a backlog of
# short ones (both workers); then b enqueues one quick job.  README: "with
# every worker busy elsewhere, until a busy worker's slice is over (at most
# 1 s) and its current job ends, then the move. If every worker runs long
# jobs, the database waits for the first to end" -- here one worker runs
# 50 ms jobs, so b should not wait for the long job.
my $long = new_node('long', 2);
for my $db (qw(a b c))
{
	$long->safe_psql('postgres', "CREATE DATABASE $db");
	$long->safe_psql($db, $setup);
}
ok($long->poll_query_until('postgres', "SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND wait_event = 'Extension'"),
	'long: two workers, idle');
$long->safe_psql('a', "SELECT qlater_enqueue('nap', '[60]')");
ok($long->poll_query_until('a', "SELECT count(*) = 1 FROM qlater_jobs WHERE state = 'running'"),
	'long: a runs its 60 s job');
sleep 2;
$long->safe_psql('a', "SELECT count(qlater_enqueue('nap', '[0.05]')) FROM generate_series(1, 3000)");
ok($long->poll_query_until('a', "SELECT count(*) = 2 FROM qlater_jobs WHERE state = 'running'"),
	'long: and its backlog of 50 ms jobs on the other worker');
sleep 2;
$t0 = time;
$long->safe_psql('b', "SELECT qlater_enqueue('work', '[1]')");
$w = wait_for($long, 'b', 'SELECT count(*) = 1 FROM done', 90);
ok(defined $w && $w < 25,
	sprintf('long: the job of b runs within 25 s, not after the 60 s job of a (took %s s)',
		defined $w ? sprintf('%.1f', $w) : '>90'));
$long->safe_psql('a', 'SELECT count(qlater_cancel(id)) FROM qlater_jobs');
$long->stop;

###########################################################################
# 5, checked: the job of h1 due 40 s after it was enqueued runs.
$w = wait_for($node, 'h1', 'SELECT count(*) = 1 FROM done WHERE i = 3',
	120 - (time - $allow_t0));
ok(defined $w, 'allow_connections true again: the job of h1 due 40 s later runs (within 120 s)');

###########################################################################
# 6. The launcher is ended (pg_terminate_backend, as a DBA may): it ends
# every worker, whose running job is rolled back.  The new launcher must
# give that job's database a worker again.  The worker first goes to h8
# and becomes idle there, so that the long job's commit finds it idle
# there (the database is not marked wanted).
$node->safe_psql('h8', "SELECT qlater_enqueue('work', '[43]')");
ok(defined wait_for($node, 'h8', 'SELECT count(*) = 1 FROM done WHERE i = 43', 60), 'launcher: a job of h8 runs');
ok(defined wait_for($node, 'postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'h8' AND wait_event = 'Extension'", 60),
	'launcher: the worker waits, idle, in h8');
$node->safe_psql('h8', "SELECT qlater_enqueue('napwork', '[6, 44]')");
ok(defined wait_for($node, 'h8', "SELECT count(*) = 1 FROM qlater_jobs WHERE state = 'running'", 60),
	'launcher: h8 runs a 6 s job');
my $lpid = $node->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE backend_type = 'qlater launcher'");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($lpid)");
ok(defined wait_for($node, 'postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater launcher' AND pid <> $lpid", 60),
	'launcher: a new launcher starts');
$w = wait_for($node, 'h8', 'SELECT count(*) = 1 FROM done WHERE i = 44', 90);
ok(defined $w, 'launcher: the job rolled back by the end of the launcher runs again (within 90 s)')
  or diag 'h8: ' . $node->safe_psql('h8', 'SELECT id, state, attempts FROM qlater_jobs');

###########################################################################
# 3, checked: each job ran within 60 s of the reload, by the time it
# recorded.
my $rev_ran = sub {
	return scalar grep {
		$rev->safe_psql($_, "SELECT count(*) FROM done WHERE at <= '$rev_bound'") eq '1'
	} @rwithout;
};
while ($rev_ran->() < @rwithout
	&& $rev->safe_psql('postgres', "SELECT now() <= '$rev_bound'") eq 't')
{
	sleep 1;
}
my $rev_ok = ($rev_ran->() == @rwithout);
ok($rev_ok, 'revisit: after the reload, the plain-inserted job of each database without a worker ran within 60 s')
  or diag join(', ', map { "$_: " . $rev->safe_psql($_, 'SELECT coalesce(max(at)::text, \'not run\') FROM done') } @rwithout);

###########################################################################
# 8, checked: the job of q1 runs.  Then its databases are removed.
my $mw = wait_for($many, 'q1', 'SELECT count(*) = 1 FROM done', 180 - (time - $many_t0));
ok(defined $mw, 'many: its job runs (within 180 s) although only 1 of 1,032 databases has qlater')
  or diag 'the launcher logged: '
  . scalar(() = slurp_file($many->logfile) =~ /qlater serves at most \d+ databases; database \d+ is ignored/g)
  . ' x "qlater serves at most 1024 databases; database N is ignored"';
like(slurp_file($many->logfile, $many_offset), qr/qlater serves at most 1024 databases; database \d+ is ignored/,
	"many: after the restart the launcher's table was full");
$many->stop;
remove_many();

$rev->stop;
$node->stop;
unlike(slurp_file($_->logfile), qr/terminated by signal/, 'no process ended by a signal')
  for ($rev, $node, $long, $many);
done_testing();
