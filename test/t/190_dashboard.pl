# 190_dashboard.pl: the dashboard (QLater::Web, clients/ruby/lib/qlater/web.rb)
# in headless Chromium, against a cluster holding known work.
#
# Makes two plain roles with work: alice (queues mail, broken, broken2,
# broken3, slow: 5 jobs done, 9 dead of which one has "<script>alert(1)
# </script>" as its arguments and error, one scheduled for tomorrow, one
# running, a schedule) and bob (queue bobq: 2 done, 1 dead, a schedule),
# then runs clients/ruby/test/browser/*_test.rb through clients/ruby/test/run
# (the built gem): the dashboard served by WEBrick on a loopback port as
# alice (and as bob), driven by selenium-webdriver and chromedriver (Rack::Test
# checks too).  Each minitest test is one TAP test here.  Screenshots of the
# pages: tmp_check/dashboard/*.png.  Skipped when ruby, rack, rack-protection,
# selenium-webdriver or chromium are missing (Debian: ruby-rack
# ruby-rack-protection ruby-webrick ruby-rack-test ruby-selenium-webdriver
# chromium chromium-driver; test/run installs them).
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $root = File::Spec->rel2abs(dirname(__FILE__) . '/../..');
my $runner = "$root/clients/ruby/test/run";

plan skip_all => 'ruby with pg, rack, rack-protection, webrick, rack-test and selenium-webdriver is not installed'
  unless eval {
	IPC::Run::run(
		[
			'ruby', '-e',
			'require "pg"; require "minitest"; require "rack"; require "rack/protection"; '
			  . 'require "webrick"; require "rack/test"; require "selenium-webdriver"'
		],
		'>', \my $ignored_out, '2>', \my $ignored_err);
  };
plan skip_all => 'chromium and chromedriver are not installed'
  unless -x '/usr/bin/chromium' && -x '/usr/bin/chromedriver';

my $node = PostgreSQL::Test::Cluster->new('dashboard');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION qlater');

# the known work
$node->safe_psql(
	'postgres', q{
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
GRANT CREATE ON SCHEMA public TO alice, bob;
SET ROLE alice;
CREATE FUNCTION ok_job(n int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN NULL; END $$;
CREATE FUNCTION fail_job(msg text) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION '%', msg; END $$;
CREATE FUNCTION slow_job() RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(3600) $$;
SELECT qlater_register('ok_job(int)', queue => 'mail');
SELECT qlater_register('fail_job(text)', queue => 'broken', max_attempts => 1);
SELECT qlater_register('slow_job()', queue => 'slow');
SELECT count(*) FROM qlater_enqueue_many('ok_job', '[[1],[2],[3],[4],[5]]');
SELECT count(*) FROM qlater_enqueue_many('fail_job',
    '[["boom 1"],["boom 2"],["boom 3"],["<script>alert(1)</script>"]]');
SELECT count(*) FROM qlater_enqueue_many('fail_job', '[["boom 4"],["boom 5"],["boom 6"]]',
    queue => 'broken2');
SELECT count(*) FROM qlater_enqueue_many('fail_job', '[["boom 7"],["boom 8"]]',
    queue => 'broken3');
SELECT qlater_enqueue('ok_job', '[9]', run_at => now() + interval '1 day');
SELECT qlater_enqueue('slow_job');
SELECT qlater_schedule('nightly', '30 2 * * *', 'ok_job', '[7]');
RESET ROLE;
SET ROLE bob;
CREATE FUNCTION bob_job(n int) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN IF n < 0 THEN RAISE EXCEPTION 'bob failed %', n; END IF; END $$;
SELECT qlater_register('bob_job(int)', queue => 'bobq', max_attempts => 1);
SELECT count(*) FROM qlater_enqueue_many('bob_job', '[[1],[2],[-1]]');
SELECT qlater_schedule('bobs', '0 4 * * *', 'bob_job', '[3]');
});

ok( $node->poll_query_until(
		'postgres', q{
SELECT (SELECT count(*) FROM qlater_history WHERE role = 'alice') = 14
   AND (SELECT count(*) FROM qlater_history WHERE role = 'bob') = 3
   AND (SELECT count(*) FROM qlater_jobs WHERE state = 'running') = 1
}),
	'the known work is done: 5 done, 9 dead and one running for alice, 2 done and 1 dead for bob'
);
# the dead jobs stay where they are once retried
$node->safe_psql('postgres',
	"SET ROLE alice; SELECT qlater_pause_queue(q) FROM unnest('{broken,broken2,broken3}'::text[]) q");

my $shots = "$PostgreSQL::Test::Utils::tmp_check/dashboard";
make_path($shots);

local $ENV{PGHOST} = $node->host;
local $ENV{PGPORT} = $node->port;
local $ENV{PGDATABASE} = 'postgres';
local $ENV{PGUSER} = 'alice';
local $ENV{DASH_ROLE} = 'alice';
local $ENV{OTHER_ROLE} = 'bob';
local $ENV{QLATER_SCREENSHOT_DIR} = $shots;
local $ENV{QLATER_TEST_GLOB} = 'test/browser/*_test.rb';

my ($out, $err) = ('', '');
IPC::Run::run([ 'ruby', $runner, '-v' ],
	'>', \$out, '2>', \$err,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default * 2));
my $status = $?;
note $out;
diag $err if $err ne '';

# one TAP test per minitest test ("Class#test_name = 1.23 s = .")
my $tests = 0;
while ($out =~ /^(\w+#test_\w+) = [\d.]+ s = ([.FES])$/mg)
{
	my ($name, $r) = ($1, $2);
	$tests++;
  SKIP:
	{
		skip "$name: skipped", 1 if $r eq 'S';
		ok($r eq '.', $name);
	}
}
cmp_ok($tests, '>=', 20, 'minitest ran the dashboard tests');
my ($summary) =
  $out =~ /^(\d+ runs, \d+ assertions, \d+ failures, \d+ errors, \d+ skips)$/m;
is($status, 0, 'the dashboard tests pass');
like($summary // '', qr/^\d+ runs, \d+ assertions, 0 failures, 0 errors, \d+ skips$/,
	'no failures or errors');
diag "minitest: $summary" if defined $summary;
diag $out if $status != 0;

my @png = glob("$shots/*.png");
cmp_ok(scalar @png, '>=', 7, 'a screenshot of each page in tmp_check/dashboard');
ok(!(grep { -s $_ < 1000 } @png), 'the screenshots are pictures');

$node->stop;
done_testing();
