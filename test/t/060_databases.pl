# 060_databases.pl: databases that get the extension after start get
# workers without a restart; with workers enough for every database, idle
# workers are shared out evenly, each database keeps one, and a backlog
# takes the spares; DROP EXTENSION stops a database's workers and the
# others keep working; DROP DATABASE.  (More databases than workers:
# 061_demand.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('databases');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$node->start;

my $setup = q{
CREATE EXTENSION qlater;
CREATE TABLE marks (label text, db text DEFAULT current_database(),
                    at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION mark(label text, secs float8 DEFAULT 0) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(secs);
    INSERT INTO marks (label) VALUES (label);
END
$$;
SELECT qlater_register('mark(text,float8)');
};

# workers per database, as "db:n,db:n"
my $per_db = q{
SELECT coalesce(string_agg(datname || ':' || n, ',' ORDER BY datname), '')
  FROM (SELECT datname, count(*) AS n FROM pg_stat_activity
         WHERE backend_type = 'qlater worker' GROUP BY datname) s};

$node->safe_psql('postgres', $setup);
ok($node->poll_query_until('postgres', $per_db, 'postgres:4'),
	'one database with qlater: it has all 4 workers');

# a database created after start, without the extension: no worker stays
$node->safe_psql('postgres', 'CREATE DATABASE plain');
$node->safe_psql('postgres', 'CREATE DATABASE x');
$node->safe_psql('x', $setup);
ok($node->poll_query_until('postgres', $per_db, 'postgres:2,x:2'),
	'a database that got the extension after start gets workers: 2 each');

$node->safe_psql('x', "SELECT qlater_enqueue('mark', '[\"in-x\"]')");
ok( $node->poll_query_until(
		'x', "SELECT count(*) = 1 FROM marks WHERE label = 'in-x'"),
	'jobs of the new database run without a restart');
is($node->safe_psql('x', 'SELECT count(*) FROM qlater_jobs'), '0', 'and are removed');

# a busy database does not starve the other: its jobs take 6 s, so that a
# job of x that waited for a worker of postgres would take about 6 s, and
# the bound of 4 s leaves room for a busy machine.  With workers enough for
# both, the backlog of postgres takes x's spare idle worker, not its last.
$node->safe_psql('postgres',
	"SELECT qlater_enqueue('mark', jsonb_build_array('busy-' || g, 6)) FROM generate_series(1, 4) g"
);
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 3 FROM qlater_jobs WHERE state = 'running'"),
	'postgres runs 3 jobs at once: its 2 workers and a spare of x');
my $t0 = time;
$node->safe_psql('x', "SELECT qlater_enqueue('mark', '[\"x-while-busy\"]')");
ok( $node->poll_query_until(
		'x', "SELECT count(*) = 1 FROM marks WHERE label = 'x-while-busy'"),
	'x runs its job while postgres is busy');
cmp_ok(time - $t0, '<', 4, 'without waiting for the busy database');
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM qlater_jobs WHERE state = 'running'"),
	'3',
	'postgres never took the last worker of x');
is($node->safe_psql('postgres', $per_db), 'postgres:3,x:1', 'x keeps one worker');
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE handler LIKE '%mark%'"),
	'the busy jobs of postgres drain');
ok($node->poll_query_until('postgres', $per_db, 'postgres:2,x:2'),
	'and the idle workers even out again: 2 each');

# DROP EXTENSION stops the workers of that database
$node->safe_psql('x', 'DROP EXTENSION qlater');
ok($node->poll_query_until('postgres', $per_db, 'postgres:4'),
	'after DROP EXTENSION in x, x has no worker and postgres gets all 4');
is($node->safe_psql('postgres', "SELECT count(*) FROM marks WHERE label LIKE 'busy-%'"),
	'4', 'every busy job ran');
$node->safe_psql('postgres', "SELECT qlater_enqueue('mark', '[\"after-drop\"]')");
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 1 FROM marks WHERE label = 'after-drop'"),
	'postgres keeps running jobs');

# the extension back in x: workers again
$node->safe_psql('x', 'DROP TABLE marks; DROP FUNCTION mark(text,float8)');
$node->safe_psql('x', $setup);
ok($node->poll_query_until('postgres', $per_db, 'postgres:2,x:2'),
	'CREATE EXTENSION again in x: 2 workers each');
$node->safe_psql('x', "SELECT qlater_enqueue('mark', '[\"in-x-again\"]')");
ok( $node->poll_query_until(
		'x', "SELECT count(*) = 1 FROM marks WHERE label = 'in-x-again'"),
	'jobs of x run again');

# a third database: 4 slots over 3 databases
$node->safe_psql('postgres', 'CREATE DATABASE y');
$node->safe_psql('y', $setup);
ok( $node->poll_query_until(
		'postgres',
		q{SELECT string_agg(n::text, ',' ORDER BY n)
  FROM (SELECT count(*) AS n FROM pg_stat_activity
         WHERE backend_type = 'qlater worker' GROUP BY datname) s},
		'1,1,2'),
	'3 databases: the 4 workers are shared 2/1/1');
like($node->safe_psql('postgres', $per_db), qr/^postgres:\d,x:\d,y:\d$/,
	'each of the 3 databases has workers, plain has none');
$node->safe_psql('y', "SELECT qlater_enqueue('mark', '[\"in-y\"]')");
ok( $node->poll_query_until(
		'y', "SELECT count(*) = 1 FROM marks WHERE label = 'in-y'"),
	'jobs of y run');

# dropping a database with qlater: its workers must not keep it alive
# a DROP DATABASE that fails for another reason (a session in y) ...
my $y_session = $node->background_psql('y');
$y_session->query_safe('SELECT 1');
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE y');
isnt($ret, 0, 'DROP DATABASE y fails while a client session is in y');
like($err, qr/being accessed by other users/, 'because of that session');
$y_session->quit;
# ... leaves y with workers that run its jobs
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND datname = 'y'"),
	'after a failed DROP DATABASE, y has workers again');
$node->safe_psql('y', "SELECT qlater_enqueue('mark', '[\"in-y-after-failed-drop\"]')");
ok( $node->poll_query_until(
		'y', "SELECT count(*) = 1 FROM marks WHERE label = 'in-y-after-failed-drop'"),
	'and its jobs run');
# a plain DROP DATABASE then works
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE y');
is($ret, 0, 'a plain DROP DATABASE of a database with qlater workers succeeds');
note "DROP DATABASE y: $err" if $ret != 0;
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'y'"),
	'0', 'database y is dropped');
ok($node->poll_query_until('postgres', $per_db, 'postgres:2,x:2'),
	'after the drop of y, its slots go back to the others');
$node->safe_psql('x', "SELECT qlater_enqueue('mark', '[\"x-after-y\"]')");
$node->safe_psql('postgres', "SELECT qlater_enqueue('mark', '[\"pg-after-y\"]')");
ok( $node->poll_query_until(
		'x', "SELECT count(*) = 1 FROM marks WHERE label = 'x-after-y'"),
	'x keeps working');
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 1 FROM marks WHERE label = 'pg-after-y'"),
	'postgres keeps working');

$node->stop;
done_testing();
