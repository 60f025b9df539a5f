# 183_running.pl: qlater_running (0.5), what runs now and since when: a
# worker's job with the worker's pid and the start of its attempt; a
# session-mode consumer's claim with the session's pid and its claim time
# (the completed job's history row has it as started_at); a lease (pid
# NULL, lease_until); claims given back, finished, released behind
# qlater's back (pg_advisory_unlock_all), of a session that ends or is
# terminated, a lease that lapses, a job cancelled while it runs: gone at
# once, never two holders; a session holding more claims than it records;
# who sees what (two tenants, a consumer, an admin, a pg_read_all_stats
# member, a stranger); qlater_workers: database names and states in two
# databases, callable by pg_read_all_stats members.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('running');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 3\nmax_worker_processes = 16\n");
$node->start;

sub su
{
	my ($sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql);
}

sub as
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

sub bg
{
	my ($role) = @_;
	return $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', $role ]);
}

sub poll
{
	my ($sql, $db) = @_;
	return $node->poll_query_until($db // 'postgres', $sql);
}

# the rows of qlater_running of job $id as a role: kind:pid-or-null
sub running_row
{
	my ($id, $role) = @_;
	my $q = "SELECT coalesce(string_agg(kind || ':' || coalesce(pid::text, 'null'), ','), 'none') FROM qlater_running WHERE id = $id";
	return defined $role ? as($role, $q) : su($q);
}

su(q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE app LOGIN;
CREATE ROLE mallory LOGIN;
CREATE ROLE watcher LOGIN IN ROLE qlater_admin;
CREATE ROLE stats LOGIN IN ROLE pg_read_all_stats;
CREATE TABLE flag (label text);
GRANT ALL ON flag TO PUBLIC;
CREATE FUNCTION hold(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  LOOP
    EXIT WHEN EXISTS (SELECT FROM public.flag f WHERE f.label = hold.label);
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION hold(text) TO PUBLIC;
CREATE FUNCTION hold_a(label text) RETURNS void LANGUAGE sql AS $$ SELECT public.hold(label) $$;
CREATE FUNCTION hold_b(label text) RETURNS void LANGUAGE sql AS $$ SELECT public.hold(label) $$;
ALTER FUNCTION hold_a(text) OWNER TO alice;
ALTER FUNCTION hold_b(text) OWNER TO bob;
});
as('alice', "SELECT qlater_register('hold_a(text)')");
as('bob', "SELECT qlater_register('hold_b(text)')");
as('alice', "SELECT qlater_create_queue('ext', external => true); SELECT qlater_grant_queue('ext', 'app')");

### a worker's job
my $t0 = su("SELECT clock_timestamp()");
my $wa = as('alice', q{SELECT qlater_enqueue('hold_a(text)', '["wa"]')});
my $wb = as('bob', q{SELECT qlater_enqueue('hold_b(text)', '["wb"]')});
ok(poll("SELECT count(*) = 2 FROM qlater_running WHERE id IN ($wa, $wb)"),
	'both workers\' jobs show in qlater_running');
my ($wpid, $wrow) = split /\|/, su(
	"SELECT w.pid, concat_ws(' ', r.kind, r.pid = w.pid, r.started_at = w.job_started_at,
	        r.started_at >= '$t0', r.started_at <= clock_timestamp(), r.runtime > '0',
	        r.lease_until IS NULL, r.attempt, r.queue, r.handler, r.role, w.state, w.datname)
	   FROM qlater_running r JOIN qlater_workers() w ON w.job_id = r.id WHERE r.id = $wa");
is($wrow, "worker t t t t t t 1 default public.hold_a(text) alice running postgres",
	'a worker\'s job: its worker\'s pid, the start of the attempt, runtime, no lease; qlater_workers agrees');
is(su("SELECT backend_type FROM pg_stat_activity WHERE pid = $wpid"), 'qlater worker',
	'the pid is the worker\'s backend');
my $s1 = su("SELECT started_at FROM qlater_running WHERE id = $wa");
sleep 1;
is(su("SELECT started_at = '$s1' AND runtime >= '1 s' FROM qlater_running WHERE id = $wa"), 't',
	'started_at stays, runtime grows');

### visibility
is(as('alice', "SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_running"), $wa,
	'alice sees her own job only');
is(as('bob', "SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_running"), $wb,
	'bob sees his own job only');
is(as('mallory', "SELECT count(*) FROM qlater_running"), '0', 'a stranger sees nothing');
is(as('watcher', "SELECT count(*) FROM qlater_running WHERE id IN ($wa, $wb)"), '2',
	'an admin sees both');
is(as('stats', "SELECT count(*) FROM qlater_running WHERE id IN ($wa, $wb)"), '2',
	'a member of pg_read_all_stats sees both');
is(as('mallory', "SELECT count(*) FROM qlater_running_jobs()"), '0',
	'the function behind the view shows a stranger nothing either');
is(su("SELECT count(*) FROM information_schema.columns WHERE table_name = 'qlater_running' AND column_name = 'args'"),
	'0', 'qlater_running has no args');

### qlater_workers: who may call it
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM qlater_workers()',
	extra_params => [ '-U', 'bob' ]);
like($err, qr/permission denied/, 'a tenant may not call qlater_workers()');
is(as('stats', "SELECT count(*) > 0 FROM qlater_workers() WHERE job_id = $wa"), 't',
	'a pg_read_all_stats member may');

### a finished job disappears; its worker goes idle
su("INSERT INTO flag VALUES ('wa'), ('wb')");
ok(poll("SELECT count(*) = 0 FROM qlater_running WHERE id IN ($wa, $wb)"),
	'finished jobs leave qlater_running');
ok(poll("SELECT count(*) = 0 FROM qlater_workers() WHERE pid = $wpid AND (state <> 'idle' OR job_id IS NOT NULL OR job_started_at IS NOT NULL)"),
	'the worker is idle, with no job');
is(su("SELECT state || ':' || query FROM pg_stat_activity WHERE pid = $wpid"), 'idle:',
	'pg_stat_activity no longer shows the idle worker\'s last job');

### a session-mode consumer
sub enqueue_ext
{
	my ($n) = @_;
	return as('alice',
		"SELECT string_agg(qlater_enqueue('app.job', '[]', queue => 'ext')::text, ',') FROM generate_series(1, $n)");
}
my $e1 = enqueue_ext(1);
my $c1 = bg('app');
my $c1pid = $c1->query_safe('SELECT pg_backend_pid()');
my $before = $c1->query_safe('SELECT clock_timestamp()');
is($c1->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $e1, 'the session claims the job');
my $after = $c1->query_safe('SELECT clock_timestamp()');
is(su("SELECT concat_ws(' ', kind, pid, started_at BETWEEN '$before' AND '$after', lease_until IS NULL, role)
         FROM qlater_running WHERE id = $e1"),
	"consumer $c1pid t t alice", 'a session claim: the session\'s pid, its claim time');
my $claimed = su("SELECT started_at FROM qlater_running WHERE id = $e1");
is(as('app', "SELECT count(*) FROM qlater_running WHERE id = $e1"), '1', 'the consumer sees it');
is(as('alice', "SELECT count(*) FROM qlater_running WHERE id = $e1"), '1', 'the queue\'s owner sees it');
is(as('bob', "SELECT count(*) FROM qlater_running WHERE id = $e1"), '0', 'another tenant does not');
is(as('stats', "SELECT count(*) FROM qlater_running WHERE id = $e1"), '1', 'pg_read_all_stats does');
$c1->query_safe("SELECT qlater_complete($e1)");
is(running_row($e1), 'none', 'completed: gone');
is(su("SELECT started_at = '$claimed' AND finished_at >= started_at FROM qlater_history WHERE id = $e1"),
	't', 'the history row of the external job begins at the claim');

# a completion rolled back keeps the claim, and its time
my $e2 = enqueue_ext(1);
$c1->query_safe("SELECT id FROM qlater_lock('ext', 1)");
my $claimed2 = su("SELECT started_at FROM qlater_running WHERE id = $e2");
$c1->query_safe("BEGIN; SELECT qlater_complete($e2); ROLLBACK;");
is(su("SELECT concat_ws(' ', kind, pid, started_at = '$claimed2') FROM qlater_running WHERE id = $e2"),
	"consumer $c1pid t", 'a completion rolled back: still running, same claim time');
# a failure: the history row begins at the claim too
$c1->query_safe("SELECT qlater_fail($e2, 'no')");
is(running_row($e2), 'none', 'failed: gone');
is(su("SELECT started_at = '$claimed2' FROM qlater_history WHERE id = $e2 AND outcome = 'failed'"),
	't', 'the failed attempt begins at the claim');
su("SELECT qlater_cancel($e2)");

# given back
my $e3 = enqueue_ext(1);
$c1->query_safe("SELECT id FROM qlater_lock('ext', 1)");
is(running_row($e3), "consumer:$c1pid", 'claimed again');
$c1->query_safe("SELECT qlater_unlock($e3)");
is(running_row($e3), 'none', 'given back: gone');

# released behind qlater's back, then claimed by another session: one holder
$c1->query_safe("SELECT id FROM qlater_lock('ext', 1)");
is(running_row($e3), "consumer:$c1pid", 'claimed');
$c1->query_safe('SELECT pg_advisory_unlock_all()');
is(running_row($e3), 'none', 'pg_advisory_unlock_all: gone, whatever the session recorded');
my $c2 = bg('app');
my $c2pid = $c2->query_safe('SELECT pg_backend_pid()');
is($c2->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $e3, 'another session claims it');
is(running_row($e3), "consumer:$c2pid", 'one holder: the new one');
$c1->query_safe('DISCARD ALL');
is(running_row($e3), "consumer:$c2pid", 'still the one holder');

# the session ends; another is terminated
$c2->quit;
ok(poll("SELECT count(*) = 0 FROM qlater_running WHERE id = $e3"), 'its session ended: gone');
is($c1->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $e3, 'claimed by the first session');
is(running_row($e3), "consumer:$c1pid", 'shown with it');
su("SELECT pg_terminate_backend($c1pid)");
ok(poll("SELECT count(*) = 0 FROM qlater_running WHERE id = $e3"), 'its session terminated: gone');
$c1->quit;

# cancelled while claimed
my $c3 = bg('app');
my $c3pid = $c3->query_safe('SELECT pg_backend_pid()');
is($c3->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $e3, 'claimed once more');
as('alice', "SELECT qlater_cancel($e3)");
is(running_row($e3), 'none', 'cancelled: gone, though its claim is still held');

### many claims: more than a session records
# (c3 keeps the claim of the job cancelled under it: a fresh session)
$c3->quit;
$c3 = bg('app');
$c3pid = $c3->query_safe('SELECT pg_backend_pid()');
my @many = split /,/, enqueue_ext(100);
is($c3->query_safe("SELECT count(*) FROM qlater_lock('ext', 100)"), '100', '100 claims in one call');
is(su("SELECT concat_ws(' ', count(*), count(*) FILTER (WHERE pid = $c3pid), count(started_at))
         FROM qlater_running WHERE queue = 'ext'"),
	'100 100 64', 'all 100 show with their session; 64 with their claim time');
$c3->query_safe("SELECT count(qlater_complete(id)) FROM qlater_jobs WHERE queue = 'ext' AND locked_by = pg_backend_pid()
                 AND id IN (SELECT id FROM qlater_running WHERE started_at IS NOT NULL) AND id <= $many[49]");
is(su("SELECT concat_ws(' ', count(*), count(started_at)) FROM qlater_running WHERE queue = 'ext'"),
	'50 50', 'once entries free up, the claims without one get them, with their times');
is(su("SELECT count(DISTINCT started_at) FROM qlater_running WHERE queue = 'ext'"), '1',
	'one claim time for the call');
$c3->query_safe("SELECT count(qlater_complete(id)) FROM qlater_jobs WHERE queue = 'ext'");
is(su("SELECT count(*) FROM qlater_running WHERE queue = 'ext'"), '0', 'all completed: none');
is(su("SELECT count(*) FROM qlater_history WHERE queue = 'ext' AND outcome = 'done' AND started_at IS NULL"),
	'0', 'every completed job\'s history row has its claim time');

### leases
my $l1 = enqueue_ext(1);
$before = su('SELECT clock_timestamp()');
my ($lid, $token) = split /\|/, as('app', "SELECT id, claim_token FROM qlater_lock('ext', 1, lease => '1 min')");
$after = su('SELECT clock_timestamp()');
is($lid, $l1, 'leased');
is(su("SELECT concat_ws(' ', kind, coalesce(pid::text, 'null'), started_at BETWEEN '$before' AND '$after',
              lease_until = (SELECT lease_until FROM qlater_job WHERE id = $l1))
         FROM qlater_running WHERE id = $l1"),
	'consumer null t t', 'a lease: no pid, its claim time, its lease_until');
my $lclaimed = su("SELECT started_at FROM qlater_running WHERE id = $l1");
my $until = as('app', "SELECT qlater_extend($l1, '$token', '2 min')");
is(su("SELECT lease_until = '$until' AND started_at = '$lclaimed' FROM qlater_running WHERE id = $l1"),
	't', 'extended by another session: the new lease_until, the same claim time');
as('app', "SELECT qlater_complete($l1, '$token')");
is(running_row($l1), 'none', 'completed: gone');
is(su("SELECT started_at = '$lclaimed' FROM qlater_history WHERE id = $l1"), 't',
	'the history row of a lease begins at the claim');

# a lease that lapses (it holds over the next two psql start-ups), then
# counted by the next claim
my $l2 = enqueue_ext(1);
as('app', "SELECT id FROM qlater_lock('ext', 1, lease => '5 s')");
is(running_row($l2), 'consumer:null', 'a short lease shows');
my $l2claimed = su("SELECT started_at FROM qlater_running WHERE id = $l2");
ok(poll("SELECT count(*) = 0 FROM qlater_running WHERE id = $l2"), 'lapsed: gone');
is(as('app', "SELECT count(*) FROM qlater_lock('ext', 1)"), '0', 'the next claim counts the lapse');
is(su("SELECT started_at = '$l2claimed' FROM qlater_history WHERE id = $l2 AND outcome = 'timeout'"),
	't', 'the lapsed attempt begins at the claim');
su("SELECT qlater_cancel($l2)");

# the session that took a lease ends: the lease still shows
my $l3 = enqueue_ext(1);
my $c4 = bg('app');
my $c4pid = $c4->query_safe('SELECT pg_backend_pid()');
$c4->query_safe("SELECT id FROM qlater_lock('ext', 1, lease => '1 min')");
is(running_row($l3), 'consumer:null', 'leased by a session');
$c4->quit;
ok(poll("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $c4pid"), 'its session is gone');
is(running_row($l3), 'consumer:null', 'the lease still shows');
as('alice', "SELECT qlater_cancel($l3)");
is(running_row($l3), 'none', 'cancelled: gone');

### a worker's job cancelled while it runs
my $wc = as('alice', q{SELECT qlater_enqueue('hold_a(text)', '["wc"]')});
ok(poll("SELECT count(*) = 1 FROM qlater_running WHERE id = $wc"), 'a worker runs it');
as('alice', "SELECT qlater_cancel($wc)");
is(running_row($wc), 'none', 'cancelled: gone at once');

### qlater_workers in two databases
su('CREATE DATABASE other');
su(q{CREATE EXTENSION qlater;
CREATE FUNCTION hold(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  LOOP
    EXIT WHEN EXISTS (SELECT FROM public.flag f WHERE f.label = hold.label);
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
CREATE TABLE flag (label text);
SELECT qlater_register('hold(text)');}, 'other');
my $o1 = su(q{SELECT qlater_enqueue('hold(text)', '["o1"]')}, 'other');
ok(poll("SELECT count(*) = 1 FROM qlater_workers() WHERE datname = 'other' AND state = 'running' AND job_id = $o1"),
	'qlater_workers: a worker of the other database runs its job, by name');
is(su("SELECT count(*) FROM qlater_running WHERE id = $o1"), '0',
	'qlater_running shows the jobs of its own database only');
is(su("SELECT concat_ws(' ', kind, started_at IS NOT NULL) FROM qlater_running WHERE id = $o1", 'other'),
	'worker t', 'there, it shows');
is(su("SELECT count(*) FROM qlater_workers() WHERE datname IS NULL OR state NOT IN ('starting', 'idle', 'running', 'stopping')"),
	'0', 'every worker has a database name and a known state');
su("INSERT INTO flag VALUES ('o1')", 'other');
ok(poll("SELECT count(*) = 0 FROM qlater_running WHERE id = $o1", 'other'), 'done there');

### attacks
# a claim in another database of a job whose id is a pending job's here
my $ox = su(q{SELECT qlater_create_queue('ext', external => true);
              SELECT string_agg(qlater_enqueue('app.job', '[]', queue => 'ext')::text, ',')
                FROM generate_series(1, 3)}, 'other');
my @oxs = split /,/, $ox;
my @here = split /,/, enqueue_ext(3);
my $od = $node->background_psql('other', on_error_stop => 0);
is($od->query_safe("SELECT count(*) FROM qlater_lock('ext', 3)"), '3', 'three claims in the other database');
my $overlap = su("SELECT count(*) FROM qlater_job WHERE id IN ($ox)");
is(su("SELECT count(*) FROM qlater_running WHERE queue = 'ext'"), '0',
	"the other database's claims never show here ($overlap ids in common)");
is(su("SELECT count(*) FROM qlater_running", 'other'), '3', 'they show there');
$od->query_safe("SELECT count(qlater_complete(id)) FROM qlater_jobs WHERE locked_by = pg_backend_pid()");
$od->quit;
su("SELECT count(qlater_cancel(id)) FROM qlater_job WHERE queue = 'ext'");

# a claim taken in a transaction rolled back is still held (a session lock)
my $r1 = enqueue_ext(1);
my $c5 = bg('app');
my $c5pid = $c5->query_safe('SELECT pg_backend_pid()');
$c5->query_safe("BEGIN; SELECT id FROM qlater_lock('ext', 1); ROLLBACK;");
is(running_row($r1), "consumer:$c5pid", 'a claim whose transaction rolled back: held, shown');
# a lease taken in a transaction rolled back is none
my $r2 = enqueue_ext(1);
$c5->query_safe("BEGIN; SELECT id FROM qlater_lock('ext', 1, lease => '1 min'); ROLLBACK;");
is(running_row($r2), 'none', 'a lease rolled back: not shown');
# completed several at once: each history row begins at its claim
my $r1claimed = su("SELECT started_at FROM qlater_running WHERE id = $r1");
is($c5->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $r2, 'claimed, a second later');
my $r2claimed = su("SELECT started_at FROM qlater_running WHERE id = $r2");
$c5->query_safe("SELECT qlater_complete_many(ARRAY[$r1, $r2])");
is(su("SELECT string_agg((started_at = CASE id WHEN $r1 THEN '$r1claimed'::timestamptz ELSE '$r2claimed' END)::text, ' ' ORDER BY id)
         FROM qlater_history WHERE id IN ($r1, $r2)"),
	'true true', 'qlater_complete_many: each history row begins at its claim');

# a lease extended by another session outlives its claimer's record
my $x1 = enqueue_ext(1);
my $c6 = bg('app');
my $c6pid = $c6->query_safe('SELECT pg_backend_pid()');
my $x1token = $c6->query_safe("SELECT claim_token FROM qlater_lock('ext', 1, lease => '2 s')");
as('app', "SELECT qlater_extend($x1, '$x1token', '1 min')");
$c6->quit;
ok(poll("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $c6pid"), 'the claimer is gone');
sleep 3;
is(running_row($x1), 'consumer:null', 'the lease extended elsewhere still shows past its first end');
# its claimer extends it itself, then ends
my $x2 = enqueue_ext(1);
my $c7 = bg('app');
my $c7pid = $c7->query_safe('SELECT pg_backend_pid()');
my $x2token = $c7->query_safe("SELECT claim_token FROM qlater_lock('ext', 1, lease => '2 s')");
$c7->query_safe("SELECT qlater_extend($x2, '$x2token', '1 min')");
$c7->quit;
ok(poll("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $c7pid"), 'the claimer is gone');
sleep 2;
is(running_row($x2), 'consumer:null', 'the lease its claimer extended still shows');
su("SELECT qlater_cancel($x1), qlater_cancel($x2)");

# a lease that lapsed and is leased again: one holder, the new lease
my $x3 = enqueue_ext(1);
my $c8 = bg('app');
$c8->query_safe("SELECT id FROM qlater_lock('ext', 1, lease => '1 s')");
ok(poll("SELECT count(*) = 0 FROM qlater_running WHERE id = $x3"), 'lapsed');
is(as('app', "SELECT count(*) FROM qlater_lock('ext', 1, lease => '1 min')"), '0', 'the lapse is counted');
su("UPDATE qlater_job SET run_at = now() WHERE id = $x3");
my $x3token = as('app', "SELECT claim_token FROM qlater_lock('ext', 1, lease => '1 min') WHERE id = $x3");
isnt($x3token, '', 'leased again by another session');
is(su("SELECT count(*) || ' ' || max(lease_until)::text FROM qlater_running WHERE id = $x3"),
	su("SELECT '1 ' || lease_until::text FROM qlater_job WHERE id = $x3"), 'one row: the new lease');
$c8->quit;
su("SELECT qlater_cancel($x3)");

# a worker terminated while it runs a job: not shown under its pid again
my $wk = as('alice', q{SELECT qlater_enqueue('hold_a(text)', '["wk"]')});
ok(poll("SELECT count(*) = 1 FROM qlater_running WHERE id = $wk"), 'a worker runs it');
my $wkpid = su("SELECT pid FROM qlater_running WHERE id = $wk");
su("SELECT pg_terminate_backend($wkpid)");
ok(poll("SELECT count(*) = 0 FROM qlater_running WHERE pid = $wkpid"), 'its worker terminated: not shown with it');
is(su("SELECT count(*) <= 1 FROM qlater_running WHERE id = $wk"), 't', 'never twice');
su("INSERT INTO flag VALUES ('wk')");
ok(poll("SELECT count(*) = 0 FROM qlater_running WHERE id = $wk"), 'done at last');

# cheap: the view never reads the whole backlog of an external queue,
# even for leases whose sessions have ended
su("SELECT count(qlater_cancel(id)) FROM qlater_job WHERE queue = 'ext'");
enqueue_ext(3000);
my @gone;
for my $i (1 .. 3)
{
	my $s = bg('app');
	push @gone, $s->query_safe("SELECT id FROM qlater_lock('ext', 1, lease => '1 min')");
	$s->quit;
}
my $sessions_gone = join(',', @gone);
# what the view reads of the job table, as the statistics count it
sub rows_read
{
	return su(q{SELECT pg_stat_force_next_flush();
	            SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
	              FROM pg_stat_user_tables WHERE relname = 'qlater_job'});
}
# every other session gone, not only the leases': a session's statistics
# reach the counts when its backend exits, which may be after its psql has
# (once, in a loaded suite run, 503 rows of earlier sessions were counted
# below as the view's)
ok( poll(
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'client backend' "
		  . "AND pid <> pg_backend_pid() AND pid <> $c3pid AND pid <> $c5pid"),
	'the leases\' sessions are gone');
my $r0 = rows_read();
is(su("SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_running WHERE queue = 'ext'"),
	$sessions_gone, 'the leases of sessions gone show');
my $r1 = rows_read();
cmp_ok($r1 - $r0, '<', 100, "the view read a few rows of the job table, not the backlog (" . ($r1 - $r0) . ")");
su("SELECT count(qlater_cancel(id)) FROM qlater_job WHERE queue = 'ext'");

$c3->quit;
$c5->quit;
$node->stop;
done_testing();
