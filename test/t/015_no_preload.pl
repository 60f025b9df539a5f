# 015_no_preload.pl: qlater installed on a server that does not preload it.
# CREATE EXTENSION and the restore of a dump work, with a warning, and the
# session goes on; jobs enqueued meanwhile wait, and run once the server
# preloads qlater and has restarted.  (pg_regress noload checks the SQL
# side in detail.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('no_preload');
$node->init;
$node->start;

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"CREATE EXTENSION qlater; SELECT 'still here'");
is($ret, 0, 'CREATE EXTENSION without the preload succeeds');
is($stdout, 'still here', 'and the session goes on');
like(
	$stderr,
	qr/WARNING:  qlater is not loaded via "shared_preload_libraries"/,
	'with a warning that no job runs');

$node->safe_psql(
	'postgres', q{
CREATE TABLE done (label text, cu text);
CREATE FUNCTION mark(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO done VALUES (label, current_user) $$;
SELECT qlater_register('mark(text)');
SELECT qlater_enqueue('mark', '["before-1"]');
SELECT count(*) FROM qlater_enqueue_many('mark', '[["before-2"], ["before-3"]]');
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM qlater_jobs'),
	'3', 'jobs can be enqueued');

# a dump restored into another database of this server, by psql as
# pg_restore's users do, stopping at the first error
my $dump = $node->basedir . '/postgres.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ],
	'pg_dump of a database with qlater');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
($ret, $stdout, $stderr) = $node->psql('restored', undef,
	extra_params => [ '-v', 'ON_ERROR_STOP=1', '-f', $dump ]);
is($ret, 0, 'the dump restores into a server without the preload');
unlike($stderr, qr/FATAL|ERROR/, 'without an error');
is($node->safe_psql('restored', 'SELECT count(*) FROM qlater_jobs'),
	'3', 'the restored database has the jobs');

is($node->safe_psql('postgres', 'SELECT count(*) FROM done'),
	'0', 'nothing runs the jobs');

# preloaded and restarted, the server runs the jobs of both databases
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n");
$node->restart;
for my $db ('postgres', 'restored')
{
	ok( $node->poll_query_until(
			$db, q{
SELECT (SELECT count(*) FROM done) = 3
   AND NOT EXISTS (SELECT FROM qlater_jobs)}),
		"once preloaded, the jobs of database $db run");
}
is( $node->safe_psql(
		'postgres', 'SELECT string_agg(label, \',\' ORDER BY label) FROM done'),
	'before-1,before-2,before-3',
	'each job once');

$node->stop;
done_testing();
