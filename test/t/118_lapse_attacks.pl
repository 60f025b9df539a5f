# 118_lapse_attacks.pl: a hostile review of the counting of lapsed leases
# (0.3: a lease that ran out is a failed attempt of its job, recorded by
# the next qlater_lock that meets it), as tenants and as a DBA.
#
# Breaks (plain tests that fail on the code they were found on):
#   L1. a renewal (qlater_extend) made while the lease held and committed
#       after it ran out keeps the job but loses its slot: the claim that
#       met the lapse freed the slot (ql_take drops a job's earlier slot,
#       the lapse path releases it though the holder's row lock kept the
#       count from being written), and the renewal's commit moves only a
#       slot that is there.  A queue with max_running 1 then leases a
#       second job beside the renewed one, and a third after it.
#   L2. the claim taken to count a lapse, held until the transaction ends,
#       passes for a session claim: in that transaction qlater_complete or
#       qlater_complete_many without token finishes the job that was never
#       handed out (waiting out its backoff, or dead: gone), and
#       qlater_unlock releases the claim at once, which the end of the
#       transaction releases again (WARNING: you don't own a lock).
#   L3. the claims taken to count lapses are held until the transaction
#       ends with no bound: one qlater_lock(q, 1000) holds one for every
#       lapsed lease among up to 147,168 candidates; 3,000 of them fill a
#       small lock table (max_locks_per_transaction 32, max_connections
#       20): "out of shared memory", the counts undone, and every later
#       call fails the same way (the queue is stuck).
# What holds is in the sections marked "holds"; repeatable read and read
# only are noted.
# No server process may end on a signal, and no assertion may fail.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('lapse_attacks');
$node->init;
# a small lock table (as a busy cluster's is, relative to its jobs), so
# that what one call holds at once shows at the scale of a test
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n"
	  . "max_connections = 20\n"
	  . "max_locks_per_transaction = 32\n"
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

# ($ret, $out, $err) of statements run as a role
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

sub enqueue
{
	my ($queue, $extra) = @_;
	$extra = defined $extra ? ", $extra" : '';
	return as('alice', "SELECT qlater_enqueue('Job', '[]', queue => '$queue'$extra)");
}

# lease the next job of a queue as alice: (id, token)
sub lease
{
	my ($queue, $len) = @_;
	$len //= '1 second';
	return split /\|/,
	  as('alice', "SELECT id || '|' || claim_token FROM qlater_lock('$queue', 1, lease => '$len')");
}

# attempts, state, and "token" while the row keeps a lease's token (a
# lapse not counted yet shows as pending with a token)
sub attempts
{
	my ($id) = @_;
	return su("SELECT coalesce((SELECT attempts || ' ' || state || CASE WHEN claim_token IS NULL THEN '' ELSE ' token' END FROM qlater_jobs WHERE id = $id), 'gone')");
}

su(q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE mallory LOGIN;
GRANT CREATE ON SCHEMA public TO PUBLIC;
});
as('alice', q{
SELECT qlater_create_queue('app', external => true);
SELECT qlater_create_queue('lim', external => true);
SELECT qlater_create_queue('bulk', external => true);
});
su(q{SELECT qlater_alter_queue('lim', max_running => 1)});

### 1. BREAK: a renewal made while the lease held, committed after it ran
### out, keeps the job (its row was locked: the lapse is not counted, the
### lease is 10 minutes longer) but not the job's slot: the claim that met
### the lapse took the slot away (ql_take frees a job's earlier slot, and
### the lapse path gives it back when the row is locked), and the renewal's
### commit moves only a slot that is there (ql_extend_list).  The queue
### has max_running 1; from then on the renewed job runs without a slot:
### a second job, and after it a third, are leased beside it.
{
	my $x = enqueue('lim');
	my $y = enqueue('lim');
	# the renewing session is open before the lease is taken: it renews at
	# once, long before the lease runs out
	my $h = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
	$h->query_safe('BEGIN');
	my ($lx, $tx) = lease('lim', '3 seconds');
	is($lx, $x, 'renewal race: the first job of the limited queue is leased');
	$h->query_safe("SELECT qlater_extend($x, '$tx', '10 minutes')");
	sleep(4);
	# the lease as committed ran out: the next job is handed out now (or,
	# once mended, perhaps not: either way at most one may hold after)
	my ($ly, $ty) = split /\|/,
	  as('alice', q{SELECT id || '|' || claim_token FROM qlater_lock('lim', 1, lease => '5 minutes')});
	note("renewal race: leased while the renewal was not committed: " . ($ly // 'none'));
	$h->query_safe('COMMIT');
	$h->quit;
	is(su(qq{SELECT lease_until > now() + interval '5 minutes' FROM qlater_job WHERE id = $x}), 't',
		'renewal race: the renewal made while the lease held stands');
	is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'lim' AND lease_until > now()}), '1',
		'renewal race: at most max_running (1) jobs of the queue are leased');
	# the second job done: the renewed first one still runs, for 10 minutes
	as('alice', "SELECT qlater_complete($y, '$ty')") if defined $ly && $ly ne '';
	my $z = enqueue('lim');
	is(as('alice', q{SELECT count(*) FROM qlater_lock('lim', 1, lease => '5 minutes')}), '0',
		'renewal race: no job is leased beside the renewed one');
	is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'lim' AND lease_until > now()}), '1',
		'renewal race: still at most max_running (1) leased');
	su("SELECT qlater_cancel(id) FROM qlater_job WHERE queue = 'lim'");
}

### 2. BREAK: the claim taken to count a lapse (held until the transaction
### ends) passes for a session claim of the job: in the same transaction
### the counting session completes the job it was never handed
### (qlater_lock returned nothing; the job waits out its backoff), and
### qlater_unlock of it releases the claim at once, which the end of the
### transaction releases again ("you don't own a lock").
{
	my $x = enqueue('app');
	lease('app');
	sleep(2);
	my ($ret, $out, $err) = try_as('alice',
		"BEGIN; SELECT count(*) FROM qlater_lock('app', 1); SELECT qlater_complete($x); COMMIT;");
	like($err, qr/not claimed by this session/,
		'counted lapse: qlater_complete of the job counted (never handed out) is refused');
	# (the refused call ends the transaction in an error: its count is rolled back too)
	is(attempts($x), '0 pending token', 'counted lapse: the job is still there, not completed (its lapse still to count)');

	# the same with qlater_complete_many, of a job the lapse made dead
	my $d = enqueue('app', 'max_attempts => 1');
	lease('app');
	sleep(2);
	($ret, $out, $err) = try_as('alice',
		"BEGIN; SELECT count(*) FROM qlater_lock('app', 1); SELECT qlater_complete_many('{$d}'); COMMIT;");
	like($err, qr/not claimed by this session/,
		'counted lapse: qlater_complete_many of the job counted dead is refused');
	is(attempts($d), '0 pending token', 'counted lapse: the job stays, not completed (the count rolled back with the refusal)');

	my $z = enqueue('app');
	lease('app');
	sleep(2);
	($ret, $out, $err) = try_as('alice',
		"BEGIN; SELECT count(*) FROM qlater_lock('app', 1); SELECT qlater_unlock($z); COMMIT;");
	unlike($err, qr/you don't own a lock/, 'counted lapse: qlater_unlock then COMMIT releases no lock twice');
	like($err, qr/not claimed by this session/, 'counted lapse: qlater_unlock of the counted job is refused');
	is(advisory_locks(), '0', 'counted lapse: no claim is left behind');
	su("SELECT qlater_cancel(id) FROM qlater_job WHERE queue = 'app'");
}

### 3. BREAK: the claims taken to count lapses are held until the
### transaction ends, with no bound: one qlater_lock(q, 1000) meets up
### to 2016 + 16128 + 129024 candidates and holds a lock for every lapsed
### one.  3,000 lapsed leases (three consumers of 1,000 jobs that died)
### fill the lock table: the call fails "out of shared memory", its counts
### are undone, and every later call fails the same way: the queue is
### stuck for good (and while the call runs, every other session's locks
### may fail too).
{
	as('alice', q{SELECT count(qlater_enqueue('Job', '[]', queue => 'bulk')) FROM generate_series(1, 3000)});
	# leases long enough to outlast the six claims however slow they are;
	# then they are made to run out at once (the row decides a lapse; 'bulk'
	# has no limit, hence no slots)
	for (1 .. 6)
	{
		as('alice', q{SELECT count(*) FROM qlater_lock('bulk', 500, lease => '1 minute')});
	}
	is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'bulk' AND claim_token IS NOT NULL}), '3000',
		'many lapses: 3,000 jobs leased');
	su(q{UPDATE qlater_job SET lease_until = now() - interval '1 second' WHERE queue = 'bulk'});
	my ($ret, $out, $err) = try_as('alice', q{SELECT count(*) FROM qlater_lock('bulk', 1000, lease => '1 minute')});
	is($ret, 0, 'many lapses: a claim that meets 3,000 lapsed leases succeeds');
	unlike($err, qr/out of shared memory/, 'many lapses: no "out of shared memory"');
	($ret, $out, $err) = try_as('alice', q{SELECT count(*) FROM qlater_lock('bulk', 1000, lease => '1 minute')});
	isnt(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'bulk' AND attempts = 1}), '0',
		'many lapses: the lapses get counted (the queue is not stuck)');
	is(advisory_locks(), '0', 'many lapses: no claim is left behind');
	su("DELETE FROM qlater_job WHERE queue = 'bulk'");
}

### 4. holds: a tenant that may not consume the queue counts nothing
### (qlater_lock is refused before any claim), not even from a SECURITY
### DEFINER function of its own or under a role it may SET
{
	my $x = enqueue('app');
	lease('app');
	sleep(2);
	my ($ret, $out, $err) = try_as('mallory', q{SELECT count(*) FROM qlater_lock('app', 1)});
	like($err, qr/permission denied/, 'tenant: qlater_lock of another role\'s queue is refused');
	as('mallory', q{CREATE FUNCTION m_lock() RETURNS bigint LANGUAGE sql SECURITY DEFINER
		AS $$ SELECT count(*) FROM qlater_lock('app', 1) $$});
	($ret, $out, $err) = try_as('alice', q{SELECT m_lock()});
	like($err, qr/permission denied/, 'tenant: a SECURITY DEFINER function of mallory\'s called by alice is refused');
	is(attempts($x), '0 pending token', 'tenant: the lapse is not counted');
	is(advisory_locks(), '0', 'tenant: no claim is left behind');
	# a trigger of alice's own table: counts, as a direct call does
	as('alice', q{
		CREATE TABLE t_tr (n int);
		CREATE FUNCTION t_tr_f() RETURNS trigger LANGUAGE plpgsql AS
		$$ BEGIN PERFORM count(*) FROM qlater_lock('app', 1); RETURN NEW; END $$;
		CREATE TRIGGER t_tr AFTER INSERT ON t_tr FOR EACH ROW EXECUTE FUNCTION t_tr_f();
		INSERT INTO t_tr VALUES (1);
	});
	is(attempts($x), '1 pending', 'trigger: qlater_lock in a trigger counts the lapse once');
	is(advisory_locks(), '0', 'trigger: no claim is left behind');
	su("SELECT qlater_cancel(id) FROM qlater_job WHERE queue = 'app'");
}

### 5. holds: a lapse counted in a savepoint rolled back is undone with
### its claim; counted again after it, once; PREPARE refused while a lapse
### is pending, allowed once the savepoint that counted it is rolled back
{
	my $x = enqueue('app');
	lease('app');
	sleep(2);
	my $s = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	$s->query_safe('BEGIN');
	$s->query_safe('SAVEPOINT a');
	$s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)});
	$s->query_safe('ROLLBACK TO SAVEPOINT a');
	is(advisory_locks(), '0', 'savepoint: the claim of a lapse rolled back is released at once');
	$s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)});
	is(advisory_locks(), '1', 'savepoint: counted again, its claim held until the end');
	$s->query_safe('COMMIT');
	is(attempts($x), '1 pending', 'savepoint: counted once');
	is(advisory_locks(), '0', 'savepoint: no claim is left behind');

	su("UPDATE qlater_job SET run_at = now() WHERE id = $x");
	lease('app');
	sleep(2);
	$s->query_safe('BEGIN');
	$s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)});
	my $r = $s->query(q{PREPARE TRANSACTION 'lapse1'});
	like($s->{stderr}, qr/cannot PREPARE/, 'prepare: a transaction that counted a lapse is not prepared');
	$s->query('ROLLBACK');
	is(attempts($x), '1 pending token', 'prepare: the count is undone');
	is(advisory_locks(), '0', 'prepare: no claim is left behind');
	$s->{stderr} = '';
	$s->query_safe('BEGIN');
	$s->query_safe('SAVEPOINT a');
	$s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)});
	$s->query_safe('ROLLBACK TO SAVEPOINT a');
	$s->query_safe(q{PREPARE TRANSACTION 'lapse2'});
	is(advisory_locks(), '0', 'prepare: after the savepoint rolled back, prepared with no claim');
	su(q{COMMIT PREPARED 'lapse2'});
	is(attempts($x), '1 pending token', 'prepare: nothing counted');
	$s->quit;
	su("SELECT qlater_cancel(id) FROM qlater_job WHERE queue = 'app'");
}

### 6. holds: a paused queue counts nothing; counted once it is resumed
{
	my $x = enqueue('app');
	lease('app');
	sleep(2);
	as('alice', q{SELECT qlater_pause_queue('app')});
	is(as('alice', q{SELECT count(*) FROM qlater_lock('app', 1)}), '0', 'paused: nothing handed out');
	is(attempts($x), '0 pending token', 'paused: the lapse is not counted while paused');
	as('alice', q{SELECT qlater_resume_queue('app')});
	as('alice', q{SELECT count(*) FROM qlater_lock('app', 1)});
	is(attempts($x), '1 pending', 'paused: counted once resumed');
	su("SELECT qlater_cancel(id) FROM qlater_job WHERE queue = 'app'");
}

### 7. a consumer in REPEATABLE READ whose snapshot predates another
### consumer's count of the lapse
{
	my $x = enqueue('app');
	lease('app');
	my $y = enqueue('app');
	my $z = enqueue('app');
	sleep(2);
	my $b = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	$b->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$b->query_safe('SELECT count(*) FROM qlater_jobs');
	is(as('alice', q{SELECT id FROM qlater_lock('app', 1, lease => '5 minutes')}), $y,
		'repeatable read: another consumer counts the lapse and gets the next job');
	my $got = $b->query(q{SELECT id FROM qlater_lock('app', 1, lease => '5 minutes')});
	# noted, not a break: the count of another consumer committed after this
	# snapshot makes the call fail with a serialization failure (40001, to
	# retry), as a lease taken by another consumer after it does
	like($b->{stderr}, qr/^$|could not serialize access/,
		'repeatable read: no error, or a serialization failure to retry');
	$b->query('ROLLBACK');
	$b->quit;
	is(attempts($x), '1 pending', 'repeatable read: counted once');
	su("SELECT qlater_cancel(id) FROM qlater_job WHERE queue = 'app'");
}

### 8. a session-mode consumer in a READ ONLY transaction meets a lapse
{
	my $x = enqueue('app');
	lease('app');
	my $y = enqueue('app');
	sleep(2);
	my ($ret, $out, $err) = try_as('alice',
		q{BEGIN READ ONLY; SELECT id FROM qlater_lock('app', 1); COMMIT;});
	# noted, not a break: the count needs a write; without a lapse a
	# session-mode claim in a READ ONLY transaction works
	like($err, qr/^$|read-only transaction/, 'read only: no error, or the read-only error');
	is(attempts($x), '0 pending token', 'read only: nothing counted');
	is(advisory_locks(), '0', 'read only: no claim is left behind');
	su("SELECT qlater_cancel(id) FROM qlater_job WHERE queue = 'app'");
}

### 10. holds: two consumers in READ COMMITTED meet one lapse at once: the
### first counts it (its claim held until its commit), the second passes
### over it, and after the first commits finds it waiting out its backoff
{
	my $x = enqueue('app');
	lease('app');
	sleep(2);
	my $s1 = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
	my $s2 = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
	$s1->query_safe('BEGIN');
	$s2->query_safe('BEGIN');
	is($s1->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1, lease => '5 minutes')}), '0',
		'concurrent: the first consumer counts the lapse');
	is($s2->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)}), '0',
		'concurrent: the second passes over the job (claimed)');
	$s1->query_safe('COMMIT');
	is($s2->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)}), '0',
		'concurrent: after the commit the second finds nothing');
	$s2->query_safe('COMMIT');
	is(attempts($x), '1 pending', 'concurrent: counted once');
	is(advisory_locks(), '0', 'concurrent: no claim is left behind');
	$s1->quit;
	$s2->quit;
	su("SELECT qlater_cancel(id) FROM qlater_job WHERE queue = 'app'");
}

### 9. holds: a tenant's own advisory locks cannot push the job ids of a
### CREATE EXTENSION (SQL's advisory locks are of spaces 1 and 2, never
### qlater's 29036)
{
	my $m = $node->background_psql('postgres', extra_params => [ '-U', 'mallory' ]);
	$m->query_safe(q{SELECT pg_advisory_lock(9223372036854775000)});
	$m->query_safe(q{SELECT pg_advisory_lock(2147483647, 2147483647)});
	$m->query_safe(q{SELECT pg_advisory_lock(-1)});
	su(q{DROP EXTENSION qlater CASCADE; CREATE EXTENSION qlater});
	as('alice', q{SELECT qlater_create_queue('app', external => true)});
	ok(enqueue('app') < 1000000, 'sequence: the tenant\'s advisory locks do not move the job ids');
	$m->quit;
}

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
unlike($log, qr/TRAP:/, 'no assertion failed');
done_testing();
