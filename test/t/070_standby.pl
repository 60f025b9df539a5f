# 070_standby.pl: a streaming standby runs no qlater process and no job;
# after promotion the replicated pending jobs run on the new primary.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$primary->start;
$primary->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE TABLE marks (label text,
                    at timestamptz DEFAULT clock_timestamp());
CREATE TABLE pass (name text PRIMARY KEY);
CREATE FUNCTION mark(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO marks (label) VALUES (label) $$;
SELECT qlater_register('mark(text)');
-- waits (up to 60 s) until its label is in pass
CREATE FUNCTION hold(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN EXISTS (SELECT FROM pass WHERE name = label);
        PERFORM pg_sleep(0.1);
    END LOOP;
    INSERT INTO marks (label) VALUES (label);
END
$$;
SELECT qlater_register('hold(text)');
CREATE FUNCTION fail() RETURNS void LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'always fails'; END $$;
SELECT qlater_register('fail()', max_attempts => 1);
});
ok( $primary->poll_query_until(
		'postgres',
		"SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'the primary runs 4 workers');
$primary->safe_psql('postgres', "SELECT qlater_enqueue('mark', '[\"on-primary\"]')");
ok( $primary->poll_query_until(
		'postgres', "SELECT count(*) = 1 FROM marks WHERE label = 'on-primary'"),
	'the primary runs jobs');

$primary->backup('bkp');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bkp', has_streaming => 1);
like(slurp_file($standby->data_dir . '/postgresql.conf'),
	qr/shared_preload_libraries = 'qlater'/, 'the standby preloads qlater too');
$standby->start;

# jobs for later: one due in a few seconds, one running on the primary, one dead
my $dead = $primary->safe_psql('postgres', "SELECT qlater_enqueue('fail')");
ok( $primary->poll_query_until(
		'postgres', "SELECT state = 'dead' FROM qlater_jobs WHERE id = $dead"),
	'a dead job on the primary');
my $held = $primary->safe_psql('postgres', "SELECT qlater_enqueue('hold', '[\"held\"]')");
ok( $primary->poll_query_until(
		'postgres', "SELECT state = 'running' FROM qlater_jobs WHERE id = $held"),
	'a job is running on the primary');
my $later = $primary->safe_psql('postgres',
	"SELECT qlater_enqueue('mark', '[\"later\"]', run_at => now() + interval '6 seconds')");
$primary->safe_psql('postgres',
	"SELECT qlater_enqueue('mark', jsonb_build_array('batch-' || g), run_at => now() + interval '6 seconds') FROM generate_series(1, 50) g"
);
$primary->wait_for_catchup($standby);

is( $standby->safe_psql(
		'postgres',
		"SELECT count(*) FROM qlater_jobs WHERE id IN ($dead, $held, $later)"),
	'3',
	'the jobs are replicated to the standby');
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
# give a wrongly started launcher time to show up
$standby->safe_psql('postgres', 'SELECT pg_sleep(1)');
is( $standby->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('qlater worker', 'qlater launcher')"
	),
	'0',
	'no qlater launcher or worker runs on the standby');
my ($ret, $out, $err) = $standby->psql('postgres', "SELECT qlater_enqueue('mark', '[\"x\"]')");
isnt($ret, 0, 'qlater_enqueue fails on the standby');
like($err, qr/read-only|recovery/, 'because it is read-only');

# fail over
$primary->stop;
$standby->promote;
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', 'the standby is promoted');
ok( $standby->poll_query_until(
		'postgres',
		"SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'the promoted node starts 4 workers');
is( $standby->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qlater launcher'"),
	'1',
	'and a launcher');
$standby->safe_psql('postgres', "INSERT INTO pass VALUES ('held')");
ok( $standby->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE state <> 'dead'"),
	'the replicated pending jobs run on the promoted node');
is( $standby->safe_psql(
		'postgres',
		"SELECT count(*) FILTER (WHERE label = 'held'), count(*) FILTER (WHERE label = 'later'), count(*) FILTER (WHERE label LIKE 'batch-%'), count(DISTINCT label) FILTER (WHERE label LIKE 'batch-%') FROM marks"
	),
	'1|1|50|50',
	'each job took effect once');
is( $standby->safe_psql(
		'postgres', "SELECT concat_ws('|', state, attempts) FROM qlater_jobs WHERE id = $dead"),
	'dead|1',
	'the dead job stays dead');
my $new = $standby->safe_psql('postgres', "SELECT qlater_enqueue('mark', '[\"after-promote\"]')");
cmp_ok($new, '>', $later, 'new jobs get new ids after promotion');
ok( $standby->poll_query_until(
		'postgres', "SELECT count(*) = 1 FROM marks WHERE label = 'after-promote'"),
	'new jobs run on the promoted node');

$standby->stop;
done_testing();
