# 116_batch_ack_attacks.pl: a hostile review of the batch acknowledgements
# of 0.3 (qlater_complete_many, qlater_unlock_many, a claim's release at
# commit following its subtransaction), as tenants (alice, mallory) and as
# a DBA.
#
# Breaks (plain tests that fail on the code they were found on):
#   A1. qlater_complete_many and qlater_unlock_many lock (delete, or
#       SELECT ... FOR UPDATE) the rows of every id they are given before
#       they check any: a role that may consume nothing of the victim's
#       puts the victim's job id first and one of its own jobs' ids, whose
#       row it keeps locked from a second session, last.  The call then
#       waits for that second session while holding the victim's row: the
#       victim's consumer cannot complete its job (it waits, lock_timeout
#       ends it), a lease-mode qlater_lock of the queue waits (it "never
#       waits on other consumers"), and the in-server workers leave the
#       victim's in-server job alone (a row being changed), for as long as
#       the attacker likes.  qlater_complete of one id checked as soon as
#       the row is locked, so it never held a row it may not touch while
#       waiting.
#   A2. a lease taken in the current transaction passes for a session
#       claim: its claim is a transaction-level advisory lock, and the
#       session-mode check (tokens NULL) asks only LockHeldByMe.
#       qlater_unlock_many(ids) without tokens then "releases" a session
#       lock that is not there (WARNING: you don't own a lock of type
#       ExclusiveLock), leaves the lease on the row, and frees the lease's
#       slot at once: after COMMIT the leased job still counts as running
#       and another consumer claims one more job of a queue with
#       max_running 1 (two running).  qlater_unlock(id) without token does
#       the same; qlater_complete_many(ids) without tokens of such a job
#       gives the same WARNING at commit.
#   A3. a job failed (qlater_fail) and then completed (qlater_complete_many)
#       in one transaction under a session claim asks the release of its
#       claim twice: the COMMIT warns "you don't own a lock of type
#       ExclusiveLock" to the client (the list of releases is not a set).
#   A4. DROP EXTENSION qlater and CREATE EXTENSION qlater while a consumer
#       holds session claims: job ids start over, and the claim (an
#       advisory lock on the id) now holds the new job of that id: no
#       consumer claims it, and the old session completes it with
#       qlater_complete_many (or qlater_complete) without ever claiming it.
# No server process may end on a signal, and no assertion may fail.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('batch_ack_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n"
	  . "max_prepared_transactions = 2\n");
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

# ($ret, $out, $err) of a statement run as a role
sub try_as
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql, extra_params => [ '-U', $role ]);
	return ($ret, $out, $err);
}

sub advisory_locks
{
	return su(q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036});
}

# wait up to $secs for a query to return 't'
sub wait_for
{
	my ($sql, $secs) = @_;
	my $end = time + $secs;
	while (time < $end)
	{
		return 1 if su($sql) eq 't';
		usleep(100_000);
	}
	return 0;
}

su(q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE mallory LOGIN;
CREATE TABLE marks (n int, at timestamptz DEFAULT clock_timestamp());
GRANT SELECT, INSERT ON marks TO PUBLIC;
CREATE FUNCTION public.mark(n int) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.marks (n) VALUES (n) $$;
GRANT EXECUTE ON FUNCTION public.mark(int) TO PUBLIC;
SELECT qlater_register('public.mark(int)');
});
as('alice', q{SELECT qlater_create_queue('aq', external => true)});
as('mallory', q{SELECT qlater_create_queue('mq', external => true)});

### A1. complete_many / unlock_many hold rows they may not touch while they wait
{
	my $va = as('alice', q{SELECT qlater_enqueue('AliceJob', '[1]', queue => 'aq')});
	my $va2 = as('alice', q{SELECT qlater_enqueue('AliceJob', '[2]', queue => 'aq')});
	# an in-server job of alice's, due in a few seconds
	my $vi = as('alice', q{SELECT qlater_enqueue('mark', '[7]', run_at => now() + interval '3 seconds')});
	my ($m1, $m2) = split /\n/, as('mallory',
		q{SELECT qlater_enqueue('M', '[1]', queue => 'mq') UNION ALL SELECT qlater_enqueue('M', '[2]', queue => 'mq')});
	ok($va < $m1 && $vi < $m1, 'A1: the victim\'s jobs have smaller ids than the attacker\'s');

	# mallory's second session keeps the row of her own job m2 locked
	my $b = $node->background_psql('postgres', extra_params => [ '-U', 'mallory' ]);
	$b->query_safe('BEGIN');
	is($b->query_safe(q{SELECT count(*) FROM qlater_lock('mq', 2)}), '2', 'A1: mallory claims her own jobs');
	$b->query_safe("SELECT qlater_complete($m2)");

	# her first session asks to complete alice's jobs and then m2: it is
	# refused at once, before it locks anything (it used to take alice's rows,
	# then wait for m2 as long as mallory liked)
	my $a = $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', 'mallory' ]);
	$a->query("SET statement_timeout = '20s'");
	$a->query("SELECT qlater_complete_many(ARRAY[$va, $vi, $m2])");
	like($a->{stderr}, qr/permission denied for job $va/,
		'A1: the attacker\'s complete_many is refused without waiting for her other session');
	$a->{stderr} = '';
	# alice, who consumes aq, completes her job: she must not wait for mallory
	my ($ret, $out, $err) = try_as('alice', qq{SET lock_timeout = '3s';
		SELECT count(qlater_complete(id)) FROM qlater_lock('aq', 1)});
	is($err, '', 'A1: the victim completes her own job while the attacker\'s other session holds its row (no lock timeout)');
	# in lease mode a claim never waits on other consumers
	($ret, $out, $err) = try_as('alice', qq{SET lock_timeout = '3s';
		SELECT count(*) FROM qlater_lock('aq', 5, lease => '1 minute')});
	is($err, '', 'A1: a lease-mode qlater_lock of the victim\'s queue does not wait for the attacker');
	# the in-server job comes due and runs
	ok(wait_for(q{SELECT count(*) > 0 FROM marks WHERE n = 7}, 12),
		'A1: the victim\'s in-server job runs while the attacker tries');

	# the second session ends: the attacker gets her error, nothing was done
	$b->query_safe('ROLLBACK');
	$a->query('SELECT 1');

	# the same with qlater_unlock_many (SELECT ... FOR UPDATE of every id)
	$b->query_safe('BEGIN');
	$b->query_safe(q{SELECT count(*) FROM qlater_lock('mq', 2)});
	$b->query_safe("SELECT qlater_fail($m2, 'x')");
	$a->query("SELECT qlater_unlock_many(ARRAY[$va2, $m2])");
	like($a->{stderr}, qr/permission denied for job $va2/,
		'A1: the attacker\'s unlock_many is refused without waiting for her other session');
	$a->{stderr} = '';
	($ret, $out, $err) = try_as('alice', qq{SET lock_timeout = '3s';
		SELECT count(qlater_complete(id)) FROM qlater_lock('aq', 5)});
	is($err, '', 'A1: the victim completes her job while the attacker\'s unlock_many waits');
	$b->query_safe('ROLLBACK');
	$a->quit;
	$b->quit;
	su(q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue IN ('aq', 'mq')});
	su(q{DELETE FROM marks});
}

### A2. a lease taken in this transaction passes for a session claim
as('alice', q{SELECT qlater_create_queue('lim', external => true);
	SELECT qlater_alter_queue('lim', max_running => 1);
	SELECT count(qlater_enqueue('L', jsonb_build_array(g), queue => 'lim')) FROM generate_series(1, 3) g});
{
	my $s = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	$s->query_safe('BEGIN');
	my $j1 = $s->query_safe(q{SELECT id FROM qlater_lock('lim', 1, lease => '5 minutes')});
	ok($j1 ne '', 'A2: a lease of the limited queue is taken');
	# no tokens: a session-mode give-back of a job this session holds no
	# session claim of
	$s->query("SELECT qlater_unlock_many(ARRAY[$j1])");
	like($s->{stderr}, qr/not claimed by this session/,
		'A2: unlock_many without tokens of a job leased in this transaction is refused');
	$s->{stderr} = '';
	$s->query('COMMIT');
	my $other = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
	$other->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 5)});
	is(su(q{SELECT count(*) FROM qlater_jobs WHERE queue = 'lim' AND state = 'running'}),
		'1', 'A2: a queue with max_running 1 has at most one job running (claimed or leased)');
	$other->quit;
	$s->quit;
	su(q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'lim'});
}

### H. what held: arguments, rollbacks, savepoints, another session
{
	my $log_from = -s $node->logfile;
	my $s = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	as('alice', q{SELECT count(qlater_enqueue('H', jsonb_build_array(g), queue => 'aq')) FROM generate_series(1, 4) g});
	my @ids = split /\n/, $s->query_safe(q{SELECT id FROM qlater_lock('aq', 4) ORDER BY id});
	is(scalar(@ids), 4, 'H: four jobs claimed');
	my ($i1, $i2, $i3, $i4) = @ids;
	my %bad = (
		"'{{$i1,$i2}}'::bigint[]" => qr/one-dimensional/,
		"ARRAY[$i1, NULL]" => qr/must not contain nulls/,
		"ARRAY[$i1, $i2, $i1]" => qr/appears more than once/,
		"ARRAY(SELECT g FROM generate_series(1, 1001) g)" => qr/too many jobs/,
		"NULL::bigint[]" => qr/ids must not be null/,
		"ARRAY[$i1, 9999999]" => qr/job 9999999 does not exist/,
		"ARRAY[$i1, $i2], ARRAY[gen_random_uuid()]" => qr/same number of elements/,
		"ARRAY[$i1], ARRAY[NULL::uuid]" => qr/must not contain nulls/,
		"ARRAY[$i1], ARRAY[gen_random_uuid()]" => qr/claim token does not match/,
	);
	for my $arg (sort keys %bad)
	{
		$s->query("SELECT qlater_complete_many($arg)");
		like($s->{stderr}, $bad{$arg}, "H: complete_many($arg) refused");
		$s->{stderr} = '';
		$s->query("SELECT qlater_unlock_many($arg)");
		like($s->{stderr}, $bad{$arg}, "H: unlock_many($arg) refused");
		$s->{stderr} = '';
	}
	is(advisory_locks(), '4', 'H: the refused calls gave back nothing');
	is($s->query_safe(q{SELECT qlater_complete_many('{}')}), '0', 'H: an empty array completes nothing');

	# lower bound 5: the elements count, not their subscripts
	$s->query_safe('BEGIN');
	is($s->query_safe("SELECT qlater_complete_many('[5:6]={$i1,$i2}'::bigint[])"), '2',
		'H: an array with lower bound 5 completes its two jobs');
	$s->query_safe('ROLLBACK');
	is(advisory_locks(), '4', 'H: complete_many rolled back: the claims are held');
	is(su(q{SELECT count(*) FROM qlater_jobs WHERE queue = 'aq'}), '4', 'H: and the jobs are there');

	# nested savepoints: released into one rolled back
	$s->query_safe('BEGIN; SAVEPOINT a; SAVEPOINT b');
	$s->query_safe("SELECT qlater_complete_many(ARRAY[$i1, $i2])");
	$s->query_safe('RELEASE SAVEPOINT b; ROLLBACK TO SAVEPOINT a');
	$s->query_safe("SAVEPOINT c; SELECT qlater_complete_many(ARRAY[$i3]); RELEASE SAVEPOINT c");
	$s->query_safe('COMMIT');
	is(advisory_locks(), '3', 'H: a completion released into a savepoint rolled back keeps its claims');
	is(su(q{SELECT count(*) FROM qlater_jobs WHERE queue = 'aq'}), '3', 'H: only the job completed outside it is gone');

	# fail then complete the same job in one transaction; complete then fail
	$s->query_safe('BEGIN');
	$s->query_safe("SELECT qlater_complete_many(ARRAY[$i1])");
	$s->query("SELECT qlater_fail($i1, 'x')");
	like($s->{stderr}, qr/job $i1 does not exist/, 'H: qlater_fail after complete_many of the job: it is gone');
	$s->{stderr} = '';
	$s->query('ROLLBACK');
	is(advisory_locks(), '3', 'H: all rolled back, the claims held');

	# unlock_many: another session claims the jobs before the give-back commits
	my $o = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	$s->query_safe('BEGIN');
	is($s->query_safe("SELECT qlater_unlock_many(ARRAY[$i2, $i4])"), '2', 'H: unlock_many gives back two');
	is($o->query_safe(q{SELECT count(*) FROM qlater_lock('aq', 5)}), '2', 'H: another session claims them at once');
	$s->query("SELECT qlater_complete_many(ARRAY[$i2])");
	like($s->{stderr}, qr/not claimed by this session/, 'H: the giver can no longer complete them');
	$s->{stderr} = '';
	$s->query('ROLLBACK');
	is($o->query_safe("SELECT qlater_complete_many(ARRAY[$i2, $i4])"), '2', 'H: the new holder completes them');
	is($s->query_safe("SELECT qlater_complete_many(ARRAY[$i1])"), '1', 'H: the first holder completes its last');
	is(advisory_locks(), '0', 'H: no claim is left');
	$o->quit;
	$s->quit;
	unlike(substr(slurp_file($node->logfile), $log_from), qr/you don't own a lock/,
		'H: no claim was released twice');
}

### P. probes: fail then complete_many in one transaction; PREPARE;
### the extension dropped and created again under held claims
{
	my $log_from = -s $node->logfile;
	my $s = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	as('alice', q{SELECT count(qlater_enqueue('P', jsonb_build_array(g), queue => 'aq')) FROM generate_series(1, 2) g});
	my ($p1, $p2) = split /\n/, $s->query_safe(q{SELECT id FROM qlater_lock('aq', 2) ORDER BY id});
	$s->query_safe('BEGIN');
	$s->query_safe("SELECT qlater_fail($p1, 'x')");
	is($s->query_safe("SELECT qlater_complete_many(ARRAY[$p1])"), '1',
		'P: complete_many of a job failed in the same transaction');
	$s->query('COMMIT');
	is($s->{stderr}, '', 'P: its COMMIT says nothing');
	$s->{stderr} = '';
	is(advisory_locks(), '1', 'P: its claim is released');
	unlike(substr(slurp_file($node->logfile), $log_from), qr/you don't own a lock/,
		'P: a job failed then completed in one transaction has its claim released once');

	# session claims cannot be prepared
	$s->query_safe('BEGIN');
	$s->query_safe("SELECT qlater_complete_many(ARRAY[$p2])");
	$s->query(q{PREPARE TRANSACTION 'p'});
	like($s->{stderr}, qr/cannot PREPARE/, 'P: PREPARE after a session-mode complete_many is refused');
	$s->{stderr} = '';
	is(advisory_locks(), '1', 'P: the claim is still held');

	# the DBA drops the extension and creates it again: job ids start over,
	# and the session still holds the advisory lock of its old job
	su(q{DROP EXTENSION qlater; CREATE EXTENSION qlater});
	as('alice', q{SELECT qlater_create_queue('aq', external => true)});
	as('alice', qq{SELECT count(qlater_enqueue('New', jsonb_build_array(g), queue => 'aq')) FROM generate_series(1, $p2) g});
	is(su(qq{SELECT count(*) FROM qlater_jobs WHERE id <= $p2}), '0',
		"P: the new jobs' ids start above $p2, the id the session still holds a claim of");
	my $o = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
	is($o->query_safe(q{SELECT count(*) FROM qlater_lock('aq', 1000)}), $p2,
		'P: a consumer claims every new job (none is held by a claim of the dropped extension)');
	$o->query_safe(q{SELECT qlater_unlock_many(ARRAY(SELECT id FROM qlater_jobs WHERE locked_by = pg_backend_pid()))});
	$s->query("SELECT qlater_complete_many(ARRAY[$p2])");
	like($s->{stderr}, qr/job $p2 does not exist/,
		'P: a session that claimed a job of the dropped extension cannot complete a new job');
	$s->{stderr} = '';
	$o->quit;
	$s->quit;
	su(q{SELECT qlater_cancel(id) FROM qlater_jobs});
}

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
unlike($log, qr/TRAP:/, 'no assertion failed');
done_testing();
