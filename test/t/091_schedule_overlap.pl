# 091_schedule_overlap.pl: a schedule without overlap never runs a job
# while its previous one still waits or runs, and counts the ticks it skips;
# with overlap its jobs run side by side; a dead job does not hold the next
# tick back; a schedule switched off fires nothing until switched on, then
# fires on time from then (no catch-up of the ticks it was off); a schedule
# whose owner loses the right to put jobs into its queue is deactivated,
# and turned on again once the right is back; a tick does not wait for a
# transaction that holds its queue's name.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('overlap');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$node->start;

# slow() records, per run, its tick (the job's run_at) and when it started
# and ended by the clock; rec() records a tick and the time it ran
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE TABLE runs (id bigserial, label text, tick timestamptz,
                   started timestamptz, ended timestamptz);
CREATE TABLE ticks (label text, tick timestamptz,
                    at timestamptz DEFAULT clock_timestamp());
GRANT ALL ON runs, ticks, runs_id_seq TO PUBLIC;
CREATE FUNCTION slow(label text, secs float8) RETURNS void LANGUAGE plpgsql
AS $$
DECLARE
    s timestamptz := clock_timestamp();
    t timestamptz := (SELECT run_at FROM qlater_jobs WHERE locked_by = pg_backend_pid());
BEGIN
    PERFORM pg_sleep(secs);
    INSERT INTO runs (label, tick, started, ended) VALUES (label, t, s, clock_timestamp());
END $$;
SELECT qlater_register('slow(text,float8)');
CREATE FUNCTION rec(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO ticks (label, tick)
      SELECT label, run_at FROM qlater_jobs WHERE locked_by = pg_backend_pid() $$;
SELECT qlater_register('rec(text)');
CREATE FUNCTION doomed() RETURNS void LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'doomed'; END $$;
SELECT qlater_register('doomed()', max_attempts => 1);
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
});

ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'postgres'}),
	'workers are up');

# runs of a label whose start lies inside another run of the same label
sub overlapping_pairs
{
	my ($label) = @_;
	return $node->safe_psql(
		'postgres', qq{
SELECT count(*) FROM runs a JOIN runs b
    ON a.label = b.label AND a.id < b.id
   AND a.started < b.ended AND b.started < a.ended
 WHERE a.label = '$label'});
}

# switch a schedule off (as an admin, with its owner's name) and wait
# until none of its jobs is left
sub stop_schedule
{
	my ($name, $owner) = @_;
	my $whose = defined $owner ? "'$owner'" : 'current_user';
	$node->safe_psql('postgres',
		qq{SELECT qlater_alter_schedule('$name', active => false, owner => $whose)});
	ok( $node->poll_query_until(
			'postgres', qq{
SELECT count(*) = 0 FROM qlater_job j JOIN qlater_schedule s ON s.id = j.schedule_id
 WHERE s.name = '$name' AND NOT j.dead}),
		"the jobs of '$name' are done");
}

### without overlap (the default), a 2.5 s job on a 1 s schedule never
### runs beside its previous one; the ticks meanwhile are skipped and counted
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('solo', '1 seconds', 'slow', '["solo", 2.5]')});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) >= 4 FROM runs WHERE label = 'solo'}),
	'the schedule without overlap fires');
stop_schedule('solo');
note $node->safe_psql('postgres',
	q{SELECT tick, started, ended FROM runs WHERE label = 'solo' ORDER BY id});
is(overlapping_pairs('solo'), '0', 'no run overlaps another of the same schedule');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (
  SELECT tick - lag(tick) OVER (ORDER BY tick) AS gap FROM runs WHERE label = 'solo'
) g WHERE gap < interval '3 seconds'}),
	'0', 'each job ran for the first tick after the previous one ended (2.5 s: 2 ticks skipped at least)');
is( $node->safe_psql(
		'postgres', q{
SELECT s.skipped_ticks > 0,
       s.skipped_ticks >= extract(epoch FROM max(r.tick) - min(r.tick))::int + 1 - count(*),
       s.last_tick = max(r.tick)
  FROM qlater_schedules s, runs r
 WHERE s.name = 'solo' AND r.label = 'solo'
 GROUP BY s.skipped_ticks, s.last_tick}),
	't|t|t',
	'skipped_ticks counts every tick between those that ran; last_tick is the last that enqueued');

### with overlap, the same schedule's jobs run side by side
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('multi', '1 seconds', 'slow', '["multi", 2.5]', overlap => true)});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) >= 4 FROM runs WHERE label = 'multi'}),
	'the schedule with overlap fires');
stop_schedule('multi');
note $node->safe_psql('postgres',
	q{SELECT tick, started, ended FROM runs WHERE label = 'multi' ORDER BY id});
cmp_ok(overlapping_pairs('multi'), '>', 0, 'with overlap, runs of the schedule overlap');
is( $node->safe_psql(
		'postgres', q{SELECT skipped_ticks FROM qlater_schedules WHERE name = 'multi'}),
	'0', 'and no tick is skipped');

### ticks that fall while every worker is busy: the first enqueues a job,
### which then waits, so the others are skipped
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('busy', '1 seconds', 'rec', '["busy"]')});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) >= 1 FROM ticks WHERE label = 'busy'}),
	'the schedule fires');
$node->safe_psql('postgres', q{SELECT qlater_enqueue('slow', '["nap", 6]') FROM generate_series(1, 4)});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 4 FROM qlater_jobs WHERE args->>0 = 'nap' AND state = 'running'}),
	'every worker is busy');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 4 FROM runs WHERE label = 'nap'}),
	'the workers are free again');
# every worker ran a 6 s job from $busy_from to $busy_to
my ($busy_from, $busy_to) = split(/\|/, $node->safe_psql('postgres',
	q{SELECT max(started), min(ended) FROM runs WHERE label = 'nap'}));
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) >= 2 FROM ticks WHERE label = 'busy' AND tick > '$busy_to'}),
	'the schedule fires after the busy time');
stop_schedule('busy');
note $node->safe_psql('postgres', q{SELECT tick, at FROM ticks WHERE label = 'busy' ORDER BY tick});
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FILTER (WHERE tick > '$busy_from' AND tick < '$busy_to') <= 1,
       (SELECT skipped_ticks >= 3 FROM qlater_schedules WHERE name = 'busy')
  FROM ticks WHERE label = 'busy'}),
	't|t', 'of the ticks while every worker was busy, one job ran at most; the others were skipped');

### a dead job does not hold the next tick back (a dead job's run_at is
### its last attempt's backoff: its enqueue time tells its tick)
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('doomed', '2 seconds', 'doomed')});
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) >= 3 FROM qlater_job j JOIN qlater_schedule s ON s.id = j.schedule_id
 WHERE s.name = 'doomed' AND j.dead}),
	'the schedule whose jobs die fires on');
stop_schedule('doomed');
is( $node->safe_psql(
		'postgres', q{
SELECT (SELECT skipped_ticks FROM qlater_schedules WHERE name = 'doomed'),
       count(*) FILTER (WHERE gap NOT BETWEEN interval '1 s' AND interval '3 s')
  FROM (SELECT j.enqueued_at - lag(j.enqueued_at) OVER (ORDER BY j.id) AS gap
          FROM qlater_job j JOIN qlater_schedule s ON s.id = j.schedule_id
         WHERE s.name = 'doomed') g}),
	'0|0', 'a tick whose previous job is dead is not skipped: one dead job per tick');

### a schedule switched off fires nothing; switched on, it fires from then
### on, on time (the workers are woken at the commit), without catching up
$node->safe_psql('postgres', q{ALTER SYSTEM SET qlater.poll_interval = '60s'});
$node->reload;
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('onoff', '1 seconds', 'rec', '["onoff"]')},
	extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) >= 2 FROM ticks WHERE label = 'onoff'}),
	'the schedule fires');
$node->safe_psql('postgres', q{SELECT qlater_alter_schedule('onoff', active => false)},
	extra_params => [ '-U', 'alice' ]);
my $off = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
# whatever was enqueued before the switch has run after 5 s
sleep 5;
my $on_from = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FILTER (WHERE tick > '$off'),
       (SELECT count(*) FROM qlater_jobs WHERE handler LIKE '%rec%')
  FROM ticks WHERE label = 'onoff'}),
	'0|0', 'no tick fires while the schedule is off, and no job waits');
is( $node->safe_psql(
		'postgres', q{SELECT active, skipped_ticks FROM qlater_schedules WHERE name = 'onoff'},
		extra_params => [ '-U', 'alice' ]),
	'f|0', 'the schedule is kept, off');
$node->safe_psql('postgres', q{SELECT qlater_alter_schedule('onoff', active => true)},
	extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) >= 3 FROM ticks WHERE label = 'onoff' AND tick > '$on_from'}),
	'switched on, the schedule fires again');
note $node->safe_psql('postgres',
	qq{SELECT tick, at FROM ticks WHERE label = 'onoff' AND tick > '$off' ORDER BY tick});
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FILTER (WHERE tick > '$off' AND tick <= '$on_from'),
       count(*) FILTER (WHERE tick > '$on_from' AND at - tick >= interval '10 seconds'),
       count(*) - count(DISTINCT tick)
  FROM ticks WHERE label = 'onoff'}),
	'0|0|0',
	'no catch-up of the ticks while off; the ticks after run on time (not at the 60 s poll); none twice');
stop_schedule('onoff', 'alice');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET qlater.poll_interval});
$node->reload;

### a schedule into another role's queue is deactivated once its owner may
### no longer put jobs there, and turned on again once it may
$node->safe_psql(
	'postgres', q{
SELECT qlater_create_queue('bob_q');
SELECT qlater_grant_queue('bob_q', 'alice', 'enqueue');
}, extra_params => [ '-U', 'bob' ]);
$node->safe_psql('postgres',
	q{SELECT qlater_schedule('granted', '1 seconds', 'rec', '["granted"]', queue => 'bob_q')},
	extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) >= 1 FROM ticks WHERE label = 'granted'}),
	"the schedule fires into bob's queue");
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{SELECT qlater_revoke_queue('bob_q', 'alice', 'enqueue')},
	extra_params => [ '-U', 'bob' ]);
ok( $node->poll_query_until(
		'postgres', q{SELECT NOT active FROM qlater_schedules WHERE name = 'granted'}),
	'the schedule is deactivated once the grant is revoked');
ok( $node->log_contains(
		qr/qlater schedule "granted" of role "alice" is deactivated.*\n.*DETAIL:  Role "alice" may no longer put jobs of priority 100 into queue "bob_q"/,
		$log_offset),
	'with a warning in the log that says why');
my $revoked = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
my ($ret, $stdout, $stderr) = $node->psql(
	'postgres', q{SELECT qlater_alter_schedule('granted', active => true)},
	extra_params => [ '-U', 'alice' ]);
like($stderr, qr/permission denied for queue "bob_q"/,
	'it cannot be turned on while the grant is missing');
$node->safe_psql('postgres', q{SELECT qlater_grant_queue('bob_q', 'alice', 'enqueue')},
	extra_params => [ '-U', 'bob' ]);
$node->safe_psql('postgres', q{SELECT qlater_alter_schedule('granted', active => true)},
	extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) >= 2 FROM ticks WHERE label = 'granted' AND tick > '$revoked'}),
	'granted again and turned on, it fires');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM qlater_job WHERE queue = 'bob_q' AND dead}),
	'0', 'no job of it died');
stop_schedule('granted', 'alice');

### a tick does not wait for a transaction that holds its queue's name (a
### change of kind left open): the workers go on, and the tick fires once
### that transaction is over
$node->safe_psql(
	'postgres', q{
SELECT qlater_create_queue('alice_q');
SELECT qlater_schedule('held', '1 seconds', 'rec', '["held"]', queue => 'alice_q');
}, extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) >= 1 FROM ticks WHERE label = 'held'}),
	'the schedule fires into its queue');
my $holder = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
$holder->query_safe('BEGIN');
$holder->query_safe(q{SELECT qlater_alter_queue('alice_q', external => true)});
my $held_from = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
sleep 3;
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
 WHERE NOT l.granted AND a.backend_type = 'qlater worker'}),
	'0', 'no worker waits for the lock on the queue');
$node->safe_psql('postgres', q{SELECT qlater_enqueue('rec', '["free"]')});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM ticks WHERE label = 'free'}),
	'other jobs run meanwhile');
is( $node->safe_psql(
		'postgres', qq{SELECT count(*) FROM ticks WHERE label = 'held' AND tick > '$held_from'}),
	'0', 'no tick into the queue fires while its name is held');
$holder->query_safe('ROLLBACK');
$holder->quit;
my $released = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) >= 2 FROM ticks WHERE label = 'held' AND at > '$released'}),
	'the schedule fires again once the transaction is over');
is( $node->safe_psql(
		'postgres', q{SELECT active FROM qlater_schedules WHERE name = 'held'}),
	't', 'and is still on');
stop_schedule('held', 'alice');

ok(!$node->log_contains(qr/terminated by signal/), 'no server process crashed');
$node->stop;
done_testing();
