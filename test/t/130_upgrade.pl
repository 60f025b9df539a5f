# 130_upgrade.pl: from release 0.1 to this tree (0.1 -> 0.2 -> 0.3 -> 0.4 -> 0.5 -> 0.6 -> 0.7).  A cluster runs the 0.1
# library with two databases at extension version 0.1 holding every kind
# of state (pending, future, running and dead jobs of several roles, a
# schedule, an external queue with consumers and jobs of another role,
# declared queues with batches, queues of one role and of two); the new
# library is installed and the server restarted: the databases still at
# 0.1 are served without a crash, their SQL functions refuse to work until
# ALTER EXTENSION qlater UPDATE, and no job runs; then each database is
# updated on its own, and its jobs run, once each, as their roles, with the
# queues, owners and grants the upgrade script gives them; the consumers
# finish several jobs at once (0.3's qlater_complete_many).  A database
# made at 0.2 under the new library, holding jobs, is updated too, and one
# made at 0.3: the outcomes of their jobs reach 0.4's history; one made at
# 0.4, holding jobs and history, keeps both through its update to 0.5; one
# made at 0.5, holding jobs of both kinds and history, through its update to
# 0.6, whose outcomes are written without a statement each; one made at
# 0.6, holding a job leased by a consumer, through its update to 0.7, where
# another consumer of the queue no longer reads the lease's token.
#
# Both versions are installed into a private copy of the PostgreSQL
# installation that pg_config (on PATH) names, made in this test's own
# temporary folder: the installation the other tests use is not touched.
# The source of 0.1 is test/upgrade/qlater-0.1.tar.gz (tag v0.1's commit).
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $old_version = '0.1';
my $new_version = '0.7';
# the versions between, each with its upgrade script from the one before
my @versions = ('0.1', '0.2', '0.3', '0.4', '0.5', '0.6', '0.7');

### where the source of 0.1 comes from
# test/upgrade/qlater-0.1.tar.gz: what release 0.1 builds from (git archive
# of its commit: Makefile, qlater.control, src/, its install script), kept
# in the tree so that the test needs no git history (a shallow clone has
# none).  QL_OLD_SRC names another source tree to start from.
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $old_src = $ENV{QL_OLD_SRC};
my $tree = $ENV{TESTDIR} || abs_path('.');
if (!defined $old_src || $old_src eq '')
{
	my $tarball = "$tree/test/upgrade/qlater-$old_version.tar.gz";
	-f $tarball or die "the source of release $old_version is not at $tarball";
	system("tar -xzf '$tarball' -C '$tmp'") == 0
	  or die "could not unpack $tarball";
	$old_src = "$tmp/qlater-$old_version";
}
-f "$old_src/qlater.control"
  or die "the source of release $old_version is not in $old_src";

### a private copy of the PostgreSQL installation
# PostgreSQL finds its share and lib folders relative to its binaries, so a
# copy that keeps their layout under one folder is an installation of its
# own, whose pg_config names the copy's paths.  The headers are only read:
# the copy links to them.
sub pg_config
{
	my ($pg_config, $what) = @_;
	my $v = `'$pg_config' --$what`;
	die "$pg_config --$what failed" if $? != 0;
	chomp $v;
	return $v;
}
my $sys_bin = abs_path(pg_config('pg_config', 'bindir'));
my $sys_inst = dirname($sys_bin);    # holds bin/ and lib/
my $sys_share = abs_path(pg_config('pg_config', 'sharedir'));
my $sys_include = abs_path(pg_config('pg_config', 'includedir-server'));
# the longest folder that holds all three: /usr for Debian's packages
my @common = split m{/}, $sys_inst;
for my $p ($sys_share, $sys_include)
{
	my @c = split m{/}, $p;
	my $i = 0;
	$i++ while $i < @common && $i < @c && $common[$i] eq $c[$i];
	splice(@common, $i);
}
my $sys_root = join('/', @common);
die "no common folder of $sys_inst, $sys_share and $sys_include" if $sys_root eq '';

# a path of the installation, in the copy
my $root = "$tmp/pg";
sub in_copy { return $root . substr($_[0], length($sys_root)); }
sub is_under { my ($p, $dir) = @_; return $p eq $dir || index($p, "$dir/") == 0; }
my $inst = in_copy($sys_inst);
my $share = in_copy($sys_share);
make_path(dirname($inst));
system('cp', '-R', $sys_inst, $inst) == 0 or die "could not copy $sys_inst";
# Debian's share folder is apart (a source build's is inside the copy)
if (!is_under($sys_share, $sys_inst))
{
	make_path(dirname($share));
	system('cp', '-R', $sys_share, $share) == 0 or die "could not copy $sys_share";
}
if (!is_under($sys_include, $sys_inst))
{
	my $top = (split m{/}, substr($sys_include, length($sys_root) + 1))[0];
	symlink("$sys_root/$top", "$root/$top")
	  or die "could not link $root/$top: $!";
}
my $pg_config = "$inst/bin/pg_config";
is(pg_config($pg_config, 'sharedir'), $share, 'the copy of PostgreSQL finds its own share folder');
my $pkglib = pg_config($pg_config, 'pkglibdir');
like($pkglib, qr{^\Q$root\E/}, 'and its own lib folder');

# the copy has the qlater the suite installed: take it out
unlink(glob("$pkglib/qlater.so $pkglib/bitcode/qlater.index.bc $share/extension/qlater*"));
system('rm', '-rf', "$pkglib/bitcode/qlater");

# make in the copy: the make above the test (make installcheck) passes its
# own command line variables (PG_CONFIG, ...) down in MAKEFLAGS, which must
# not reach this one.  JIT bitcode is left out (with_llvm=no): it is not
# what is tested, and building it doubles the time.
sub make_in
{
	my ($dir, @targets) = @_;
	local %ENV = %ENV;
	delete @ENV{qw(MAKEFLAGS MFLAGS MAKEOVERRIDES MAKELEVEL top_builddir)};
	return run_log(
		[
			'make', '-C', $dir, '-s', '-j4', "PG_CONFIG=$pg_config",
			'with_llvm=no', @targets
		]);
}

my $old_build = "$tmp/v$old_version-build";
system('cp', '-R', $old_src, $old_build) == 0 or die "could not copy $old_src";
make_in($old_build, 'clean');
ok(make_in($old_build, 'all') && make_in($old_build, 'install'),
	"release $old_version builds and installs into the copy")
  or die "cannot go on without release $old_version";
like(slurp_file("$share/extension/qlater.control"),
	qr/default_version = '\Q$old_version\E'/,
	"the copy has qlater $old_version");

### the cluster, at 0.1
# One worker: once a job sleeps in it, every other due job waits, in both
# databases, and is still pending when the server stops.
my $node = PostgreSQL::Test::Cluster->new('upgrade', install_path => $inst);
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 1\n"
	  . "max_worker_processes = 16\n");
$node->start;
my $su = $node->safe_psql('postgres', 'SELECT current_user');
like(
	$node->safe_psql('postgres', 'SELECT version()'),
	qr/^PostgreSQL 15/, 'the copy runs');

$node->safe_psql(
	'postgres', q{
CREATE ROLE tenant_a LOGIN;
CREATE ROLE tenant_b LOGIN;
CREATE ROLE app_worker LOGIN;
CREATE DATABASE qdb1;
CREATE DATABASE qdb2;
});

# in each database: the extension at 0.1, handlers of the superuser and of
# each tenant
for my $db ('qdb1', 'qdb2')
{
	$node->safe_psql(
		$db, q{
CREATE EXTENSION qlater;
CREATE TABLE hits (label text, cu text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE pass (label text PRIMARY KEY);
CREATE TABLE ctl (sleep boolean);
INSERT INTO ctl VALUES (true);
GRANT SELECT, INSERT ON hits TO PUBLIC;
GRANT SELECT ON pass, ctl TO PUBLIC;
CREATE FUNCTION hit(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.hits (label, cu) VALUES (label, current_user) $$;
-- fails unless its label is in pass
CREATE FUNCTION maybe(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM public.pass p WHERE p.label = maybe.label) THEN
        RAISE EXCEPTION 'no pass for %', label;
    END IF;
    INSERT INTO public.hits (label, cu) VALUES (label, current_user);
END
$$;
-- sleeps while ctl says so
CREATE FUNCTION nap(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.hits (label, cu) VALUES (label, current_user);
    IF (SELECT sleep FROM public.ctl) THEN
        PERFORM pg_sleep(600);
    END IF;
END
$$;
SELECT qlater_register('hit(text)');
SELECT qlater_register('maybe(text)', max_attempts => 1);
SELECT qlater_register('nap(text)', queue => 'slow');
CREATE SCHEMA ta AUTHORIZATION tenant_a;
CREATE SCHEMA tb AUTHORIZATION tenant_b;
SET ROLE tenant_a;
CREATE FUNCTION ta.work(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.hits (label, cu) VALUES (label, current_user) $$;
SELECT qlater_register('ta.work(text)', queue => 'qa');
SET ROLE tenant_b;
CREATE FUNCTION tb.work(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.hits (label, cu) VALUES (label, current_user) $$;
SELECT qlater_register('tb.work(text)', queue => 'shared');
});
	is($node->safe_psql($db, "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
		$old_version, "$db has qlater $old_version");
}

# qdb1: declared queues, an external queue with a consumer, a schedule,
# dead jobs
$node->safe_psql(
	'qdb1', q{
SET ROLE tenant_a;
-- 'default' declared by a tenant: batches of 4
SELECT qlater_create_queue('default', batch_size => 4);
SELECT qlater_create_queue('ext', external => true);
SELECT qlater_grant_queue('ext', 'app_worker');
-- declared by tenant_a, used by tenant_b only
SELECT qlater_create_queue('squat');
SET ROLE tenant_b;
SELECT qlater_create_queue('batched', batch_size => 8, batch_delay => '50 ms');
SELECT qlater_schedule('tick', '1 seconds', 'tb.work', '["tick"]', queue => 'sched_b');
SET ROLE tenant_a;
-- into a queue of two roles, which the upgrade gives to the extension's owner
SELECT qlater_schedule('tick-a', '1 seconds', 'hit', '["tick-a"]', queue => 'shared');
SELECT qlater_enqueue('maybe', '["d-a"]');
RESET ROLE;
SELECT qlater_enqueue('maybe', '["d-su"]');
});
$node->safe_psql('qdb2', q{SELECT qlater_enqueue('maybe', '["d2-su"]')});
ok( $node->poll_query_until(
		'qdb1', "SELECT count(*) = 2 FROM qlater_jobs WHERE state = 'dead'"),
	'qdb1: 2 dead jobs');
ok( $node->poll_query_until(
		'qdb2', "SELECT count(*) = 1 FROM qlater_jobs WHERE state = 'dead'"),
	'qdb2: a dead job');
ok( $node->poll_query_until(
		'qdb1', "SELECT count(DISTINCT label) = 2 FROM hits WHERE label IN ('tick', 'tick-a')"),
	'qdb1: the schedules fire under 0.1');

# the one worker takes a job that sleeps
$node->safe_psql('qdb1', q{SELECT qlater_enqueue('nap', '["nap"]')});
ok( $node->poll_query_until(
		'qdb1', "SELECT count(*) = 1 FROM qlater_jobs WHERE handler = 'public.nap(text)' AND state = 'running'"),
	'qdb1: a job sleeps in the only worker');

# pending jobs behind it, due and in the future, of every role, in every
# kind of queue; app jobs of two roles in the external queue
$node->safe_psql(
	'qdb1', q{
SELECT qlater_enqueue('hit', '["p-su"]');
SELECT qlater_enqueue('hit', '["p-su-batched-1"]', queue => 'batched');
SELECT qlater_enqueue('hit', '["p-su-batched-2"]', queue => 'batched');
-- due a few seconds after the restart: while the database waits, or soon after
SELECT qlater_enqueue('hit', '["p-su-soon"]', run_at => now() + interval '6 seconds');
SELECT qlater_enqueue('hit', '["p-su-far"]', run_at => '2100-01-01 00:00+00');
SET ROLE tenant_a;
SELECT qlater_enqueue('hit', '["p-a"]');
SELECT qlater_enqueue('ta.work', '["p-a-qa"]');
SELECT qlater_enqueue('hit', '["p-a-shared"]', queue => 'shared');
SELECT qlater_enqueue('ExportA', '{"tenant": "a"}', queue => 'ext');
SET ROLE tenant_b;
SELECT qlater_enqueue('tb.work', '["p-b-shared"]');
SELECT qlater_enqueue('hit', '["p-b-batched"]', queue => 'batched');
SELECT qlater_enqueue('tb.work', '["p-b-squat"]', queue => 'squat');
SELECT qlater_enqueue('ExportB', '{"tenant": "b"}', queue => 'ext');
});
$node->safe_psql(
	'qdb2', q{
SELECT qlater_enqueue('hit', '["p2-su"]');
SELECT qlater_enqueue('hit', '["p2-su-far"]', run_at => '2100-01-01 00:00+00');
SET ROLE tenant_a;
SELECT qlater_enqueue('hit', '["p2-a"]');
SELECT qlater_enqueue('ta.work', '["p2-a-qa"]');
});
sleep(1);
is($node->safe_psql('qdb1', "SELECT count(*) FROM hits WHERE label LIKE 'p-%'"),
	'0', 'qdb1: the pending jobs wait behind the sleeping job');
is($node->safe_psql('qdb2', "SELECT count(*) FROM hits WHERE label LIKE 'p2-%'"),
	'0', 'qdb2: its pending jobs wait too');

# what the upgrade must keep (the schedule's jobs come and go)
my $jobs_q = q{
SELECT id, queue, handler, args, priority, run_at, attempts, max_attempts,
       last_error, role, timeout, crashes, enqueued_at
  FROM qlater_jobs WHERE coalesce(args->>0, '') NOT LIKE 'tick%' ORDER BY id};
my %jobs_before = map { $_ => $node->safe_psql($_, $jobs_q) } ('qdb1', 'qdb2');
my %hits_before = map { $_ => $node->safe_psql($_, 'SELECT count(*) FROM hits') } ('qdb1', 'qdb2');
my $handlers_q = 'SELECT * FROM qlater_handler ORDER BY handler';
my %handlers_before = map { $_ => $node->safe_psql($_, $handlers_q) } ('qdb1', 'qdb2');
my $soon_at = $node->safe_psql('qdb1', "SELECT run_at FROM qlater_jobs WHERE args->>0 = 'p-su-soon'");

# the sleeping job is rolled back by the shutdown; it must not sleep again
$node->safe_psql('qdb1', 'UPDATE ctl SET sleep = false');
$node->stop('fast');

### the new library, on databases still at 0.1
ok(make_in($tree, 'install'), 'this tree installs into the copy');
like(slurp_file("$share/extension/qlater.control"),
	qr/default_version = '\Q$new_version\E'/,
	"the copy has qlater $new_version");
for my $i (1 .. $#versions)
{
	ok(-f "$share/extension/qlater--$versions[$i - 1]--$versions[$i].sql",
		"with the upgrade script from $versions[$i - 1] to $versions[$i]");
}

my $log_offset = -s $node->logfile;
# two workers: one for each database
$node->append_conf('postgresql.conf', "qlater.max_workers = 2\n");
$node->start;

for my $db ('qdb1', 'qdb2')
{
	my ($ret, $stdout, $stderr) =
	  $node->psql($db, q{SELECT qlater_enqueue('hit', '["too-early"]')});
	isnt($ret, 0, "$db at $old_version: qlater_enqueue fails");
	like(
		$stderr,
		qr/extension "qlater" must be updated to version \Q$new_version\E/,
		"$db: with the error that the extension must be updated");
	like($stderr, qr/HINT:\s+Run ALTER EXTENSION qlater UPDATE/,
		"$db: and the hint");
	($ret, $stdout, $stderr) =
	  $node->psql($db, q{SELECT qlater_retry(id) FROM qlater_jobs WHERE state = 'dead'});
	like(
		$stderr,
		qr/must be updated to version \Q$new_version\E/,
		"$db: qlater_retry fails the same way");
}

# the workers say what to do, once for each database, and wait
sub waits_logged
{
	my ($db) = @_;
	return qr/LOG:  [^\n]*"\Q$db\E"[^\n]*\n(?:[^\n]*DETAIL:[^\n]*\n)?[^\n]*HINT:  [^\n]*ALTER EXTENSION qlater UPDATE/;
}
for my $db ('qdb1', 'qdb2')
{
	ok($node->wait_for_log(waits_logged($db), $log_offset),
		"the log tells to run ALTER EXTENSION qlater UPDATE in $db");
}
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(DISTINCT datname) = 2 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname IN ('qdb1', 'qdb2')}),
	'a worker waits in each database');
# long enough for a worker to find the due jobs, were it to look
sleep(3);
for my $db ('qdb1', 'qdb2')
{
	is($node->safe_psql($db, 'SELECT count(*) FROM hits'),
		$hits_before{$db}, "$db: no job ran while the extension is at $old_version");
	is($node->safe_psql($db, $jobs_q), $jobs_before{$db},
		"$db: its jobs are as they were");
}
is( $node->safe_psql(
		'qdb1', q{SELECT attempts || '/' || crashes FROM qlater_jobs WHERE handler = 'public.nap(text)'}),
	'0/0', 'the job the shutdown rolled back counts no attempt and no crash');

### qdb1 updated; qdb2 still waits
my $update_at = $node->safe_psql('qdb1', 'SELECT clock_timestamp()');
$node->safe_psql('qdb1', 'ALTER EXTENSION qlater UPDATE');
is($node->safe_psql('qdb1', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	$new_version, "qdb1: ALTER EXTENSION qlater UPDATE makes it $new_version");

is($node->safe_psql('qdb1', $handlers_q), $handlers_before{'qdb1'},
	'qdb1: the registrations are kept');

# every pending job that is due runs, once, as its role; the job the
# shutdown rolled back runs again, once
my $due1 = q{'p-su', 'p-su-batched-1', 'p-su-batched-2', 'p-su-soon', 'p-a', 'p-a-qa',
             'p-a-shared', 'p-b-shared', 'p-b-batched', 'p-b-squat', 'nap'};
ok( $node->poll_query_until(
		'qdb1', qq{
SELECT (SELECT count(*) FROM hits WHERE label IN ($due1)) >= 11
   AND NOT EXISTS (SELECT FROM qlater_jobs WHERE args->>0 IN ($due1))}),
	'qdb1: its due jobs run after the update');
is( $node->safe_psql(
		'qdb1', qq{
SELECT string_agg(label || ':' || cu, ' ' ORDER BY label COLLATE "C") FROM hits
 WHERE label IN ($due1) OR label LIKE 'p-%'}),
	"nap:$su p-a:tenant_a p-a-qa:tenant_a p-a-shared:tenant_a p-b-batched:tenant_b "
	  . "p-b-shared:tenant_b p-b-squat:tenant_b p-su:$su p-su-batched-1:$su p-su-batched-2:$su "
	  . "p-su-soon:$su",
	'qdb1: each ran exactly once, as the role that enqueued it');
ok( $node->safe_psql(
		'qdb1', "SELECT at >= '$soon_at' FROM hits WHERE label = 'p-su-soon'") eq 't',
	'qdb1: the job of a later run_at ran at its run_at, not before');
# the jobs left are those of before: dead, far in the future, the apps'
my @kept = grep { /\|(?:ExportA|ExportB)\||"(?:d-a|d-su|p-su-far)"/ }
  split /\n/, $jobs_before{'qdb1'};
is(scalar(@kept), 5, 'qdb1: 5 jobs were not to run');
is($node->safe_psql('qdb1', $jobs_q), join("\n", @kept),
	'qdb1: the jobs that did not run are kept as they were');

### qdb2 still at 0.1: its jobs wait, its functions refuse
is($node->safe_psql('qdb2', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	$old_version, "qdb2 is still at $old_version");
{
	my ($ret, $stdout, $stderr) =
	  $node->psql('qdb2', q{SELECT qlater_enqueue('hit', '["too-early-2"]')});
	like($stderr, qr/must be updated to version \Q$new_version\E/,
		'qdb2: qlater_enqueue still refuses while qdb1 is updated');
}

### qdb1: queues, owners and grants, as the upgrade gives them
# a queue used by one role is that role's; used by several, or 'default',
# the extension's owner's; declared ones keep their declarer if it uses
# them (an external one always), but 'default'
is( $node->safe_psql(
		'qdb1', q{
SELECT string_agg(concat_ws(':', name, owner, external, paused, max_running,
                            min_priority, batch_size, batch_delay), ' ' ORDER BY name COLLATE "C")
  FROM qlater_queues}),
	"batched:tenant_b:f:f:-32768:8:00:00:00.05 default:$su:f:f:-32768:4:00:00:00.02 "
	  . "ext:tenant_a:t:f:-32768:1:00:00:00.02 qa:tenant_a:f:f:-32768:1:00:00:00.02 "
	  . "sched_b:tenant_b:f:f:-32768:1:00:00:00.02 shared:$su:f:f:-32768:1:00:00:00.02 "
	  . "slow:$su:f:f:-32768:1:00:00:00.02 squat:tenant_b:f:f:-32768:1:00:00:00.02",
	'qdb1: a row for every queue in use, owners by the upgrade rule, batch settings kept');
is( $node->safe_psql(
		'qdb1', q{
SELECT string_agg(concat_ws(':', queue, grantee, privilege), ' ' ORDER BY queue COLLATE "C", grantee COLLATE "C", privilege)
  FROM qlater_queue_grant}),
	"batched:$su:enqueue ext:app_worker:consume ext:tenant_b:enqueue shared:tenant_a:enqueue shared:tenant_b:enqueue",
	"qdb1: the consumer's grant is 'consume'; the roles using another role's queue get 'enqueue' on it");
is( $node->safe_psql(
		'qdb1', q{
SELECT string_agg(concat_ws(':', queue, grantee, privilege), ' ' ORDER BY queue COLLATE "C", grantee COLLATE "C")
  FROM qlater_queue_grants},
		extra_params => [ '-U', 'tenant_a' ]),
	'ext:app_worker:consume ext:tenant_b:enqueue shared:tenant_a:enqueue',
	"qdb1: tenant_a sees the grants of its queue and its own");

# what worked under 0.1 goes on working: the grants are in force
my ($ret, $stdout, $stderr);
$node->safe_psql('qdb1', q{SELECT qlater_register('tb.work(text)', queue => 'shared')},
	extra_params => [ '-U', 'tenant_b' ]);
pass('qdb1: tenant_b registers its handler again into the queue now of the extension owner');
$node->safe_psql('qdb1', q{SELECT qlater_enqueue('hit', '["a-shared-after"]', queue => 'shared')},
	extra_params => [ '-U', 'tenant_a' ]);
ok( $node->poll_query_until(
		'qdb1', q{SELECT count(*) = 1 FROM hits WHERE label = 'a-shared-after' AND cu = 'tenant_a'}),
	'qdb1: tenant_a enqueues into it as before, and the job runs');
($ret, $stdout, $stderr) = $node->psql('qdb1',
	q{SELECT qlater_enqueue('hit', '["no-grant"]', queue => 'shared')},
	extra_params => [ '-U', 'app_worker' ]);
like($stderr, qr/permission denied for queue "shared"/,
	'qdb1: a role that never used it may not');

### qdb1: the external queue's jobs wait for its consumer
($ret, $stdout, $stderr) = $node->psql('qdb1', q{SELECT * FROM qlater_lock('ext', 10)},
	extra_params => [ '-U', 'tenant_b' ]);
isnt($ret, 0, 'qdb1: a role that may only enqueue cannot claim the external jobs');
like($stderr, qr/permission denied for queue "ext"/, 'qdb1: permission denied');
($ret, $stdout, $stderr) = $node->psql('qdb1',
	q{SELECT qlater_enqueue('ExportC', '{}', queue => 'ext')},
	extra_params => [ '-U', 'app_worker' ]);
like($stderr, qr/permission denied for queue "ext"/,
	'qdb1: the consumer may not enqueue into it (no grant)');
$node->safe_psql('qdb1', q{SELECT qlater_enqueue('ExportB2', '{}', queue => 'ext')},
	extra_params => [ '-U', 'tenant_b' ]);
is( $node->safe_psql(
		'qdb1', q{
CREATE TEMP TABLE got AS SELECT id, handler, role FROM qlater_lock('ext', 10);
SELECT string_agg(handler || ':' || role, ',' ORDER BY handler COLLATE "C") FROM got;
SELECT qlater_complete_many(ARRAY(SELECT id FROM got));
},
		extra_params => [ '-U', 'app_worker' ]),
	"ExportA:tenant_a,ExportB:tenant_b,ExportB2:tenant_b\n3",
	'qdb1: the consumer claims and completes the app jobs of both roles, and the new one, in one call');
is($node->safe_psql('qdb1', "SELECT count(*) FROM qlater_jobs WHERE queue = 'ext'"),
	'0', 'qdb1: the completed app jobs are gone');

### qdb1: dead jobs stay dead, and can be retried
is( $node->safe_psql(
		'qdb1', q{
SELECT string_agg(args->>0 || ':' || state || ':' || attempts || ':' || role || ':' || (last_error->>'message'),
                  ' ' ORDER BY (args->>0) COLLATE "C")
  FROM qlater_jobs WHERE state = 'dead'}),
	"d-a:dead:1:tenant_a:no pass for d-a d-su:dead:1:$su:no pass for d-su",
	'qdb1: the dead jobs are still dead, with their error');
$node->safe_psql('qdb1', q{INSERT INTO pass VALUES ('d-a'), ('d-su')});
is($node->safe_psql('qdb1', q{SELECT qlater_retry(id) FROM qlater_jobs WHERE args->>0 = 'd-a'},
		extra_params => [ '-U', 'tenant_a' ]),
	't', 'qdb1: tenant_a retries its dead job');
is($node->safe_psql('qdb1', q{SELECT qlater_retry(id) FROM qlater_jobs WHERE args->>0 = 'd-su'}),
	't', 'qdb1: the superuser retries its dead job');
ok( $node->poll_query_until(
		'qdb1', q{SELECT count(*) = 2 FROM hits WHERE label IN ('d-a', 'd-su')}),
	'qdb1: the retried jobs run');
is( $node->safe_psql(
		'qdb1', q{SELECT string_agg(label || ':' || cu, ' ' ORDER BY label COLLATE "C") FROM hits WHERE label LIKE 'd-%'}),
	"d-a:tenant_a d-su:$su", 'qdb1: once each, as their roles');

### qdb1: the schedules fire again
ok( $node->poll_query_until(
		'qdb1', qq{
SELECT count(*) FILTER (WHERE label = 'tick') >= 2 AND count(*) FILTER (WHERE label = 'tick-a') >= 2
  FROM hits WHERE at > '$update_at'}),
	'qdb1: the schedules of 0.1 fire again after the update, also into a queue the upgrade gave to another role');
is( $node->safe_psql(
		'qdb1', q{SELECT string_agg(l, ' ' ORDER BY l COLLATE "C") FROM (SELECT DISTINCT label || ':' || cu AS l FROM hits WHERE label LIKE 'tick%') s}),
	'tick-a:tenant_a tick:tenant_b', "qdb1: their jobs run as the schedules' owners");
is( $node->safe_psql(
		'qdb1', q{
SELECT string_agg(concat_ws(':', name, owner, queue, active, overlap, catch_up), ' ' ORDER BY name COLLATE "C")
  FROM qlater_schedules}),
	'tick:tenant_b:sched_b:t:f:t tick-a:tenant_a:shared:t:f:t',
	'qdb1: the schedules are active, without overlap (the default of 0.2)');

### qdb1: the new functions on the queues the upgrade made
$node->safe_psql('qdb1', q{SELECT qlater_pause_queue('qa')}, extra_params => [ '-U', 'tenant_a' ]);
($ret, $stdout, $stderr) = $node->psql('qdb1', q{SELECT qlater_resume_queue('qa')},
	extra_params => [ '-U', 'tenant_b' ]);
like($stderr, qr/must be owner of queue "qa"/,
	'qdb1: another role may not resume the queue of tenant_a');
$node->safe_psql('qdb1', q{SELECT qlater_enqueue('ta.work', '["qa-paused"]')},
	extra_params => [ '-U', 'tenant_a' ]);
sleep(2);
is($node->safe_psql('qdb1', q{SELECT count(*) FROM hits WHERE label = 'qa-paused'}),
	'0', 'qdb1: tenant_a pauses its queue: its job waits');
$node->safe_psql('qdb1', q{SELECT qlater_resume_queue('qa')}, extra_params => [ '-U', 'tenant_a' ]);
ok( $node->poll_query_until(
		'qdb1', q{SELECT count(*) = 1 FROM hits WHERE label = 'qa-paused'}),
	'qdb1: resumed, the job runs');
$node->safe_psql('qdb1', q{SELECT qlater_alter_queue('batched', max_running => 3)},
	extra_params => [ '-U', 'tenant_b' ]);
is($node->safe_psql('qdb1', q{SELECT max_running FROM qlater_queues WHERE name = 'batched'}),
	'3', 'qdb1: the owner of a declared queue sets its max_running');

### qdb2, all along: nothing ran
is($node->safe_psql('qdb2', 'SELECT count(*) FROM hits'),
	$hits_before{'qdb2'}, 'qdb2: no job ran while qdb1 was updated and busy');
is($node->safe_psql('qdb2', $jobs_q), $jobs_before{'qdb2'},
	'qdb2: its jobs are as they were');

### qdb2 updated on its own
$node->safe_psql('qdb2', 'ALTER EXTENSION qlater UPDATE');
is($node->safe_psql('qdb2', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	$new_version, "qdb2: updated to $new_version");
is($node->safe_psql('qdb2', $handlers_q), $handlers_before{'qdb2'},
	'qdb2: the registrations are kept');
ok( $node->poll_query_until(
		'qdb2', q{SELECT count(*) >= 3 FROM hits WHERE label LIKE 'p2-%'}),
	'qdb2: its due jobs run after its update');
is( $node->safe_psql(
		'qdb2', q{SELECT string_agg(label || ':' || cu, ' ' ORDER BY label COLLATE "C") FROM hits}),
	"p2-a:tenant_a p2-a-qa:tenant_a p2-su:$su",
	'qdb2: each once, as its role');
is( $node->safe_psql(
		'qdb2', q{SELECT string_agg(args->>0 || ':' || state, ' ' ORDER BY id) FROM qlater_jobs}),
	'd2-su:dead p2-su-far:pending', 'qdb2: its dead and future jobs are kept');
is( $node->safe_psql(
		'qdb2', q{SELECT string_agg(name || ':' || owner, ' ' ORDER BY name COLLATE "C") FROM qlater_queues}),
	"default:$su qa:tenant_a shared:tenant_b slow:$su",
	"qdb2: its queues' owners, from its own use");
is($node->safe_psql('qdb2', 'SELECT count(*) FROM qlater_queue_grant'),
	'0', 'qdb2: no grants');
is($node->safe_psql('qdb1', q{SELECT extversion FROM pg_extension WHERE extname = 'qlater'}),
	$new_version, 'qdb1 is untouched by it');

### qdb3: made at 0.2 under the new library, its jobs written as 0.2's
### API wrote them, updated to 0.4
$node->safe_psql('postgres', 'CREATE DATABASE qdb3');
$node->safe_psql(
	'qdb3', q{
CREATE EXTENSION qlater VERSION '0.2';
CREATE TABLE hits (label text, cu text, at timestamptz DEFAULT clock_timestamp());
GRANT SELECT, INSERT ON hits TO PUBLIC;
CREATE FUNCTION hit(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.hits (label, cu) VALUES (label, current_user) $$;
INSERT INTO qlater_handler (handler, queue, priority, max_attempts, registered_by)
VALUES ('public.hit(text)', 'default', 100, 25, CURRENT_USER);
INSERT INTO qlater_queue (name, external, owner) VALUES ('ext', true, 'tenant_a');
INSERT INTO qlater_queue_grant (queue, grantee, privilege) VALUES ('ext', 'app_worker', 'consume');
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external)
VALUES ('ext', 'Export3', '[1]', 100, now(), 25, 'tenant_a', true),
       ('ext', 'Export3', '[2]', 100, now(), 25, 'tenant_a', true),
       ('default', 'public.hit(text)', '["q3-far"]', 100, '2100-01-01 00:00+00', 25, CURRENT_USER, false);
});
is($node->safe_psql('qdb3', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	'0.2', 'qdb3 is at 0.2');
($ret, $stdout, $stderr) = $node->psql('qdb3', q{SELECT * FROM qlater_lock('ext', 10)},
	extra_params => [ '-U', 'app_worker' ]);
like($stderr, qr/must be updated to version \Q$new_version\E/,
	'qdb3: at 0.2 its functions refuse to work');
my $jobs3 = $node->safe_psql('qdb3', $jobs_q);
$node->safe_psql('qdb3', 'ALTER EXTENSION qlater UPDATE');
is($node->safe_psql('qdb3', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	$new_version, "qdb3: updated from 0.2 to $new_version");
is($node->safe_psql('qdb3', $jobs_q), $jobs3, 'qdb3: its jobs are kept');
is( $node->safe_psql(
		'qdb3', q{
CREATE TEMP TABLE got AS SELECT id FROM qlater_lock('ext', 10);
SELECT qlater_complete_many(ARRAY(SELECT id FROM got));
SELECT count(*) FROM qlater_jobs WHERE queue = 'ext';
},
		extra_params => [ '-U', 'app_worker' ]),
	"2\n0", 'qdb3: the consumer completes both jobs in one qlater_complete_many');
is($node->safe_psql('qdb3', q{SELECT string_agg(args->>0 || ':' || state, ' ') FROM qlater_jobs}),
	'q3-far:pending', 'qdb3: its future job is kept');
is( $node->safe_psql(
		'qdb3', q{SELECT string_agg(args->>0 || ':' || outcome || ':' || attempt, ' ' ORDER BY args->>0)
		  FROM qlater_history WHERE queue = 'ext'}),
	'1:done:1 2:done:1', "qdb3: the completions are in the history (0.4's)");
is($node->safe_psql('qdb3', q{SELECT keep_history || ' ' || history_args FROM qlater_queues WHERE name = 'ext'}),
	'1 day true', 'qdb3: its queues keep a day of history, with args, by default');

### qdb5: made at 0.3, holding a job due now and a dead one, updated:
### the due job runs and its outcome is in the history
$node->safe_psql('postgres', 'CREATE DATABASE qdb5');
$node->safe_psql(
	'qdb5', q{
CREATE EXTENSION qlater VERSION '0.3';
CREATE TABLE hits (label text, cu text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION hit(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.hits (label, cu) VALUES (label, current_user) $$;
INSERT INTO qlater_handler (handler, queue, priority, max_attempts, registered_by)
VALUES ('public.hit(text)', 'default', 100, 25, CURRENT_USER);
INSERT INTO qlater_queue (name, external, owner) VALUES ('default', false, CURRENT_USER);
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external, dead, attempts)
VALUES ('default', 'public.hit(text)', '["q5-now"]', 100, now(), 25, CURRENT_USER, false, false, 0),
       ('default', 'public.hit(text)', '["q5-dead"]', 100, now(), 1, CURRENT_USER, false, true, 1);
});
is($node->safe_psql('qdb5', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	'0.3', 'qdb5 is at 0.3');
$node->safe_psql('qdb5', 'ALTER EXTENSION qlater UPDATE');
is($node->safe_psql('qdb5', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	$new_version, "qdb5: updated from 0.3 to $new_version");
ok($node->poll_query_until('qdb5', q{SELECT count(*) = 1 FROM hits WHERE label = 'q5-now'}),
	'qdb5: its due job runs after the update');
ok( $node->poll_query_until(
		'qdb5', q{SELECT count(*) = 1 FROM qlater_history WHERE args->>0 = 'q5-now' AND outcome = 'done'}),
	'qdb5: its outcome is in the history');
is($node->safe_psql('qdb5', q{SELECT string_agg(args->>0 || ':' || state, ' ') FROM qlater_jobs}),
	'q5-dead:dead', 'qdb5: its dead job is kept');
is($node->safe_psql('qdb5', q{SELECT state FROM qlater_job_status((SELECT id FROM qlater_job))}),
	'dead', 'qdb5: qlater_job_status says where the dead job is');
is( $node->safe_psql(
		'qdb3', q{SELECT count(*) FROM pg_proc WHERE proname IN ('qlater_complete_many', 'qlater_unlock_many')
		  AND has_function_privilege('app_worker', oid, 'EXECUTE')}),
	'2', 'qdb3: the new functions are there, executable by consumers');
is( $node->safe_psql(
		'qdb1', q{SELECT count(*) FROM pg_proc WHERE proname IN ('qlater_complete_many', 'qlater_unlock_many')
		  AND has_function_privilege('app_worker', oid, 'EXECUTE')}),
	'2', 'qdb1 (from 0.1): the new functions too');

### qdb6: made at 0.4, holding a pending job, a dead one and an outcome in
### the history, updated: the history is kept, the pending job runs
$node->safe_psql('postgres', 'CREATE DATABASE qdb6');
$node->safe_psql(
	'qdb6', q{
CREATE EXTENSION qlater VERSION '0.4';
CREATE TABLE hits (label text, cu text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION hit(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.hits (label, cu) VALUES (label, current_user) $$;
INSERT INTO qlater_handler (handler, queue, priority, max_attempts, registered_by)
VALUES ('public.hit(text)', 'default', 100, 25, CURRENT_USER);
INSERT INTO qlater_queue (name, external, owner) VALUES ('default', false, CURRENT_USER);
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external, dead, attempts)
VALUES ('default', 'public.hit(text)', '["q6-now"]', 100, now(), 25, CURRENT_USER, false, false, 0),
       ('default', 'public.hit(text)', '["q6-dead"]', 100, now(), 1, CURRENT_USER, false, true, 1);
INSERT INTO qlater_outcome (slot, id, queue, handler, role, args, enqueued_at, run_at, started_at,
                            finished_at, attempt, outcome, expires_at, external)
VALUES (0, 424242, 'default', 'public.hit(text)', CURRENT_USER, '["q6-before"]', now(), now(), now(),
        now(), 1, 'done', now() + interval '1 day', false);
});
is($node->safe_psql('qdb6', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	'0.4', 'qdb6 is at 0.4');
$node->safe_psql('qdb6', 'ALTER EXTENSION qlater UPDATE');
is($node->safe_psql('qdb6', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	$new_version, "qdb6: updated from 0.4 to $new_version");
is($node->safe_psql('qdb6', q{SELECT outcome FROM qlater_history WHERE id = 424242}),
	'done', 'qdb6: the outcome recorded at 0.4 is kept');
ok($node->poll_query_until('qdb6', q{SELECT count(*) = 1 FROM hits WHERE label = 'q6-now'}),
	'qdb6: its due job runs after the update');
is($node->safe_psql('qdb6', q{SELECT string_agg(args->>0 || ':' || state, ' ') FROM qlater_jobs}),
	'q6-dead:dead', 'qdb6: its dead job is kept');

### qdb7: made at 0.5, holding a pending in-server job, a pending external
### job, a dead one and an outcome, updated: the history is kept (the
### outcome's CHECK is gone), and the outcomes of the worker's job and of
### the consumer's completion are written by 0.6 with every column
$node->safe_psql('postgres', 'CREATE DATABASE qdb7');
$node->safe_psql(
	'qdb7', q{
CREATE EXTENSION qlater VERSION '0.5';
CREATE TABLE hits (label text, cu text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION hit(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.hits (label, cu) VALUES (label, current_user) $$;
INSERT INTO qlater_queue (name, external, owner, keep_history) VALUES ('ext7', true, CURRENT_USER, '2 hours');
INSERT INTO qlater_handler (handler, queue, priority, max_attempts, registered_by)
VALUES ('public.hit(text)', 'default', 100, 25, CURRENT_USER);
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external, dead, attempts)
VALUES ('ext7', 'Export7', '["q7-ext"]', 100, now(), 25, CURRENT_USER, true, false, 2),
       ('default', 'public.hit(text)', '["q7-dead"]', 100, now(), 1, CURRENT_USER, false, true, 1);
INSERT INTO qlater_outcome (slot, id, queue, handler, role, args, enqueued_at, run_at, started_at,
                            finished_at, attempt, outcome, expires_at, external)
VALUES (0, 434343, 'default', 'public.hit(text)', CURRENT_USER, '["q7-before"]', now(), now(), now(),
        now(), 1, 'done', now() + interval '1 day', false);
});
is($node->safe_psql('qdb7', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	'0.5', 'qdb7 is at 0.5');
is( $node->safe_psql(
		'qdb7', q{SELECT count(*) FROM pg_constraint WHERE conrelid = 'qlater_outcome'::regclass AND contype = 'c'}),
	'1', 'qdb7: at 0.5 the outcome has its CHECK');
$node->safe_psql('qdb7', 'ALTER EXTENSION qlater UPDATE');
is($node->safe_psql('qdb7', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	$new_version, "qdb7: updated from 0.5 to $new_version");
is( $node->safe_psql(
		'qdb7', q{SELECT count(*) FROM pg_constraint
		  WHERE conrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'qlater_outcome'::regclass
		                     UNION ALL SELECT 'qlater_outcome'::regclass) AND contype = 'c'}),
	'0', 'qdb7: the CHECK is gone from the history and its partitions');
is($node->safe_psql('qdb7', q{SELECT outcome || ' ' || (args->>0) FROM qlater_history WHERE id = 434343}),
	'done q7-before', 'qdb7: the outcome recorded at 0.5 is kept');
$node->safe_psql('qdb7', q{INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role)
  VALUES ('default', 'public.hit(text)', '["q7-now"]', 100, now(), 25, CURRENT_USER)});
ok($node->poll_query_until('qdb7', q{SELECT count(*) = 1 FROM hits WHERE label = 'q7-now'}),
	'qdb7: a due job runs after the update');
ok( $node->poll_query_until(
		'qdb7', q{SELECT count(*) = 1 FROM qlater_outcome WHERE args->>0 = 'q7-now' AND outcome = 'done'
		  AND attempt = 1 AND NOT external AND started_at <= finished_at}),
	"qdb7: the worker's outcome is in the history");
is( $node->safe_psql(
		'qdb7', q{
SELECT qlater_complete(id) FROM qlater_lock('ext7', 1);
SELECT queue || ' ' || handler || ' ' || (args->>0) || ' ' || attempt || ' ' || outcome || ' '
       || external || ' ' || (started_at <= finished_at) || ' ' || (role = current_user) || ' '
       || (expires_at - finished_at) || ' ' || (error IS NULL)
FROM qlater_outcome WHERE args->>0 = 'q7-ext';
}),
	"\next7 Export7 q7-ext 3 done true true true 02:00:00 true",
	"qdb7: a consumer's completion is in the history, every column as before");
is($node->safe_psql('qdb7', q{SELECT string_agg(args->>0 || ':' || state, ' ') FROM qlater_jobs}),
	'q7-dead:dead', 'qdb7: its dead job is kept');

### qdb8: made at 0.6, holding an external job leased by one consumer and
### a pending one, updated: the lease holds (its holder completes the job
### with its token), and the queue's other consumer, which read the token
### in qlater_jobs at 0.6, reads none at 0.7
$node->safe_psql('postgres', q{
CREATE DATABASE qdb8;
CREATE ROLE c8a LOGIN;
CREATE ROLE c8b LOGIN;
});
$node->safe_psql(
	'qdb8', q{
CREATE EXTENSION qlater VERSION '0.6';
GRANT CREATE ON SCHEMA public TO PUBLIC;
INSERT INTO qlater_queue (name, external, owner) VALUES ('ext8', true, CURRENT_USER);
INSERT INTO qlater_queue_grant (queue, grantee, privilege) VALUES ('ext8', 'c8a', 'consume'), ('ext8', 'c8b', 'consume');
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external, claim_token, lease_until, claimed_at)
VALUES ('ext8', 'Export8', '["q8-leased"]', 100, now(), 25, CURRENT_USER, true,
        'f0e1d2c3-b4a5-4697-8899-aabbccddeeff', now() + interval '1 hour', now()),
       ('ext8', 'Export8', '["q8-pending"]', 100, now(), 25, CURRENT_USER, true, NULL, NULL, NULL);
});
is($node->safe_psql('qdb8', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	'0.6', 'qdb8 is at 0.6');
is($node->safe_psql('qdb8', q{SELECT count(claim_token) FROM qlater_jobs}, extra_params => [ '-U', 'c8b' ]),
	'1', "qdb8: at 0.6 another consumer reads the lease's token");
$node->safe_psql('qdb8', 'ALTER EXTENSION qlater UPDATE');
is($node->safe_psql('qdb8', "SELECT extversion FROM pg_extension WHERE extname = 'qlater'"),
	$new_version, "qdb8: updated from 0.6 to $new_version");
is( $node->safe_psql(
		'qdb8', q{SELECT count(*) || ' ' || count(claim_token) || ' ' || count(*) FILTER (WHERE state = 'running') FROM qlater_jobs},
		extra_params => [ '-U', 'c8b' ]),
	'2 0 1', "qdb8: the other consumer sees both jobs, the leased one running, and no token");
is( $node->safe_psql(
		'qdb8', q{SELECT qlater_complete(id, 'f0e1d2c3-b4a5-4697-8899-aabbccddeeff') FROM qlater_job WHERE args->>0 = 'q8-leased'}),
	'', "qdb8: the lease's holder completes its job with its token");
is( $node->safe_psql(
		'qdb8', q{SELECT string_agg(args->>0, ' ') FROM qlater_lock('ext8', 5)},
		extra_params => [ '-U', 'c8a' ]),
	'q8-pending', 'qdb8: the pending job is claimed after the update');
is($node->safe_psql('qdb8', q{SELECT outcome || ' ' || (args->>0) FROM qlater_history WHERE args->>0 = 'q8-leased'}),
	'done q8-leased', "qdb8: the leased job's outcome is in the history");

# a fresh CREATE EXTENSION reaches the new version through the upgrade scripts
$node->safe_psql('postgres', 'CREATE DATABASE qdb4');
is( $node->safe_psql(
		'qdb4', q{CREATE EXTENSION qlater; SELECT extversion FROM pg_extension WHERE extname = 'qlater'}),
	$new_version, "qdb4: CREATE EXTENSION installs $new_version");

# one line for each database, however long it waited
my $log = slurp_file($node->logfile, $log_offset);
for my $db ('qdb1', 'qdb2')
{
	my $n = () = $log =~ /${\ waits_logged($db)}/g;
	is($n, 1, "the wait of $db is logged once");
}
# no error, warning or exit of the server's own processes (the lines of
# this test's sessions carry its name): the workers waited and went on
is(join("\n", grep { /\[\d+\] (?:WARNING|ERROR|FATAL|PANIC):|exited with exit code|terminated by signal/ } split /\n/, $log),
	'', 'no error, warning or exit of a server process since the new library started');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no server process was terminated by a signal');
done_testing();
