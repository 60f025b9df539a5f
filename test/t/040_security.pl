# 040_security.pl: a job cannot leave the role that enqueued it; the job
# table cannot be forged; roles see and change only their own jobs;
# qlater_admin sees all; SECURITY DEFINER handlers run as their definer.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('security');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n");
$node->start;

my $superuser = $node->safe_psql('postgres', 'SELECT current_user');

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN;
CREATE ROLE dora LOGIN;
GRANT qlater_admin TO carol;

CREATE TABLE log (label text, note text, cu text,
                  at timestamptz DEFAULT clock_timestamp());
GRANT ALL ON log TO PUBLIC;
CREATE TABLE secret_t (s text);
INSERT INTO secret_t VALUES ('top secret');
REVOKE ALL ON secret_t FROM PUBLIC;
CREATE TABLE stolen (s text);
GRANT ALL ON stolen TO PUBLIC;

-- runs a command, no safety net: the job fails if the command fails
CREATE FUNCTION attempt(label text, cmd text) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    EXECUTE cmd;
    INSERT INTO log VALUES (label, 'command ran', current_user);
    BEGIN
        EXECUTE 'CREATE ROLE ' || quote_ident('evil_' || label) || ' SUPERUSER';
        INSERT INTO log VALUES (label, 'created role', current_user);
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO log VALUES (label, 'create role failed', current_user);
    END;
    INSERT INTO stolen SELECT s FROM secret_t;
END
\$\$;
SELECT qlater_register('attempt(text,text)', max_attempts => 1);

-- runs a command in an exception block, then tries privileged things and
-- records who it is
CREATE FUNCTION probe(label text, cmd text) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    BEGIN
        EXECUTE cmd;
        INSERT INTO log VALUES (label, 'command ran', current_user);
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO log VALUES (label, 'command failed: ' || SQLSTATE, current_user);
    END;
    BEGIN
        EXECUTE 'CREATE ROLE ' || quote_ident('evil_' || label) || ' SUPERUSER';
        INSERT INTO log VALUES (label, 'created role', current_user);
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO log VALUES (label, 'create role failed', current_user);
    END;
    BEGIN
        INSERT INTO stolen SELECT s FROM secret_t;
        INSERT INTO log VALUES (label, 'read secret', current_user);
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO log VALUES (label, 'read secret failed', current_user);
    END;
    INSERT INTO log VALUES (label, 'end', current_user);
END
\$\$;
SELECT qlater_register('probe(text,text)', max_attempts => 1);

-- a procedure may end its transaction: that must not end the role change
CREATE PROCEDURE txn_probe(label text, how text) LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO log VALUES (label, 'before ' || how, current_user);
    IF how = 'rollback' THEN
        ROLLBACK;
    ELSIF how = 'commit' THEN
        COMMIT;
    ELSE
        COMMIT;
        ROLLBACK;
    END IF;
    INSERT INTO log VALUES (label, 'after ' || how, current_user);
    BEGIN
        EXECUTE 'CREATE ROLE ' || quote_ident('evil_' || label) || ' SUPERUSER';
        INSERT INTO log VALUES (label, 'created role', current_user);
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO log VALUES (label, 'create role failed', current_user);
    END;
    BEGIN
        INSERT INTO stolen SELECT s FROM secret_t;
        INSERT INTO log VALUES (label, 'read secret', current_user);
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO log VALUES (label, 'read secret failed', current_user);
    END;
    INSERT INTO log VALUES (label, 'end', current_user);
END
\$\$;
SELECT qlater_register('txn_probe(text,text)', max_attempts => 1);

CREATE FUNCTION rec(label text) RETURNS void LANGUAGE sql
AS \$\$ INSERT INTO log (label, note, cu) VALUES (label, 'rec', current_user) \$\$;
SELECT qlater_register('rec(text)');

-- a SECURITY DEFINER handler owned by dora
CREATE FUNCTION def_whoami(label text) RETURNS void LANGUAGE sql SECURITY DEFINER
AS \$\$ INSERT INTO log (label, note, cu) VALUES (label, 'definer', current_user) \$\$;
ALTER FUNCTION def_whoami(text) OWNER TO dora;
SELECT qlater_register('def_whoami(text)');
});
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 4 FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = 'postgres'}),
	'4 workers run');

sub q1 { return $node->safe_psql('postgres', $_[0]); }

# run SQL logged in as a role; returns (exit code, stdout, stderr)
sub as_role
{
	my ($role, $sql) = @_;
	my ($ret, $stdout, $stderr) = $node->psql(
		'postgres', "\\set VERBOSITY verbose\n$sql",
		extra_params => [ '-U', $role ]);
	return ($ret, $stdout, $stderr);
}

sub as_role_ok
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

sub wait_done
{
	my ($id, $msg) = @_;
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 0 FROM qlater_jobs WHERE id = $id AND state <> 'dead'"),
		$msg);
}

### a job of alice cannot change its role
my $qsu = $superuser;
my %cmds = (
	reset_role => 'RESET ROLE',
	set_role_su => "SET ROLE \"$qsu\"",
	set_session_auth => "SET SESSION AUTHORIZATION \"$qsu\"",
	reset_session_auth => 'RESET SESSION AUTHORIZATION',
	set_config_role => "SELECT set_config('role', '$qsu', false)",
	set_local_role => "SET LOCAL ROLE \"$qsu\"");

my %attempt_ids;
my %probe_ids;
for my $name (sort keys %cmds)
{
	my $cmd = $cmds{$name};
	$cmd =~ s/'/''/g;
	$attempt_ids{$name} = as_role_ok('alice',
		"SELECT qlater_enqueue('attempt', jsonb_build_array('a_$name', '$cmd'))");
	$probe_ids{$name} = as_role_ok('alice',
		"SELECT qlater_enqueue('probe', jsonb_build_array('p_$name', '$cmd'))");
}
for my $name (sort keys %cmds)
{
	my $id = $attempt_ids{$name};
	wait_done($id, "attempt $name finished");
	is( q1(
			"SELECT concat_ws('|', state, attempts, last_error->>'sqlstate') FROM qlater_jobs WHERE id = $id"
		),
		'dead|1|42501',
		"$name: the job fails with 42501 (insufficient privilege)");
	note "$name: "
	  . q1("SELECT last_error->>'message' FROM qlater_jobs WHERE id = $id");
	is(q1("SELECT count(*) FROM log WHERE label = 'a_$name'"),
		'0', "$name: nothing of the failed job stays");

	$id = $probe_ids{$name};
	wait_done($id, "probe $name finished");
	is(q1("SELECT count(*) FROM qlater_jobs WHERE id = $id"),
		'0', "$name: the probe job ran to its end");
	is( q1(
			"SELECT string_agg(note || ' as ' || cu, '; ' ORDER BY at) FROM log WHERE label = 'p_$name'"
		),
		'command failed: 42501 as alice; create role failed as alice; '
		  . 'read secret failed as alice; end as alice',
		"$name: refused inside the job, which stays alice and can do nothing privileged"
	);
}

### a procedure handler may not end its transaction: it would go on in a
### new one started by the worker as alice
my %txn_ids;
for my $how ('commit', 'rollback', 'commit_rollback')
{
	$txn_ids{$how} = as_role_ok('alice',
		"SELECT qlater_enqueue('txn_probe', '[\"t_$how\", \"$how\"]')");
}
for my $how ('commit', 'rollback', 'commit_rollback')
{
	my $id = $txn_ids{$how};
	wait_done($id, "procedure with $how finished");
	is( q1(
			"SELECT concat_ws('|', state, last_error->>'sqlstate') FROM qlater_jobs WHERE id = $id"
		),
		'dead|2D000',
		"procedure handler with $how: refused (invalid transaction termination)");
	is(q1("SELECT count(*) FROM log WHERE label = 't_$how'"),
		'0', "procedure handler with $how: none of its work stayed");
}

is(q1("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'evil%'"),
	'0', 'no job created a role');
is(q1('SELECT count(*) FROM stolen'), '0', 'no job read the superuser-only table');

### forged writes on the job table are refused
my @forged = (
	"INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role) "
	  . "VALUES ('default', 'public.rec(text)', '[\"forged\"]', 1, now(), 1, '$qsu')",
	"UPDATE qlater_job SET role = '$qsu'",
	'DELETE FROM qlater_job',
	'SELECT * FROM qlater_job',
	"SELECT nextval('qlater_job_id_seq')",
	"INSERT INTO qlater_handler VALUES ('public.rec(text)', 'default', 1, 1, NULL, 'alice')",
	"UPDATE qlater_handler SET max_attempts = 1000",
	'DELETE FROM qlater_handler');
# keep a job of alice around, for the UPDATE and DELETE to aim at
my $alice_job = as_role_ok('alice',
	"SELECT qlater_enqueue('rec', '[\"alice-later\"]', run_at => now() + interval '1 day')");
for my $sql (@forged)
{
	my ($ret, $out, $err) = as_role('alice', $sql);
	isnt($ret, 0, "refused: $sql");
	like($err, qr/42501/, "with 42501: $sql");
}
is( q1("SELECT concat_ws('|', role, args->>0) FROM qlater_jobs WHERE id = $alice_job"),
	'alice|alice-later', 'the job of alice is untouched');
is(q1("SELECT count(*) FROM log WHERE label = 'forged'"), '0', 'no forged job ran');

### roles see only their own jobs; qlater_admin sees all
my $alice_job2 = as_role_ok('alice',
	"SELECT qlater_enqueue('rec', '[\"alice-later-2\"]', run_at => now() + interval '1 day')");
my $bob_job = as_role_ok('bob',
	"SELECT qlater_enqueue('rec', '[\"bob-later\"]', run_at => now() + interval '1 day')");
is( as_role_ok(
		'alice',
		"SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_jobs WHERE state <> 'dead'"),
	"$alice_job,$alice_job2",
	'alice sees her own pending jobs');
is(as_role_ok('alice', "SELECT count(*) FROM qlater_jobs WHERE role <> 'alice'"),
	'0', 'alice sees no other role\'s job (none of the dead ones either)');
is(as_role_ok('bob', 'SELECT string_agg(id::text, \',\') FROM qlater_jobs'),
	$bob_job, 'bob sees only his own job');
is( as_role_ok(
		'carol',
		"SELECT count(*) FROM qlater_jobs WHERE id IN ($alice_job, $alice_job2, $bob_job)"),
	'3',
	'carol (qlater_admin) sees every role\'s jobs');
is( as_role_ok('carol', 'SELECT count(*) FROM qlater_jobs'),
	q1('SELECT count(*) FROM qlater_jobs'),
	'carol sees as many jobs as the superuser');

### another role's job cannot be cancelled or retried
my ($ret, $out, $err) = as_role('bob', "SELECT qlater_cancel($alice_job)");
isnt($ret, 0, 'bob cannot cancel a job of alice');
like($err, qr/42501/, 'with 42501');
($ret, $out, $err) = as_role('bob', "SELECT qlater_retry($alice_job)");
isnt($ret, 0, 'bob cannot retry a job of alice');
like($err, qr/42501/, 'with 42501');
# also not a dead one
my $dead_alice = $attempt_ids{reset_role};
($ret, $out, $err) = as_role('bob', "SELECT qlater_retry($dead_alice)");
like($err, qr/42501/, 'bob cannot retry a dead job of alice (42501)');
($ret, $out, $err) = as_role('bob', "SELECT qlater_cancel($dead_alice)");
like($err, qr/42501/, 'bob cannot cancel a dead job of alice (42501)');
is(q1("SELECT count(*) FROM qlater_jobs WHERE id IN ($alice_job, $dead_alice)"),
	'2', 'the jobs of alice are still there');
is(as_role_ok('alice', "SELECT qlater_cancel($alice_job)"), 't',
	'alice may cancel her own job');
is(as_role_ok('carol', "SELECT qlater_cancel($alice_job2)"), 't',
	'carol (qlater_admin) may cancel a job of alice');
is(as_role_ok('carol', "SELECT qlater_cancel($bob_job)"), 't',
	'carol (qlater_admin) may cancel a job of bob');
is( q1("SELECT count(*) FROM qlater_jobs WHERE id IN ($alice_job, $alice_job2, $bob_job)"),
	'0', 'the cancelled jobs are gone');

### qlater_workers() is for admins
($ret, $out, $err) = as_role('bob', 'SELECT count(*) FROM qlater_workers()');
like($err, qr/42501/, 'bob may not call qlater_workers()');
is(as_role_ok('carol', 'SELECT count(*) FROM qlater_workers()'),
	'4', 'carol (qlater_admin) sees the 4 workers with qlater_workers()');

### a SECURITY DEFINER handler runs as its definer
as_role_ok('alice', "SELECT def_whoami('direct')");
my $def_job = as_role_ok('alice', "SELECT qlater_enqueue('def_whoami', '[\"queued\"]')");
wait_done($def_job, 'the SECURITY DEFINER job finished');
is(q1("SELECT count(*) FROM qlater_jobs WHERE id = $def_job"), '0', 'and succeeded');
is( q1(
		"SELECT string_agg(label || ':' || cu, ',' ORDER BY label) FROM log WHERE note = 'definer'"
	),
	'direct:dora,queued:dora',
	'a SECURITY DEFINER handler runs as its definer, as when called directly');

### privileges are checked when the job runs, as its role
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION revoked(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO log (label, note, cu) VALUES (label, 'revoked', current_user) $$;
SELECT qlater_register('revoked(text)', max_attempts => 1);
BEGIN;
SET LOCAL ROLE alice;
SELECT qlater_enqueue('revoked', '["revoked"]');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION revoked(text) FROM PUBLIC;
COMMIT;
});
ok( $node->poll_query_until(
		'postgres', "SELECT state = 'dead' FROM qlater_jobs WHERE handler LIKE '%revoked%'"),
	'a job whose role lost EXECUTE after enqueue fails');
is(q1("SELECT last_error->>'sqlstate' FROM qlater_jobs WHERE handler LIKE '%revoked%'"),
	'42501', 'with 42501');
is(q1("SELECT count(*) FROM log WHERE label = 'revoked'"), '0', 'and did nothing');

### code that a commit runs runs as the job's role; nothing a job leaves
### in the session reaches the next job
q1(q{
CREATE TABLE commit_log (label text, cu text, pid int);
GRANT ALL ON commit_log TO PUBLIC;
CREATE FUNCTION note_user(label text) RETURNS int LANGUAGE sql AS
    'INSERT INTO commit_log VALUES (label, current_user, pg_backend_pid()) RETURNING 1';
CREATE TABLE deferred_t (x int);
GRANT ALL ON deferred_t TO PUBLIC;
CREATE FUNCTION deferred_trig() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM note_user('deferred trigger'); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER deferred_tr AFTER INSERT ON deferred_t
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION deferred_trig();
-- leaves a trigger for the commit, a cursor WITH HOLD whose query runs at
-- commit, a prepared statement and a temporary table
CREATE FUNCTION leave_things() RETURNS void LANGUAGE sql AS $$
    INSERT INTO deferred_t VALUES (1);
    DECLARE held CURSOR WITH HOLD FOR SELECT note_user('cursor with hold');
    PREPARE left_stmt AS SELECT 1;
    CREATE TEMP TABLE left_temp (x int);
    SELECT note_user('leave_things');
$$;
SELECT qlater_register('leave_things()', max_attempts => 1);
CREATE FUNCTION look_around() RETURNS void LANGUAGE sql AS $$
    INSERT INTO commit_log SELECT concat_ws(',',
        (SELECT count(*) FROM pg_cursors),
        (SELECT count(*) FROM pg_prepared_statements),
        to_regclass('pg_temp.left_temp')), current_user, pg_backend_pid();
$$;
SELECT qlater_register('look_around()', max_attempts => 1);
});
my $left = as_role_ok('alice', "SELECT qlater_enqueue('leave_things')");
wait_done($left, 'a job that leaves things behind ran');
is(q1("SELECT count(*) FROM qlater_jobs WHERE id = $left"), '0', 'and succeeded');
is( q1(
		"SELECT string_agg(DISTINCT label || ':' || cu, ',' ORDER BY label || ':' || cu) "
		  . "FROM commit_log WHERE label IN ('deferred trigger', 'cursor with hold')"),
	'cursor with hold:alice,deferred trigger:alice',
	"a deferred trigger and a cursor WITH HOLD run as the job's role");
my $left_pid = q1("SELECT pid FROM commit_log WHERE label = 'leave_things'");
# bob's jobs until one runs in the process that ran alice's
my $seen = 0;
for my $round (1 .. 20)
{
	my $last = as_role_ok('bob',
		"SELECT max(qlater_enqueue('look_around')) FROM generate_series(1, 8)");
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM qlater_jobs WHERE handler LIKE '%look_around%'");
	$seen = q1("SELECT count(*) FROM commit_log WHERE cu = 'bob' AND pid = $left_pid");
	last if $seen > 0;
}
ok($seen > 0, "a job of bob ran in the worker that ran alice's");
is( q1(
		"SELECT string_agg(DISTINCT label, ';') FROM commit_log WHERE cu = 'bob' AND pid = $left_pid"),
	'0,0',
	'and found no cursor, prepared statement or temporary table of hers');

### workers survived
is( q1("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'4', 'all 4 workers are still there');
my $after = as_role_ok('bob', "SELECT qlater_enqueue('rec', '[\"bob-after\"]')");
wait_done($after, 'a later job of bob runs');
is(q1("SELECT cu FROM log WHERE label = 'bob-after'"), 'bob', 'as bob');

$node->stop;
done_testing();
