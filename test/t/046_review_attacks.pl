# 046_review_attacks.pl: attacks found by a review of the rebuilt run path,
# each as the tenants who would mount it (alice, bob and mallory share a
# schema they may all create in, as public was before PostgreSQL 15):
#   1. a domain CHECK that runs SQL (STABLE, and through a composite
#      column): the worker converts the argument under a snapshot;
#   2. a domain CHECK that changes pg_proc and enqueues a job itself, at
#      enqueue and in the worker: the handler info it runs in stays valid;
#   3. a handler renamed by its owner, and another role's function created
#      under the old name: the jobs still call their own handler (by OID),
#      never the other role's;
#   4. an overload without the defaults a call relies on, created by
#      another role: the call never resolves to it;
#   5. a handler dropped by its owner and created again by another role
#      under the same signature: the registration does not pass to it, and
#      the queued jobs and schedule of the signature end dead;
#   6. named arguments to a VARIADIC handler run as a direct call would;
#   7. an error of 20 MB: recorded clipped, the attempt counted;
#   8. a handler that cancels its own job: a clear error, not an internal one;
#   9. a job whose arguments do not fit its handler, in a queue turned
#      in-server: dead at once;
#  10. a role with jobs is neither dropped nor renamed from under them;
#  11. a handler dropped, created again and registered by another role:
#      refused while other roles' jobs wait on the signature;
#  12. DROP ROLE waits for a transaction that enqueues as the role;
#  13. a qlater_cancel left open does not hold the workers;
#  14. the handler-info cache stays bounded over many invalidations;
#  15-19. a third round: a group the registering role belongs to, other
#      roles' application and dead jobs, renames by those who may not,
#      queue owners, a handler's own query of its call's text.
# No server process may end on a signal.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('review');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "restart_after_crash = on\n"
	  . "qlater.max_crashes = 1\n");
$node->start;

sub su { return $node->safe_psql('postgres', $_[0]); }

sub as
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

sub try_as
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) =
	  $node->psql('postgres', $sql, extra_params => [ '-U', $role ]);
	return ($ret, $err);
}

# poll until a query returns 't', generously
sub wait_for
{
	my ($sql, $name) = @_;
	ok($node->poll_query_until('postgres', $sql), $name);
}

su(q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE mallory LOGIN;
CREATE SCHEMA shared;
GRANT USAGE, CREATE ON SCHEMA shared TO alice, bob, mallory;
CREATE TABLE shared.log (who text, what text, cu text DEFAULT current_user,
                         at timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON shared.log TO alice, bob, mallory;
CREATE TABLE shared.bobdata (secret text);
ALTER TABLE shared.bobdata OWNER TO bob;
INSERT INTO shared.bobdata VALUES ('bob private');
});

### 1. a domain CHECK that runs SQL, converted by the worker
as('alice', q{
CREATE TABLE shared.codes (code text PRIMARY KEY);
INSERT INTO shared.codes VALUES ('zz');
CREATE FUNCTION shared.known(v text) RETURNS boolean STABLE LANGUAGE sql
  AS $$ SELECT EXISTS (SELECT FROM shared.codes WHERE code = v) $$;
CREATE DOMAIN shared.code AS text CHECK (shared.known(VALUE));
CREATE TYPE shared.line AS (qty int, code shared.code);
CREATE FUNCTION shared.h_code(x shared.code) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('h_code', x) $$;
CREATE FUNCTION shared.h_line(l shared.line) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('h_line', (l).code) $$;
SELECT qlater_register('shared.h_code(shared.code)');
SELECT qlater_register('shared.h_line(shared.line)');
SELECT qlater_enqueue('shared.h_code', '["zz"]');
SELECT qlater_enqueue('shared.h_line', '["(2,zz)"]');
});
wait_for(q{SELECT count(*) = 2 FROM shared.log WHERE who IN ('h_code', 'h_line')},
	'a domain CHECK running SQL is converted in the worker, plain and in a composite');

### 2. a domain CHECK that changes pg_proc and enqueues a job itself
as('alice', q{
CREATE SEQUENCE shared.junk;
CREATE FUNCTION shared.mkjunk() RETURNS int VOLATILE LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE FUNCTION shared.j%s() RETURNS int LANGUAGE sql AS ''SELECT 1''',
                   nextval('shared.junk'));
    RETURN 1;
END $$;
CREATE FUNCTION shared.target(x int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('target', x::text) $$;
SELECT qlater_register('shared.target(int)');
CREATE FUNCTION shared.chk(v text) RETURNS boolean VOLATILE LANGUAGE sql AS $$
    SELECT shared.mkjunk();
    SELECT qlater_enqueue('shared.target', '[1]') IS NOT NULL;
$$;
CREATE DOMAIN shared.dchk AS text CHECK (shared.chk(VALUE));
CREATE FUNCTION shared.h2(a shared.dchk, b text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('h2', a || b) $$;
SELECT qlater_register('shared.h2(shared.dchk,text)');
SELECT qlater_enqueue('shared.h2', '["x", "y"]');
});
# at enqueue one check ran (one target job); in the worker another
wait_for(q{SELECT count(*) = 1 FROM shared.log WHERE who = 'h2'},
	'a domain CHECK that changes pg_proc and enqueues: the job runs');
wait_for(q{SELECT count(*) = 2 FROM shared.log WHERE who = 'target'},
	'and so do the jobs its checks enqueued');

### 3. a renamed handler, another role's function under the old name
as('alice', q{
CREATE FUNCTION shared.exp(x int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('alice exp', x::text) $$;
SELECT qlater_register('shared.exp(int)');
});
# both workers make a plan of the call
as('bob', q{SELECT qlater_enqueue('shared.exp', jsonb_build_array(g)) FROM generate_series(1, 8) g});
wait_for(q{SELECT count(*) = 8 FROM shared.log WHERE who = 'alice exp'}, 'the handler runs');
as('alice', q{
SELECT qlater_unregister('shared.exp(int)');
ALTER FUNCTION shared.exp(int) RENAME TO export_v2;
SELECT qlater_register('shared.export_v2(int)');
});
as('mallory', q{
CREATE FUNCTION shared.exp(x int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) SELECT 'mallory exp', string_agg(secret, ',') FROM shared.bobdata $$;
GRANT EXECUTE ON FUNCTION shared.exp(int) TO PUBLIC;
});
as('bob', q{SELECT qlater_enqueue('shared.export_v2', jsonb_build_array(100 + g)) FROM generate_series(1, 4) g});
wait_for(q{SELECT count(*) = 4 FROM shared.log WHERE who = 'alice exp' AND what::int > 100},
	'after a rename, the jobs call the renamed handler');
is(su(q{SELECT count(*) FROM shared.log WHERE who = 'mallory exp'}), '0',
	"never the other role's function under the old name");

### 4. an overload without the defaults a call relies on
as('alice', q{
CREATE FUNCTION shared.rep(a int, b int DEFAULT 7) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('alice rep', a || '/' || b) $$;
SELECT qlater_register('shared.rep(int,int)', max_attempts => 1);
});
as('bob', q{SELECT qlater_enqueue('shared.rep', '[1]')});
wait_for(q{SELECT count(*) = 1 FROM shared.log WHERE who = 'alice rep'}, 'a call relying on a default runs');
as('mallory', q{
CREATE FUNCTION shared.rep(a int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) SELECT 'mallory rep', string_agg(secret, ',') FROM shared.bobdata $$;
GRANT EXECUTE ON FUNCTION shared.rep(int) TO PUBLIC;
});
# a change of alice's function makes every cached plan of it be made again
as('alice', q{
CREATE OR REPLACE FUNCTION shared.rep(a int, b int DEFAULT 7) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('alice rep', a || '/' || b) $$;
});
my $rep_job = as('bob', q{SELECT qlater_enqueue('shared.rep', '[2]')});
wait_for(qq{SELECT count(*) = 0 FROM qlater_jobs WHERE id = $rep_job AND state <> 'dead'},
	'the call relying on a default ends');
is(su(q{SELECT count(*) FROM shared.log WHERE who = 'mallory rep'}), '0',
	"the better-matching overload of another role never runs");
like(
	su(qq{SELECT CASE WHEN EXISTS (SELECT FROM shared.log WHERE who = 'alice rep' AND what = '2/7')
	                  THEN 'ran' ELSE (SELECT last_error->>'message' FROM qlater_jobs WHERE id = $rep_job) END}),
	qr/^ran$|names another function|is not unique/,
	'the job ran its handler or failed saying the call names another function');

### 5. a handler dropped and created again by another role
as('alice', q{
CREATE FUNCTION shared.report(tag text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('alice report', tag) $$;
GRANT EXECUTE ON FUNCTION shared.report(text) TO PUBLIC;
SELECT qlater_register('shared.report(text)', max_attempts => 1);
});
as('bob', q{SELECT qlater_schedule('bobsched', '1 seconds', 'shared.report', '["bobsched"]')});
wait_for(q{SELECT count(*) > 0 FROM shared.log WHERE who = 'alice report' AND what = 'bobsched'},
	'the schedule runs the handler');
# due once the function is dropped and the other one created
my $bob_job = as('bob', q{SELECT qlater_enqueue('shared.report', '["bobjob"]', run_at => now() + '3 s')});
as('alice', q{DROP FUNCTION shared.report(text)});
as('mallory', q{
CREATE FUNCTION shared.report(tag text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) SELECT 'mallory report ' || tag, string_agg(secret, ',') FROM shared.bobdata $$;
GRANT EXECUTE ON FUNCTION shared.report(text) TO PUBLIC;
});
wait_for(qq{SELECT count(*) = 1 FROM qlater_jobs WHERE id = $bob_job AND state = 'dead'},
	'the queued job of the signature ends dead');
like(su(qq{SELECT last_error->>'message' FROM qlater_jobs WHERE id = $bob_job}),
	qr/not registered/, 'because the function of that signature now is not registered');
sleep 3;
is(su(q{SELECT count(*) FROM shared.log WHERE who LIKE 'mallory report%'}), '0',
	"another role's function of the same signature never runs, by job or schedule");

### 6. named arguments to a VARIADIC handler
as('alice', q{
CREATE FUNCTION shared.vsum(VARIADIC xs int[]) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) SELECT 'vsum', sum(x)::text FROM unnest(xs) x $$;
SELECT qlater_register('shared.vsum(int[])');
SELECT qlater_enqueue('shared.vsum', '{"xs": "{1,2}"}');
SELECT qlater_enqueue('shared.vsum', '["{3,4}"]');
});
wait_for(q{SELECT count(*) = 2 FROM shared.log WHERE who = 'vsum' AND what IN ('3', '7')},
	'a VARIADIC handler runs with named and positional arguments');

### 7. an error of 20 MB
as('alice', q{
CREATE FUNCTION shared.bigerr(n int) RETURNS void LANGUAGE plpgsql
  AS $$ BEGIN RAISE EXCEPTION '%', repeat(chr(1), n); END $$;
SELECT qlater_register('shared.bigerr(int)', max_attempts => 1);
});
my $big = as('alice', q{SELECT qlater_enqueue('shared.bigerr', '[20000000]')});
wait_for(qq{SELECT state = 'dead' FROM qlater_jobs WHERE id = $big},
	'a job raising a 20 MB error ends dead after its one attempt');
cmp_ok(su(qq{SELECT length(last_error->>'message') FROM qlater_jobs WHERE id = $big}),
	'<', 10000, 'its last_error keeps a clipped message');

### 8. a handler that cancels its own job
as('alice', q{
CREATE FUNCTION shared.selfcancel(x int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM qlater_cancel(id) FROM qlater_jobs WHERE handler = 'shared.selfcancel(integer)';
END $$;
SELECT qlater_register('shared.selfcancel(int)', max_attempts => 1);
});
my $self = as('alice', q{SELECT qlater_enqueue('shared.selfcancel', '[1]')});
wait_for(qq{SELECT state = 'dead' FROM qlater_jobs WHERE id = $self},
	'a handler that cancels its own job fails');
is( su(qq{SELECT last_error->>'sqlstate' || ' ' || (last_error->>'message') FROM qlater_jobs WHERE id = $self}),
	"55000 job $self is held by this session",
	'with a clear error, not an internal one');

### 9. arguments that do not fit, in a queue turned in-server
as('alice', q{
CREATE FUNCTION shared.one(x int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('one', x::text) $$;
SELECT qlater_register('shared.one(int)');
SELECT qlater_create_queue('alice_ext', external => true);
SELECT qlater_enqueue('shared.one(integer)', '[1, 2, 3]', queue => 'alice_ext');
SELECT qlater_enqueue('shared.one(integer)', '["not a number"]', queue => 'alice_ext');
SELECT qlater_alter_queue('alice_ext', external => false);
});
wait_for(q{SELECT count(*) = 2 FROM qlater_jobs WHERE queue = 'alice_ext' AND state = 'dead' AND attempts = 1},
	'jobs whose arguments do not fit end dead after one attempt');

### 10. a role with jobs or schedules is not dropped from under them
su(q{CREATE ROLE victim LOGIN; GRANT USAGE ON SCHEMA shared TO victim;
     GRANT EXECUTE ON FUNCTION shared.target(int) TO victim});
my $victim_job = as('victim',
	q{SELECT qlater_enqueue('shared.target', '[5]', run_at => now() + '1 hour')});
my ($ret, $out, $err) = $node->psql('postgres', 'DROP ROLE victim');
like($err, qr/role "victim" cannot be dropped because it has qlater jobs, schedules or queues/,
	'DROP ROLE of a role with a queued job is refused: its jobs would pass to a new role of that name');
($ret, $out, $err) = $node->psql('postgres', 'ALTER ROLE victim RENAME TO victim2');
like($err, qr/role "victim" cannot be renamed because it has qlater jobs, schedules or queues/,
	'nor is it renamed: its jobs would pass to a new role of the old name');
su(qq{SELECT qlater_cancel($victim_job); DROP OWNED BY victim; DROP ROLE victim});
is(su(q{SELECT count(*) FROM pg_roles WHERE rolname = 'victim'}), '0',
	'once its jobs are gone, it is dropped');

### 11. a handler dropped, then created and registered by another role:
### the registration does not adopt the other roles' waiting jobs
as('alice', q{
CREATE FUNCTION shared.h11(note text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('alice h11', note) $$;
GRANT EXECUTE ON FUNCTION shared.h11(text) TO PUBLIC;
SELECT qlater_register('shared.h11(text)', max_attempts => 1);
});
my $h11_job = as('bob', q{SELECT qlater_enqueue('shared.h11', '["bob-secret"]', run_at => now() + '4 s')});
as('alice', q{DROP FUNCTION shared.h11(text)});
as('mallory', q{
CREATE FUNCTION shared.h11(note text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('mallory h11', note) $$;
GRANT EXECUTE ON FUNCTION shared.h11(text) TO PUBLIC;
});
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_register('shared.h11(text)')},
	extra_params => [ '-U', 'mallory' ]);
like($err, qr/other roles' jobs or schedules wait on handler shared\.h11\(text\)/,
	"registering a re-created handler is refused while other roles' jobs wait on its signature");
wait_for(qq{SELECT state = 'dead' FROM qlater_jobs WHERE id = $h11_job},
	'the waiting job ends dead when it comes due');
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_register('shared.h11(text)')},
	extra_params => [ '-U', 'mallory' ]);
like($err, qr/other roles' jobs or schedules wait on handler/,
	'and while it is dead (a retry would run the new function as its role), still refused');
is(su(q{SELECT count(*) FROM shared.log WHERE who = 'mallory h11'}), '0',
	"and another role's function never ran it");

### 12. DROP ROLE waits for a transaction that enqueues as the role
su(q{CREATE ROLE eve LOGIN; GRANT USAGE ON SCHEMA shared TO eve;
     GRANT EXECUTE ON FUNCTION shared.target(int) TO eve});
my ($a_in, $a_out, $a_err) = ('', '', '');
my $ha = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-U', 'eve', '-f', '-' ],
	'<', \$a_in, '>', \$a_out, '2>', \$a_err);
$a_in .= "BEGIN;
SELECT qlater_enqueue('shared.target', '[12]', run_at => now() + '1 hour');
";
$ha->pump until $a_out =~ /\d+/;
my ($d_in, $d_out, $d_err) = ('DROP ROLE eve;' . "\n", '', '');
my $hd = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-f', '-' ],
	'<', \$d_in, '>', \$d_out, '2>', \$d_err);
$hd->pump_nb while length $d_in;
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'DROP ROLE eve%' AND wait_event_type = 'Lock'}),
	'DROP ROLE waits for the transaction that enqueues as the role');
$a_in .= "COMMIT;\n";
$ha->finish;
$hd->finish;
like($d_err, qr/role "eve" cannot be dropped because it has qlater jobs, schedules or queues/,
	'and once it commits, DROP ROLE sees its job and is refused');

### 13. a qlater_cancel left open does not hold the workers
as('alice', q{
CREATE FUNCTION shared.nap(s float8) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(s) $$;
GRANT EXECUTE ON FUNCTION shared.nap(float8) TO PUBLIC;
SELECT qlater_register('shared.nap(float8)');
});
my $naps = as('bob', q{SELECT string_agg(qlater_enqueue('shared.nap', '[2]')::text, ',') FROM generate_series(1, 2)});
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'qlater worker' AND query LIKE 'qlater job%nap%'}),
	'both workers run a slow job');
my ($c_in, $c_out, $c_err) = ('', '', '');
my $hc = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-U', 'bob', '-f', '-' ],
	'<', \$c_in, '>', \$c_out, '2>', \$c_err);
$c_in .= "BEGIN;\nSELECT count(qlater_cancel(x)) FROM unnest('{$naps}'::bigint[]) x;\n";
$hc->pump until $c_out =~ /2/;
as('alice', q{SELECT qlater_enqueue('shared.target', '[13]')});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM shared.log WHERE who = 'target' AND what = '13'}),
	"another role's job runs while the cancelling transaction stays open");
is(su(q{SELECT count(*) FROM pg_stat_activity WHERE usename = 'bob' AND state = 'idle in transaction'}),
	'1', 'the cancelling transaction was still open');
$c_in .= "COMMIT;\n";
$hc->finish;
is(su(qq{SELECT count(*) FROM qlater_jobs WHERE id IN ($naps)}), '0', 'and its cancel took effect');

### 14. the handler-info cache stays bounded in a transaction that changes
### pg_proc between enqueues
is( su(q{
BEGIN;
CREATE FUNCTION shared.noop() RETURNS void LANGUAGE sql AS '';
DO $$ BEGIN PERFORM qlater_register('shared.noop()'); FOR i IN 1..3000 LOOP
  EXECUTE format('ALTER FUNCTION shared.noop() COST %s', i % 100 + 1);
  PERFORM qlater_enqueue('shared.noop', '[]', run_at => now() + '1 day');
END LOOP; END $$;
SELECT sum(total_bytes) < 16 * 1024 * 1024 FROM pg_backend_memory_contexts WHERE name LIKE 'qlater handler info%';
ROLLBACK;
}), 't', 'the handler-info cache stays bounded over 3,000 invalidations in one transaction');

### 15. a function created again by a group the registering role belongs to
su(q{CREATE ROLE gg NOLOGIN; CREATE ROLE gv LOGIN; CREATE ROLE ga LOGIN;
     GRANT gg TO gv, ga; GRANT USAGE, CREATE ON SCHEMA shared TO gv, ga, gg});
as('gv', q{
CREATE FUNCTION shared.gf(x text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('gv gf', x) $$;
SELECT qlater_register('shared.gf(text)', max_attempts => 1);
});
my $gjob = as('gv', q{SELECT qlater_enqueue('shared.gf', '["gv-job"]', run_at => now() + '3 s')});
as('gv', q{DROP FUNCTION shared.gf(text)});
as('ga', q{
SET ROLE gg;
CREATE FUNCTION shared.gf(x text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('ga gf', x) $$;
GRANT EXECUTE ON FUNCTION shared.gf(text) TO PUBLIC;
});
wait_for(qq{SELECT state = 'dead' FROM qlater_jobs WHERE id = $gjob},
	"a function created again by a group the registering role belongs to is not registered: the job ends dead");
is(su(q{SELECT count(*) FROM shared.log WHERE who = 'ga gf'}), '0',
	"the fellow member's code never ran as the job's role");

### 16. application jobs of another role wait on a signature: neither a
### registration by a new owner nor turning their queue in-server hands them over
as('alice', q{SELECT qlater_create_queue('alice_aq', external => true);
SELECT qlater_grant_queue('alice_aq', 'bob', 'enqueue')});
as('bob', q{SELECT qlater_enqueue('shared.vf3(text)', '["bob-app-job"]', queue => 'alice_aq')});
as('alice', q{
CREATE FUNCTION shared.vf3(x text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('alice vf3', x) $$;
GRANT EXECUTE ON FUNCTION shared.vf3(text) TO PUBLIC;
});
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_register('shared.vf3(text)')},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/other roles' jobs or schedules wait on handler/,
	"registering a signature another role's application job names is refused");
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_alter_queue('alice_aq', external => false)},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/cannot make queue "alice_aq" in-server/,
	"a queue holding another role's jobs is not turned in-server by its owner alone");

### 17. renaming a role: the check is for those who may rename roles
($ret, $out, $err) = $node->psql('postgres', 'ALTER ROLE bob RENAME TO bob2',
	extra_params => [ '-U', 'mallory' ]);
like($err, qr/permission denied to rename role/,
	"a role that may not rename roles gets PostgreSQL's own refusal");
unlike($err, qr/qlater/, "and learns nothing of the role's jobs");

### 18. a role that owns a queue is not dropped from under it
su(q{CREATE ROLE qo LOGIN});
as('qo', q{SELECT qlater_create_queue('qo_queue', external => true)});
($ret, $out, $err) = $node->psql('postgres', 'DROP ROLE qo');
like($err, qr/role "qo" cannot be dropped because it has qlater jobs, schedules or queues/,
	'DROP ROLE of a queue owner is refused: a new role of the name would own the queue');

### 20. unregistered, dropped, created and registered again by another role
as('alice', q{
CREATE FUNCTION shared.h20(x text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('alice h20', x) $$;
GRANT EXECUTE ON FUNCTION shared.h20(text) TO PUBLIC;
SELECT qlater_register('shared.h20(text)', max_attempts => 1);
});
as('bob', q{SELECT qlater_enqueue('shared.h20', '["bob-h20"]', run_at => now() + '1 hour')});
as('alice', q{SELECT qlater_unregister('shared.h20(text)'); DROP FUNCTION shared.h20(text)});
as('mallory', q{
CREATE FUNCTION shared.h20(x text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('mallory h20', x) $$;
});
($ret, $out, $err) = $node->psql('postgres', q{SELECT qlater_register('shared.h20(text)')},
	extra_params => [ '-U', 'mallory' ]);
like($err, qr/other roles' jobs or schedules wait on handler/,
	"an unregistered handler keeps its owner while other roles' jobs name it: another role cannot register the signature");

### 19. a handler running the very text of a call of its own name
as('alice', q{
CREATE FUNCTION shared.ov(x int) RETURNS int LANGUAGE sql AS $$ SELECT x + 1 $$;
CREATE FUNCTION shared.ov(x text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r int;
BEGIN
    EXECUTE 'SELECT shared.ov($1)' INTO r USING 41;
    INSERT INTO shared.log (who, what) VALUES ('ov', r::text);
END $$;
SELECT qlater_register('shared.ov(text)');
SELECT qlater_enqueue('shared.ov', '["x"]');
});
wait_for(q{SELECT count(*) = 1 FROM shared.log WHERE who = 'ov' AND what = '42'},
	"a handler's own query is not taken for the worker's call");

unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no server process ended on a signal');

$node->stop;
done_testing();
