# 095_pg_cron.pl: pg_cron hands work to qlater.  A pg_cron job that calls
# qlater_enqueue enqueues a qlater job, which a qlater worker runs (with
# qlater's retries, priorities and timeouts).  Debian 12's pg_cron 1.4 has
# no seconds schedules: the test waits for a '* * * * *' tick.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('pg_cron');
plan skip_all => 'pg_cron is not installed'
  unless -e $node->config_data('--sharedir') . '/extension/pg_cron.control';

$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater,pg_cron'\n"
	  . "cron.database_name = 'postgres'\n"
	  . "cron.use_background_workers = on\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 20\n");
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION pg_cron;
CREATE EXTENSION qlater;
CREATE TABLE done (label text, who text DEFAULT current_user,
                   backend text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION h(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO done (label, backend)
      SELECT label, backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid() $$;
SELECT qlater_register('h(text)');
});

# the README's example: a nightly pg_cron job that enqueues a qlater job
ok( $node->safe_psql(
		'postgres',
		q{SELECT cron.schedule('nightly', '0 2 * * *', $$SELECT qlater_enqueue('h', '["nightly"]')$$) > 0}
	) eq 't',
	'cron.schedule accepts a command that calls qlater_enqueue');

$node->safe_psql('postgres',
	q{SELECT cron.schedule('qlater-every-minute', '* * * * *', $$SELECT qlater_enqueue('h', '["from pg_cron"]')$$)});

# the next minute's tick, plus the job's run
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) > 0 FROM done WHERE label = 'from pg_cron'}),
	'the pg_cron job enqueued a qlater job and a qlater worker ran it');
is( $node->safe_psql(
		'postgres',
		q{SELECT DISTINCT backend FROM done WHERE label = 'from pg_cron'}),
	'qlater worker', 'the handler ran in a qlater worker, not in pg_cron');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) > 0 FROM cron.job_run_details d
  JOIN cron.job j USING (jobid)
 WHERE j.jobname = 'qlater-every-minute' AND d.status = 'succeeded'}),
	't', 'pg_cron records its run as succeeded');

$node->safe_psql('postgres',
	q{SELECT cron.unschedule('qlater-every-minute'), cron.unschedule('nightly')});
$node->stop;
done_testing();
