# 056_stats.pl: the workers report their statistics while they live.
#
# A job's writes show in pg_stat_user_tables (n_tup_ins of the handler's
# table, n_tup_del of qlater_job) while the same workers still run, and
# autovacuum, which decides from those statistics, vacuums and analyzes by
# itself a table written only by jobs.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $node = PostgreSQL::Test::Cluster->new('stats');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n"
	  . "autovacuum = on\n"
	  . "autovacuum_naptime = 1\n"
	  . "track_counts = on\n");
$node->start;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

# poll(query, seconds): true once the query returns 't' (one try a second)
sub poll
{
	my ($query, $seconds) = @_;
	my $t0 = time;
	while (time - $t0 < $seconds)
	{
		return 1 if $node->safe_psql('postgres', $query) eq 't';
		sleep 1;
	}
	return 0;
}

q1(q{
CREATE EXTENSION qlater;
CREATE TABLE sink (k int NOT NULL);
CREATE FUNCTION put(k int) RETURNS void LANGUAGE sql
AS $$ INSERT INTO sink VALUES (k) $$;
SELECT qlater_register('put(int)');
-- written only by jobs: each job inserts a row and deletes it (a dead tuple)
CREATE TABLE churn (k int PRIMARY KEY, pad text);
ALTER TABLE churn SET (autovacuum_vacuum_threshold = 50,
                       autovacuum_vacuum_scale_factor = 0,
                       autovacuum_vacuum_insert_threshold = 50,
                       autovacuum_vacuum_insert_scale_factor = 0,
                       autovacuum_analyze_threshold = 50,
                       autovacuum_analyze_scale_factor = 0);
CREATE FUNCTION churn(k int) RETURNS void LANGUAGE sql AS $$
    INSERT INTO churn VALUES (k, repeat('x', 100));
    DELETE FROM churn WHERE churn.k = $1;
$$;
SELECT qlater_register('churn(int)');
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'2 workers run');
my $workers = q1("SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity "
	  . "WHERE backend_type = 'qlater worker'");
my $alive = "(SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity "
  . "WHERE backend_type = 'qlater worker') = '$workers'";

### a job's inserts and the jobs' removal are counted while the workers live
my $n = 2000;
q1("SELECT count(*) FROM qlater_enqueue_many('put', "
	  . "(SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, $n) g))");
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM qlater_job'),
	'the jobs ran');
is(q1('SELECT count(*) FROM sink'), $n, "$n rows in sink");

ok( poll(
		"SELECT coalesce((SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'sink'), 0) >= $n",
		60),
	"pg_stat_user_tables counts the $n inserts of the jobs into sink")
  or diag q1("SELECT n_tup_ins, n_live_tup FROM pg_stat_user_tables WHERE relname = 'sink'");
ok( poll(
		"SELECT coalesce((SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'qlater_job'), 0) >= $n",
		30),
	"and the $n deletions of finished jobs from qlater_job")
  or diag q1("SELECT n_tup_ins, n_tup_del FROM pg_stat_user_tables WHERE relname = 'qlater_job'");
is(q1("SELECT $alive"), 't', 'by the same workers, still running');

### autovacuum processes a table written only by jobs
q1("SELECT count(*) FROM qlater_enqueue_many('churn', "
	  . "(SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 1000) g))");
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM qlater_job'),
	'the churn jobs ran');
is(q1('SELECT count(*) FROM churn'), '0', 'churn is empty again');
ok( poll(
		"SELECT autovacuum_count > 0 FROM pg_stat_user_tables WHERE relname = 'churn'",
		120),
	'autovacuum vacuumed churn by itself')
  or diag q1("SELECT n_tup_ins, n_tup_del, n_dead_tup, n_ins_since_vacuum, "
	  . "autovacuum_count, autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'churn'");
ok( poll(
		"SELECT autoanalyze_count > 0 FROM pg_stat_user_tables WHERE relname = 'churn'",
		60),
	'and analyzed it');
is(q1("SELECT $alive"), 't', 'the workers still run');

my $log = slurp_file($node->logfile);
is(scalar(grep { /terminated by signal/ } split /\n/, $log),
	0, 'no server process was terminated by a signal');

$node->stop('fast', fail_ok => 1);
done_testing();
