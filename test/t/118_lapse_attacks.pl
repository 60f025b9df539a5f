# 118_lapse_attacks.pl: a hostile review of the counting of lapsed leases
# (0.3: a lease that ran out is a failed attempt of its job, recorded by
# the next qlater_lock that meets it), as tenants and as a DBA.
#
# Breaks (plain tests that fail on the code they were found on): see the
# section headers marked "BREAK".
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

sub attempts
{
	my ($id) = @_;
	return su("SELECT coalesce((SELECT attempts || ' ' || state FROM qlater_jobs WHERE id = $id), 'gone')");
}

su(q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE mallory LOGIN;
});
as('alice', q{
SELECT qlater_create_queue('app', external => true);
SELECT qlater_create_queue('lim', external => true);
SELECT qlater_create_queue('bulk', external => true);
});
su(q{SELECT qlater_alter_queue('lim', max_running => 1)});

### 1. BREAK: a renewal made while the lease held, committed after it ran
### out, keeps the job (its row was locked, the lapse is not counted) but
### loses the job's slot: the claimer that met the lapse took the slot
### away (ql_take frees a job's earlier slot) and gave it back, then
### handed out the next job of a queue with max_running 1.  Two run.
{
	my $x = enqueue('lim');
	my $y = enqueue('lim');
	my ($lx, $tx) = lease('lim', '3 seconds');
	is($lx, $x, 'renewal race: the first job of the limited queue is leased');
	my $h = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
	$h->query_safe('BEGIN');
	$h->query_safe("SELECT qlater_extend($x, '$tx', '10 minutes')");
	sleep(4);
	my $got = as('alice', q{SELECT count(*) FROM qlater_lock('lim', 1, lease => '5 minutes')});
	$h->query_safe('COMMIT');
	$h->quit;
	is(su(qq{SELECT lease_until > now() + interval '5 minutes' FROM qlater_job WHERE id = $x}), 't',
		'renewal race: the renewal made while the lease held stands');
	is($got, '0', 'renewal race: no second job of the queue is handed out while its holder renews the first');
	is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'lim' AND lease_until > now()}), '1',
		'renewal race: at most max_running (1) jobs of the queue are leased');
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
	is(attempts($x), '1 pending', 'counted lapse: the job is still there, counted once');

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
	for (1 .. 6)
	{
		as('alice', q{SELECT count(*) FROM qlater_lock('bulk', 500, lease => '5 seconds')});
	}
	is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'bulk' AND claim_token IS NOT NULL}), '3000',
		'many lapses: 3,000 jobs leased');
	sleep(6);
	my ($ret, $out, $err) = try_as('alice', q{SELECT count(*) FROM qlater_lock('bulk', 1000, lease => '1 minute')});
	is($ret, 0, 'many lapses: a claim that meets 3,000 lapsed leases succeeds');
	unlike($err, qr/out of shared memory/, 'many lapses: no "out of shared memory"');
	($ret, $out, $err) = try_as('alice', q{SELECT count(*) FROM qlater_lock('bulk', 1000, lease => '1 minute')});
	isnt(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'bulk' AND attempts = 1}), '0',
		'many lapses: the lapses get counted (the queue is not stuck)');
	is(advisory_locks(), '0', 'many lapses: no claim is left behind');
	su("DELETE FROM qlater_job WHERE queue = 'bulk'");
}

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
unlike($log, qr/TRAP:/, 'no assertion failed');
done_testing();
