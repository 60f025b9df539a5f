# 090_schedule.pl: schedules fire their jobs on time, each tick once across
# a restart and a crash, at most one catch-up job after downtime (none with
# catch_up off), every tick that finds all workers busy, as the schedule's
# owner; visibility of schedules; a change wakes every idle worker; a queue
# turned external deactivates; repeatable read databases; no firing on a
# standby, and a promotion.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

my $node = PostgreSQL::Test::Cluster->new('schedule');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 3\n"
	  . "max_worker_processes = 16\n");
$node->start;

# the handler records the tick of its job (the job's run_at) and its role
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE TABLE ticks (label text, tick timestamptz,
                    at timestamptz DEFAULT clock_timestamp(),
                    who text DEFAULT current_user);
GRANT ALL ON ticks TO PUBLIC;
CREATE FUNCTION rec(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO ticks (label, tick)
      SELECT label, run_at FROM qlater_jobs WHERE locked_by = pg_backend_pid() $$;
SELECT qlater_register('rec(text)');
CREATE FUNCTION nap(secs float8) RETURNS void LANGUAGE sql
AS $$ SELECT pg_sleep(secs) $$;
SELECT qlater_register('nap(float8)');
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
});

ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 3 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'postgres'}),
	'workers are up');

# wait until a label has at least n runs
sub wait_runs
{
	my ($label, $n, $msg) = @_;
	ok( $node->poll_query_until(
			'postgres', "SELECT count(*) >= $n FROM ticks WHERE label = '$label'"),
		$msg);
}

# a schedule of alice's ends inactive, with a warning in the log since
# $offset
sub deactivated
{
	my ($name, $offset, $msg) = @_;
	ok( $node->poll_query_until(
			'postgres', "SELECT NOT active FROM qlater_schedules WHERE name = '$name'"),
		$msg);
	ok( $node->log_contains(
			qr/qlater schedule "$name" of role "alice" is deactivated/, $offset),
		'with a warning in the log');
}

# each tick of a label ran exactly once
sub no_duplicates
{
	my ($label, $msg) = @_;
	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) - count(DISTINCT tick) FROM ticks WHERE label = '$label'}),
		'0', $msg);
}

### a '2 seconds' schedule fires on time
# "On time" is checked with room for a busy machine (a job starts after its
# tick, and not seconds later); how soon is the benchmark's business.
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('two', '2 seconds', 'rec', '["two"]')});
wait_runs('two', 4, "a '2 seconds' schedule fires");
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FILTER (WHERE tick IS NULL),
       count(*) FILTER (WHERE at < tick),
       count(*) FILTER (WHERE at - tick >= interval '10 seconds'),
       count(*) FILTER (WHERE extract(epoch FROM tick - s.created_at)::numeric % 2 <> 0)
  FROM ticks, qlater_schedule s
 WHERE label = 'two' AND s.name = 'two'}),
	'0|0|0|0',
	'every job runs after its tick, within 10 s; ticks every 2 s from the creation');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (
  SELECT tick - lag(tick) OVER (ORDER BY tick) AS gap FROM ticks WHERE label = 'two'
) g WHERE gap <> interval '2 seconds'}),
	'0', 'consecutive ticks are 2 s apart');
no_duplicates('two', 'no tick ran twice');
is( $node->safe_psql(
		'postgres', q{
SELECT last_tick = (SELECT max(tick) FROM ticks WHERE label = 'two')
       OR last_tick > (SELECT max(tick) FROM ticks WHERE label = 'two'),
       next_tick > last_tick
  FROM qlater_schedules WHERE name = 'two'}),
	't|t', 'the view shows the last and the next tick');

### no duplicate tick across a restart
$node->restart;
my $n = $node->safe_psql('postgres', "SELECT count(*) FROM ticks WHERE label = 'two'");
wait_runs('two', $n + 3, 'the schedule fires after a restart');
no_duplicates('two', 'no tick ran twice across a restart');

### downtime: one catch-up job, not one per missed tick; crash included
# schedules whose ticks are long overdue: with catch-up, one job for the
# latest tick; without, none
$node->safe_psql(
	'postgres', q{
SELECT qlater_schedule('late_on', '0 0 1 1 *', 'rec', '["late_on"]');
SELECT qlater_schedule('late_off', '0 0 1 1 *', 'rec', '["late_off"]', catch_up => false);
UPDATE qlater_schedule SET next_tick = '2000-01-01 00:00+00' WHERE name LIKE 'late_%';
});
$node->stop('immediate');
# the server is gone: no tick fires from here until the start
my $stopped = sprintf('%.6f', Time::HiRes::time());
sleep 7;
$node->start;
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
wait_runs('two', $n + 3 + 3, 'the schedule fires after a crash and downtime');
# the ticks of the downtime (3 or more) yield one job at most, and the
# ticks after it follow every 2 s
note $node->safe_psql('postgres', qq{
SELECT tick, at FROM ticks WHERE label = 'two' AND tick > to_timestamp($stopped) - interval '6 s' ORDER BY tick});
note "server stopped by " . $node->safe_psql('postgres', "SELECT to_timestamp($stopped)") . ", started $started";
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) <= 1
  FROM ticks WHERE label = 'two' AND tick > to_timestamp($stopped) AND tick < '$started'}),
	't', 'the ticks missed during 7 s of downtime are not replayed');
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FROM (
  SELECT tick - lag(tick) OVER (ORDER BY tick) AS gap
    FROM ticks WHERE label = 'two' AND tick > to_timestamp($stopped)
) g WHERE gap <> interval '2 seconds'}),
	'0', 'after one catch-up job, ticks follow every 2 s');
no_duplicates('two', 'no tick ran twice across a crash');
wait_runs('late_on', 1, 'an overdue tick runs once with catch_up');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*), min(tick) = max(tick),
       min(tick) = date_trunc('year', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  FROM ticks WHERE label = 'late_on'}),
	'1|t|t', 'one job, for the latest missed tick');
is( $node->safe_psql(
		'postgres', q{
SELECT name, last_tick IS NULL, next_tick > now(), active
  FROM qlater_schedules WHERE name LIKE 'late_%' ORDER BY name}),
	"late_off|t|t|t\nlate_on|f|t|t",
	'catch_up off skips the overdue tick; both move to the next one');
is($node->safe_psql('postgres', "SELECT count(*) FROM ticks WHERE label = 'late_off'"),
	'0', 'no job for an overdue tick without catch_up');

$node->safe_psql('postgres',
	q{SELECT qlater_unschedule('two'), qlater_unschedule('late_on'), qlater_unschedule('late_off')});

# wait until no nap job is left
sub wait_naps_done
{
	my ($msg) = @_;
	ok( $node->poll_query_until(
			'postgres', q{SELECT count(*) = 0 FROM qlater_jobs WHERE handler LIKE '%nap%'}),
		$msg);
}

### ticks that find every worker busy are all enqueued, catch_up off too,
### with overlap (without, the first one's job waits and the others are
### skipped: 091_schedule_overlap.pl)
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('busy', '2 seconds', 'rec', '["busy"]', catch_up => false,
	                         overlap => true)});
wait_runs('busy', 1, 'the schedule fires');
$node->safe_psql('postgres', q{SELECT qlater_enqueue('nap', '[8]') FROM generate_series(1, 3)});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 3 FROM qlater_jobs WHERE handler LIKE '%nap%' AND state = 'running'}),
	'every worker is busy');
my $busy_from = $node->safe_psql('postgres', 'SELECT now()');
wait_naps_done('the workers are free again');
my $busy_to = $node->safe_psql('postgres', 'SELECT now()');
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) >= 2 FROM ticks WHERE label = 'busy' AND tick > '$busy_to'}),
	'the schedule fires after the busy time');
$node->safe_psql('postgres', q{SELECT qlater_unschedule('busy')});
note $node->safe_psql('postgres', qq{
SELECT tick, at FROM ticks WHERE label = 'busy' ORDER BY tick});
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FILTER (WHERE tick > '$busy_from' AND tick < '$busy_to') >= 3,
       count(*) - count(DISTINCT tick),
       count(*) FILTER (WHERE gap <> interval '2 seconds')
  FROM (SELECT tick, tick - lag(tick) OVER (ORDER BY tick) AS gap
          FROM ticks WHERE label = 'busy') g}),
	't|0|0', 'each tick of the busy time ran once after it, none lost');

### a changed schedule wakes every idle worker: its first tick is on time
### even though the worker woken first takes a long job
# Woken, a worker runs each tick's job well before the 12 s job ends;
# otherwise the first ticks would wait for it (or for the 60 s poll).
$node->safe_psql('postgres', q{ALTER SYSTEM SET qlater.poll_interval = '60s'});
$node->reload;
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('woken', '2 seconds', 'rec', '["woken"]')});
$node->safe_psql('postgres', q{SELECT qlater_enqueue('nap', '[12]')});
wait_runs('woken', 3, 'the schedule fires');
my $created = $node->safe_psql('postgres',
	q{SELECT created_at FROM qlater_schedules WHERE name = 'woken'});
$node->safe_psql('postgres', q{SELECT qlater_unschedule('woken')});
note $node->safe_psql('postgres', q{
SELECT tick, at FROM ticks WHERE label = 'woken' ORDER BY tick});
is( $node->safe_psql(
		'postgres', qq{
SELECT min(tick) = '$created'::timestamptz + interval '2 seconds',
       count(*) FILTER (WHERE at < tick),
       count(*) FILTER (WHERE at - tick >= interval '6 seconds')
  FROM ticks WHERE label = 'woken'}),
	't|0|0', 'the first tick and the next ones ran after their tick, well before the long job ended');
wait_naps_done('the long job is done');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET qlater.poll_interval});
$node->reload;

### roles: jobs run as the schedule's owner; roles see only their own
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('mine', '1 seconds', 'rec', '["alice"]')},
	extra_params => [ '-U', 'alice' ]);
wait_runs('alice', 2, "alice's schedule fires");
is( $node->safe_psql(
		'postgres', "SELECT DISTINCT who FROM ticks WHERE label = 'alice'"),
	'alice', "its jobs run as alice");
is( $node->safe_psql(
		'postgres', 'SELECT count(*) FROM qlater_schedules',
		extra_params => [ '-U', 'bob' ]),
	'0', "bob does not see alice's schedule");
my ($ret, $stdout, $stderr) = $node->psql(
	'postgres', q{SELECT qlater_unschedule('mine', 'alice')},
	extra_params => [ '-U', 'bob' ]);
like($stderr, qr/permission denied for schedules of role "alice"/,
	"bob cannot remove alice's schedule");
is( $node->safe_psql(
		'postgres', 'SELECT name, owner FROM qlater_schedules',
		extra_params => [ '-U', 'alice' ]),
	'mine|alice', 'alice sees her schedule');

# a schedule whose handler is no longer registered is deactivated
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{SELECT qlater_unregister('rec(text)')});
deactivated('mine', $log_offset, 'a schedule of an unregistered handler is deactivated');
# registering it and scheduling again reactivates it
$node->safe_psql('postgres', q{SELECT qlater_register('rec(text)')});
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('mine', '1 seconds', 'rec', '["alice2"]')},
	extra_params => [ '-U', 'alice' ]);
wait_runs('alice2', 1, 'scheduling again reactivates it');
is($node->safe_psql('postgres',
	q{SELECT qlater_unschedule('mine')}, extra_params => [ '-U', 'alice' ]),
	't', 'alice removes her schedule');

# a schedule made inside a SECURITY DEFINER function belongs to its owner,
# whose role its jobs run as
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION bob_schedules() RETURNS bigint LANGUAGE sql SECURITY DEFINER
AS $$ SELECT qlater_schedule('bobs', '1 seconds', 'rec', '["bobs"]') $$;
ALTER FUNCTION bob_schedules() OWNER TO bob;
});
$node->safe_psql('postgres', 'SELECT bob_schedules()',
	extra_params => [ '-U', 'alice' ]);
wait_runs('bobs', 2, 'the schedule made through the function fires');
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(DISTINCT who, ',') FROM ticks WHERE label = 'bobs'}),
	'bob', 'its jobs run as the function owner');
is( $node->safe_psql(
		'postgres', 'SELECT count(*) FROM qlater_schedules',
		extra_params => [ '-U', 'alice' ]),
	'0', 'the caller does not see it');
is( $node->safe_psql(
		'postgres', 'SELECT name, owner FROM qlater_schedules',
		extra_params => [ '-U', 'bob' ]),
	'bobs|bob', 'the owner sees it');
$node->safe_psql('postgres', q{SELECT qlater_unschedule('bobs', 'bob')});


### a schedule into a queue that became external is deactivated: its
### jobs would be in an application's queue yet run by the workers
$node->safe_psql(
	'postgres', q{
SELECT qlater_create_queue('alice_q');
SELECT qlater_schedule('to_ext', '1 seconds', 'rec', '["to_ext"]', queue => 'alice_q');
}, extra_params => [ '-U', 'alice' ]);
wait_runs('to_ext', 1, 'the schedule fires into its queue');
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{SELECT qlater_alter_queue('alice_q', external => true)},
	extra_params => [ '-U', 'alice' ]);
deactivated('to_ext', $log_offset, 'a schedule into a queue turned external is deactivated');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM qlater_job WHERE queue = 'alice_q' AND NOT external}),
	'0', 'no job of it waits for the in-server workers in the external queue');

### the scheduler reads committed rows whatever the database's default
### isolation: a schedule changed while a worker waited to fire it
$node->safe_psql('postgres',
	q{ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'});
$node->restart;
$node->safe_psql('postgres', q{SELECT qlater_schedule('rr', '1 seconds', 'rec', '["rr"]')});
wait_runs('rr', 1, 'the schedule fires under repeatable read');
my $workers = $node->safe_psql('postgres',
	q{SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
	   WHERE backend_type = 'qlater worker' AND datname = 'postgres'});
$log_offset = -s $node->logfile;
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN');
$locker->query_safe('LOCK TABLE qlater_schedule IN ACCESS EXCLUSIVE MODE');
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
 WHERE NOT l.granted AND a.backend_type = 'qlater worker'
   AND l.relation = 'qlater_schedule'::regclass}),
	'a worker waits to fire the schedule');
$locker->query_safe(
	q{UPDATE qlater_schedule SET next_tick = now() + interval '2 seconds' WHERE name = 'rr'});
$locker->query_safe('COMMIT');
$locker->quit;
$n = $node->safe_psql('postgres', "SELECT count(*) FROM ticks WHERE label = 'rr'");
wait_runs('rr', $n + 2, 'the schedule fires on');
ok( !$node->log_contains(qr/could not serialize access/, $log_offset),
	'no serialization failure in the scheduler');
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
		   WHERE backend_type = 'qlater worker' AND datname = 'postgres'}),
	$workers, 'no worker died');
$node->safe_psql('postgres', q{SELECT qlater_unschedule('rr')});
$node->safe_psql('postgres',
	q{ALTER DATABASE postgres RESET default_transaction_isolation});


### schedules fire only on a primary; after a promotion the new primary
### goes on from the replicated ticks, the outage's ticks folded into one
$node->safe_psql('postgres', q{SELECT qlater_schedule('ha', '1 seconds', 'rec', '["ha"]')});
wait_runs('ha', 2, 'the schedule fires on the primary');
$node->backup('bkp');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'bkp', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
$standby->safe_psql('postgres', 'SELECT pg_sleep(1.5)');
is( $standby->safe_psql(
		'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'qlater%'}),
	'0', 'a standby runs no scheduler');
$node->stop;
# the primary sent the standby all its WAL as it stopped; wait until the
# standby has replayed it, up to the shutdown checkpoint, before reading
# the last tick the primary fired
my ($controldata) = run_command([ 'pg_controldata', $node->data_dir ]);
my ($stop_lsn) = $controldata =~ /^Latest checkpoint location:\s+(\S+)/m;
ok( $standby->poll_query_until(
		'postgres', qq{SELECT pg_last_wal_replay_lsn() >= '$stop_lsn'::pg_lsn}),
	'the standby replayed what the primary wrote');
# the last tick fired (a job of it may still wait, replicated)
my $last_primary = $standby->safe_psql('postgres',
	q{SELECT last_tick FROM qlater_schedule WHERE name = 'ha'});
sleep 4;
$standby->promote;
ok( $standby->poll_query_until(
		'postgres', qq{SELECT count(*) >= 3 FROM ticks WHERE label = 'ha' AND tick > '$last_primary'}),
	'the promoted standby fires the schedule');
note $standby->safe_psql('postgres', qq{
SELECT tick, at FROM ticks WHERE label = 'ha' AND tick > '$last_primary'::timestamptz - interval '3 s' ORDER BY tick});
is( $standby->safe_psql(
		'postgres', qq{
SELECT count(*) - count(DISTINCT tick),
       min(tick) FILTER (WHERE tick > '$last_primary') - '$last_primary' >= interval '4 seconds'
  FROM ticks WHERE label = 'ha'}),
	'0|t', 'no tick twice, and one job at most for the outage');
$standby->stop;
done_testing();
