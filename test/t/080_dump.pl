# 080_dump.pl: pg_dump and restore keep registrations, pending and dead
# jobs, and the job id sequence; restored jobs run.  The queues of 0.2 too:
# owners, kind, pause, limits, priority bounds, batch settings, and grants
# with their privileges, which hold in the restored database; jobs with a
# key, which they still hold; schedules with their overlap and skipped
# ticks.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$node->start;

$node->safe_psql('postgres', 'CREATE ROLE alice; CREATE ROLE bob; CREATE DATABASE src');
$node->safe_psql(
	'src', q{
CREATE EXTENSION qlater;
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE TABLE app.marks (label text, cu text);
CREATE TABLE app.pass (name text PRIMARY KEY);
GRANT ALL ON app.marks, app.pass TO PUBLIC;
CREATE FUNCTION app.mark(label text, n int DEFAULT 0) RETURNS void LANGUAGE sql
AS $$ INSERT INTO app.marks VALUES (label, current_user) $$;
-- fails unless its label is in app.pass
CREATE FUNCTION app.maybe(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM app.pass WHERE name = label) THEN
        RAISE EXCEPTION 'no pass for %', label USING HINT = 'insert it';
    END IF;
    INSERT INTO app.marks VALUES (label, current_user);
END
$$;
SELECT qlater_register('app.mark(text,int)', queue => 'marks', priority => 7,
                       max_attempts => 9, timeout => '5 minutes');
SELECT qlater_register('app.maybe(text)', max_attempts => 1);
-- records its run, then sleeps longer than a second
CREATE FUNCTION app.nap(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO app.marks VALUES (label, current_user); SELECT pg_sleep(2.5) $$;
SELECT qlater_register('app.nap(text)');
});
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'src'}),
	'src has 4 workers');

# pending jobs, positional and named, also of alice
$node->safe_psql(
	'src', q{
SELECT qlater_enqueue('app.mark', '["pending-1", 1]', run_at => '2100-01-01 00:00+00');
SELECT qlater_enqueue('app.mark', '{"label": "pending-2"}', run_at => now() + interval '1 day',
                      priority => 3, queue => 'other', max_attempts => 2);
SET ROLE alice;
SELECT qlater_enqueue('app.mark', '["pending-alice"]', run_at => now() + interval '1 day');
SELECT qlater_enqueue('app.maybe', '["dead-alice"]');
RESET ROLE;
SELECT qlater_enqueue('app.maybe', '["dead-1"]');
SELECT qlater_enqueue('app.maybe', '["dead-2"]');
});
ok( $node->poll_query_until(
		'src',
		"SELECT count(*) = 3 FROM qlater_jobs WHERE state = 'dead'"),
	'3 dead jobs');
# jobs that run and are gone (they advance the sequence past
# the ids of the jobs left)
$node->safe_psql('src',
	"SELECT qlater_enqueue('app.mark', jsonb_build_array('ran-' || g)) FROM generate_series(1, 30) g");
ok( $node->poll_query_until(
		'src', "SELECT count(*) = 30 FROM app.marks WHERE label LIKE 'ran-%'"),
	'the due jobs ran');

# queues of alice: an external one, paused, that bob may consume and
# enqueue into, with a job of hers; an in-server one with batches, a limit
# of running jobs and a priority bound (set by an admin), that bob may
# enqueue into
$node->safe_psql(
	'src', q{
SET ROLE alice;
SELECT qlater_create_queue('alice_ext', external => true);
SELECT qlater_grant_queue('alice_ext', 'bob', 'consume');
SELECT qlater_grant_queue('alice_ext', 'bob', 'enqueue');
SELECT qlater_enqueue('AppJob', '{"label": "app-1"}', queue => 'alice_ext');
SELECT qlater_pause_queue('alice_ext');
SELECT qlater_create_queue('alice_q', batch_size => 5, batch_delay => '30 ms');
SELECT qlater_alter_queue('alice_q', max_running => 2);
SELECT qlater_grant_queue('alice_q', 'bob', 'enqueue');
RESET ROLE;
SELECT qlater_alter_queue('alice_q', min_priority => 0);
});

# jobs with a key, of two roles (keys are per role)
my $keyed_id = $node->safe_psql(
	'src', q{
SELECT qlater_enqueue('app.mark', '["keyed"]', run_at => '2100-01-01 00:00+00', key => 'mark:1')});
my $keyed_alice_id = $node->safe_psql(
	'src', q{
SET ROLE alice;
SELECT qlater_enqueue('app.mark', '["keyed-alice"]', run_at => '2100-01-01 00:00+00', key => 'mark:1')});

# schedules: one of alice's with overlap, that does not fire in the test;
# one without, whose job outlasts its interval: it skips ticks, then is
# switched off
$node->safe_psql(
	'src', q{
SET ROLE alice;
SELECT qlater_schedule('yearly', '0 0 1 1 *', 'app.mark', '["yearly"]',
                       timezone => 'Europe/Paris', overlap => true);
RESET ROLE;
SELECT qlater_schedule('busy', '1 seconds', 'app.nap', '["busy"]');
});
ok( $node->poll_query_until(
		'src', "SELECT skipped_ticks >= 1 FROM qlater_schedules WHERE name = 'busy'"),
	'the schedule without overlap skips ticks while its job runs');
$node->safe_psql('src', q{SELECT qlater_alter_schedule('busy', active => false)});
ok( $node->poll_query_until(
		'src', "SELECT count(*) = 0 FROM qlater_jobs WHERE handler = 'app.nap(text)'"),
	'switched off, its last job ends');

my $jobs_q = q{
SELECT id, queue, handler, args, priority, run_at, attempts, max_attempts,
       last_error, state, role, timeout, crashes, enqueued_at, key
  FROM qlater_jobs ORDER BY id};
my $handlers_q = 'SELECT * FROM qlater_handler ORDER BY handler';
my $seq_q = 'SELECT last_value, is_called FROM qlater_job_id_seq';
my $queues_q = 'SELECT * FROM qlater_queues ORDER BY name COLLATE "C"';
my $grants_q = 'SELECT * FROM qlater_queue_grant ORDER BY 1, 2, 3';
my $schedules_q = 'SELECT * FROM qlater_schedules ORDER BY id';

my $jobs_src = $node->safe_psql('src', $jobs_q);
my $handlers_src = $node->safe_psql('src', $handlers_q);
my $seq_src = $node->safe_psql('src', $seq_q);
my $queues_src = $node->safe_psql('src', $queues_q);
my $grants_src = $node->safe_psql('src', $grants_q);
my $schedules_src = $node->safe_psql('src', $schedules_q);
my $skipped_src = $node->safe_psql('src', "SELECT skipped_ticks FROM qlater_schedules WHERE name = 'busy'");
my $max_id = $node->safe_psql('src', 'SELECT max(id) FROM qlater_jobs');
is($node->safe_psql('src', 'SELECT count(*) FROM qlater_jobs'), '9', '9 jobs to dump');
is($node->safe_psql('src', q{SELECT count(*) FROM qlater_jobs WHERE key = 'mark:1'}),
	'2', 'of which 2 with a key');
is( $node->safe_psql(
		'src', q{
SELECT string_agg(concat_ws(':', name, owner, external, paused, max_running, min_priority, batch_size),
                  ' ' ORDER BY name COLLATE "C")
  FROM qlater_queues WHERE name LIKE 'alice%'}),
	'alice_ext:alice:t:t:-32768:1 alice_q:alice:f:f:2:0:5',
	"alice's queues to dump");
is($node->safe_psql('src', 'SELECT count(*) FROM qlater_queue_grant'), '3', '3 grants to dump');
is( $node->safe_psql(
		'src', q{
SELECT string_agg(concat_ws(':', name, owner, active, overlap, skipped_ticks > 0), ' ' ORDER BY id)
  FROM qlater_schedules}),
	'yearly:alice:t:t:f busy:' . $node->safe_psql('src', 'SELECT current_user') . ':f:f:t',
	'2 schedules to dump, with and without overlap, one with skipped ticks');
note "sequence of src: $seq_src, max job id $max_id";

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $dumpfile = "$tmp/src.dump";
my $sqlfile = "$tmp/src.sql";
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dumpfile, '-d', 'src' ],
	'pg_dump -Fc of src');
$node->command_ok([ 'pg_dump', '-f', $sqlfile, '-d', 'src' ], 'pg_dump (plain) of src');

for my $how ('pg_restore', 'psql')
{
	my $db = $how eq 'pg_restore' ? 'dst_custom' : 'dst_plain';
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	if ($how eq 'pg_restore')
	{
		$node->command_ok(
			[ 'pg_restore', '--exit-on-error', '-d', $db, $dumpfile ],
			"pg_restore into $db");
	}
	else
	{
		$node->command_ok(
			[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $db, '-f', $sqlfile ],
			"psql restore into $db");
	}

	is($node->safe_psql($db, $handlers_q), $handlers_src, "$how: registrations restored");
	is($node->safe_psql($db, $jobs_q), $jobs_src,
		"$how: jobs restored with the same ids, args, state, role, attempts, last_error");
	is($node->safe_psql($db, $seq_q), $seq_src, "$how: sequence value restored");

	ok( $node->poll_query_until(
			'postgres', qq{
SELECT count(*) > 0 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = '$db'}),
		"$how: the restored database gets workers");

	my $new = $node->safe_psql($db, "SELECT qlater_enqueue('app.mark', '[\"new\"]')");
	cmp_ok($new, '>', $max_id, "$how: the next job id ($new) is above the dumped ones");
	cmp_ok($new, '>', (split /\|/, $seq_src)[0], "$how: and above the sequence value");
	ok( $node->poll_query_until(
			$db, "SELECT count(*) = 1 FROM app.marks WHERE label = 'new'"),
		"$how: new jobs run in the restored database");

	# restored dead jobs can be retried and run as their role
	$node->safe_psql($db, "INSERT INTO app.pass VALUES ('dead-1'), ('dead-alice')");
	is( $node->safe_psql(
			$db, q{
SELECT count(*) FILTER (WHERE qlater_retry(id))
  FROM qlater_jobs WHERE args->>0 IN ('dead-1', 'dead-alice')}),
		'2',
		"$how: restored dead jobs can be retried");
	ok( $node->poll_query_until(
			$db,
			"SELECT count(*) = 2 FROM app.marks WHERE label IN ('dead-1', 'dead-alice')"),
		"$how: the retried restored jobs run");
	is( $node->safe_psql(
			$db, "SELECT cu FROM app.marks WHERE label = 'dead-alice'"),
		'alice',
		"$how: a restored job of alice runs as alice");
	is( $node->safe_psql(
			$db,
			"SELECT string_agg(coalesce(args->>0, args->>'label') || ':' || state, ',' ORDER BY id) FROM qlater_jobs"),
		'pending-1:pending,pending-2:pending,pending-alice:pending,dead-2:dead,app-1:pending,'
		  . 'keyed:pending,keyed-alice:pending',
		"$how: the other restored jobs are as they were");

	# the queues and grants of 0.2, as they were, and in force
	is($node->safe_psql($db, $queues_q), $queues_src,
		"$how: queues restored: owners, kind, pause, limits, priority bounds, batch settings");
	is($node->safe_psql($db, $grants_q), $grants_src,
		"$how: grants restored with their privileges");
	is( $node->safe_psql(
			$db, q{SET ROLE bob; SELECT count(*) FROM qlater_lock('alice_ext', 10)}),
		'0', "$how: the restored pause holds: the consumer gets nothing");
	$node->safe_psql($db, q{SET ROLE alice; SELECT qlater_resume_queue('alice_ext')});
	is( $node->safe_psql(
			$db, q{
SET ROLE bob;
SELECT string_agg(args->>'label', ',') FROM qlater_lock('alice_ext', 10);
SELECT qlater_enqueue('AppJob', '{"label": "app-bob"}', queue => 'alice_ext') > 0;
SELECT qlater_enqueue('app.mark', '["bob-in-alice_q"]', queue => 'alice_q') > 0;
}),
		"app-1\nt\nt",
		"$how: resumed, the restored grants let bob claim the job and enqueue into alice's queues");
	my ($ret, $stdout, $stderr) = $node->psql($db,
		q{SET ROLE alice; SELECT qlater_enqueue('app.mark', '["too-urgent"]', queue => 'alice_q', priority => -1)});
	like($stderr, qr/priority -1 is below the lowest priority queue "alice_q" accepts/,
		"$how: the restored priority bound holds");
	ok( $node->poll_query_until(
			$db, "SELECT count(*) = 1 FROM app.marks WHERE label = 'bob-in-alice_q'"),
		"$how: bob's job in alice's queue runs");

	# a restored job holds its key, for its role: an enqueue of the key
	# returns it
	is( $node->safe_psql(
			$db, q{
SELECT qlater_enqueue('app.mark', '["keyed-again"]', run_at => '2100-01-01 00:00+00', key => 'mark:1');
SET ROLE alice;
SELECT qlater_enqueue('app.mark', '["keyed-again"]', run_at => '2100-01-01 00:00+00', key => 'mark:1');
}),
		"$keyed_id\n$keyed_alice_id",
		"$how: the restored keyed jobs hold their keys, each for its role");
	is($node->safe_psql($db, q{SELECT count(*) FROM qlater_jobs WHERE key = 'mark:1'}),
		'2', "$how: and no job was added");

	# the schedules, as they were; switched on again, the one without
	# overlap still skips ticks, counting on from the dumped count
	is($node->safe_psql($db, $schedules_q), $schedules_src,
		"$how: schedules restored with overlap, skipped_ticks, ticks and state");
	$node->safe_psql($db, q{SELECT qlater_alter_schedule('busy', active => true)});
	ok( $node->poll_query_until(
			$db, "SELECT skipped_ticks > $skipped_src FROM qlater_schedules WHERE name = 'busy'"),
		"$how: the restored schedule without overlap skips ticks again");
	$node->safe_psql($db, q{SELECT qlater_alter_schedule('busy', active => false)});
}

# the source is untouched by all this
is($node->safe_psql('src', $jobs_q), $jobs_src, 'the jobs of src are unchanged');

$node->stop;
done_testing();
