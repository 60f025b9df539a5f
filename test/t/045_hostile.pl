# 045_hostile.pl: qlater attacked by a hostile tenant, a role without any
# privilege beyond its own schema (found items 1-6, 10 and 13 of issue 10).
# Each attack asserts no escalation, no server crash, and the documented
# outcome:
#   1. the tenant's code run by a worker while it converts a job's
#      arguments (domain checks in SQL and in PL/pgSQL, through a
#      composite, through an array, for a procedure) or evaluates parameter
#      defaults (volatile, and IMMUTABLE ones the planner may fold) runs as
#      the tenant, never with superuser rights, and sees is_superuser off
#      as in a direct call by the tenant;
#   2. a job of the tenant's own external queue naming
#      pg_catalog.textin(cstring), the queue then turned in-server: the job
#      ends dead with a clear last_error;
#   3. two overloads h(text) and h(int): each job calls its own;
#   4. a config reload while a job runs (alone, and in a batch);
#   5. a free-text application job left in a queue turned in-server: dead,
#      the workers go on;
#   6. a handler that swallows its timeout's cancel, or a qlater_cancel: the
#      attempt fails (timed out) or the job goes, and the worker is freed;
#  10. a handler registered with an external queue, enqueued without naming
#      the queue, goes to that queue and never runs in-server;
#  13. a lapsed lease's token cannot finish a job a session-mode consumer
#      has counted the lapse of, and claimed since.
# The server may crash on a broken build: every attack waits for it to come
# back and every wait is bounded, so that later attacks still run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('hostile');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n"
	  # a crash restarts the server (the test framework turns that off)
	  . "restart_after_crash = on\n"
	  # a job that crashes the server is dead after one crash, not three:
	  # a broken build restarts the server once per such job
	  . "qlater.max_crashes = 1\n");
$node->start;

my $superuser = $node->safe_psql('postgres', 'SELECT current_user');
my $nworkers = 4;

# bounds of the waits: generous, never a latency assertion
my $wait_long = 60;
my $wait_short = 30;

### helpers

# a connection the server refused or could not take yet (restarting after
# a crash): the statement did not run, it may be sent again
sub not_connected
{
	my ($ret, $err) = @_;
	return 1 if !defined $ret && $err =~ /psql died/;
	return 0 if !defined $ret;
	return 0 if $ret != 2;
	return $err =~ /could not connect|connection refused|no such file|the database system is (starting up|in recovery mode|shutting down|not yet accepting)/i;
}

# run SQL as a role; returns (exit code, stdout, stderr); retries only while
# the server does not accept connections
sub try_as
{
	my ($role, $sql) = @_;
	my $deadline = time + $wait_long;
	while (1)
	{
		my $timed_out = 0;
		my ($ret, $out, $err);
		# psql may lose its server (a crash): IPC::Run then dies of a pipe
		eval {
			($ret, $out, $err) = $node->psql(
				'postgres', "\\set VERBOSITY verbose\n$sql",
				extra_params => [ '-U', $role ],
				timeout => 120,
				timed_out => \$timed_out);
			1;
		} or ($ret, $out, $err) = (undef, '', "psql died: $@");
		$ret = 99 if $timed_out;
		return ($ret, $out, $err) unless not_connected($ret, $err // '');
		return ($ret, $out, $err) if time > $deadline;
		usleep(200_000);
	}
}

# run SQL as a role, dying on error (an attack's eval turns that into a
# failed test)
sub q_as
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = try_as($role, $sql);
	die "SQL as $role failed (exit " . ($ret // 'none') . "): $err\nwhile running: $sql\n" if $ret != 0;
	return $out;
}
sub su { return q_as($superuser, $_[0]); }
sub tenant { return q_as('tenant', $_[0]); }

# poll a query (as the superuser) until it returns $expected ('t' unless
# given), at most $secs seconds
sub poll
{
	my ($sql, $secs, $expected) = @_;
	$expected = 't' unless defined $expected;
	my $deadline = time + $secs;
	my $last = '';
	while (1)
	{
		my $timed_out = 0;
		my ($ret, $out, $err);
		eval {
			($ret, $out, $err) = $node->psql(
				'postgres', $sql,
				timeout => 60,
				timed_out => \$timed_out);
			1;
		} or ($ret, $out, $err) = (undef, '', "psql died: $@");
		return 1 if !$timed_out && defined $ret && $ret == 0 && $out eq $expected;
		$last = ($out // '') . ($err ? " [$err]" : '');
		last if time > $deadline;
		usleep(200_000);
	}
	diag "gave up after $secs s waiting for '$expected' from: $sql\nlast: $last";
	return 0;
}

# wait for the server to accept connections (after a crash it restarts)
sub wait_alive
{
	return poll('SELECT 1', 90, '1');
}

# a job is gone (finished or cancelled) or dead
sub wait_settled
{
	my ($id, $secs) = @_;
	return poll("SELECT count(*) = 0 FROM qlater_jobs WHERE id = $id AND state <> 'dead'",
		$secs // $wait_long);
}

# the lines of the server log since an offset that say a process died of
# a signal
sub signal_lines
{
	my ($offset) = @_;
	my $log = slurp_file($node->logfile, $offset);
	return grep { /terminated by signal/ } split(/\n/, $log);
}

# the lines of the server log since an offset that say a qlater worker
# exited with an error
sub worker_exit_lines
{
	my ($offset) = @_;
	my $log = slurp_file($node->logfile, $offset);
	return grep { /"qlater worker" \(PID \d+\) exited with exit code [1-9]/ } split(/\n/, $log);
}

# run one attack: wait for the server, run it (an error in the attack
# fails it; the next one still runs), then check that no server process
# died of a signal meanwhile
sub attack
{
	my ($name, $code) = @_;
	note "=== $name";
	ok(wait_alive(), "$name: the server accepts connections");
	my $offset = -s $node->logfile;
	my $ok = eval { $code->(); 1 };
	fail("$name: the attack ran to its end") or diag("died: $@") unless $ok;
	my @lines = signal_lines($offset);
	is(scalar(@lines), 0, "$name: no server process was terminated by a signal")
	  or diag(join("\n", @lines));
}

# enqueue a job as the tenant; returns its id
sub enqueue
{
	my ($call) = @_;
	my $id = tenant("SELECT $call");
	die "enqueue gave no id: $call" unless $id =~ /^\d+$/;
	return $id;
}

# a plain job of the tenant that writes a label, and whether it ran
sub normal_job_runs
{
	my ($label, $secs) = @_;
	my $id = enqueue("qlater_enqueue('tenant.note', '[\"$label\"]')");
	return poll("SELECT count(*) = 1 FROM tenant.effects WHERE label = '$label'", $secs // $wait_long);
}

### the cluster: an extension, a hostile tenant, an admin

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE tenant LOGIN;
CREATE ROLE ops LOGIN;
GRANT qlater_admin TO ops;
CREATE SCHEMA tenant AUTHORIZATION tenant;
});

# Everything below is created by the tenant itself.  Names are
# schema-qualified: handlers run with the database's search_path.
$node->safe_psql(
	'postgres', q{
-- what the tenant's code saw whenever it ran
CREATE TABLE tenant.runs (label text, cu text, su text, eff_super boolean,
                          grabbed boolean, pid int,
                          at timestamptz DEFAULT clock_timestamp());
-- what the handlers saw
CREATE TABLE tenant.handled (label text, cu text, su text, pid int,
                             at timestamptz DEFAULT clock_timestamp());
CREATE TABLE tenant.effects (label text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE tenant.ov_log (kind text, val text, at timestamptz DEFAULT clock_timestamp());
-- lets a handler that swallows cancels end (only for the cleanup of a
-- broken build)
CREATE TABLE tenant.release (label text);

-- the trap: records who runs it and, run with superuser rights, makes the
-- tenant a superuser (SQL functions, as in the issue)
CREATE FUNCTION tenant.grab() RETURNS boolean LANGUAGE sql
    AS $$ ALTER ROLE tenant SUPERUSER; SELECT true $$;
CREATE FUNCTION tenant.chk(v text) RETURNS boolean LANGUAGE sql AS $$
    INSERT INTO tenant.runs (label, cu, su, eff_super, grabbed, pid)
    SELECT v, current_user, pg_catalog.current_setting('is_superuser'), r.rolsuper,
           CASE WHEN r.rolsuper THEN tenant.grab() ELSE false END,
           pg_catalog.pg_backend_pid()
      FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
    SELECT true
$$;
-- the same in PL/pgSQL
CREATE FUNCTION tenant.chk_pl(v text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    eff boolean;
    grabbed boolean := false;
BEGIN
    SELECT r.rolsuper INTO eff FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
    IF eff THEN
        ALTER ROLE tenant SUPERUSER;
        grabbed := true;
    END IF;
    INSERT INTO tenant.runs (label, cu, su, eff_super, grabbed, pid)
    VALUES (v, current_user, pg_catalog.current_setting('is_superuser'), eff, grabbed,
            pg_catalog.pg_backend_pid());
    RETURN true;
END
$$;
-- the same, IMMUTABLE: the planner may fold a call with constant arguments
CREATE FUNCTION tenant.chk_imm(v text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN tenant.chk(v);
END
$$;

CREATE FUNCTION tenant.mark(label text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO tenant.handled (label, cu, su, pid)
    VALUES (label, current_user, pg_catalog.current_setting('is_superuser'),
            pg_catalog.pg_backend_pid())
$$;

CREATE DOMAIN tenant.d_chk AS text CHECK (tenant.chk(VALUE));
CREATE DOMAIN tenant.d_pl AS text CHECK (tenant.chk_pl(VALUE));
CREATE TYPE tenant.comp AS (a tenant.d_chk, n int);

CREATE FUNCTION tenant.h_dom(x tenant.d_chk) RETURNS void LANGUAGE sql
    AS $$ SELECT tenant.mark('dom:' || x) $$;
CREATE FUNCTION tenant.h_pl(x tenant.d_pl) RETURNS void LANGUAGE sql
    AS $$ SELECT tenant.mark('pl:' || x) $$;
CREATE FUNCTION tenant.h_comp(c tenant.comp) RETURNS void LANGUAGE sql
    AS $$ SELECT tenant.mark('comp:' || (c).a) $$;
CREATE FUNCTION tenant.h_arr(x tenant.d_chk[]) RETURNS void LANGUAGE sql
    AS $$ SELECT tenant.mark('arr:' || pg_catalog.array_to_string(x, ',')) $$;
CREATE PROCEDURE tenant.p_dom(x tenant.d_chk) LANGUAGE sql
    AS $$ SELECT tenant.mark('proc:' || x) $$;
CREATE FUNCTION tenant.h_def(label text, x boolean DEFAULT tenant.chk('default'))
    RETURNS void LANGUAGE sql AS $$ SELECT tenant.mark('default:' || label || ':' || x) $$;
CREATE FUNCTION tenant.h_imm(label text, x boolean DEFAULT tenant.chk_imm('immutable'))
    RETURNS void LANGUAGE sql AS $$ SELECT tenant.mark('immutable:' || label || ':' || x) $$;
SELECT qlater_register('tenant.h_dom(tenant.d_chk)', max_attempts => 1);
SELECT qlater_register('tenant.h_pl(tenant.d_pl)', max_attempts => 1);
SELECT qlater_register('tenant.h_comp(tenant.comp)', max_attempts => 1);
SELECT qlater_register('tenant.h_arr(tenant.d_chk[])', max_attempts => 1);
SELECT qlater_register('tenant.p_dom(tenant.d_chk)', max_attempts => 1);
SELECT qlater_register('tenant.h_def(text,boolean)', max_attempts => 1);
SELECT qlater_register('tenant.h_imm(text,boolean)', max_attempts => 1);

-- a plain job
CREATE FUNCTION tenant.note(label text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO tenant.effects (label) VALUES (label) $$;
SELECT qlater_register('tenant.note(text)');

-- two overloads with as many arguments
CREATE FUNCTION tenant.ov(x text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO tenant.ov_log (kind, val) VALUES ('text', x) $$;
CREATE FUNCTION tenant.ov(x int) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO tenant.ov_log (kind, val) VALUES ('int', x::text) $$;
SELECT qlater_register('tenant.ov(text)', max_attempts => 1);
SELECT qlater_register('tenant.ov(integer)', max_attempts => 1);

-- a job that takes a while
CREATE FUNCTION tenant.slow(label text, secs float8) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_sleep(secs);
    INSERT INTO tenant.effects (label) VALUES (label);
END
$$;
SELECT qlater_register('tenant.slow(text,float8)');

-- swallows every cancel; ends only when released
CREATE FUNCTION tenant.swallow(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant.effects (label) VALUES (label || ' started');
    LOOP
        BEGIN
            PERFORM pg_catalog.pg_sleep(0.1);
            EXIT WHEN EXISTS (SELECT FROM tenant.release r WHERE r.label = swallow.label);
        EXCEPTION WHEN query_canceled THEN
            NULL;
        END;
    END LOOP;
END
$$;
CREATE FUNCTION tenant.swallow_t(label text) RETURNS void LANGUAGE sql
    AS $$ SELECT tenant.swallow(label) $$;
CREATE FUNCTION tenant.swallow_c(label text) RETURNS void LANGUAGE sql
    AS $$ SELECT tenant.swallow(label) $$;
SELECT qlater_register('tenant.swallow_t(text)', timeout => '1 second', max_attempts => 1);
SELECT qlater_register('tenant.swallow_c(text)', max_attempts => 1);

CREATE FUNCTION tenant.extwork(label text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO tenant.effects (label) VALUES (label) $$;
},
	extra_params => [ '-U', 'tenant' ]);

ok( poll(
		"SELECT count(*) = $nworkers FROM pg_stat_activity
		  WHERE backend_type = 'qlater worker' AND datname = 'postgres'",
		$wait_long),
	"$nworkers workers run");
ok(normal_job_runs('warm-up'), 'a plain job of the tenant runs');
is(su("SELECT rolsuper FROM pg_roles WHERE rolname = 'tenant'"),
	'f', 'the tenant is no superuser');

### 1. escalation through argument conversion and parameter defaults
my @escalations = (
	[ 'domain check', "qlater_enqueue('tenant.h_dom', '[\"dom\"]')", 'dom', 'dom:dom' ],
	[ 'domain check in PL/pgSQL', "qlater_enqueue('tenant.h_pl', '[\"pl\"]')", 'pl', 'pl:pl' ],
	[ 'domain check in a composite column', "qlater_enqueue('tenant.h_comp', '[\"(comp,1)\"]')", 'comp', 'comp:comp' ],
	[ 'domain check in an array', "qlater_enqueue('tenant.h_arr', '[\"{arr1,arr2}\"]')", 'arr%', 'arr:arr1,arr2' ],
	[ 'domain check of a procedure parameter', "qlater_enqueue('tenant.p_dom', '[\"proc\"]')", 'proc', 'proc:proc' ],
	[ 'volatile parameter default', "qlater_enqueue('tenant.h_def', '[\"def\"]')", 'default', 'default:def:true' ],
	[ 'IMMUTABLE parameter default', "qlater_enqueue('tenant.h_imm', '[\"imm\"]')", 'immutable', 'immutable:imm:true' ]);
for my $e (@escalations)
{
	my ($what, $call, $runs_like, $mark) = @$e;
	attack(
		"escalation, $what",
		sub {
			my ($id, $enq_pid) = split(/ /, tenant("SELECT $call || ' ' || pg_backend_pid()"));
			ok(wait_settled($id), "escalation, $what: the job ended");
			is( su("SELECT concat_ws('|', state, last_error->>'message') FROM qlater_jobs WHERE id = $id"),
				'', "escalation, $what: the job ran to its end");
			is( su("SELECT string_agg(cu, ',') FROM tenant.handled WHERE label = '$mark'"),
				'tenant', "escalation, $what: the handler ran once, as the tenant");
			is(su("SELECT rolsuper FROM pg_roles WHERE rolname = 'tenant'"),
				'f', "escalation, $what: the tenant did not become a superuser");
			my $runs = su(
				"SELECT string_agg(concat_ws('|', label, cu, su, eff_super, grabbed, pid), ', ' ORDER BY at)
				   FROM tenant.runs WHERE label LIKE '$runs_like'");
			note "escalation, $what: the tenant's code ran as: $runs (enqueued from pid $enq_pid)";
			cmp_ok(su("SELECT count(*) FROM tenant.runs WHERE label LIKE '$runs_like' AND pid <> $enq_pid"),
				'>', 0, "escalation, $what: the worker ran the tenant's code");
			is( su(
					"SELECT count(*) FROM tenant.runs WHERE label LIKE '$runs_like'
					    AND (cu <> 'tenant' OR eff_super OR grabbed)"),
				'0',
				"escalation, $what: every run of the tenant's code was as the tenant, without superuser rights");
			is( su(
					"SELECT count(*) FROM (SELECT su FROM tenant.runs WHERE label LIKE '$runs_like'
					    UNION ALL SELECT su FROM tenant.handled WHERE label = '$mark') s
					  WHERE su <> 'off'"),
				'0', "escalation, $what: the tenant's code (check, handler) saw is_superuser off");
		});
	# a broken build made the tenant a superuser: undo it for the next attack
	su("ALTER ROLE tenant NOSUPERUSER");
}

### 2. a pseudo-type handler in a job of an external queue turned in-server
attack(
	'pseudo-type job turned in-server',
	sub {
		my $offset = -s $node->logfile;
		tenant("SELECT qlater_create_queue('tq_pseudo', external => true)");
		my $id = enqueue("qlater_enqueue('pg_catalog.textin(cstring)', '[\"x\"]', queue => 'tq_pseudo')");
		tenant("SELECT qlater_alter_queue('tq_pseudo', external => false)");
		ok( poll("SELECT state = 'dead' FROM qlater_jobs WHERE id = $id", $wait_long),
			'pseudo-type job turned in-server: the job ends dead');
		my $err = su(
			"SELECT concat_ws('|', crashes, last_error->>'sqlstate', last_error->>'message') FROM qlater_jobs WHERE id = $id");
		note "pseudo-type job turned in-server: crashes|sqlstate|message: $err";
		is(su("SELECT crashes FROM qlater_jobs WHERE id = $id"),
			'0', 'pseudo-type job turned in-server: no crash was counted against it');
		like(su("SELECT last_error->>'message' FROM qlater_jobs WHERE id = $id"),
			qr/\S/, 'pseudo-type job turned in-server: last_error has a message');
		unlike(su("SELECT last_error->>'message' FROM qlater_jobs WHERE id = $id"),
			qr/crash/i, 'pseudo-type job turned in-server: last_error says why, not a crash');
		ok(normal_job_runs('after-pseudo'),
			'pseudo-type job turned in-server: a plain job enqueued afterwards runs');
		my @exits = worker_exit_lines($offset);
		is(scalar(@exits), 0, 'pseudo-type job turned in-server: no worker exited on an error')
		  or diag(join("\n", @exits[ 0 .. ($#exits < 4 ? $#exits : 4) ]));
		# leave nothing behind
		su("SELECT qlater_cancel($id)");
	});

### 3. two overloads with as many arguments
attack(
	'overloads h(text), h(int)',
	sub {
		my @order = ('text', 'int', 'text', 'int', 'int', 'text');
		my (@want, @ids);
		for my $kind (@order)
		{
			my $id =
			  $kind eq 'text'
			  ? enqueue("qlater_enqueue('tenant.ov(text)', '[\"abc\"]')")
			  : enqueue("qlater_enqueue('tenant.ov(integer)', '[42]')");
			push @ids, $id;
			push @want, $kind eq 'text' ? 'text:abc' : 'int:42';
			wait_settled($id, $wait_short);
			wait_alive();
		}
		is(su("SELECT string_agg(kind || ':' || val, ',' ORDER BY at) FROM tenant.ov_log"),
			join(',', @want), 'overloads h(text), h(int): each job called its own overload with its value');
		my $left = join(',', @ids);
		is( su("SELECT count(*) FROM qlater_jobs WHERE id IN ($left)"),
			'0', 'overloads h(text), h(int): every job ran to its end');
		note 'overloads: left: '
		  . su("SELECT string_agg(concat_ws('|', id, handler, state, last_error->>'message'), ', ') FROM qlater_jobs WHERE id IN ($left)");
		su("SELECT qlater_cancel(id) FROM qlater_jobs WHERE id IN ($left)");
	});

### 4. config reloads while jobs run
attack(
	'config reload during a job',
	sub {
		my $mb = 5;
		my @labels;
		for my $round (1 .. 3)
		{
			my $label = "reload-plain-$round";
			push @labels, $label;
			my $id = enqueue("qlater_enqueue('tenant.slow', '[\"$label\", 1.5]')");
			poll("SELECT state = 'running' FROM qlater_jobs WHERE id = $id", $wait_short);
			su("ALTER SYSTEM SET work_mem = '${mb}MB'");
			su('SELECT pg_reload_conf()');
			$mb++;
			wait_settled($id, $wait_short);
			wait_alive();
		}
		tenant("SELECT qlater_create_queue('tq_batch', batch_size => 8, batch_delay => '1 s')");
		my @batch = map { "reload-batch-$_" } (1 .. 6);
		push @labels, @batch;
		my $list = join(', ', map { "[\"$_\", 0.5]" } @batch);
		tenant("SELECT count(*) FROM qlater_enqueue_many('tenant.slow', '[$list]', queue => 'tq_batch')");
		poll("SELECT count(*) > 0 FROM qlater_jobs WHERE queue = 'tq_batch' AND state = 'running'",
			$wait_short);
		for my $r (1 .. 4)
		{
			su("ALTER SYSTEM SET work_mem = '${mb}MB'");
			su('SELECT pg_reload_conf()');
			$mb++;
			usleep(500_000);
		}
		poll("SELECT count(*) = 0 FROM qlater_jobs WHERE handler LIKE 'tenant.slow%' AND state <> 'dead'",
			$wait_long);
		wait_alive();
		my $in = join(', ', map { "'$_'" } @labels);
		is( su(
				"SELECT count(*) FROM (SELECT label FROM tenant.effects WHERE label IN ($in)
				   GROUP BY label HAVING count(*) = 1) o"),
			scalar(@labels),
			'config reload during a job: every job (3 alone, 6 in a batch) took effect exactly once');
		is(su("SELECT count(*) FROM tenant.effects WHERE label LIKE 'reload-%'"),
			scalar(@labels), 'config reload during a job: and nothing else');
		is(su("SELECT count(*) FROM qlater_jobs WHERE handler LIKE 'tenant.slow%'"),
			'0', 'config reload during a job: no job is left');
		su('ALTER SYSTEM RESET work_mem');
		su('SELECT pg_reload_conf()');
	});

### 5. a free-text application job in a queue turned in-server
attack(
	'application job turned in-server',
	sub {
		my $offset = -s $node->logfile;
		tenant("SELECT qlater_create_queue('tq_app', external => true)");
		my $id = enqueue(
			"qlater_enqueue('ExportStations', '{\"args\": [\"tenant-a\"]}', queue => 'tq_app')");
		tenant("SELECT qlater_alter_queue('tq_app', external => false)");
		ok( poll("SELECT state = 'dead' FROM qlater_jobs WHERE id = $id", $wait_long),
			'application job turned in-server: the job ends dead');
		note 'application job turned in-server: crashes|sqlstate|message: '
		  . su("SELECT concat_ws('|', crashes, last_error->>'sqlstate', last_error->>'message') FROM qlater_jobs WHERE id = $id");
		like(su("SELECT last_error->>'message' FROM qlater_jobs WHERE id = $id"),
			qr/\S/, 'application job turned in-server: last_error has a message');
		unlike(su("SELECT coalesce(last_error->>'message', '') FROM qlater_jobs WHERE id = $id"),
			qr/crash/i, 'application job turned in-server: last_error says why, not a crash');
		ok(normal_job_runs('after-app', $wait_short),
			'application job turned in-server: the workers still run a plain job of the database');
		my @exits = worker_exit_lines($offset);
		is(scalar(@exits), 0, 'application job turned in-server: no worker exited on an error')
		  or diag(scalar(@exits) . " exits, the first: " . join("\n", @exits[ 0 .. ($#exits < 4 ? $#exits : 4) ]));
		my $parens = grep { /expected a left parenthesis/ }
		  split(/\n/, slurp_file($node->logfile, $offset));
		note "application job turned in-server: 'expected a left parenthesis' in the log $parens times";
		# a broken build loops on the job: remove it
		su("SELECT qlater_cancel($id)");
	});

### 6. a handler that swallows its timeout, and an admin's qlater_cancel
attack(
	'swallowed timeout',
	sub {
		my $id = enqueue("qlater_enqueue('tenant.swallow_t', '[\"t6\"]')");
		ok( poll("SELECT state = 'dead' FROM qlater_jobs WHERE id = $id", $wait_long),
			'swallowed timeout: the attempt failed (the job, max_attempts 1, is dead)');
		is( su("SELECT concat_ws('|', attempts, crashes) FROM qlater_jobs WHERE id = $id"),
			'1|0', 'swallowed timeout: one attempt counted, not as a crash');
		like(su("SELECT coalesce(last_error->>'message', '') FROM qlater_jobs WHERE id = $id"),
			qr/timed out/, 'swallowed timeout: last_error says the job timed out');
		ok(poll("SELECT count(*) = 0 FROM qlater_workers() WHERE job_id = $id", $wait_short),
			'swallowed timeout: no worker is busy with the job any more');
		is(su("SELECT count(*) FROM tenant.effects WHERE label LIKE 't6%'"),
			'0', 'swallowed timeout: the work of the attempt is rolled back');
		ok( poll(
				"SELECT count(*) = $nworkers FROM qlater_workers() WHERE datname = 'postgres' AND pid IS NOT NULL",
				$wait_short),
			"swallowed timeout: the database has its $nworkers workers again");
		ok(normal_job_runs('after-timeout', $wait_short),
			'swallowed timeout: a plain job enqueued afterwards runs');
		# cleanup of a broken build: let the handler end
		su("INSERT INTO tenant.release VALUES ('t6')");
		poll("SELECT count(*) = 0 FROM qlater_workers() WHERE job_id = $id", $wait_short);
		su("SELECT qlater_cancel($id)");
	});

attack(
	'swallowed cancel',
	sub {
		my $id = enqueue("qlater_enqueue('tenant.swallow_c', '[\"c6\"]')");
		ok( poll("SELECT count(*) = 1 FROM qlater_workers() WHERE job_id = $id", $wait_short),
			'swallowed cancel: the job runs');
		is(q_as('ops', "SELECT qlater_cancel($id)"), 't',
			'swallowed cancel: an admin cancels it');
		is(su("SELECT count(*) FROM qlater_jobs WHERE id = $id"),
			'0', 'swallowed cancel: the job is gone');
		ok(poll("SELECT count(*) = 0 FROM qlater_workers() WHERE job_id = $id", $wait_long),
			'swallowed cancel: no worker is busy with the job any more');
		is(su("SELECT count(*) FROM tenant.effects WHERE label LIKE 'c6%'"),
			'0', 'swallowed cancel: the work of the attempt is rolled back');
		ok( poll(
				"SELECT count(*) = $nworkers FROM qlater_workers() WHERE datname = 'postgres' AND pid IS NOT NULL",
				$wait_short),
			"swallowed cancel: the database has its $nworkers workers again");
		ok(normal_job_runs('after-cancel', $wait_short),
			'swallowed cancel: a plain job enqueued afterwards runs');
		su("INSERT INTO tenant.release VALUES ('c6')");
		poll("SELECT count(*) = 0 FROM qlater_workers() WHERE job_id = $id", $wait_short);
	});

### 10. a handler registered with an external queue, queue not named
attack(
	'handler of an external queue',
	sub {
		# registered with an external queue of the tenant's own
		tenant("SELECT qlater_create_queue('tq_ext', external => true)");
		tenant("SELECT qlater_register('tenant.extwork(text)', queue => 'tq_ext')");
		my $unnamed = enqueue("qlater_enqueue('tenant.extwork', '[\"x10-unnamed\"]')");
		my $named = enqueue("qlater_enqueue('tenant.extwork', '[\"x10-named\"]', queue => 'tq_ext')");
		# give the workers every chance to take it: a plain job after it runs,
		# then a pause
		ok(normal_job_runs('x10-marker'), 'handler of an external queue: a plain job after it runs');
		sleep 2;
		is(su("SELECT count(*) FROM tenant.effects WHERE label LIKE 'x10-%' AND label <> 'x10-marker'"),
			'0', 'handler of an external queue: the handler never ran in-server');
		is( su(
				"SELECT string_agg(concat_ws('|', queue, state), ',' ORDER BY id) FROM qlater_jobs WHERE id IN ($unnamed, $named)"),
			'tq_ext|pending,tq_ext|pending',
			'handler of an external queue: both jobs wait in the external queue');
		is( tenant(
				"SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('tq_ext', 10)"),
			"$unnamed,$named",
			'handler of an external queue: a consumer of the queue claims both');
		su("SELECT qlater_cancel(id) FROM qlater_jobs WHERE id IN ($unnamed, $named)");
	});

### 13. a lapsed lease's token against a session-mode claim
attack(
	'lapsed lease',
	sub {
		tenant("SELECT qlater_create_queue('tq_lease', external => true)");
		my $id = enqueue("qlater_enqueue('LeaseWork', '[\"l13\"]', queue => 'tq_lease')");
		my ($lid, $token) = split(/\|/,
			tenant("SELECT id || '|' || claim_token FROM qlater_lock('tq_lease', 1, lease => '1 second')"));
		is($lid, $id, 'lapsed lease: a lease-mode consumer claims the job');
		ok( poll("SELECT lease_until < now() FROM qlater_jobs WHERE id = $id", $wait_short),
			'lapsed lease: the lease runs out');
		# errors are the test's to read: psql goes on after one
		my $b = $node->background_psql(
			'postgres',
			on_error_stop => 0,
			extra_params => [ '-U', 'tenant' ]);
		my $ok = eval {
			my $b_pid = $b->query_safe('SELECT pg_backend_pid()');
			is($b->query_safe("SELECT count(*) FROM qlater_lock('tq_lease', 1)"),
				'0', 'lapsed lease: a session-mode consumer counts the lapse, claims nothing');
			is(su("SELECT attempts FROM qlater_jobs WHERE id = $id"),
				'1', 'lapsed lease: the lapse is a failed attempt');
			# past its backoff
			su("UPDATE qlater_job SET run_at = now() WHERE id = $id");
			is($b->query_safe("SELECT id FROM qlater_lock('tq_lease', 1)"),
				$id, 'lapsed lease: the session-mode consumer claims the job again');
			my ($ret, $out, $err) = try_as(
				'tenant', qq{
BEGIN;
INSERT INTO tenant.effects (label) VALUES ('l13 stale token');
SELECT qlater_complete($id, '$token');
COMMIT;});
			isnt($ret, 0, "lapsed lease: the old token cannot complete the job");
			note "lapsed lease: the old token's complete said: $err";
			is( su("SELECT concat_ws('|', state, locked_by) FROM qlater_jobs WHERE id = $id"),
				"running|$b_pid",
				'lapsed lease: the job is still there, held by the session-mode consumer');
			$b->query_safe('BEGIN');
			$b->query_safe("INSERT INTO tenant.effects (label) VALUES ('l13 session')");
			my ($out2, $failed) = $b->query("SELECT qlater_complete($id)");
			is($failed, 0, 'lapsed lease: the session-mode consumer completes the job');
			note "lapsed lease: the session-mode consumer's complete said: $b->{stderr}" if $failed;
			$b->query($failed ? 'ROLLBACK' : 'COMMIT');
			is(su("SELECT string_agg(label, ',') FROM tenant.effects WHERE label LIKE 'l13%'"),
				'l13 session', 'lapsed lease: the job took effect exactly once, by its holder');
			is(su("SELECT count(*) FROM qlater_jobs WHERE id = $id"),
				'0', 'lapsed lease: the job is gone');
			1;
		};
		my $error = $@;
		eval { $b->quit; };
		die $error unless $ok;
	});

### the whole run
ok(wait_alive(), 'the server accepts connections at the end');
is(su("SELECT rolsuper FROM pg_roles WHERE rolname = 'tenant'"),
	'f', 'the tenant is no superuser at the end');
my @lines = signal_lines(0);
is(scalar(@lines), 0, 'the server log has no process terminated by a signal')
  or diag(join("\n", @lines));

$node->stop('immediate', fail_ok => 1);
done_testing();
