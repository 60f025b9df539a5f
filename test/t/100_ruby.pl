# 100_ruby.pl: the Ruby client's minitest suite (clients/ruby/test) against
# a server with qlater preloaded.  Skipped when ruby or the pg gem is
# missing (Debian: apt-get install ruby ruby-pg).
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

# (IPC::Run dies when ruby is not found at all)
plan skip_all => 'ruby with the pg gem is not installed'
  unless eval {
	IPC::Run::run([ 'ruby', '-e', 'require "pg"; require "minitest"' ],
		'>', \my $ignored_out, '2>', \my $ignored_err);
  };

my $node = PostgreSQL::Test::Cluster->new('ruby');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION qlater');

# the OS user running the test is the bootstrap superuser
local $ENV{PGHOST} = $node->host;
local $ENV{PGPORT} = $node->port;
local $ENV{PGDATABASE} = 'postgres';
local $ENV{PGUSER} = (getpwuid($<))[0];

my ($out, $err) = ('', '');
my $ok = IPC::Run::run([ 'ruby', $runner, '-v' ],
	'>', \$out, '2>', \$err,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default * 3));
my $status = $?;
note $out;
diag $err if $err ne '';

my ($summary) = $out =~ /^(\d+ runs, \d+ assertions, \d+ failures, \d+ errors, \d+ skips)$/m;
is($status, 0, 'the Ruby client tests pass (clients/ruby/test/run)');
ok(defined $summary, 'minitest printed its summary');
diag "minitest: $summary" if defined $summary;
like($summary // '', qr/^[1-9]\d* runs, \d+ assertions, 0 failures, 0 errors, 0 skips$/,
	'no failures, errors or skips');
diag $out if $status != 0;

$node->stop;
done_testing();
