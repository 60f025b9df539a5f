# 080_dump.pl: pg_dump and restore keep registrations, pending and dead
# jobs, and the job id sequence; restored jobs run.
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

$node->safe_psql('postgres', 'CREATE ROLE alice; CREATE DATABASE src');
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

my $jobs_q = q{
SELECT id, queue, handler, args, priority, run_at, attempts, max_attempts,
       last_error, state, role, timeout, crashes, enqueued_at
  FROM qlater_jobs ORDER BY id};
my $handlers_q = 'SELECT * FROM qlater_handler ORDER BY handler';
my $seq_q = 'SELECT last_value, is_called FROM qlater_job_id_seq';

my $jobs_src = $node->safe_psql('src', $jobs_q);
my $handlers_src = $node->safe_psql('src', $handlers_q);
my $seq_src = $node->safe_psql('src', $seq_q);
my $max_id = $node->safe_psql('src', 'SELECT max(id) FROM qlater_jobs');
is($node->safe_psql('src', 'SELECT count(*) FROM qlater_jobs'), '6', '6 jobs to dump');
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
		'pending-1:pending,pending-2:pending,pending-alice:pending,dead-2:dead',
		"$how: the other restored jobs are as they were");
}

# the source is untouched by all this
is($node->safe_psql('src', $jobs_q), $jobs_src, 'the jobs of src are unchanged');

$node->stop;
done_testing();
