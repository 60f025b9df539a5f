# 165_schedule_attacks.pl: attacks on schedules as 0.2 made them (overlap
# and skipped_ticks, qlater_alter_schedule, the queue checks at creation and
# at each tick), as tenants (alice, bob, carol) and as a DBA would mount
# them.
#
# Each break found is a TODO block that fails on the code it was found on
# (the integrator removes the TODO with the fix); the attacks that held are
# plain tests, kept as regression guards.
#
# Breaks (TODO):
#   S1. qlater_alter_schedule in a transaction begun before the last tick
#       (a new time zone or schedule, or switched on) computes the next tick
#       from the transaction's start: the ticks fired meanwhile are enqueued
#       and run a second time;
#   S2. switched on in a transaction begun while it was off, a schedule
#       enqueues the ticks that fell while it was off;
#   S3. a DROP ROLE of a schedule's owner left open, in any database of the
#       cluster, holds a worker at the tick (it waits for the role's lock),
#       and with it every schedule due in the same pass, of every role;
#   S4. any role holds the name of a queue it does not own, 'default'
#       included: its qlater_alter_queue(..., external => ...) waits for the
#       name behind its own open enqueue before the owner check, and every
#       tick into the queue (and every enqueue) waits behind it;
#   S5. while a transaction holds a schedule's queue, the workers lock and
#       rewrite the schedule's row ten times a second (an XID, a dead tuple
#       and WAL each), for as long as it stays open;
#   S6. the look for a waiting job reads every dead job the schedule left
#       (the index holds them): the cost of each tick grows with them;
#   S7. after the update from 0.1, the jobs 0.1's ticks enqueued have no
#       schedule_id: the first ticks run beside them, overlap false or not;
#   S8. ticks that fell while the database waited for its update are fired
#       as if every worker had been busy (each one with overlap, or counted
#       in skipped_ticks), not as downtime (one catch-up job);
#   S9. a tick skipped because the schedule's job waits checks nothing: a
#       schedule whose owner lost the right to its queue stays on, counting
#       skipped ticks, with no warning, while its job waits (its retry, a
#       job moved to an external queue's consumers).
# No server process may end on a signal.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $started = time;
my $node = PostgreSQL::Test::Cluster->new('schedule_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n"
	  . "max_prepared_transactions = 2\n");
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

# ($ret, $out, $err) of statements run as a role, with SQLSTATEs in $err
sub try_as
{
	my ($role, $sql, $db) = @_;
	my ($ret, $out, $err) = $node->psql($db // 'postgres',
		"\\set VERBOSITY verbose\n" . $sql,
		extra_params => [ '-U', $role ]);
	return ($ret, $out, $err);
}

# a session of a role that goes on after an error
sub session
{
	my ($role, $db) = @_;
	return $node->background_psql($db // 'postgres',
		on_error_stop => 0,
		extra_params => [ '-U', $role ]);
}

sub wait_for
{
	my ($sql, $name, $db) = @_;
	ok($node->poll_query_until($db // 'postgres', $sql), $name);
}

sub now_ts
{
	return su('SELECT clock_timestamp()');
}

my $ext_owner = su('SELECT current_user');

# rec() records its job's tick (run_at); mark() only its label (it reads no
# job); slow() its tick and when it started and ended
my $handlers = q{
CREATE TABLE ticks (label text, tick timestamptz,
                    at timestamptz DEFAULT clock_timestamp());
CREATE TABLE runs (id bigserial, label text, tick timestamptz,
                   started timestamptz, ended timestamptz);
GRANT ALL ON ticks, runs, runs_id_seq TO PUBLIC;
CREATE FUNCTION rec(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO ticks (label, tick)
      SELECT label, run_at FROM qlater_jobs WHERE locked_by = pg_backend_pid() $$;
CREATE FUNCTION mark(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO ticks (label) VALUES (label) $$;
CREATE FUNCTION slow(label text, secs float8) RETURNS void LANGUAGE plpgsql
AS $$
DECLARE
    s timestamptz := clock_timestamp();
    t timestamptz := (SELECT run_at FROM qlater_jobs WHERE locked_by = pg_backend_pid());
BEGIN
    PERFORM pg_sleep(secs);
    INSERT INTO runs (label, tick, started, ended) VALUES (label, t, s, clock_timestamp());
END $$;
};

su(q{
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN;
CREATE EXTENSION qlater;
CREATE ROLE adm LOGIN IN ROLE qlater_admin;
CREATE DATABASE other;
} . $handlers . q{
SELECT qlater_register('rec(text)');
SELECT qlater_register('mark(text)');
SELECT qlater_register('slow(text,float8)');
});

# runs of a label whose start lies inside another run of the same label
sub overlapping_pairs
{
	my ($label, $db) = @_;
	return su(qq{
SELECT count(*) FROM runs a JOIN runs b
    ON a.label = b.label AND a.id < b.id
   AND a.started < b.ended AND b.started < a.ended
 WHERE a.label = '$label'}, $db);
}

# switch alice's schedules off and wait until none of their jobs waits
sub all_off
{
	my ($db) = @_;
	su(q{SELECT count(qlater_alter_schedule(name, active => false, owner => owner))
	       FROM qlater_schedules WHERE active}, $db);
	wait_for(q{SELECT count(*) = 0 FROM qlater_job WHERE schedule_id IS NOT NULL AND NOT dead},
		'the jobs of the schedules switched off are done', $db);
}

########################################################################
### S7, S8: the update from 0.1 (its data written as 0.1's API allowed)
########################################################################
su('CREATE DATABASE old');
su(q{CREATE EXTENSION qlater VERSION '0.1';} . $handlers, 'old');
ok($node->wait_for_log(qr/qlater waits in database "old" until its extension is updated/),
	'held: the workers of the 0.1 database wait for its update');
# 0.1 schedules of alice: 'legacy' runs 4 s every second (its 0.1 job runs
# when the update commits), 'burst' and 'quiet' run at once
su(qq{
INSERT INTO qlater_handler (handler, queue, priority, max_attempts, registered_by)
VALUES ('public.rec(text)', 'default', 100, 25, '$ext_owner'),
       ('public.slow(text,double precision)', 'default', 100, 25, '$ext_owner');
INSERT INTO qlater_schedule (name, owner, schedule, timezone, handler, args,
                             created_at, next_tick)
SELECT n, 'alice', '1 seconds', 'UTC', h, a::jsonb, date_trunc('second', now()),
       date_trunc('second', now()) + interval '1 second'
  FROM (VALUES ('legacy', 'public.slow(text,double precision)', '["legacy", 4]'),
               ('burst', 'public.rec(text)', '["burst"]'),
               ('quiet', 'public.rec(text)', '["quiet"]')) v (n, h, a);
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role)
VALUES ('default', 'public.slow(text,double precision)', '["legacy", 4]', 100,
        date_trunc('second', now()), 25, 'alice');
}, 'old');
# the database waits for its update for 6 s (its workers are there)
sleep 6;
is(su(q{SELECT count(*) FROM runs}, 'old'), '0', 'held: nothing runs before the update');
# the update, with overlap for 'burst' in the same transaction (the README
# has admins restore the old way with qlater_alter_schedule)
# (the update's start is kept in the same transaction: a tick of the next
# second may fall between its commit and any later look at the clock)
su(q{
BEGIN;
ALTER EXTENSION qlater UPDATE;
SELECT qlater_alter_schedule('burst', overlap => true, owner => 'alice');
CREATE TABLE update_began AS SELECT now() AS at;
COMMIT;
}, 'old');
my $updated = su(q{SELECT at FROM update_began}, 'old');
wait_for(q{SELECT count(*) >= 2 FROM runs WHERE label = 'legacy'},
	'held: after the update the 0.1 schedule runs', 'old');
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'quiet'},
	'held: and the others', 'old');
my $quiet_skipped = su(q{SELECT skipped_ticks FROM qlater_schedules WHERE name = 'quiet'}, 'old');
all_off('old');
note su(q{SELECT label, tick, started, ended FROM runs ORDER BY id}, 'old');
note su(qq{SELECT label, tick, at FROM ticks WHERE label = 'burst' ORDER BY tick}, 'old');
is(overlapping_pairs('legacy', 'old'), '0',
	'S7: after the update from 0.1, no run of a schedule without overlap overlaps the job its 0.1 tick enqueued');
cmp_ok(su(qq{SELECT count(*) FROM ticks WHERE label = 'burst' AND tick < '$updated'}, 'old'),
	'<=', 1,
	'S8: of the ticks that fell while the database waited for its update, one catch-up job at most (overlap)');
cmp_ok($quiet_skipped, '<=', 2,
	'S8: and without overlap, they are not counted in skipped_ticks');
su(q{SELECT count(qlater_unschedule(name, owner)) FROM qlater_schedules}, 'old');

########################################################################
### held: who may change whose schedule
########################################################################
as('alice', q{
SELECT qlater_schedule('yearly', '@yearly', 'rec', '["yearly"]');
});
my $row = q{SELECT concat_ws('|', schedule, timezone, args, queue, priority, active,
                             catch_up, overlap, next_tick)
              FROM qlater_schedule WHERE name = 'yearly' AND owner = 'alice'};
my $before = su($row);
my ($ret, $out, $err);
for my $call (
	q{SELECT qlater_alter_schedule('yearly', active => false, owner => 'alice')},
	q{SELECT qlater_alter_schedule('yearly', overlap => true, owner => 'alice')},
	q{SELECT qlater_unschedule('yearly', 'alice')})
{
	($ret, $out, $err) = try_as('bob', $call);
	like($err, qr/42501: permission denied for schedules of role "alice"/,
		"held: bob may not: $call");
}
for my $call (
	q{SELECT qlater_alter_schedule('yearly', args => '["x"]', owner => 'alice')},
	q{SELECT qlater_alter_schedule('yearly', queue => 'adm_q', owner => 'alice')},
	q{SELECT qlater_alter_schedule('yearly', schedule => '1 seconds', owner => 'alice')},
	q{SELECT qlater_alter_schedule('yearly', timezone => 'Asia/Tokyo', owner => 'alice')},
	q{SELECT qlater_alter_schedule('yearly', priority => 1, owner => 'alice')},
	q{SELECT qlater_alter_schedule('yearly', catch_up => false, owner => 'alice')},
	q{SELECT qlater_alter_schedule('yearly', active => false, args => '["x"]', owner => 'alice')})
{
	($ret, $out, $err) = try_as('adm', $call);
	like($err, qr/42501: permission denied to change schedule "yearly" of role "alice"/,
		"held: an admin may not: $call");
}
is(su($row), $before, 'held: none of those changed the schedule');
as('adm', q{SELECT qlater_alter_schedule('yearly', active => false, overlap => true, owner => 'alice')});
is(su(q{SELECT active || '|' || overlap FROM qlater_schedule WHERE name = 'yearly'}),
	'false|true', 'held: an admin switches it off and sets its overlap');

########################################################################
### held: odd values are refused with their SQLSTATE and change nothing
########################################################################
as('alice', q{SELECT qlater_alter_schedule('yearly', active => true, overlap => false)});
$before = su($row);
for my $case (
	[ q{SELECT qlater_alter_schedule(NULL, active => false)}, '22004' ],
	[ q{SELECT qlater_alter_schedule('nope', active => false)}, '42704' ],
	[ q{SELECT qlater_alter_schedule('yearly', schedule => '61 * * * *')}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', schedule => '0 0 30 2 *')}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', schedule => '60 seconds')}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', timezone => 'Mars/Olympus')}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', priority => 32768)}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', queue => '')}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', queue => E'q\n')}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', args => '[1, 2]')}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', args => '"x"')}, '22023' ],
	[ q{SELECT qlater_alter_schedule('yearly', args => '[1]', active => false, schedule => '* * * * *', queue => '')}, '22023' ],
	[ q{SELECT qlater_schedule('odd', '* * * * *', 'rec', '["x"]', overlap => NULL)}, '22004' ],
	[ q{SELECT qlater_schedule('odd', '* * * * *', 'rec', '["x"]', priority => -32769)}, '22023' ])
{
	($ret, $out, $err) = try_as('alice', $case->[0]);
	like($err, qr/ERROR:  $case->[1]:/, "held: $case->[0] fails with $case->[1]");
}
is(su($row), $before, 'held: and the schedule is as it was');
is(su(q{SELECT count(*) FROM qlater_schedule WHERE name = 'odd'}), '0', 'held: no schedule was made');

########################################################################
### held: PREPARE TRANSACTION, ROLLBACK and savepoints
########################################################################
($ret, $out, $err) = try_as('alice', q{
BEGIN;
SELECT qlater_alter_schedule('yearly', active => false);
PREPARE TRANSACTION 'sched';
});
like($err, qr/0A000: cannot PREPARE a transaction that has enqueued or changed qlater jobs, queues or schedules/,
	'held: PREPARE TRANSACTION after qlater_alter_schedule is refused');
is(su(q{SELECT count(*) FROM pg_prepared_xacts}), '0', 'held: nothing is prepared');
as('alice', q{
BEGIN;
SELECT qlater_alter_schedule('yearly', active => false);
ROLLBACK;
BEGIN;
SAVEPOINT s;
SELECT qlater_alter_schedule('yearly', schedule => '@daily', overlap => true);
ROLLBACK TO s;
COMMIT;
});
is(su($row), $before, 'held: a rollback, and one to a savepoint, change nothing');
# a savepoint rolled back releases the row: a worker may lock it again
($ret, $out, $err) = try_as('alice', q{
BEGIN;
SAVEPOINT s;
SELECT qlater_alter_schedule('yearly', active => false);
ROLLBACK TO s;
PREPARE TRANSACTION 'after_savepoint';
});
is(su(q{SELECT count(*) FROM pg_prepared_xacts}), '0',
	'held: a savepoint rolled back still keeps PREPARE off (the workers would be woken for nothing)');

########################################################################
### held: a replaced schedule keeps its id; a dropped one's id is not reused
########################################################################
my $id1 = as('alice', q{SELECT id FROM qlater_schedules WHERE name = 'yearly'});
su(q{UPDATE qlater_schedule SET skipped_ticks = 7 WHERE name = 'yearly'});
my $id2 = as('alice', q{SELECT qlater_schedule('yearly', '@monthly', 'rec', '["y2"]')});
is($id2, $id1, 'held: qlater_schedule replacing a schedule keeps its id');
is(as('alice', q{SELECT skipped_ticks FROM qlater_schedules WHERE name = 'yearly'}), '7',
	'held: and its skipped_ticks');
as('alice', q{SELECT qlater_unschedule('yearly')});
my $id3 = as('alice', q{SELECT qlater_schedule('yearly', '@yearly', 'rec', '["y3"]')});
cmp_ok($id3, '>', $id1, 'held: dropped and made again, it gets a new id');
as('alice', q{SELECT qlater_unschedule('yearly')});

########################################################################
### S1, S2: the next tick computed from the transaction's start
########################################################################
as('alice', q{
SELECT qlater_schedule('dup', '1 seconds', 'rec', '["dup"]', overlap => true);
SELECT qlater_schedule('tog', '1 seconds', 'rec', '["tog"]', overlap => true);
});
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'dup'}, 'S1: the schedule fires');
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'tog'}, 'S2: the schedule fires');
as('alice', q{SELECT qlater_alter_schedule('tog', active => false)});
my $tog_off = now_ts();
my $s1 = session('alice');
my $s2 = session('alice');
$s1->query_safe('BEGIN');
$s2->query_safe('BEGIN');
# ticks of 'dup' fire meanwhile; 'tog' is off
sleep 3;
$s1->query_safe(q{SELECT qlater_alter_schedule('dup', timezone => 'UTC')});
$s1->query_safe('COMMIT');
my ($tog_on) = $s2->query_safe(q{SELECT clock_timestamp()});
$s2->query_safe(q{SELECT qlater_alter_schedule('tog', active => true)});
$s2->query_safe('COMMIT');
$s1->quit;
$s2->quit;
my $committed = now_ts();
wait_for(qq{SELECT count(*) >= 2 FROM ticks WHERE label = 'dup' AND tick > '$committed'},
	'S1: the schedule fires on');
wait_for(qq{SELECT count(*) >= 2 FROM ticks WHERE label = 'tog' AND tick > '$committed'},
	'S2: switched on, the schedule fires');
all_off();
note su(q{SELECT tick, count(*) FROM ticks WHERE label = 'dup' GROUP BY tick HAVING count(*) > 1});
is(su(q{SELECT count(*) - count(DISTINCT tick) FROM ticks WHERE label = 'dup'}),
	'0', 'S1: a change of time zone in a transaction begun 3 s before enqueues no tick twice');
is(su(qq{SELECT count(*) FROM ticks WHERE label = 'tog' AND tick > '$tog_off' AND tick < '$tog_on'}),
	'0', 'S2: switched on in a transaction begun while it was off, no tick of while it was off is enqueued');
as('alice', q{SELECT qlater_unschedule('dup'); SELECT qlater_unschedule('tog');});

########################################################################
### S3: a DROP ROLE of a schedule's owner left open in another database
########################################################################
as('carol', q{SELECT qlater_schedule('c3', '1 seconds', 'mark', '["c3"]')});
as('alice', q{SELECT qlater_schedule('a3', '1 seconds', 'rec', '["a3"]')});
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'a3'}, 'S3: the schedules fire');
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'c3'}, 'S3: both');
# carol owns nothing in the cluster: DROP ROLE succeeds in a database
# without qlater, and is left open there
my $dba = session($ext_owner, 'other');
$dba->query_safe('BEGIN');
$dba->query_safe('DROP ROLE carol');
my $t3 = now_ts();
sleep 4;
my $waiting = su(q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
 WHERE NOT l.granted AND a.backend_type = 'qlater worker'});
my $a3_meanwhile = su(qq{SELECT count(*) FROM ticks WHERE label = 'a3' AND tick > '$t3'});
$dba->query_safe('ROLLBACK');
$dba->quit;
is($waiting, '0', 'S3: no worker waits for a DROP ROLE of a schedule owner left open in another database');
cmp_ok($a3_meanwhile, '>=', 2, "S3: another role's schedule fires meanwhile");
my $t3b = now_ts();
wait_for(qq{SELECT count(*) >= 2 FROM ticks WHERE label = 'a3' AND tick > '$t3b'},
	'held: once the DROP ROLE is rolled back, the schedules fire again');
is(su(q{SELECT string_agg(active::text, ',') FROM qlater_schedule WHERE name IN ('a3', 'c3')}),
	'true,true', 'held: and are on');
as('carol', q{SELECT qlater_unschedule('c3')});
as('alice', q{SELECT qlater_unschedule('a3')});

########################################################################
### S4: a role that does not own 'default' holds its name
########################################################################
as('alice', q{SELECT qlater_schedule('d4', '1 seconds', 'rec', '["d4"]')});
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'd4'}, "S4: alice's schedule fires into 'default'");
my $hold = session('bob');
$hold->query_safe('BEGIN');
$hold->query_safe(q{SELECT qlater_enqueue('mark', '["bob"]', run_at => now() + interval '1 hour')});
my $kind = session('bob');
$kind->{stdin} .= "SELECT qlater_alter_queue('default', external => true);\n";
$kind->{run}->pump_nb;
# bob's second session waits for the name (or has failed, once mended)
wait_for(q{SELECT count(*) = 1 FROM pg_stat_activity
            WHERE usename = 'bob' AND (wait_event_type = 'Lock' OR state = 'idle')},
	"S4: bob's change of kind of 'default' is under way");
note "S4: bob's change of kind waits for the name: "
  . su(q{SELECT count(*) > 0 FROM pg_stat_activity WHERE usename = 'bob' AND wait_event_type = 'Lock'});
my $t4 = now_ts();
($ret, $out, $err) = try_as('alice', q{
SET statement_timeout = '3s';
SELECT qlater_enqueue('mark', '["alice"]', run_at => now() + interval '1 hour');
});
sleep 3;
my $d4_meanwhile = su(qq{SELECT count(*) FROM ticks WHERE label = 'd4' AND tick > '$t4'});
is($err, '', "S4: alice enqueues into 'default' meanwhile");
cmp_ok($d4_meanwhile, '>=', 2, "S4: and her schedule into 'default' fires meanwhile");
$hold->query_safe('ROLLBACK');
$kind->query(q{SELECT 1});
like($kind->{stderr}, qr/queue "default" cannot be external/, "held: bob's change of kind is refused");
$hold->quit;
$kind->quit;
is(su(q{SELECT external FROM qlater_queues WHERE name = 'default'}), 'f',
	"held: 'default' stays in-server");
my $t4b = now_ts();
wait_for(qq{SELECT count(*) >= 2 FROM ticks WHERE label = 'd4' AND tick > '$t4b'},
	'held: the schedule fires again');
su(q{DELETE FROM qlater_job WHERE args->>0 = 'alice'});
as('alice', q{SELECT qlater_unschedule('d4')});

########################################################################
### S5: a tick whose queue a transaction holds, retried ten times a second
########################################################################
as('alice', q{
SELECT qlater_create_queue('aq5');
SELECT qlater_schedule('h5', '1 seconds', 'mark', '["h5"]', queue => 'aq5');
});
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'h5'}, 'S5: the schedule fires');
wait_for(q{SELECT count(*) = 0 FROM qlater_job}, 'S5: no job waits');
my $owner5 = session('alice');
$owner5->query_safe('BEGIN');
$owner5->query_safe(q{SELECT qlater_alter_queue('aq5', external => true)});
sleep 1;
my $x0 = su(q{SELECT pg_current_xact_id()});
sleep 3;
my $x1 = su(q{SELECT pg_current_xact_id()});
my $stuck5 = su(q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
 WHERE NOT l.granted AND a.backend_type = 'qlater worker'});
is($stuck5, '0', 'held: no worker waits for the held queue');
note "S5: transaction ids used in 3 s while the queue was held: " . ($x1 - $x0 - 1);
cmp_ok($x1 - $x0 - 1, '<', 20,
	"S5: while a transaction holds a schedule's queue, the workers do not write its row ten times a second");
$owner5->query_safe('ROLLBACK');
$owner5->quit;
my $t5 = now_ts();
wait_for(qq{SELECT count(*) >= 1 FROM ticks WHERE label = 'h5' AND at > '$t5'},
	'held: the schedule fires once the transaction is over');
as('alice', q{SELECT qlater_unschedule('h5')});

########################################################################
### S6: the look for a waiting job reads the schedule's dead jobs
########################################################################
my $id6 = as('alice', q{SELECT qlater_schedule('d6', '1 seconds', 'mark', '["d6"]')});
su(qq{
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role,
                        dead, schedule_id)
SELECT 'default', 'public.mark(text)', '["d6"]', 100, now(), 1, 'alice', true, $id6
  FROM generate_series(1, 20000);
ANALYZE qlater_job;
});
my $reads = q{
SELECT s.seq_tup_read + i.idx_tup_read
  FROM pg_stat_user_tables s, pg_stat_user_indexes i
 WHERE s.relname = 'qlater_job' AND i.indexrelname = 'qlater_job_schedule'};
wait_for(q{SELECT count(*) >= 2 FROM ticks WHERE label = 'd6'}, 'S6: the schedule fires');
sleep 1;
my $r0 = su($reads);
my $n0 = su(q{SELECT count(*) FROM ticks WHERE label = 'd6'});
wait_for(qq{SELECT count(*) >= $n0 + 3 FROM ticks WHERE label = 'd6'}, 'S6: three ticks more');
as('alice', q{SELECT qlater_alter_schedule('d6', active => false)});
sleep 1;
my $r1 = su($reads);
my $n1 = su(q{SELECT count(*) FROM ticks WHERE label = 'd6'});
my $per_tick = int(($r1 - $r0) / ($n1 - $n0));
note "S6: job rows read per tick with 20,000 dead jobs of the schedule: $per_tick";
cmp_ok($per_tick, '<', 2000, 'S6: a tick reads none of the dead jobs its schedule left');
su(qq{DELETE FROM qlater_job WHERE schedule_id = $id6});
as('alice', q{SELECT qlater_unschedule('d6')});

########################################################################
### held: overlap with a job cancelled, and in a batch queue
########################################################################
as('alice', q{
SELECT qlater_create_queue('bq', batch_size => 4);
SELECT qlater_schedule('batched', '1 seconds', 'slow', '["batched", 1.5]', queue => 'bq');
SELECT qlater_schedule('cancelled', '1 seconds', 'slow', '["cancelled", 60]');
});
wait_for(q{SELECT count(*) = 1 FROM qlater_jobs WHERE args->>0 = 'cancelled' AND state = 'running'},
	'held: the long job of a schedule runs');
wait_for(q{SELECT skipped_ticks >= 2 FROM qlater_schedules WHERE name = 'cancelled'},
	'held: its ticks are skipped meanwhile');
is(su(q{SELECT count(*) FROM qlater_job j JOIN qlater_schedule s ON s.id = j.schedule_id
         WHERE s.name = 'cancelled'}), '1', 'held: and it has one job');
my $tc = now_ts();
as('alice', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE args->>0 = 'cancelled'});
wait_for(qq{SELECT count(*) = 1 FROM qlater_jobs WHERE args->>0 = 'cancelled' AND state = 'running'
              AND run_at > '$tc'},
	'held: cancelled, it holds the next tick back no more');
as('alice', q{
SELECT qlater_unschedule('cancelled');
SELECT qlater_cancel(id) FROM qlater_jobs WHERE args->>0 = 'cancelled';
});
wait_for(q{SELECT count(*) >= 3 FROM runs WHERE label = 'batched'}, 'held: the schedule into a batch queue runs');
all_off();
is(overlapping_pairs('batched'), '0', 'held: in a batch queue too, no run overlaps another');
as('alice', q{SELECT qlater_unschedule('batched')});

########################################################################
### held: a schedule the system switched off stays off until the reason
### is gone, whoever turns it on
########################################################################
su(q{
CREATE FUNCTION alice_h(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO ticks (label) VALUES (label) $$;
ALTER FUNCTION alice_h(text) OWNER TO alice;
});
as('alice', q{
SELECT qlater_register('alice_h(text)');
SELECT qlater_schedule('u10', '1 seconds', 'alice_h', '["u10"]');
});
as('bob', q{
SELECT qlater_create_queue('bob_q');
SELECT qlater_grant_queue('bob_q', 'alice', 'enqueue');
});
as('alice', q{SELECT qlater_schedule('x10', '1 seconds', 'mark', '["x10"]', queue => 'bob_q')});
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'u10'}, 'held: the schedules fire');
wait_for(q{SELECT count(*) >= 1 FROM ticks WHERE label = 'x10'}, 'held: both');
# x10 is switched off by its owner first, so that no job of it waits when
# its queue turns external (S9: a waiting job hides the reason)
as('alice', q{
SELECT qlater_unregister('alice_h(text)');
SELECT qlater_alter_schedule('x10', active => false);
});
wait_for(q{SELECT count(*) = 0 FROM qlater_job WHERE queue = 'bob_q'}, 'held: no job waits in the queue');
su(q{SELECT qlater_alter_queue('bob_q', external => true)});
wait_for(q{SELECT NOT active FROM qlater_schedule WHERE name = 'u10'},
	'held: a schedule of an unregistered handler is deactivated');
$before = su(q{SELECT string_agg(concat_ws('|', name, active, queue, args, next_tick), ',' ORDER BY name)
                 FROM qlater_schedule WHERE name IN ('u10', 'x10')});
for my $case (
	[ 'alice', q{SELECT qlater_alter_schedule('u10', active => true)}, '42883' ],
	[ 'alice', q{SELECT qlater_alter_schedule('u10', args => '["again"]')}, '42883' ],
	[ 'adm', q{SELECT qlater_alter_schedule('u10', active => true, owner => 'alice')}, '42883' ],
	[ 'alice', q{SELECT qlater_alter_schedule('x10', active => true)}, '0A000' ],
	[ 'alice', q{SELECT qlater_alter_schedule('x10', active => true, overlap => true)}, '0A000' ],
	[ 'alice', q{SELECT qlater_alter_schedule('x10', schedule => '2 seconds')}, '0A000' ],
	[ 'adm', q{SELECT qlater_alter_schedule('x10', active => true, owner => 'alice')}, '0A000' ],
	[ 'bob', q{SELECT qlater_alter_schedule('x10', active => true, owner => 'alice')}, '42501' ])
{
	($ret, $out, $err) = try_as($case->[0], $case->[1]);
	like($err, qr/ERROR:  $case->[2]:/, "held: $case->[0]: $case->[1] fails with $case->[2]");
}
is(su(q{SELECT string_agg(concat_ws('|', name, active, queue, args, next_tick), ',' ORDER BY name)
          FROM qlater_schedule WHERE name IN ('u10', 'x10')}), $before,
	'held: and they stay as they were');
as('alice', q{
SELECT qlater_register('alice_h(text)');
SELECT qlater_alter_schedule('u10', active => true);
SELECT qlater_alter_schedule('x10', queue => 'default', active => true);
});
my $t10 = now_ts();
wait_for(qq{SELECT count(*) >= 1 FROM ticks WHERE label = 'u10' AND at > '$t10'},
	'held: the reason gone, the owner turns them on');
wait_for(qq{SELECT count(*) >= 1 FROM ticks WHERE label = 'x10' AND at > '$t10'}, 'held: both');
as('alice', q{SELECT qlater_unschedule('u10'); SELECT qlater_unschedule('x10');});

########################################################################
### S9: a tick skipped for a waiting job checks nothing
########################################################################
# the job of r9 fails and waits for its retry (19 s after its second
# attempt); meanwhile bob revokes alice's grant on his queue
su(q{
CREATE FUNCTION fails(label text) RETURNS void LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'fails %', label; END $$;
SELECT qlater_register('fails(text)');
});
as('bob', q{
SELECT qlater_create_queue('bob_q9');
SELECT qlater_grant_queue('bob_q9', 'alice', 'enqueue');
});
as('alice', q{SELECT qlater_schedule('r9', '1 seconds', 'fails', '["r9"]', queue => 'bob_q9')});
wait_for(q{SELECT count(*) = 1 FROM qlater_jobs WHERE queue = 'bob_q9' AND attempts >= 2
             AND run_at > now() + interval '5 seconds'},
	'S9: the job of the schedule waits for its retry');
my $log9 = -s $node->logfile;
as('bob', q{SELECT qlater_revoke_queue('bob_q9', 'alice', 'enqueue')});
sleep 3;
my $r9 = su(q{SELECT active || '|' || (skipped_ticks > 0) FROM qlater_schedule WHERE name = 'r9'});
is($r9, 'false|true',
	"S9: the next tick after the revoke deactivates the schedule, its job waiting or not");
ok($node->log_contains(qr/qlater schedule "r9" of role "alice" is deactivated/, $log9),
	'S9: with its warning in the log');
as('alice', q{
SELECT qlater_unschedule('r9');
SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'bob_q9';
});

########################################################################
### held: switched off and on from two sessions at once
########################################################################
as('alice', q{SELECT qlater_schedule('two', '@hourly', 'mark', '["two"]')});
my $off = session('alice');
$off->query_safe('BEGIN');
$off->query_safe(q{SELECT qlater_alter_schedule('two', active => false)});
my $on = session('adm');
$on->{stdin} .= "SELECT qlater_alter_schedule('two', active => true, owner => 'alice');\n";
$on->{run}->pump_nb;
wait_for(q{SELECT count(*) > 0 FROM pg_stat_activity WHERE usename = 'adm' AND wait_event_type = 'Lock'},
	'held: the second switch waits for the first');
$off->query_safe('COMMIT');
$on->query(q{SELECT 1});
is($on->{stderr}, '', 'held: and then switches it on, without error');
$off->quit;
$on->quit;
is(as('alice', q{SELECT active FROM qlater_schedules WHERE name = 'two'}), 't',
	'held: the last switch wins');
as('alice', q{SELECT qlater_unschedule('two')});

########################################################################
### held: a schedule whose job waits in a paused queue (if the workers
### honour pauses in this build)
########################################################################
as('alice', q{
SELECT qlater_create_queue('pq');
SELECT qlater_pause_queue('pq');
SELECT qlater_enqueue('mark', '["probe"]', queue => 'pq');
});
sleep 2;
SKIP:
{
	skip 'the workers of this build do not honour qlater_pause_queue', 3
	  if su(q{SELECT count(*) FROM ticks WHERE label = 'probe'}) ne '0';
	as('alice', q{
SELECT qlater_cancel(id) FROM qlater_jobs WHERE args->>0 = 'probe';
SELECT qlater_schedule('paused', '1 seconds', 'mark', '["paused"]', queue => 'pq');
});
	wait_for(q{SELECT skipped_ticks >= 2 FROM qlater_schedules WHERE name = 'paused'},
		'held: a schedule whose job waits in a paused queue skips its ticks');
	is(su(q{SELECT count(*) FROM qlater_job WHERE args->>0 = 'paused'}), '1',
		'held: with one job waiting');
	as('alice', q{SELECT qlater_resume_queue('pq')});
	wait_for(q{SELECT count(*) >= 2 FROM ticks WHERE label = 'paused'},
		'held: resumed, it runs and fires on');
	as('alice', q{SELECT qlater_unschedule('paused')});
}
su(q{DELETE FROM qlater_job WHERE queue = 'pq'});

########################################################################
### held: 1,000 '1 seconds' schedules
########################################################################
my $log_offset = -s $node->logfile;
as('alice', q{
SELECT count(qlater_schedule('m' || i, '1 seconds', 'mark', jsonb_build_array('m' || i)))
  FROM generate_series(1, 1000) i;
});
my $t13 = now_ts();
# how soon each has fired twice depends on the machine's throughput (a tick
# whose schedule's job still waits is skipped): look for up to 60 s
my ($fired, $least, $took);
my $t13_until = time + 60;
while (1)
{
	($fired, $least, $took) = split /\|/, su(qq{
SELECT count(*), coalesce(min(n), 0), round(extract(epoch FROM clock_timestamp() - '$t13')) FROM (
  SELECT label, count(*) AS n FROM ticks
   WHERE label ~ '^m[0-9]+\$' AND at > '$t13' GROUP BY label) l});
	last if ($fired == 1000 && $least >= 2) || time > $t13_until;
	sleep 1;
}
note "1,000 schedules: $fired fired in $took s, the least often $least times";
is($fired, '1000', 'held: 1,000 \'1 seconds\' schedules all fire');
cmp_ok($least, '>=', 2, 'held: each at least twice');
as('alice', q{SELECT count(qlater_unschedule(name)) FROM qlater_schedules WHERE name ~ '^m[0-9]+$'});
wait_for(q{SELECT count(*) = 0 FROM qlater_job}, 'held: their jobs are done');
ok(!$node->log_contains(qr/could not fire qlater schedule/, $log_offset),
	'held: no tick failed');

unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no server process ended on a signal');
note sprintf('run time %.1f s', time - $started);

$node->stop;
done_testing();
