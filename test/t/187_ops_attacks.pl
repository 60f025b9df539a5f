# 187_ops_attacks.pl: hostile review of three pieces of schema 0.5.
# qlater_running: claims forged with SQL advisory locks, DISCARD ALL, a
# session past its 64 records whose claims go behind qlater's back and
# are taken by another session, qlater_complete_many of an overflowing
# session, a revoked consume grant, SECURITY DEFINER wrappers, thousands
# of claims (a failed qlater_lock keeps none), a stale record of a claim
# given back behind qlater's back and a cancel of that job by the same
# session, a server without the preload.  qlater_retry_dead: keyed
# enqueues racing it both ways, qlater_purge_dead racing it, a job that
# died after a REPEATABLE READ snapshot.  Bulk qlater_cancel: external
# pending jobs past the lock table (a clear error, nothing lost), running
# jobs in bulk (workers' and consumers'), a cancel racing a claim
# (committed: never runs; rolled back: not lost); PREPARE TRANSACTION after
# a cancel of an external job (allowed, not claimable meanwhile), of a
# running job and after qlater_retry_dead (refused).
# Checks whose comment says "BREAK:" fail on the code reviewed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('opsatk');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 3\nmax_worker_processes = 16\n"
	  . "max_connections = 30\nmax_prepared_transactions = 4\n");
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

# (stdout, stderr) of a query that may fail
sub try_as
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql, extra_params => [ '-U', $role ]);
	return ($out, $err);
}

sub bg
{
	my ($role) = @_;
	return $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', $role ]);
}

sub poll
{
	my ($sql) = @_;
	return $node->poll_query_until('postgres', $sql);
}

# send a statement that may block, without waiting for it
sub send_nb
{
	my ($s, $sql) = @_;
	$s->{stdin} .= "$sql\n";
	$s->{run}->pump_nb;
}

# wait until session $pid waits for a lock
sub waits
{
	my ($pid) = @_;
	return poll("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid");
}

sub running_row
{
	my ($id) = @_;
	return su("SELECT coalesce(string_agg(kind || ':' || coalesce(pid::text, 'null'), ','), 'none') FROM qlater_running WHERE id = $id");
}

su(q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE app LOGIN;
CREATE ROLE mallory LOGIN;
CREATE ROLE stats LOGIN IN ROLE pg_read_all_stats;
CREATE TABLE flag (label text);
CREATE TABLE done (label text, who text);
GRANT ALL ON flag, done TO PUBLIC;
GRANT CREATE ON SCHEMA public TO mallory;
CREATE FUNCTION hold(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  LOOP
    EXIT WHEN EXISTS (SELECT FROM public.flag f WHERE f.label = hold.label);
    PERFORM pg_sleep(0.05);
  END LOOP;
  INSERT INTO public.done VALUES (label, current_user);
END $$;
GRANT EXECUTE ON FUNCTION hold(text) TO PUBLIC;
CREATE FUNCTION hold_a(label text) RETURNS void LANGUAGE sql AS $$ SELECT public.hold(label) $$;
ALTER FUNCTION hold_a(text) OWNER TO alice;
CREATE FUNCTION ok_a(label text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user) $$;
ALTER FUNCTION ok_a(text) OWNER TO alice;
});
as('alice', q{SELECT qlater_register('hold_a(text)');
SELECT qlater_create_queue('kq'); SELECT qlater_pause_queue('kq');
SELECT qlater_register('ok_a(text)', queue => 'kq');
SELECT qlater_create_queue('ext', external => true); SELECT qlater_grant_queue('ext', 'app');});

sub enqueue_ext
{
	my ($n) = @_;
	return as('alice', "SELECT string_agg(qlater_enqueue('app.job', '[]', queue => 'ext')::text, ',') FROM generate_series(1, $n)");
}

# a dead keyed job of alice in 'kq', died $ago
sub dead_keyed
{
	my ($key, $ago) = @_;
	my $id = as('alice', "SELECT qlater_enqueue('ok_a(text)', '[\"$key\"]', key => '$key')");
	su("UPDATE qlater_job SET dead = true, attempts = max_attempts, last_error = '{\"message\": \"boom\"}',
	    run_at = now() - interval '$ago' WHERE id = $id");
	return $id;
}

########################################################################
### qlater_running
########################################################################

# SQL advisory locks cannot forge a claim (their objsubid is 1 or 2)
my $f1 = enqueue_ext(1);
my $m = bg('mallory');
$m->query_safe("SELECT pg_advisory_lock($f1); SELECT pg_advisory_lock(0, $f1); SELECT pg_advisory_lock($f1, 29036)");
is(running_row($f1), 'none', 'SQL advisory locks on the job id in every form: not shown as running');
is(su("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036"), '0',
	'none of them is in the claims\' lock space');
is(as('app', "SELECT string_agg(id::text, ',') FROM qlater_lock('ext', 1)"), $f1,
	'... and they keep no consumer from claiming the job');
$m->query_safe("SELECT pg_advisory_unlock_all()");
is(running_row($f1), 'none', 'the claiming session ended: not shown');
su("SELECT qlater_cancel($f1)");

# DISCARD ALL gives a claim back behind qlater's back: one holder afterwards
my $f2 = enqueue_ext(1);
my $c1 = bg('app');
my $c1pid = $c1->query_safe('SELECT pg_backend_pid()');
my $c2 = bg('app');
my $c2pid = $c2->query_safe('SELECT pg_backend_pid()');
is($c1->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $f2, 'claimed');
is(running_row($f2), "consumer:$c1pid", 'shown with its session');
$c1->query_safe('DISCARD ALL');
is(running_row($f2), 'none', 'DISCARD ALL: no longer shown');
is($c2->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $f2, 'another session claims it');
is(running_row($f2), "consumer:$c2pid", 'one holder: the new one');
$c2->query_safe("SELECT qlater_complete($f2)");

# a session past its 64 records gives its claims back behind qlater's
# back; another session takes them all: each job once, with its new holder
enqueue_ext(80);
is($c1->query_safe("SELECT count(*) FROM qlater_lock('ext', 80)"), '80', '80 claims in one session');
is(su("SELECT count(*) || ' ' || count(DISTINCT id) FROM qlater_running WHERE queue = 'ext'"), '80 80',
	'all 80 shown once');
$c1->query_safe('SELECT pg_advisory_unlock_all()');
is(su("SELECT count(*) FROM qlater_running WHERE queue = 'ext'"), '0', 'given back behind qlater\'s back: none shown');
is($c2->query_safe("SELECT count(*) FROM qlater_lock('ext', 80)"), '80', 'another session claims the 80');
is(su("SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || count(*) FILTER (WHERE pid = $c2pid) FROM qlater_running WHERE queue = 'ext'"),
	'80 80 80', 'each shown once, with its new holder');
# completed all at once: none left, and the next claims have their times
$c2->query_safe("SELECT qlater_complete_many(array_agg(id)) FROM qlater_jobs WHERE locked_by = pg_backend_pid()");
is(su("SELECT count(*) FROM qlater_running WHERE queue = 'ext'"), '0', 'qlater_complete_many of 80: none shown');
enqueue_ext(3);
is($c2->query_safe("SELECT count(*) FROM qlater_lock('ext', 3)"), '3', 'three more claimed');
is(su("SELECT count(*) || ' ' || count(started_at) FROM qlater_running WHERE queue = 'ext'"), '3 3',
	'shown with their claim times (no stale overflow)');
is($c1->query_safe("SELECT count(*) FROM qlater_lock('ext', 3)"), '0', 'the first session, its records stale, claims none of them');
is(su("SELECT count(*) FILTER (WHERE pid = $c1pid) FROM qlater_running"), '0', '... and shows with none');
$c2->query_safe("SELECT qlater_complete_many(array_agg(id)) FROM qlater_jobs WHERE locked_by = pg_backend_pid()");

# a stale record (a claim given back behind qlater's back) and a cancel
# of that job by the same session: the cancel's hold is no claim
my $st = enqueue_ext(1);
my $ca = bg('alice');
my $capid = $ca->query_safe('SELECT pg_backend_pid()');
is($ca->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $st, 'the owner claims a job of its queue');
$ca->query_safe('SELECT pg_advisory_unlock_all()');
is(running_row($st), 'none', 'given back behind qlater\'s back: not shown');
$ca->query_safe("BEGIN; SELECT qlater_cancel($st)");
is(running_row($st), 'none',
	# BREAK: the cancel holds the job's lock to its end (an external job);
	# the session's stale record matches it: shown as a claim, with the old time
	'the same session cancels it (uncommitted): still not shown as running');
$ca->query_safe('ROLLBACK');
is(running_row($st), 'none', 'the cancel rolled back: not shown');
$ca->quit;
su("SELECT qlater_cancel($st)");

# a revoked consume grant: the consumer no longer sees the queue's jobs
my $f3 = enqueue_ext(1);
is($c1->query_safe("SELECT id FROM qlater_lock('ext', 1)"), $f3, 'claimed by app');
is(as('app', "SELECT count(*) FROM qlater_running WHERE id = $f3"), '1', 'app sees its claim');
as('alice', "SELECT qlater_revoke_queue('ext', 'app')");
is(as('app', "SELECT count(*) FROM qlater_running WHERE id = $f3"), '0', 'consume revoked: app sees it no more');
is(as('app', "SELECT count(*) FROM qlater_running_jobs()"), '0', '... nor through the function');
is(as('alice', "SELECT count(*) FROM qlater_running WHERE id = $f3"), '1', 'the owner still does');
as('alice', "SELECT qlater_grant_queue('ext', 'app')");
$c1->query_safe("SELECT qlater_complete($f3)");

# a SECURITY DEFINER wrapper of a tenant sees what its owner sees, not its caller
my $f4 = enqueue_ext(1);
$c1->query_safe("SELECT id FROM qlater_lock('ext', 1)");
as('mallory', q{CREATE FUNCTION public.peek() RETURNS bigint LANGUAGE sql SECURITY DEFINER
                AS $$ SELECT count(*) FROM qlater_running_jobs() $$});
is(su('SELECT public.peek()'), '0', "mallory's SECURITY DEFINER wrapper called by a superuser: mallory's view (nothing)");
is(as('stats', 'SELECT public.peek()'), '0', '... called by a pg_read_all_stats member: nothing');
my ($o, $e) = try_as('mallory', 'SET ROLE stats');
like($e, qr/permission denied/, 'mallory cannot SET ROLE to a stats member');
$c1->query_safe("SELECT qlater_complete($f4)");

# thousands of claims in one session, and a session that runs out of the
# lock table while it claims
enqueue_ext(8000);
my $big = $c1->query(join('', map { "SELECT count(*) FROM qlater_lock('ext', 1000);\n" } 1 .. 8));
$big = eval join('+', 0, split /\n/, $big);
note "qlater_lock of 8000: '$big' / " . ($c1->{stderr} // '');
$c1->{stderr} = '';
my $shown = su("SELECT count(*) || ' ' || count(DISTINCT id) FROM qlater_running WHERE queue = 'ext'");
my $held = su("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036 AND pid = $c1pid");
note "after the big claim: shown '$shown', held $held";
my ($n_shown) = split / /, $shown;
is($n_shown, $held, 'every claim the session holds is shown, once (' . $shown . ')');
# (a session may fill the lock table with claims, as with pg_advisory_lock:
# the statement that finds it full fails and keeps none of its claims)
is($held, $big, "the claims held are those returned ($big), none of a qlater_lock that failed");
$c1->quit;
ok(poll("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $c1pid"), 'its session ended');
is(su("SELECT count(*) FROM qlater_running WHERE queue = 'ext'"), '0', 'none shown any more');
su(join('', map { "SELECT count(qlater_cancel(id)) FROM qlater_job WHERE queue = 'ext' AND id % 10 = $_;\n" } 0 .. 9));

########################################################################
### qlater_retry_dead
########################################################################

# a keyed enqueue while a retry of the key is under way waits, then
# returns the retried job: one live job of the key
my $d1 = dead_keyed('k1', '1 min');
my $r = bg('alice');
my $e1 = bg('alice');
my $e1pid = $e1->query_safe('SELECT pg_backend_pid()');
is($r->query_safe("BEGIN; SELECT qlater_retry_dead('kq')"), '1', 'a retry under way');
send_nb($e1, "SELECT 'E:' || qlater_enqueue('ok_a(text)', '[\"k1b\"]', key => 'k1', queue => 'kq');");
ok(waits($e1pid), 'a keyed enqueue of the key waits for it');
$r->query_safe('COMMIT');
like($e1->query_safe("SELECT 'end'"), qr/E:$d1\b/, '... then returns the retried job');
is(su("SELECT count(*) FROM qlater_job WHERE key = 'k1' AND NOT dead"), '1', 'one live job of the key');

# the enqueue first: the retried job gives the key up
my $d2 = dead_keyed('k2', '1 min');
$e1->query_safe("BEGIN");
my $n2 = $e1->query_safe("SELECT qlater_enqueue('ok_a(text)', '[\"k2b\"]', key => 'k2', queue => 'kq')");
is(as('alice', "SELECT qlater_retry_dead('kq')"), '1', 'retried while a keyed enqueue is under way');
$e1->query_safe('COMMIT');
is(su("SELECT count(*) || ' ' || max(id) FROM qlater_job WHERE key = 'k2' AND NOT dead"), "1 $n2",
	'one live job of the key: the enqueued one');
is(su("SELECT key IS NULL AND NOT dead FROM qlater_job WHERE id = $d2"), 't', 'the retried job gave it up');

# qlater_purge_dead racing a retry: of two dead jobs of a key, the newer
# is purged while the retry waits; the older, retried, is the key's only
# live job
my $d3old = dead_keyed('k3', '10 min');
my $d3new = dead_keyed('k3', '2 hours');
my $p = bg('alice');
$p->query_safe('BEGIN');
is($p->query_safe("SELECT qlater_purge_dead('kq', '1 hour')"), '1', 'the newer dead job purged, uncommitted');
my $rpid = $r->query_safe('SELECT pg_backend_pid()');
send_nb($r, "SELECT 'R:' || qlater_retry_dead('kq');");
ok(waits($rpid), 'a retry waits for the purge');
$p->query_safe('COMMIT');
like($r->query_safe("SELECT 'end'"), qr/R:1\b/, 'the retry retried the older one only');
is(su("SELECT count(*) FROM qlater_job WHERE key = 'k3' AND NOT dead"), '1',
	# BREAK: the retry chose the purged (newer) job to keep the key, and
	# dropped the key of the one it retried: no live job of the key
	'the retried job keeps its key: no other job of the key is alive');
is(as('alice', "SELECT qlater_enqueue('ok_a(text)', '[\"k3b\"]', key => 'k3', queue => 'kq') = $d3old"), 't',
	# BREAK: same cause: the enqueue makes a second job of the same work
	'... and a keyed enqueue returns it');

# a job that died after a REPEATABLE READ transaction's snapshot, the only
# dead keyed job of its queue and role: retried, it keeps its key
my $k4 = as('alice', q{SELECT qlater_enqueue('ok_a(text)', '["k4"]', key => 'k4', queue => 'kq')});
is(su("SELECT count(*) FROM qlater_job WHERE dead AND key IS NOT NULL AND queue = 'kq'"), '0', 'no dead keyed job in kq');
$r->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1');
su("UPDATE qlater_job SET dead = true, attempts = max_attempts, run_at = now() - interval '1 min' WHERE id = $k4");
is($r->query_safe("SELECT qlater_retry_dead('kq')"), '1', 'retried in REPEATABLE READ');
$r->query_safe('COMMIT');
is(su("SELECT coalesce(key, 'NULL') FROM qlater_job WHERE id = $k4"), 'k4',
	# BREAK: the key groups are read under the transaction's snapshot,
	# the jobs under the latest: the job's group was never locked, so its
	# key was dropped though no other job of the key is alive
	'the job keeps its key (no enqueue of it was under way)');

# a retry rolled back by a later error of its transaction: nothing changed
my $d5 = dead_keyed('k5', '1 min');
my ($ro, $re) = try_as('alice', "BEGIN; SELECT qlater_retry_dead('kq'); SELECT 1/0; COMMIT;");
is(su("SELECT dead::text || ' ' || key FROM qlater_job WHERE id = $d5"), 'true k5', 'a retry whose transaction failed: still dead, keyed');

# older_than edges
($ro, $re) = try_as('alice', "SELECT qlater_retry_dead('kq', '-1 microsecond')");
like($re, qr/older_than must not be negative/, 'one microsecond below zero is refused');
is(as('alice', "SELECT qlater_retry_dead('kq', '178000000 years')"), '0', 'the largest interval: none, no overflow');
is(as('alice', "SELECT qlater_retry_dead(NULL, '0')"), '1', 'NULL queue: every queue (the one dead job)');
is(as('bob', "SELECT qlater_retry_dead(NULL)"), '0', 'bob: none of alice\'s');

########################################################################
### bulk qlater_cancel
########################################################################

# external pending jobs past the lock table: a clear error, nothing lost
as('alice', "SELECT qlater_create_queue('bigext', external => true); SELECT qlater_grant_queue('bigext', 'app')");
as('alice', "SELECT count(qlater_enqueue('app.job', '[]', queue => 'bigext')) FROM generate_series(1, 20000)");
my ($co, $ce) = try_as('alice', "SELECT count(qlater_cancel(id)) FROM qlater_jobs WHERE queue = 'bigext'");
note "bulk cancel of 20000 external: out '$co' err '$ce'";
like($ce, qr/max_locks_per_transaction/, '20,000 external pending jobs in one transaction: the error names max_locks_per_transaction');
is(su("SELECT count(*) FROM qlater_job WHERE queue = 'bigext'"), '20000', '... and nothing is cancelled');
is(su("SELECT count(*) FROM qlater_history WHERE queue = 'bigext'"), '0', '... nor recorded');
is(as('app', "SELECT count(*) FROM qlater_lock('bigext', 5)"), '5', '... nor left claimed');
is(su("SELECT count(*) FROM qlater_running WHERE queue = 'bigext'"), '0', 'those claims were given back with their session');
my $pieces = as('alice', join('', map { "SELECT count(qlater_cancel(id)) FROM qlater_jobs WHERE queue = 'bigext' AND id % 20 = $_;\n" } 0 .. 19));
my $sum = 0;
$sum += $_ for split /\n/, $pieces;
is($sum, '20000',
	'cancelled in pieces: all of them');

# running jobs cancelled in bulk: workers' and a consumer's
su("DELETE FROM done");
my @w = map { as('alice', "SELECT qlater_enqueue('hold_a(text)', '[\"w$_\"]')") } 1 .. 3;
my @x = split /,/, enqueue_ext(2);
my $c3 = bg('app');
is($c3->query_safe("SELECT count(*) FROM qlater_lock('ext', 2)"), '2', 'a consumer claims two');
ok(poll("SELECT count(*) = 5 FROM qlater_running"), 'three in the workers, two claimed: five running');
is(as('alice', "SELECT count(qlater_cancel(id)) FROM qlater_jobs WHERE state = 'running'"), '5', 'all five cancelled in one statement');
is(su("SELECT count(*) FROM qlater_running"), '0', 'none shown running');
su("INSERT INTO flag SELECT 'w' || g FROM generate_series(1, 3) g");
sleep 1;
ok(poll("SELECT count(*) = 0 FROM qlater_workers() WHERE job_id IS NOT NULL"), 'the workers have let them go');
is(su("SELECT count(*) FROM done"), '0', 'none of the cancelled workers\' jobs finished its work');
my ($xo, $xe) = (undef, undef);
$xo = $c3->query("SELECT qlater_complete($x[0])");
$c3->{stderr} = '';
is(su("SELECT string_agg(outcome, ',' ORDER BY outcome) FROM qlater_history WHERE id IN (" . join(',', @w, @x) . ")"),
	'cancelled,cancelled,cancelled,cancelled,cancelled', 'each one outcome: cancelled (the consumer\'s late complete none)');
$c3->quit;

# a cancel racing a claim: while it is under way no consumer claims the
# job; rolled back, the job is claimed; committed, never
my $y1 = enqueue_ext(1);
my $a = bg('alice');
$a->query_safe("BEGIN; SELECT qlater_cancel($y1)");
is(as('app', "SELECT count(*) FROM qlater_lock('ext', 10)"), '0', 'a session claim passes over a job being cancelled');
my $c4 = bg('app');
my $c4pid = $c4->query_safe('SELECT pg_backend_pid()');
send_nb($c4, "SELECT 'L:' || coalesce(string_agg(id::text, ','), '') FROM qlater_lock('ext', 10, lease => '1 min');");
sleep 1;
$a->query_safe('ROLLBACK');
my $lres = $c4->query_safe("SELECT 'end'");
my $leased = $lres =~ /L:(\d+)/ ? $1 : '';
if ($leased eq '')
{
	is(as('app', "SELECT string_agg(id::text, ',') FROM qlater_lock('ext', 10)"), $y1, 'the cancel rolled back: the job is claimed');
}
else
{
	is($leased, $y1, 'the cancel rolled back: the lease that waited gets the job');
}
su("SELECT qlater_cancel($y1)");

my $y2 = enqueue_ext(1);
$a->query_safe("BEGIN; SELECT qlater_cancel($y2)");
send_nb($c4, "SELECT 'M:' || coalesce(string_agg(id::text, ','), '') FROM qlater_lock('ext', 10, lease => '1 min');");
sleep 1;
$a->query_safe('COMMIT');
like($c4->query_safe("SELECT 'end'"), qr/M:(?!$y2\b)/, 'the cancel committed: a lease claim that raced it does not get the job');
is(as('app', "SELECT count(*) FROM qlater_lock('ext', 10)"), '0', '... nor a session claim after it');
is(su("SELECT count(*) FROM qlater_history WHERE id = $y2 AND outcome <> 'cancelled'"), '0', 'only its cancel recorded');

# in-server: a cancel left open past the job's due time, then committed: never runs
as('alice', "SELECT qlater_resume_queue('kq')");
ok(poll("SELECT count(*) = 0 FROM qlater_job WHERE queue = 'kq' AND NOT dead"), 'kq drained');
su("DELETE FROM done");
my $z = as('alice', q{SELECT qlater_enqueue('ok_a(text)', '["z"]', queue => 'kq', run_at => now() + interval '1 s')});
$a->query_safe("BEGIN; SELECT qlater_cancel($z)");
sleep 3;
$a->query_safe('COMMIT');
sleep 1;
is(su("SELECT count(*) FROM done WHERE label = 'z'"), '0', 'a committed cancel, open past the due time: the job never ran');
$a->quit;

# PREPARE TRANSACTION after a cancel or a retry in bulk
su("DELETE FROM done");
my $pe = enqueue_ext(1);
my $pa = bg('alice');
my ($pout, $perr) = $pa->query("BEGIN; SELECT qlater_cancel($pe); PREPARE TRANSACTION 'pc'");
note "PREPARE after the cancel of an external job: '$pout' '" . ($pa->{stderr} // '') . "'";
my $prepared = su("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'pc'");
$pa->{stderr} = '';
is(as('app', "SELECT count(*) FROM qlater_lock('ext', 10)"), '0',
	'an external job whose cancel is prepared (or refused: rolled back, claimed now) is not claimed twice')
  if $prepared;
su("ROLLBACK PREPARED 'pc'") if $prepared;
is(as('app', "SELECT string_agg(id::text, ',') FROM qlater_lock('ext', 10)"), $pe,
	'the prepared cancel rolled back (or refused): the job is there, claimed');
su("SELECT qlater_cancel($pe)");

my $pw = as('alice', q{SELECT qlater_enqueue('hold_a(text)', '["pw"]')});
ok(poll("SELECT count(*) = 1 FROM qlater_running WHERE id = $pw"), 'a worker runs a job');
($pout, $perr) = $pa->query("BEGIN; SELECT qlater_cancel($pw); PREPARE TRANSACTION 'pw'");
my $perrtext = $pa->{stderr} // '';
$pa->{stderr} = '';
$pa->query("ROLLBACK");
$pa->{stderr} = '';
like($perrtext, qr/cannot PREPARE/, 'PREPARE after the cancel of a running job: refused');
su("ROLLBACK PREPARED 'pw'") if su("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'pw'");
is(running_row($pw) =~ /^worker:/ ? 'running' : running_row($pw), 'running', 'the job still runs');
su("INSERT INTO flag VALUES ('pw')");
ok(poll("SELECT count(*) = 1 FROM done WHERE label = 'pw'"), 'and finishes');

as('alice', "SELECT qlater_pause_queue('kq')");
my $pd = dead_keyed('pd', '1 min');
as('alice', "SELECT qlater_resume_queue('kq')");
($pout, $perr) = $pa->query("BEGIN; SELECT qlater_retry_dead('kq'); PREPARE TRANSACTION 'pr'");
$perrtext = $pa->{stderr} // '';
$pa->{stderr} = '';
$pa->query("ROLLBACK");
$pa->{stderr} = '';
note "PREPARE after retry_dead: '$perrtext'";
if (su("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'pr'") eq '1')
{
	su("COMMIT PREPARED 'pr'");
	ok(poll("SELECT count(*) = 1 FROM done WHERE label = 'pd'"), 'a retry_dead committed prepared: the job runs');
}
else
{
	like($perrtext, qr/cannot PREPARE/, 'PREPARE after qlater_retry_dead: refused');
	is(as('alice', "SELECT qlater_retry_dead('kq')"), '1', 'retried then');
	ok(poll("SELECT count(*) = 1 FROM done WHERE label = 'pd'"), '... and it runs');
}
$pa->quit;

########################################################################
### a server without the preload
########################################################################
my $np = PostgreSQL::Test::Cluster->new('nopreload');
$np->init;
$np->start;
$np->safe_psql('postgres', q{CREATE EXTENSION qlater; CREATE ROLE t LOGIN;
SELECT qlater_create_queue('e', external => true);
SELECT qlater_enqueue('app.job', '[]', queue => 'e') FROM generate_series(1, 3);});
my ($nr, $no, $ne) = $np->psql('postgres', 'SELECT * FROM qlater_running');
like($ne, qr/shared_preload_libraries/, 'qlater_running without the preload: an error naming shared_preload_libraries');
($nr, $no, $ne) = $np->psql('postgres', q{SELECT count(*) FROM qlater_lock('e', 2); SELECT * FROM qlater_running_jobs()});
unlike($ne, qr/terminated|server closed/, 'claims then the function: no crash');
($nr, $no, $ne) = $np->psql('postgres', 'SELECT count(*) FROM qlater_workers()');
is($nr == 0 || $ne =~ /shared_preload_libraries/ ? 1 : 0, 1, 'qlater_workers without the preload: rows or a clear error');
($nr, $no, $ne) = $np->psql('postgres', q{UPDATE qlater_job SET dead = true; SELECT qlater_retry_dead(); SELECT count(qlater_cancel(id)) FROM qlater_job});
is($no, "3\n3", 'retry_dead and bulk cancel without the preload') or note $ne;
is($np->safe_psql('postgres', 'SELECT 1'), '1', 'the server is up');
$np->stop;
my $nplog = slurp_file($np->logfile);
unlike($nplog, qr/terminated by signal/, 'no crash in the server without the preload');

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process crashed');
$node->stop;
done_testing();
