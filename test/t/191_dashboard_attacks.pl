# 191_dashboard_attacks.pl: the dashboard (QLater::Web) under attack, through
# Rack::Test (no browser): a hostile tenant (alice) whose queue, handler and
# schedule names, job arguments and errors carry HTML, SVG and script, and
# bob, whose jobs alice must neither see nor touch; CSRF, the authorize hook,
# malformed requests.  Runs clients/ruby/test/browser/web_attacks_test.rb
# through clients/ruby/test/run (the built gem) with QLATER_WEB_ATTACKS=1;
# each minitest test is one TAP test.  Skipped when ruby, pg, rack,
# rack-protection or rack-test are missing.
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $root = File::Spec->rel2abs(dirname(__FILE__) . '/../..');
my $runner = "$root/clients/ruby/test/run";

plan skip_all => 'ruby with pg, rack, rack-protection and rack-test is not installed'
  unless eval {
	IPC::Run::run(
		[
			'ruby', '-e',
			'require "pg"; require "minitest"; require "rack"; require "rack/protection"; '
			  . 'require "rack/test"'
		],
		'>', \my $ignored_out, '2>', \my $ignored_err);
  };

my $node = PostgreSQL::Test::Cluster->new('dashboard_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION qlater');

# the hostile work: names, args and errors made to break out of the HTML
$node->safe_psql(
	'postgres', q{
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
GRANT CREATE ON SCHEMA public TO alice, bob;
SET ROLE alice;
CREATE FUNCTION ok_job(n int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN NULL; END $$;
CREATE FUNCTION fail_job(msg text) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION '%', msg USING DETAIL = msg; END $$;
CREATE FUNCTION "<img src=x onerror=alert(1)>"(msg text) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION '%', msg; END $$;
SELECT qlater_register('ok_job(int)', queue => 'mail');
SELECT qlater_register('fail_job(text)', queue => 'broken', max_attempts => 1);
SELECT qlater_register('"<img src=x onerror=alert(1)>"(text)', queue => '"><svg onload=alert(2)>',
    max_attempts => 1);
SELECT count(*) FROM qlater_enqueue_many('ok_job', '[[1],[2]]');
SELECT count(*) FROM qlater_enqueue_many('fail_job',
    '[["</script><script>alert(3)</script>"],["<svg><foreignObject><div>x</div></foreignObject></svg>"],["<style>body{display:none}</style>"]]');
SELECT qlater_enqueue('"<img src=x onerror=alert(1)>"(text)',
    '["<a href=\"javascript:alert(4)\">x</a>"]');
SELECT qlater_enqueue('ok_job', '[9]', queue => '"><svg onload=alert(2)>', run_at => now() + interval '1 day');
SELECT qlater_schedule('nightly', '30 2 * * *', 'ok_job', '[7]');
SELECT qlater_schedule('"><script>alert(5)</script>', '0 3 * * *', 'fail_job',
    '["javascript:alert(4)\""]');
RESET ROLE;
SET ROLE bob;
CREATE FUNCTION bob_job(n int) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN IF n < 0 THEN RAISE EXCEPTION 'bob failed %', n; END IF; END $$;
SELECT qlater_register('bob_job(int)', queue => 'bobq', max_attempts => 1);
SELECT count(*) FROM qlater_enqueue_many('bob_job', '[[1],[-1]]');
SELECT qlater_schedule('bobs', '0 4 * * *', 'bob_job', '[3]');
});

ok( $node->poll_query_until(
		'postgres', q{
SELECT (SELECT count(*) FROM qlater_history WHERE role = 'alice') = 6
   AND (SELECT count(*) FROM qlater_history WHERE role = 'bob') = 2
}),
	'the hostile work is done: 2 done and 4 dead for alice, 1 done and 1 dead for bob');
$node->safe_psql('postgres',
	q{SET ROLE alice; SELECT qlater_pause_queue(q) FROM unnest('{broken,"\"><svg onload=alert(2)>"}'::text[]) q});

local $ENV{PGHOST} = $node->host;
local $ENV{PGPORT} = $node->port;
local $ENV{PGDATABASE} = 'postgres';
local $ENV{PGUSER} = 'alice';
local $ENV{DASH_ROLE} = 'alice';
local $ENV{OTHER_ROLE} = 'bob';
local $ENV{QLATER_WEB_ATTACKS} = '1';
local $ENV{QLATER_TEST_GLOB} = 'test/browser/web_attacks_test.rb';

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
cmp_ok($tests, '>=', 20, 'minitest ran the attack tests');
my ($summary) =
  $out =~ /^(\d+ runs, \d+ assertions, \d+ failures, \d+ errors, \d+ skips)$/m;
is($status, 0, 'the attack tests pass');
like($summary // '', qr/^\d+ runs, \d+ assertions, 0 failures, 0 errors, \d+ skips$/,
	'no failures or errors');
diag "minitest: $summary" if defined $summary;
diag $out if $status != 0;

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process crashed');

$node->stop;
done_testing();
