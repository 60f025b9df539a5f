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
#       same calls left no claim behind.  (Any error in the middle of the
#       call does the same: a cancel, statement_timeout, "out of shared
#       memory" while claiming; before, only the claims of the jobs
#       already read were left.)
#   B2. (older than 53497b9) in REPEATABLE READ or SERIALIZABLE the rows
#       are read under the transaction's snapshot, not one taken after the
#       claim: a job leased by another consumer after that snapshot is
#       claimed again in session mode (two holders at once, section 11),
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
# What holds is in the sections marked "holds".
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

### 1. BUG (B1): a session-mode claim in a READ ONLY transaction meets a
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
	# BUG: held "$y" (nothing was handed out)
	is(held_by($spid), $handed, 'read only: the session holds the claims of the jobs handed to it, no others');
	my $rest = join(',', grep { my $i = $_; !grep { $_ == $i } split /,/, $handed } ($y, $z));
	# BUG: "$z" only (y and its slot are held by the failed session)
	is(claim('alice', 'cap', 3), $rest, 'read only: another consumer gets the jobs not handed out');
	is(attempts($x), '1 pending', 'read only: the lapse is counted once, by the other consumer');
	$s->quit;
	clear('cap');
}

### 2. BUG (B1): the same in REPEATABLE READ: another consumer counts the
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
	# BUG: held "$y,$z"
	is(held_by($spid), $handed, 'serialization: the session holds the claims of the jobs handed to it, no others');
	my $retry = rows_of($s->query_safe(q{SELECT string_agg(id::text, ',') FROM qlater_lock('app', 3)}));
	my $all = join(',', sort { $a <=> $b } grep { $_ ne '' } (split(/,/, $handed), split(/,/, $retry)));
	# BUG: '' (the retry passes over its own leftover claims, "ours already")
	is($all, "$y,$z", 'serialization: the retry in the same session gets the jobs');
	$s->quit;
	clear('app');
}

### 2b. BUG (B3, older than 53497b9): a session-mode count of a lapse that
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
	$s->query(q{SELECT count(*) FROM qlater_lock('one', 1)});
	like($s->{stderr}, qr/^$|could not serialize access/,
		'slot of a failed count: no error, or a serialization failure');
	$s->{stderr} = '';
	$s->query_safe('ROLLBACK');
	# BUG: '' (x's slot is still held by the session)
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

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
unlike($log, qr/TRAP:/, 'no assertion failed');
note(sprintf('runtime %.1f s', time() - $t_start));
done_testing();
