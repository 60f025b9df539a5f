# 119_claim_batch_attacks.pl: a hostile review of qlater_lock claiming its
# jobs in batches (53497b9): the claims of up to the remaining number of
# jobs are taken first (ql_claim_take: the advisory lock, and a slot of a
# queue with max_running), then their rows are read with one statement
# (in lease mode one UPDATE ... RETURNING, then a read of those not
# leased), and each is processed (ql_claim_read): a job gone gives its
# claim and slot back, a lapsed lease is counted (at most 64 per call), a
# claimed row is returned; when some gave their slots back, the candidate
# where the slot ran out is tried again.  Attacked as tenants (alice owns
# and consumes her queues) and as a DBA.
#
# Breaks (plain tests that fail on the code they were found on):
#   B1. a session-mode qlater_lock that fails after it took its claims
#       leaves the session holding the claims of every job of its batch
#       that it had not handed out: they are session locks, and only the
#       claim of the job whose lapse failed is released at the abort.  Two
#       deterministic errors: the count of a lapsed lease in a READ ONLY
#       transaction (section 1), a serialization failure (40001, to
#       retry) of that count in REPEATABLE READ (section 2).  The jobs
#       show as 'running', held by the session, and no consumer gets them,
#       the session itself neither (its own claims are passed over as
#       "ours already"), until the session ends; in a queue with
#       max_running their slots are held too.  Before 53497b9 the claims
#       were taken one at a time, after the lapsed job had been read: the
#       same calls left no claim behind.  (Any error after the claims
#       were taken does the same, such as a cancel or statement_timeout
#       that arrives during the read: it leaves up to max_jobs claims,
#       where before it left those of the jobs already read.)
#   B2. (older than 53497b9) in REPEATABLE READ or SERIALIZABLE the rows
#       are read under the transaction's snapshot, not one taken after the
#       claim: a job leased by another consumer after that snapshot is
#       claimed again in session mode (two holders at once), a job
#       completed after it is handed out again (section 11),
#       and in lease mode the claim takes the live lease's slot away
#       (ql_take frees a job's earlier slot) before the lease fails with a
#       serialization failure: the queue with max_running 1 then leases a
#       second job (section 12).
#   B3. (older than 53497b9) a session-mode count of a lapse that fails
#       (as in B1) leaves the slot taken for the lapsed job held by the
#       session: the claim is released at the abort, the slot (a slot of
#       the process) is not.  Only a later claim that meets the job again
#       takes it over; a job that another consumer's count made dead is
#       never met again, and a queue with max_running 1 then hands out
#       nothing until the session ends (section 2b).
#   B4. (older than 53497b9) max_running is not exact with lease-mode
#       consumers: a call claims candidates it read before another
#       consumer leased one of them (that lease's claim, a transaction
#       lock, is free once its transaction committed), and ql_take frees
#       the job's earlier slot, which is the live lease's, before the read
#       finds the job leased and the call gives its own slot back: the
#       lease runs without a slot, and the queue hands out one job more.
#       Deterministic with a batch that waits for a row (section 13);
#       by itself under concurrent lease-mode consumers in READ COMMITTED
#       (section 14: 6 to 9 jobs held at once in a queue of max_running
#       4, in every run here, before 53497b9 too; with ql_take leaving a
#       live lease's slot alone, at most 4).
# All four are fixed: a failing session-mode call gives back every claim
# it took and their slots (ql_claims_undo), including the slot of a lapse
# it was counting (B1, B3); the rows are read under the latest snapshot
# (B2); ql_take leaves a live lease's slot alone and the claim passes the
# job over (QL_SLOT_BUSY, B4).  Sections marked FIXED failed before; B3's
# own scenario (2b) no longer fails a count (the read sees x dead), and
# section 1 covers it.  What holds is in the sections marked "holds".
# No server process may end on a signal, and no assertion may fail.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $t_start = time();
my $node = PostgreSQL::Test::Cluster->new('claim_batch_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 1\n"
	  . "max_worker_processes = 16\n"
	  . "max_connections = 40\n");
$node->start;

sub su
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

sub as
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

# a background session of a role, that goes on after an error
sub bg
{
	my ($role) = @_;
	return $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', $role ]);
}

# the job ids whose claims a backend holds, ascending, comma-separated
sub held_by
{
	my ($pid) = @_;
	return su(
		qq{SELECT coalesce(string_agg(((classid::bigint << 32) | objid::bigint)::text, ','
		                              ORDER BY (classid::bigint << 32) | objid::bigint), '')
		     FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036 AND pid = $pid});
}

sub advisory_locks
{
	return su(q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036});
}

sub enqueue
{
	my ($queue, $extra) = @_;
	$extra = defined $extra ? ", $extra" : '';
	return as('alice', "SELECT qlater_enqueue('Job', '[]', queue => '$queue'$extra)");
}

# lease the next n jobs of a queue as alice; the ids, comma-separated
sub lease
{
	my ($queue, $n, $len) = @_;
	return as('alice',
		"SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('$queue', $n, lease => '$len')");
}

# ids a query of qlater_lock claims, ascending, as one string
sub claim
{
	my ($role, $queue, $n, $lease) = @_;
	my $l = defined $lease ? ", lease => '$lease'" : '';
	return as($role,
		"SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM qlater_lock('$queue', $n$l)");
}

sub attempts
{
	my ($id) = @_;
	return su("SELECT coalesce((SELECT attempts || ' ' || state || CASE WHEN claim_token IS NULL THEN '' ELSE ' token' END FROM qlater_jobs WHERE id = $id), 'gone')");
}

# the jobs of a queue whose lease holds now
sub live_leases
{
	my ($queue) = @_;
	return su("SELECT count(*) FROM qlater_job WHERE queue = '$queue' AND lease_until > clock_timestamp()");
}

sub clear
{
	my ($queue) = @_;
	su("SELECT count(qlater_cancel(id)) FROM qlater_job WHERE queue = '$queue'");
}

# the rows of the last result a background session printed (before the
# separator line 'end')
sub rows_of
{
	my ($out) = @_;
	my @l = grep { $_ ne '' && $_ ne 'end' } split /\n/, $out;
	return join(',', sort { $a <=> $b } map { split /,/ } @l);
}

# wait until a backend waits for a lock
sub wait_for_lock_wait
{
	my ($pid) = @_;
	return $node->poll_query_until('postgres',
		"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid");
}

su(q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE mallory LOGIN;
GRANT CREATE ON SCHEMA public TO PUBLIC;
});
as('alice', q{
SELECT qlater_create_queue('app', external => true);
SELECT qlater_create_queue('cap', external => true);
SELECT qlater_create_queue('one', external => true);
SELECT qlater_create_queue('big', external => true);
SELECT qlater_create_queue('race', external => true);
SELECT qlater_alter_queue('cap', max_running => 2);
SELECT qlater_alter_queue('one', max_running => 1);
SELECT qlater_alter_queue('race', max_running => 4);
});

### 1. FIXED (B1): a session-mode claim in a READ ONLY transaction meets a
### lapsed lease first, in a queue with max_running 2: the count fails the
### call (as 118 notes, an error to expect), and the session must not keep
### claims of jobs it was not handed.  Observed: it keeps the claim of y,
### with its slot: another consumer gets z only (after counting the lapse
### itself), and y stays 'running', held by the session, until it ends.
{
	my $x = enqueue('cap');
	is(lease('cap', 1, '1 second'), $x, 'read only: x is leased for a second');
	my $y = enqueue('cap');
	my $z = enqueue('cap');
	sleep(2);
	my $s = bg('alice');
	my $spid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_safe('BEGIN READ ONLY');
	my $out = $s->query(q{SELECT string_agg(id::text, ',') FROM qlater_lock('cap', 3)});
	like($s->{stderr}, qr/^$|read-only transaction/, 'read only: no error, or the read-only error');
	$s->{stderr} = '';
	$s->query_safe('ROLLBACK');
	my $handed = rows_of($out);
	# before the fix: held "$y" (nothing was handed out)
	is(held_by($spid), $handed, 'read only: the session holds the claims of the jobs handed to it, no others');
	my $rest = join(',', grep { my $i = $_; !grep { $_ == $i } split /,/, $handed } ($y, $z));
	# before the fix: "$z" only (y and its slot are held by the failed session)
	is(claim('alice', 'cap', 3), $rest, 'read only: another consumer gets the jobs not handed out');
	is(attempts($x), '1 pending', 'read only: the lapse is counted once, by the other consumer');
	$s->quit;
	clear('cap');
}

### 2. FIXED (B1): the same in REPEATABLE READ: another consumer counts the
### lapse of x after the snapshot, and the count of this call fails with a
### serialization failure (40001: the client retries, in the same
### session).  Observed: the session keeps the claims of y and z; no other
### consumer gets them, and neither does the session's retry.
{
	my $x = enqueue('app');
	is(lease('app', 1, '1 second'), $x, 'serialization: x is leased for a second');
	my $y = enqueue('app');
	my $z = enqueue('app');
	sleep(2);
	my $s = bg('alice');
	my $spid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$s->query_safe('SELECT count(*) FROM qlater_jobs');
	# another consumer counts the lapse (and gives y back at its commit)
	is(as('alice', q{SELECT count(qlater_unlock(id)) FROM qlater_lock('app', 1)}), '1',
		'serialization: another consumer counts the lapse and gives back the job it got');
	is(attempts($x), '1 pending', 'serialization: the lapse is counted once');
	my $out = $s->query(q{SELECT string_agg(id::text, ',') FROM qlater_lock('app', 3)});
	like($s->{stderr}, qr/^$|could not serialize access/,
		'serialization: no error, or a serialization failure to retry');
	$s->{stderr} = '';
	$s->query_safe('ROLLBACK');
	my $handed = rows_of($out);
	# before the fix: held "$y,$z"
	is(held_by($spid), $handed, 'serialization: the session holds the claims of the jobs handed to it, no others');
	my $retry = rows_of($s->query_safe(q{SELECT string_agg(id::text, ',') FROM qlater_lock('app', 3)}));
	my $all = join(',', sort { $a <=> $b } grep { $_ ne '' } (split(/,/, $handed), split(/,/, $retry)));
	# before the fix: '' (the retry passes over its own leftover claims, "ours already")
	is($all, "$y,$z", 'serialization: the retry in the same session gets the jobs');
	$s->quit;
	clear('app');
}

### 2b. FIXED (B3, older than 53497b9): a session-mode count of a lapse that
### fails leaves the slot taken for the lapsed job held by the session (a
### slot of the process, not released at the abort, unlike the claim).
### Here the job is dead once another consumer counted its last attempt,
### so no later claim meets it to take the slot over: the queue with
### max_running 1 runs nothing and hands out nothing until the session
### ends.
{
	my $x = enqueue('one', 'max_attempts => 1');
	is(lease('one', 1, '1 second'), $x, 'slot of a failed count: x is leased for a second');
	my $y = enqueue('one');
	sleep(2);
	my $s = bg('alice');
	$s->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$s->query_safe('SELECT count(*) FROM qlater_jobs');
	my ($ly, $ty) = split /:/,
	  as('alice', q{SELECT id || ':' || claim_token FROM qlater_lock('one', 1, lease => '5 minutes')});
	is($ly, $y, 'slot of a failed count: another consumer counts the lapse and leases y');
	as('alice', "SELECT qlater_unlock($y, '$ty')");
	is(attempts($x), '1 dead', 'slot of a failed count: x is dead');
	# the claim reads the rows as committed now: x is dead, y free again, so
	# it may claim y (held by the session past its rollback, as any session
	# claim, until given back)
	my $got = rows_of($s->query(q{SELECT string_agg(id::text, ',') FROM qlater_lock('one', 1)}));
	like($s->{stderr}, qr/^$|could not serialize access/,
		'slot of a failed count: no error, or a serialization failure');
	ok($got eq '' || $got eq $y, 'slot of a failed count: the session gets y or nothing');
	$s->{stderr} = '';
	$s->query_safe('ROLLBACK');
	$s->query_safe("SELECT qlater_unlock($y)") if $got eq $y;
	# before the fix: '' (x's slot is still held by the session)
	is(claim('alice', 'one', 1, '5 minutes'), $y,
		'slot of a failed count: nothing runs, another consumer leases y');
	$s->quit;
	clear('one');
}

### 3. holds: lapsed leases and fresh jobs in a queue with max_running 2:
### the lapses are counted and their slots given back, the fresh jobs
### take the slots (the candidate where the slots ran out is tried again),
### never more than 2 at once, and the slots come back when the jobs end
{
	my ($l1, $l2) = (enqueue('cap'), enqueue('cap'));
	is(lease('cap', 2, '1 second'), "$l1,$l2", 'mixed: two jobs leased for a second');
	my @f = map { enqueue('cap') } 1 .. 3;
	sleep(2);
	my $got = as('alice',
		q{SELECT string_agg(id || ':' || claim_token, ',' ORDER BY id) FROM qlater_lock('cap', 10, lease => '5 minutes')});
	my %tok = map { split /:/ } split /,/, $got;
	is(join(',', sort { $a <=> $b } keys %tok), "$f[0],$f[1]",
		'mixed, lease mode: the lapses are counted and the first two fresh jobs take the slots');
	is(attempts($l1) . '/' . attempts($l2), '1 pending/1 pending', 'mixed: both lapses counted once');
	is(claim('alice', 'cap', 10), '', 'mixed: the queue is full (session mode)');
	is(claim('alice', 'cap', 10, '5 minutes'), '', 'mixed: the queue is full (lease mode)');
	as('alice', "SELECT qlater_complete($f[0], '$tok{$f[0]}')");
	is(claim('alice', 'cap', 10, '5 minutes'), $f[2], 'mixed: a completion gives its slot to the next job');
	is(live_leases('cap'), '2', 'mixed: two leases hold');
	clear('cap');

	# session mode, a holding session
	my $m = enqueue('cap');
	is(lease('cap', 1, '1 second'), $m, 'mixed, session mode: a job leased for a second');
	my @g = map { enqueue('cap') } 1 .. 3;
	sleep(2);
	my $s = bg('alice');
	is($s->query_safe(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('cap', 10)}),
		"$g[0],$g[1]", 'mixed, session mode: the lapse is counted and two fresh jobs are claimed');
	is(attempts($m), '1 pending', 'mixed, session mode: the lapse is counted');
	is(claim('alice', 'cap', 10, '5 minutes'), '', 'mixed, session mode: the queue is full');
	$s->query_safe("SELECT qlater_complete($g[0])");
	is(claim('alice', 'cap', 10, '5 minutes'), $g[2], 'mixed, session mode: a completion gives its slot back');
	$s->quit;
	clear('cap');
}

### 4. holds: a lapsed lease whose holder has its row locked (completing
### it, not committed yet) in the middle of a batch, in a queue with
### max_running 2: not counted, its slot left to the holder; the batch
### gets one fresh job beside it, no more; the holder's commit gives the
### slot back.
{
	# the fresh jobs are enqueued and the holder's session is open before
	# the lease is taken: the holder completes w at once, long before the
	# lease runs out
	my $w = enqueue('cap');
	my @f = map { enqueue('cap') } 1 .. 3;
	my $h = bg('alice');
	$h->query_safe('BEGIN');
	my ($lw, $tw) = split /:/,
	  as('alice', q{SELECT id || ':' || claim_token FROM qlater_lock('cap', 1, lease => '2 seconds')});
	is($lw, $w, 'holder: w is leased for two seconds');
	$h->query_safe("SELECT qlater_complete($w, '$tw')");
	sleep(3);
	my $s = bg('alice');
	is($s->query_safe(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('cap', 10)}),
		$f[0], 'holder: the batch gets one fresh job beside the job being completed');
	is(claim('alice', 'cap', 10, '5 minutes'), '', 'holder: the queue is full');
	$h->query_safe('COMMIT');
	is(attempts($w), 'gone', 'holder: the holder completed w, uncounted');
	is(claim('alice', 'cap', 10, '5 minutes'), $f[1], 'holder: its commit gives the slot back');
	$h->quit;
	$s->quit;
	clear('cap');
}

### 5. holds: a job cancelled (by a DBA) between the claim and the lease:
### the DBA has locked its row (a qlater_cancel takes the job's claim
### first, which a consumer passes over: the row lock is what makes the
### batch's UPDATE wait), and cancels it while the UPDATE waits; at the
### commit the job is gone, its claim and slot are given back, and the
### candidate where the slots ran out is leased instead; never more than
### max_running (2) leases, and the slots come back
{
	my ($x, $y, $z, $w) = map { enqueue('cap') } 1 .. 4;
	my $d = $node->background_psql('postgres');
	$d->query_safe('BEGIN');
	$d->query_safe("SELECT id FROM qlater_job WHERE id = $y FOR UPDATE");
	my $s = bg('alice');
	my $spid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_until(qr/started/,
		"\\echo started\nSELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('cap', 3, lease => '5 minutes');\n");
	ok(wait_for_lock_wait($spid), 'cancel: the lease of the batch waits for the row of y');
	$d->query_safe("SELECT qlater_cancel($y)");
	$d->query_safe('COMMIT');
	is(rows_of($s->query(q{SELECT 'end'})), "$x,$z",
		'cancel: y gone gives its slot back, and z takes it');
	is(claim('alice', 'cap', 3, '5 minutes'), '', 'cancel: the queue is full');
	is(live_leases('cap'), '2', 'cancel: two leases hold');
	my $tx = su("SELECT claim_token FROM qlater_job WHERE id = $x");
	as('alice', "SELECT qlater_complete($x, '$tx')");
	is(claim('alice', 'cap', 3, '5 minutes'), $w, 'cancel: a completion gives its slot to w');
	$d->quit;
	$s->quit;
	clear('cap');
}

### 6. holds: statement_timeout ends a lease-mode call while its UPDATE
### waits (for a row a DBA has locked), in a savepoint: after ROLLBACK TO
### SAVEPOINT the session holds no claim and no slot; the same transaction
### goes on
{
	my ($x, $y, $z) = map { enqueue('cap') } 1 .. 3;
	my $d = $node->background_psql('postgres');
	$d->query_safe('BEGIN');
	$d->query_safe("SELECT id FROM qlater_job WHERE id = $y FOR UPDATE");
	my $s = bg('alice');
	my $spid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_safe('BEGIN');
	$s->query_safe('SAVEPOINT a');
	$s->query_safe("SET LOCAL statement_timeout = '1s'");
	$s->query(q{SELECT count(*) FROM qlater_lock('cap', 3, lease => '5 minutes')});
	like($s->{stderr}, qr/statement timeout/, 'timeout: the waiting call is cancelled');
	$s->{stderr} = '';
	$s->query_safe('ROLLBACK TO SAVEPOINT a');
	is(held_by($spid), '', 'timeout: no claim is left behind');
	$d->query_safe('ROLLBACK');
	is(claim('alice', 'cap', 3, '5 minutes'), "$x,$y",
		'timeout: no slot is left behind: another consumer leases two jobs');
	is($s->query_safe(q{SELECT count(*) FROM qlater_lock('cap', 3, lease => '5 minutes')}), '0',
		'timeout: the same transaction finds the queue full');
	$s->query_safe('COMMIT');
	is(live_leases('cap'), '2', 'timeout: two leases hold');
	$d->quit;
	$s->quit;
	clear('cap');
}

### 7. holds: a lease-mode call in a savepoint rolled back, which counted
### a lapse and leased two jobs: the leases, their claims and slots, and
### the count's claim go at once, while the transaction goes on; another
### consumer counts the lapse (once) and leases the jobs
{
	my $w = enqueue('cap');
	is(lease('cap', 1, '1 second'), $w, 'savepoint: w is leased for a second');
	my ($x, $y, $z) = map { enqueue('cap') } 1 .. 3;
	sleep(2);
	my $s = bg('alice');
	my $spid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_safe('BEGIN');
	$s->query_safe('SAVEPOINT a');
	is($s->query_safe(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('cap', 3, lease => '5 minutes')}),
		"$x,$y", 'savepoint: the lapse of w counted, x and y leased');
	$s->query_safe('ROLLBACK TO SAVEPOINT a');
	is(held_by($spid), '', 'savepoint: its rollback releases every claim, the count\'s too');
	is(claim('alice', 'cap', 3, '5 minutes'), "$x,$y",
		'savepoint: another consumer counts the lapse and leases x and y (their slots were given back)');
	$s->query_safe('COMMIT');
	is(attempts($w), '1 pending', 'savepoint: the lapse is counted once');
	is(live_leases('cap'), '2', 'savepoint: two leases hold');
	$s->quit;
	clear('cap');
}

### 8. holds: qlater_lock called several times in one transaction: no job
### twice, each call the next jobs; in a queue with max_running 2 the
### later calls get what slots are left
{
	my @j = map { enqueue('app') } 1 .. 5;
	my $s = bg('alice');
	$s->query_safe('BEGIN');
	my @r = map { $s->query_safe("SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('app', 2$_)") }
	  ('', '', ", lease => '5 minutes'");
	$s->query_safe('COMMIT');
	is(join('|', @r), "$j[0],$j[1]|$j[2],$j[3]|$j[4]", 'twice: each call gets the next jobs, none twice');
	my @c = map { enqueue('cap') } 1 .. 4;
	$s->query_safe('BEGIN');
	@r = map { $s->query_safe("SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('cap', $_)") }
	  ("1, lease => '5 minutes'", "5, lease => '5 minutes'", '5');
	$s->query_safe('COMMIT');
	is(join('|', @r), "$c[0]|$c[1]|", 'twice, limited: the second call gets the one slot left, the third none');
	is(claim('alice', 'cap', 5, '5 minutes'), '', 'twice, limited: the queue is full');
	$s->quit;
	clear('app');
	clear('cap');
}

### 9. holds: a paused queue hands out nothing, whatever max_jobs, from the
### pause's commit on, also to a transaction whose snapshot predates it
{
	my @j = map { enqueue('app') } 1 .. 2;
	my $s = bg('alice');
	$s->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$s->query_safe('SELECT count(*) FROM qlater_jobs');
	as('alice', q{SELECT qlater_pause_queue('app')});
	is($s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1000)}), '0',
		'paused: nothing, for a snapshot older than the pause');
	$s->query_safe('COMMIT');
	is(claim('alice', 'app', 1000, '5 minutes'), '', 'paused: nothing in lease mode');
	as('alice', q{SELECT qlater_resume_queue('app')});
	is(claim('alice', 'app', 1000, '5 minutes'), "$j[0],$j[1]", 'paused: resumed, the jobs are handed out');
	$s->quit;
	clear('app');
}

### 10. holds: max_jobs 1000 over 70 lapsed leases that sort first and
### 1,100 fresh jobs whose priorities and run_ats interleave their ids: the
### first 1,000 fresh jobs in (priority, run_at, id) order, 64 lapses
### counted; the next call counts the other 6 and gets the other 100
{
	as('alice', q{SELECT count(*) FROM qlater_enqueue_many('Job', (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 70) g), queue => 'big', priority => 0, max_attempts => 1)});
	is(as('alice', q{SELECT count(*) FROM qlater_lock('big', 70, lease => '1 second')}), '70',
		'max_jobs 1000: 70 jobs leased for a second');
	as('alice', q{
		SELECT count(*) FROM qlater_enqueue_many('Job', (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 400) g), queue => 'big', priority => 50);
		SELECT count(*) FROM qlater_enqueue_many('Job', (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 400) g), queue => 'big', priority => 10);
		SELECT count(*) FROM qlater_enqueue_many('Job', (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 300) g), queue => 'big', priority => 50, run_at => now() - interval '1 hour');
	});
	sleep(2);
	my $expect = su(q{SELECT string_agg(id::text, ',' ORDER BY priority, run_at, id) FROM (SELECT id, priority, run_at FROM qlater_job WHERE queue = 'big' AND claim_token IS NULL ORDER BY priority, run_at, id LIMIT 1000) s});
	my $got = as('alice', q{SELECT string_agg(l.id::text, ',' ORDER BY l.ordinality) FROM qlater_lock('big', 1000, lease => '5 minutes') WITH ORDINALITY l});
	is(scalar(split /,/, $got), 1000, 'max_jobs 1000: 1,000 jobs');
	is($got, $expect, 'max_jobs 1000: the first 1,000 fresh jobs, in (priority, run_at, id) order');
	is(su(q{SELECT count(*) FILTER (WHERE dead) || '/' || count(*) FILTER (WHERE NOT dead AND claim_token IS NOT NULL) FROM qlater_job WHERE queue = 'big' AND priority = 0}),
		'64/6', 'max_jobs 1000: 64 lapses counted, 6 left to the next call');
	my $expect2 = su(q{SELECT string_agg(id::text, ',' ORDER BY priority, run_at, id) FROM qlater_job WHERE queue = 'big' AND claim_token IS NULL AND NOT dead});
	my $got2 = as('alice', q{SELECT string_agg(l.id::text, ',' ORDER BY l.ordinality) FROM qlater_lock('big', 1000) WITH ORDINALITY l});
	is(scalar(split /,/, $got2), 100, 'max_jobs 1000, session mode: the other 100 jobs');
	is($got2, $expect2, 'max_jobs 1000, session mode: in order');
	is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'big' AND dead}), '70',
		'max_jobs 1000: every lapse counted, once');
	clear('big');
}

### 10b. holds: 70 lapsed leases and two fresh jobs in a queue with
### max_running 1, max_jobs 1000: one slot, taken and given back lapse
### after lapse (the candidate where the slot ran out tried again each
### time): 64 lapses counted, 6 given back uncounted, the first fresh job
### leased; a full queue counts no lapse (it takes a slot); once the job
### is done, the next call counts the other 6 and leases the second
{
	as('alice', q{SELECT qlater_alter_queue('one', max_running => 100)});
	as('alice', q{SELECT count(*) FROM qlater_enqueue_many('Job', (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 70) g), queue => 'one', priority => 0, max_attempts => 1)});
	is(as('alice', q{SELECT count(*) FROM qlater_lock('one', 70, lease => '1 second')}), '70',
		'one slot: 70 jobs leased for a second');
	as('alice', q{SELECT qlater_alter_queue('one', max_running => 1)});
	my ($f1, $f2) = (enqueue('one'), enqueue('one'));
	sleep(2);
	my ($l1, $t1) = split /:/,
	  as('alice', q{SELECT string_agg(id || ':' || claim_token, ',') FROM qlater_lock('one', 1000, lease => '5 minutes')});
	is($l1, $f1, 'one slot: the first fresh job is leased');
	is(su(q{SELECT count(*) FILTER (WHERE dead) || '/' || count(*) FILTER (WHERE NOT dead AND claim_token IS NOT NULL) FROM qlater_job WHERE queue = 'one' AND priority = 0}),
		'64/6', 'one slot: 64 lapses counted, 6 left');
	is(claim('alice', 'one', 1000, '5 minutes'), '', 'one slot: the queue is full');
	as('alice', "SELECT qlater_complete($f1, '$t1')");
	is(claim('alice', 'one', 1000, '5 minutes'), $f2, 'one slot: the next call leases the second job');
	is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'one' AND dead}), '70', 'one slot: every lapse counted, once');
	is(live_leases('one'), '1', 'one slot: one lease holds');
	clear('one');
}

### 10c. holds: SERIALIZABLE, and a lease-mode claim in a subtransaction
### released into a transaction that rolls back: the claims and slots go
### with the transaction
{
	my @c = map { enqueue('cap') } 1 .. 3;
	my $s = bg('alice');
	my $spid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_safe('BEGIN ISOLATION LEVEL SERIALIZABLE');
	is($s->query_safe(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('cap', 3, lease => '5 minutes')}),
		"$c[0],$c[1]", 'serializable: two jobs, as many as slots');
	$s->query_safe('COMMIT');
	is(claim('alice', 'cap', 3, '5 minutes'), '', 'serializable: the queue is full');
	clear('cap');
	@c = map { enqueue('cap') } 1 .. 3;
	$s->query_safe('BEGIN');
	$s->query_safe('SAVEPOINT a');
	is($s->query_safe(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('cap', 3, lease => '5 minutes')}),
		"$c[0],$c[1]", 'released savepoint: two jobs leased');
	$s->query_safe('RELEASE SAVEPOINT a');
	$s->query_safe('ROLLBACK');
	is(held_by($spid), '', 'released savepoint: the rollback releases the claims');
	is(claim('alice', 'cap', 3, '5 minutes'), "$c[0],$c[1]", 'released savepoint: the rollback gives the slots back');
	$s->quit;
	clear('cap');
}

### 11. FIXED (B2, older than 53497b9): in REPEATABLE READ a session-mode
### claim reads the row under the transaction's snapshot: a job leased by
### another consumer after it is claimed again (two holders at once), and
### a job completed after it is handed out again.  Observed: both are.
{
	my $j = enqueue('app');
	my $s = bg('alice');
	$s->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$s->query_safe('SELECT count(*) FROM qlater_jobs');
	is(lease('app', 1, '5 minutes'), $j, 'repeatable read: another consumer leases j after the snapshot');
	my $out = $s->query(q{SELECT string_agg(id::text, ',') FROM qlater_lock('app', 1)});
	$s->{stderr} = '';
	# before the fix: "$j", held by the other consumer's lease too
	is(rows_of($out), '', 'repeatable read: a job leased by another consumer is not claimed again');
	$s->query('ROLLBACK');
	$s->quit;
	clear('app');

	my $k = enqueue('app');
	$s = bg('alice');
	$s->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$s->query_safe('SELECT count(*) FROM qlater_jobs');
	is(as('alice', q{SELECT count(qlater_complete(id)) FROM qlater_lock('app', 1)}), '1',
		'repeatable read: another consumer claims and completes k after the snapshot');
	$out = $s->query(q{SELECT string_agg(id::text, ',') FROM qlater_lock('app', 1)});
	$s->{stderr} = '';
	# before the fix: "$k", a job already done
	is(rows_of($out), '', 'repeatable read: a job completed by another consumer is not handed out again');
	$s->query('ROLLBACK');
	$s->quit;
	clear('app');
}

### 12. FIXED (B2, older than 53497b9): in REPEATABLE READ a lease-mode claim
### of a job leased by another consumer after the snapshot takes that
### lease's slot (ql_take frees the job's earlier slot) and then fails
### with a serialization failure, giving its own slot back.  Observed:
### the queue with max_running 1 leases a second job beside the first.
{
	my ($j, $k) = (enqueue('one'), enqueue('one'));
	my $s = bg('alice');
	$s->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$s->query_safe('SELECT count(*) FROM qlater_jobs');
	is(lease('one', 1, '5 minutes'), $j, 'repeatable read, lease: another consumer leases j');
	$s->query(q{SELECT count(*) FROM qlater_lock('one', 1, lease => '5 minutes')});
	like($s->{stderr}, qr/^$|could not serialize access/,
		'repeatable read, lease: no error, or a serialization failure');
	$s->{stderr} = '';
	$s->query_safe('ROLLBACK');
	# before the fix: "$k", leased beside j
	is(claim('alice', 'one', 1, '5 minutes'), '', 'repeatable read, lease: the queue of max_running 1 stays full');
	is(live_leases('one'), '1', 'repeatable read, lease: one lease holds');
	$s->quit;
	clear('one');
}

### 13. FIXED (B4, older than 53497b9): a lease-mode call goes on with
### candidates it read before another consumer leased one of them: when a
### job of its batch is gone (here: its row locked by a DBA, who cancels
### it while the batch's UPDATE waits), it retries the next candidate,
### which another consumer has leased meanwhile.  The claim of that job is
### free (a lease holds no lock once its transaction ended), and ql_take
### frees the job's earlier slot, the live lease's, before the read finds
### the job leased and gives its own slot back: the lease runs without a
### slot.  Observed: a queue with max_running 2 leases a third job.
{
	as('alice', q{SELECT qlater_create_queue('thr', external => true);
		SELECT qlater_alter_queue('thr', max_running => 2)});
	my ($a, $b, $c, $e) = map { enqueue('thr') } 1 .. 4;
	my $d = $node->background_psql('postgres');
	$d->query_safe('BEGIN');
	$d->query_safe("SELECT id FROM qlater_job WHERE id = $a FOR UPDATE");
	my $s = bg('alice');
	my $spid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_until(qr/started/,
		"\\echo started\nSELECT string_agg(id::text, ',' ORDER BY id) FROM qlater_lock('thr', 1, lease => '5 minutes');\n");
	ok(wait_for_lock_wait($spid), 'stale candidate: the lease of a waits for its row');
	is(lease('thr', 1, '5 minutes'), $b, 'stale candidate: another consumer leases b meanwhile');
	$d->query_safe("SELECT qlater_cancel($a)");
	$d->query_safe('COMMIT');
	is(rows_of($s->query(q{SELECT 'end'})), $c, 'stale candidate: the waiting call leases c');
	# before the fix: "$e", a third lease
	is(claim('alice', 'thr', 1, '5 minutes'), '', 'stale candidate: the queue of max_running 2 is full');
	is(live_leases('thr'), '2', 'stale candidate: two leases hold');
	$d->quit;
	$s->quit;
	clear('thr');
}

### 14. consumers at once on a queue with max_running 4, batches of 3,
### that record what they got and complete it: no job is handed out
### twice, each is completed once, no completion fails, at no time are
### more than 4 held (the time between a claim's return and the start of
### its completion lies within its slot's), and no claim or slot is left.
### (a) holds: session-mode consumers, and a hostile one that leases
### batches in a savepoint it rolls back and claims and gives back batches
### in session mode.  (b) FIXED (B4): lease-mode consumers among them: the
### race of section 13 happens by itself (a consumer's candidates are read
### before another consumer's lease commits, and its claim after).
### Observed: 6 to 9 jobs held at once, in every run here (also before
### 53497b9).
{
	su(q{
CREATE TABLE got (id bigint, pid int, token uuid, t0 timestamptz, t1 timestamptz);
CREATE TABLE done (id bigint PRIMARY KEY);
CREATE TABLE bad (pid int, err text);
GRANT ALL ON got, done, bad TO alice;
CREATE FUNCTION take(n int, l interval) RETURNS int LANGUAGE plpgsql AS $$
DECLARE k int;
BEGIN
    INSERT INTO got (id, pid, token, t0)
        SELECT id, pg_backend_pid(), claim_token, clock_timestamp()
          FROM qlater_lock('race', n, lease => l);
    GET DIAGNOSTICS k = ROW_COUNT;
    RETURN k;
END $$;
CREATE FUNCTION finish() RETURNS int LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; toks uuid[]; k int;
BEGIN
    SELECT array_agg(id ORDER BY id), array_agg(token ORDER BY id) INTO ids, toks
      FROM got WHERE pid = pg_backend_pid() AND t1 IS NULL;
    IF ids IS NULL THEN RETURN 0; END IF;
    BEGIN
        UPDATE got SET t1 = clock_timestamp() WHERE pid = pg_backend_pid() AND t1 IS NULL;
        INSERT INTO done SELECT unnest(ids);
        IF toks[1] IS NULL THEN
            k := qlater_complete_many(ids);
        ELSE
            k := qlater_complete_many(ids, toks);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO bad VALUES (pg_backend_pid(), SQLERRM);
        UPDATE got SET t1 = '-infinity' WHERE pid = pg_backend_pid() AND t1 IS NULL;
        RETURN -1;
    END;
    RETURN k;
END $$;
CREATE PROCEDURE drain() LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        EXIT WHEN take(4, NULL) = 0;
        COMMIT;
        PERFORM finish();
        COMMIT;
    END LOOP;
END $$;
});
	my $round = 0;
	# run the consumers; returns the most jobs held at once
	my $race = sub {
		my ($label, $scripts) = @_;
		$round++;
		su(q{TRUNCATE got, done, bad});
		as('alice', q{SELECT count(*) FROM qlater_enqueue_many('Job', (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 300) g), queue => 'race')});
		my %files = map { ("119_r${round}_$_" => $scripts->{$_}) } keys %$scripts;
		$node->pgbench(
			'--no-vacuum --client=5 --transactions=200 -U alice',
			0,
			[qr{processed: 1000/1000}],
			[qr{^$}],
			"$label: the consumers run without error",
			\%files,
			'postgres');
		note("$label: jobs handed out during the run: " . su(q{SELECT count(*) FROM got}));
		as('alice', 'CALL drain()');
		is(su(q{SELECT count(*) FROM bad}), '0', "$label: no completion failed");
		is(su(q{SELECT count(*) || '/' || count(DISTINCT id) FROM got}), '300/300', "$label: each job handed out once");
		is(su(q{SELECT count(*) FROM done}), '300', "$label: each job completed once");
		is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'race'}), '0',
			"$label: no job is left (no slot or claim stuck)");
		ok($node->poll_query_until('postgres',
				q{SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036}),
			"$label: no claim is left");
		my $most = su(q{SELECT coalesce(max((SELECT count(*) FROM got x WHERE x.t0 <= r.t0 AND x.t1 > r.t0)), 0) FROM got r});
		note("$label: at most $most held at once");
		return $most;
	};
	my $hostile = "BEGIN;\nSAVEPOINT a;\n"
	  . "SELECT count(*) FROM qlater_lock('race', 3, lease => '1 minute');\n"
	  . "ROLLBACK TO SAVEPOINT a;\n"
	  . "SELECT count(qlater_unlock(id)) FROM qlater_lock('race', 2);\nCOMMIT;\n";
	cmp_ok($race->('race, session mode', {
				'session@4' => "SELECT take(3, NULL);\nSELECT finish();\n",
				'hostile@1' => $hostile }),
		'<=', 4, 'race, session mode: at most 4 jobs held at once');
	my $most = $race->('race, lease mode', {
			'session@1' => "SELECT take(3, NULL);\nSELECT finish();\n",
			'lease@3' => "SELECT take(3, '1 minute');\nSELECT finish();\n",
			'hostile@1' => $hostile });
	# before the fix: 6 to 9
	cmp_ok($most, '<=', 4, 'race, lease mode: at most 4 jobs held at once');
}

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
unlike($log, qr/TRAP:/, 'no assertion failed');
note(sprintf('runtime %.1f s', time() - $t_start));
done_testing();
