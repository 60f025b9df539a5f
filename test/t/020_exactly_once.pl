# 020_exactly_once.pl: 20,000 jobs over 4 workers each take effect exactly
# once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('once');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
-- no unique constraint: a second run of a job must show up as a duplicate
CREATE TABLE hits (k int NOT NULL, pid int NOT NULL DEFAULT pg_backend_pid());
CREATE FUNCTION hit(k int) RETURNS void LANGUAGE sql
AS $$ INSERT INTO hits (k) VALUES (k) $$;
SELECT qlater_register('hit(int)');
});
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'postgres'}),
	'4 workers run');

my $n = 20000;
my $t0 = time;
# a few big transactions, the workers start on the first while the others
# are enqueued
for my $part (0 .. 3)
{
	my $lo = $part * 5000 + 1;
	my $hi = $lo + 4999;
	$node->safe_psql('postgres',
		"SELECT count(qlater_enqueue('hit', jsonb_build_array(g))) FROM generate_series($lo, $hi) g"
	);
}
ok( $node->poll_query_until(
		'postgres', 'SELECT count(*) = 0 FROM qlater_jobs'),
	'the queue drains');
my $elapsed = time - $t0;
note sprintf('%d jobs in %.1f s (%.0f jobs/s)', $n, $elapsed, $n / $elapsed);

is( $node->safe_psql(
		'postgres', 'SELECT count(*), count(DISTINCT k), min(k), max(k) FROM hits'),
	"$n|$n|1|$n",
	'every job took effect exactly once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM hits GROUP BY k HAVING count(*) > 1'),
	'', 'no key done twice');
is( $node->safe_psql(
		'postgres', 'SELECT count(*) FROM qlater_jobs'),
	'0',
	'no job is left, dead or pending');
# the work was shared out among the workers
my $pids = $node->safe_psql('postgres', 'SELECT count(DISTINCT pid) FROM hits');
note "jobs ran in $pids distinct worker processes";
cmp_ok($pids, '>=', 2, 'more than one worker took part');

$node->stop;
done_testing();
