# 193_consumer_attacks.pl: a hostile tenant and a DBA against the
# external-queue consumer protocol (a fresh attack, after the Rails
# path's).
#
# Breaks (plain tests that fail on the code they were found on):
#   C1. a queue re-created under a dropped queue's name, in a transaction
#       begun before the drop, showed the dropped queue's outcomes (with
#       their arguments) to its new owner: created_at was the creating
#       transaction's start, before those outcomes' finished_at.
#   C2. a queue turned in-server while a consumer held a live lease on one
#       of its jobs: a worker ran the job at once, while the consumer was
#       still working on it (a free-text handler made the job dead at once,
#       its token still on the row).
#   C3. leases ran from the transaction's start, not the clock: a lease
#       taken (or renewed) late in a long transaction was short, or over
#       before it was handed out, and counted as a failed attempt.
#   C4. a job this transaction's keyed enqueue holds (waiting behind its
#       key) passed for a session claim: qlater_complete and qlater_fail
#       finished it without qlater_lock.
#   C5. a claim released by pg_advisory_unlock_all() and then finished:
#       the end of the transaction released it again (WARNING: you don't
#       own a lock of type ExclusiveLock).
#   C6. qlater_fail took an infinite retry_at (qlater_enqueue refuses one)
#       and kept any length of error text (a handler's is clipped to 8 kB).
#   C8. qlater_jobs showed a lease's token to every role that sees the job
#       (the queue's other consumers, its owner): any of them could renew,
#       give back, fail or complete a lease another consumer held (0.7
#       shows it to admins only).
#   C9. a transaction that took, renewed or finished a lease in a queue
#       with max_running could be prepared: its slot changes were dropped at
#       PREPARE, so ROLLBACK PREPARED of a lease left a slot that blocked
#       the queue until the lease's end (any length), and COMMIT PREPARED of
#       a renewal left the slot ending before the lease (two running in a
#       queue of max_running 1).
#   C7. qlater_lock and qlater_listen with an overlong queue name said the
#       queue was not external (with a hint to create it, which would fail),
#       and the error repeated a 100 kB name in full, twice.
# No server process may end on a signal, and no assertion may fail.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('consumer_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n"
	  . "max_prepared_transactions = 4\n");
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
	return $node->psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

su(q{
CREATE EXTENSION qlater;
CREATE ROLE owner_a LOGIN;
CREATE ROLE consumer_c LOGIN;
CREATE ROLE consumer_d LOGIN;
CREATE ROLE tenant_t LOGIN;
GRANT CREATE ON SCHEMA public TO PUBLIC;
});
as('owner_a', q{
CREATE TABLE owner_a_done (x int);
CREATE FUNCTION owner_a_f(x int) RETURNS void LANGUAGE sql
  AS 'INSERT INTO owner_a_done VALUES (x)';
});

### C1. a dropped queue's outcomes under a name re-created in a
### transaction begun before the drop
{
	my $t = $node->background_psql('postgres', extra_params => [ '-U', 'tenant_t' ]);
	$t->query_safe('BEGIN');
	$t->query_safe('SELECT now()');
	as('owner_a', q{
SELECT qlater_create_queue('payroll', external => true);
SELECT qlater_grant_queue('payroll', 'consumer_c');
SELECT qlater_enqueue('PaySalary', '{"iban": "DE00SECRET"}', queue => 'payroll');
});
	as('consumer_c', q{SELECT qlater_complete(id) FROM qlater_lock('payroll')});
	is(su(q{SELECT count(*) FROM qlater_history WHERE queue = 'payroll'}), '1',
		'C1: the outcome is recorded');
	as('owner_a', q{SELECT qlater_drop_queue('payroll')});
	$t->query_safe(q{SELECT qlater_create_queue('payroll', external => true)});
	$t->query_safe('COMMIT');
	$t->quit;
	is(as('tenant_t', q{SELECT count(*) FROM qlater_history WHERE queue = 'payroll'}), '0',
		'C1: the new owner of the name sees none of the dropped queue\'s outcomes');
	is(as('tenant_t', q{SELECT count(*) FROM qlater_history WHERE args::text LIKE '%SECRET%'}), '0',
		'C1: nor their arguments');
}

### C2. a queue turned in-server under a live lease
{
	as('owner_a', q{
SELECT qlater_create_queue('qx', external => true);
SELECT qlater_grant_queue('qx', 'consumer_c');
SELECT qlater_enqueue('public.owner_a_f(integer)', '[7]', queue => 'qx');
SELECT qlater_enqueue('NotAFunction', '[]', queue => 'qx', priority => 10);
});
	my $leased = as('consumer_c',
		q{SELECT count(*) FROM qlater_lock('qx', 2, lease => '6 seconds')});
	is($leased, '2', 'C2: both jobs leased');
	as('owner_a', q{
SELECT qlater_alter_queue('qx', external => false);
SELECT qlater_register('owner_a_f(int)', queue => 'qx');
});
	sleep(2);
	is(su(q{SELECT count(*) FROM owner_a_done}), '0',
		'C2: no worker runs a job while its lease holds');
	is(su(q{SELECT count(*) FROM qlater_jobs WHERE queue = 'qx' AND state = 'dead'}), '0',
		'C2: nor makes it dead');
	# once the leases are over, the workers run the jobs
	ok($node->poll_query_until('postgres',
			q{SELECT count(*) = 1 FROM owner_a_done}),
		'C2: the job runs once its lease is over');
	ok($node->poll_query_until('postgres',
			q{SELECT count(*) = 1 FROM qlater_jobs WHERE queue = 'qx' AND state = 'dead'}),
		'C2: the free-text handler is dead after its lease');
	is(su(q{SELECT count(*) FROM owner_a_done}), '1', 'C2: and ran once');
}

### C3. leases run from the clock
{
	as('owner_a', q{
SELECT qlater_create_queue('lq', external => true);
SELECT qlater_grant_queue('lq', 'consumer_c');
SELECT qlater_grant_queue('lq', 'consumer_d');
SELECT qlater_enqueue('Job', '[]', queue => 'lq');
});
	my @r = grep { $_ ne '' } split /\n/, as('consumer_c', q{
BEGIN;
SELECT pg_sleep(2);
SELECT id, claim_token AS tok, lease_until > clock_timestamp() + interval '8 seconds' AS fresh
  FROM qlater_lock('lq', 1, lease => '10 seconds') \gset
COMMIT;
SELECT :'fresh';
BEGIN;
SELECT pg_sleep(2);
SELECT qlater_extend(:id, :'tok', '10 seconds') > clock_timestamp() + interval '8 seconds';
COMMIT;
});
	is($r[0], 't', 'C3: a lease taken late in a transaction runs from the clock');
	is($r[1], 't', 'C3: so does a renewal');
	is(su(q{SELECT attempts FROM qlater_jobs WHERE queue = 'lq'}), '0', 'C3: no attempt counted');

	### C8. (0.7) the lease's token is its holder's: another consumer of
	### the queue, and its owner, see the job but not the token
	is(as('consumer_d', q{SELECT count(*) || ' ' || count(claim_token) FROM qlater_jobs WHERE queue = 'lq'}),
		'1 0', "C8: another consumer sees the leased job, not its token");
	is(as('owner_a', q{SELECT count(*) || ' ' || count(claim_token) FROM qlater_jobs WHERE queue = 'lq'}),
		'1 0', "C8: nor does the queue's owner");
	is(su(q{SELECT count(claim_token) FROM qlater_jobs WHERE queue = 'lq'}), '1', 'C8: an admin does');
}

### C4. a keyed enqueue's hold is no claim
{
	as('owner_a', q{
SELECT qlater_create_queue('kq', external => true);
SELECT qlater_grant_queue('kq', 'consumer_c', 'consume');
SELECT qlater_grant_queue('kq', 'consumer_c', 'enqueue');
});
	as('consumer_c', q{SELECT qlater_enqueue('K', '{}', queue => 'kq', key => 'kk')});
	for my $call ('qlater_complete(id)', q{qlater_fail(id, 'never ran')},
		'qlater_complete_many(ARRAY[id])')
	{
		my ($ret, $out, $err) = try_as('consumer_c', qq{
BEGIN;
SELECT $call FROM (SELECT qlater_enqueue('K', '{}', queue => 'kq', key => 'kk') AS id) e;
COMMIT;
});
		like($err, qr/is not claimed by this session/,
			"C4: $call refuses a job the keyed enqueue holds");
	}
	is(su(q{SELECT count(*) FROM qlater_history WHERE queue = 'kq'}), '0',
		'C4: nothing was finished');
}

### C5. a claim released by pg_advisory_unlock_all() before the commit
{
	as('owner_a', q{
SELECT qlater_create_queue('uq', external => true);
SELECT qlater_grant_queue('uq', 'consumer_c');
SELECT qlater_enqueue('Job', '[]', queue => 'uq');
});
	my $log_start = -s $node->logfile;
	my ($ret, $out, $err) = try_as('consumer_c', q{
SELECT id FROM qlater_lock('uq') \gset
BEGIN;
SELECT qlater_complete(:id);
SELECT pg_advisory_unlock_all();
COMMIT;
});
	unlike($err, qr/WARNING/, 'C5: no warning at the commit');
	my $log = slurp_file($node->logfile, $log_start);
	unlike($log, qr/you don't own a lock/, 'C5: nor in the server log');
}

### C6. qlater_fail's retry_at and error text
{
	as('owner_a', q{
SELECT qlater_create_queue('fq', external => true);
SELECT qlater_grant_queue('fq', 'consumer_c');
SELECT qlater_enqueue('Job', '[]', queue => 'fq', max_attempts => 10);
});
	for my $at ('infinity', '-infinity')
	{
		my ($ret, $out, $err) = try_as('consumer_c', qq{
SELECT qlater_fail(id, 'x', '$at') FROM qlater_lock('fq');
});
		like($err, qr/retry_at must be finite/, "C6: qlater_fail refuses retry_at $at");
	}
	as('consumer_c', q{SELECT qlater_fail(id, repeat('éx', 100000)) FROM qlater_lock('fq')});
	my $len = su(q{SELECT octet_length(last_error::text) FROM qlater_jobs WHERE queue = 'fq'});
	cmp_ok($len, '<', 10000, 'C6: a consumer\'s error text is clipped as a handler\'s');
	like(su(q{SELECT last_error->>'message' FROM qlater_jobs WHERE queue = 'fq'}),
		qr/\.\.\. \(300000 bytes\)$/, 'C6: saying how long it was');
}

### C9. PREPARE of slot changes in a queue with max_running
{
	as('owner_a', q{
SELECT qlater_create_queue('lim', external => true);
SELECT qlater_grant_queue('lim', 'consumer_c');
SELECT qlater_enqueue('Job', '[]', queue => 'lim') FROM generate_series(1, 3);
});
	su(q{SELECT qlater_alter_queue('lim', max_running => 1)});
	my ($ret, $out, $err) = try_as('consumer_c', q{
BEGIN;
SELECT count(*) FROM qlater_lock('lim', 1, lease => '10 years');
PREPARE TRANSACTION 'c9a';
});
	like($err, qr/cannot PREPARE/, 'C9: a lease taken in a limited queue is not prepared');
	su(q{SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts \gexec});
	my ($id, $tok) = split /\|/, as('consumer_c',
		q{SELECT id || '|' || claim_token FROM qlater_lock('lim', 1, lease => '3 seconds')});
	ok(defined $tok && $tok ne '', 'C9: the queue is not blocked: a job is leased');
	for my $call ("qlater_extend($id, '$tok', '1 hour')", "qlater_complete($id, '$tok')")
	{
		($ret, $out, $err) = try_as('consumer_c', qq{
BEGIN;
SELECT $call;
PREPARE TRANSACTION 'c9b';
});
		like($err, qr/cannot PREPARE/, "C9: $call is not prepared in a limited queue");
		su(q{SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts \gexec});
	}
	as('consumer_c', qq{SELECT qlater_complete($id, '$tok')});
	is(as('consumer_c', q{SELECT count(*) FROM qlater_lock('lim', 5, lease => '1 minute')}), '1',
		'C9: max_running 1 holds: one job leased of the two left');
}

### C7. overlong queue names
{
	my $long = 'q' x 100000;
	for my $call ("qlater_lock('$long')", "qlater_listen('$long')",
		"qlater_lock('" . ('q' x 64) . "')")
	{
		my ($ret, $out, $err) = try_as('consumer_c', "SELECT * FROM $call");
		(my $short = $call) =~ s/q{20,}/q.../;
		like($err, qr/ERROR:  invalid queue name/, "C7: $short: invalid queue name");
		cmp_ok(length($err), '<', 1000, "C7: $short: the error does not repeat the name");
	}
}

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process ended on a signal');
$node->stop;
done_testing();
