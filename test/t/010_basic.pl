# 010_basic.pl: jobs run in the background after commit, as the role that
# enqueued them; rollback, arguments, privileges, processes, run_at timing,
# and jobs whose handler or role disappeared.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('basic');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$node->start;

# the launcher runs even before any database has the extension
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater launcher'"),
	'the launcher shows up in pg_stat_activity as "qlater launcher"');

$node->safe_psql('postgres', 'CREATE EXTENSION qlater');

ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'postgres'}),
	'4 workers show up in pg_stat_activity as "qlater worker"');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qlater launcher'"),
	'1',
	'exactly one launcher');

$node->safe_psql(
	'postgres', q{
CREATE TABLE done (label text, a int, b text, cu text, su text,
                   at timestamptz DEFAULT clock_timestamp());
GRANT ALL ON done TO PUBLIC;
CREATE FUNCTION rec(label text, a int DEFAULT 7, b text DEFAULT 'dflt')
RETURNS void LANGUAGE sql
AS $$ INSERT INTO done (label, a, b, cu, su)
      VALUES (label, a, b, current_user, session_user) $$;
SELECT qlater_register('rec(text,int,text)');
CREATE ROLE alice LOGIN;
});

# wait until no job is left but dead ones
sub wait_idle
{
	my ($db, $msg) = @_;
	ok( $node->poll_query_until(
			$db || 'postgres',
			"SELECT count(*) = 0 FROM qlater_jobs WHERE state <> 'dead'"),
		$msg || 'the queue drains');
}

# wait until a label shows up in done
sub wait_label
{
	my ($label, $msg) = @_;
	ok( $node->poll_query_until(
			'postgres', "SELECT count(*) > 0 FROM done WHERE label = '$label'"),
		$msg || "job '$label' ran");
}

### the job runs after commit, not before
my $out = $node->safe_psql(
	'postgres', q{
BEGIN;
SELECT qlater_enqueue('rec', '["after-commit"]') > 0;
SELECT pg_sleep(0.5);
SELECT count(*) FROM done;
SELECT state FROM qlater_jobs;
COMMIT;
});
is($out, "t\n\n0\npending", 'an uncommitted job is pending and does not run');
wait_label('after-commit', 'the job runs in the background after commit');
is($node->safe_psql('postgres', 'SELECT count(*) FROM qlater_jobs'),
	'0', 'a finished job is removed');

### a rolled back enqueue leaves nothing
$node->safe_psql(
	'postgres', q{
BEGIN;
SELECT qlater_enqueue('rec', '["rolled-back"]');
ROLLBACK;
SELECT qlater_enqueue('rec', '["after-rollback"]');
});
wait_label('after-rollback');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM done WHERE label = 'rolled-back'"),
	'0',
	'a rolled back enqueue never runs');
is($node->safe_psql('postgres', 'SELECT count(*) FROM qlater_jobs'),
	'0', 'a rolled back enqueue leaves no job');

### positional and named arguments, with defaults
$node->safe_psql(
	'postgres', q{
SELECT qlater_enqueue('rec', '["pos-all", 1, "x"]');
SELECT qlater_enqueue('rec', '["pos-default"]');
SELECT qlater_enqueue('rec', '{"label": "named", "b": "nb"}');
SELECT qlater_enqueue('rec', '{"b": "nb2", "a": 42, "label": "named-all"}');
});
wait_idle('postgres', 'argument jobs drain');
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(format('%s:%s:%s', label, a, b), ' ' ORDER BY label)
  FROM done WHERE label IN ('pos-all', 'pos-default', 'named', 'named-all')}),
	'named:7:nb named-all:42:nb2 pos-all:1:x pos-default:7:dflt',
	'positional and named arguments, with defaults');

### a role's job runs as that role
$node->safe_psql(
	'postgres', q{
SET ROLE alice;
SELECT qlater_enqueue('rec', '["as-alice"]');
});
# also when alice logs in herself
$node->safe_psql('postgres',
	q{SELECT qlater_enqueue('rec', '["as-alice-login"]')},
	extra_params => [ '-U', 'alice' ]);
wait_label('as-alice');
wait_label('as-alice-login');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(cu, ',' ORDER BY label) FROM done WHERE label IN ('as-alice', 'as-alice-login')"
	),
	'alice,alice',
	'the job of alice runs with current_user alice');
my $su = $node->safe_psql('postgres',
	"SELECT su FROM done WHERE label = 'as-alice'");
note "session_user inside alice's job: $su";
is( $node->safe_psql(
		'postgres', "SELECT cu FROM done WHERE label = 'after-commit'"),
	$node->safe_psql('postgres', 'SELECT current_user'),
	'the superuser\'s job runs as the superuser');

### a role cannot enqueue a handler it cannot EXECUTE
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION secret(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO done (label, cu) VALUES (label, current_user) $$;
REVOKE EXECUTE ON FUNCTION secret(text) FROM PUBLIC;
SELECT qlater_register('secret(text)');
});
my ($ret, $stdout, $stderr) = $node->psql(
	'postgres', q{
\set VERBOSITY verbose
SET ROLE alice;
SELECT qlater_enqueue('secret', '["secret-by-alice"]');
});
isnt($ret, 0, 'enqueue of a handler alice cannot execute fails');
like($stderr, qr/42501/, 'with SQLSTATE 42501');
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM qlater_jobs WHERE handler LIKE '%secret%'"),
	'0',
	'and enqueues nothing');

### a future run_at job runs at its run_at, not at the next poll
# Idle workers sleep for qlater.poll_interval at most; they must wake for
# the due job on their own.  With a minute's poll_interval a job that
# starts within half of it was not found by a poll.  (How soon it starts
# is the benchmark's business: no test here holds a busy machine to a
# fraction of a second.)
$node->safe_psql(
	'postgres', q{
ALTER SYSTEM SET qlater.poll_interval = '60s';
SELECT pg_reload_conf();
});
sleep(1);    # the reload wakes the workers; they sleep again with the new setting
my $run_at = $node->safe_psql('postgres',
	"SELECT (clock_timestamp() + interval '2 seconds')::text");
$node->safe_psql('postgres',
	"SELECT qlater_enqueue('rec', '[\"timed\"]', run_at => '$run_at')");
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM done WHERE label = 'timed'"),
	'0',
	'a future job does not run before its run_at');
wait_label('timed');
my $delay_ms = $node->safe_psql('postgres',
	"SELECT round(extract(epoch FROM at - '$run_at'::timestamptz) * 1000) FROM done WHERE label = 'timed'"
);
note "the timed job started $delay_ms ms after its run_at";
cmp_ok($delay_ms, '>=', 0, 'the timed job did not start before run_at');
cmp_ok($delay_ms, '<', 30000,
	'the timed job started well before the next poll: its worker woke for the run_at');

### jobs that come due together start together, on every idle worker
# The commit of future jobs wakes one worker for their run_at; the worker
# that claims the first wakes another for the rest, and so on.  With a
# minute's poll_interval no worker would look on its own.
$node->safe_psql(
	'postgres', q{
CREATE TABLE burst (pid int, at timestamptz);
CREATE FUNCTION burst() RETURNS void LANGUAGE sql AS $$
    INSERT INTO burst VALUES (pg_backend_pid(), clock_timestamp());
    SELECT pg_sleep(1.5);
$$;
SELECT qlater_register('burst()');
});
$run_at = $node->safe_psql('postgres',
	"SELECT (clock_timestamp() + interval '2 seconds')::text");
$node->safe_psql('postgres',
	"SELECT count(*) FROM qlater_enqueue_many('burst', '[[], [], []]', run_at => '$run_at')");
ok($node->poll_query_until('postgres', "SELECT count(*) = 3 FROM burst"),
	'the three jobs due together ran');
my ($pids, $last_ms) = split /\|/, $node->safe_psql('postgres',
	"SELECT count(DISTINCT pid), round(extract(epoch FROM max(at) - '$run_at'::timestamptz) * 1000) FROM burst");
note "the last of the three started $last_ms ms after their run_at";
is($pids, 3, 'in three workers');
cmp_ok($last_ms, '<', 30000,
	'all three started well before the next poll: no worker waited for one');
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET qlater.poll_interval; SELECT pg_reload_conf();");

### a job whose handler was dropped after enqueue ends dead
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION doomed(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO done (label) VALUES (label) $$;
SELECT qlater_register('doomed(text)');
BEGIN;
SELECT qlater_enqueue('doomed', '["doomed"]');
DROP FUNCTION doomed(text);
COMMIT;
SELECT qlater_enqueue('rec', '["after-doomed"]');
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'dead' FROM qlater_jobs WHERE handler LIKE '%doomed%'"),
	'a job whose handler was dropped ends dead');
is( $node->safe_psql(
		'postgres', q{
SELECT format('%s|%s|%s|%s', last_error->>'sqlstate',
              last_error->>'message' LIKE '%doomed%does not exist%',
              last_error->>'attempt', attempts)
  FROM qlater_jobs WHERE handler LIKE '%doomed%'}),
	'42883|t|1|1',
	'its last_error says the function does not exist');
wait_label('after-doomed', 'other jobs keep running after the dropped handler');

### a role with jobs cannot be dropped where its jobs are; a job whose role
### was dropped from another database ends dead
my ($drop_ret, $drop_out, $drop_err) = $node->psql(
	'postgres', q{
CREATE ROLE bob;
BEGIN;
SET ROLE bob;
SELECT qlater_enqueue('rec', '["by-bob"]');
RESET ROLE;
DROP ROLE bob;
COMMIT;
});
like($drop_err, qr/role "bob" cannot be dropped because it has qlater jobs, schedules or queues/,
	'DROP ROLE of a role with jobs in the database is refused');
$node->safe_psql(
	'postgres', q{
BEGIN;
SET ROLE bob;
SELECT qlater_enqueue('rec', '["by-bob"]', run_at => now() + '2 s');
RESET ROLE;
COMMIT;
});
$node->safe_psql('template1', 'DROP ROLE bob');
$node->safe_psql('postgres', q{SELECT qlater_enqueue('rec', '["after-bob"]', run_at => now() + '2 s')});
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'dead' FROM qlater_jobs WHERE role = 'bob'"),
	'a job whose role was dropped ends dead');
is( $node->safe_psql(
		'postgres', q{
SELECT format('%s|%s', last_error->>'sqlstate',
              last_error->>'message' LIKE '%role%bob%does not exist%')
  FROM qlater_jobs WHERE role = 'bob'}),
	'42704|t',
	'its last_error says the role does not exist');
wait_label('after-bob', 'other jobs keep running after the dropped role');
is( $node->safe_psql('postgres', "SELECT count(*) FROM done WHERE label = 'by-bob'"),
	'0', 'the dropped role\'s job did nothing');

### a trigger on the job table sees each finished job's removal
# The workers remove a finished job's row in place; a table with triggers
# (an administrator's audit trail) goes through the DELETE statement.  The
# trigger runs as the workers' user, with their search_path (pg_catalog):
# its function names its schema.
$node->safe_psql(
	'postgres', q{
CREATE TABLE removed (id bigint);
CREATE FUNCTION note_removal() RETURNS trigger LANGUAGE plpgsql
SET search_path = public AS $$
BEGIN
    INSERT INTO removed VALUES (OLD.id);
    RETURN OLD;
END $$;
CREATE TRIGGER note_removal AFTER DELETE ON qlater_job
    FOR EACH ROW EXECUTE FUNCTION note_removal();
});
my $audited = $node->safe_psql('postgres',
	"SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_enqueue_many('rec', "
	  . "'[[\"audited-1\"], [\"audited-2\"], [\"audited-3\"]]') id");
wait_label("audited-$_") for 1 .. 3;
ok( $node->poll_query_until(
		'postgres',
		"SELECT string_agg(id::text, ',' ORDER BY id) = '$audited' FROM removed"),
	'the trigger saw the three jobs removed');
$node->safe_psql('postgres', 'DROP TRIGGER note_removal ON qlater_job');

### handlers run with the database's settings, not the workers' own
# (the workers plan their own statements without seqscans, sorts or JIT)
$node->safe_psql(
	'postgres', q{
CREATE TABLE seen_settings (s text);
CREATE FUNCTION see_settings() RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen_settings
    SELECT string_agg(n || '=' || current_setting(n), ',' ORDER BY n)
      FROM unnest('{enable_seqscan,enable_sort,jit}'::text[]) n
$$;
SELECT qlater_register('see_settings()');
SELECT qlater_enqueue('see_settings', '[]');
});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 1 FROM seen_settings'),
	'the settings job ran');
is( $node->safe_psql('postgres', 'SELECT s FROM seen_settings'),
	$node->safe_psql(
		'postgres', q{
SELECT string_agg(n || '=' || current_setting(n), ',' ORDER BY n)
  FROM unnest('{enable_seqscan,enable_sort,jit}'::text[]) n}),
	'a handler sees the database\'s enable_seqscan, enable_sort and jit');

# all 4 workers are still there
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'4',
	'all workers survived');

$node->stop;
done_testing();
