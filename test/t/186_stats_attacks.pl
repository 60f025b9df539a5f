# 186_stats_attacks.pl: a hostile review of the live queue statistics
# (qlater_queue_stats, qlater_queue_histograms, qlater_queue_depth; 0.5),
# as a tenant and as a DBA.
#
# Checks marked "BREAK:" found a bug and fail until it is fixed; the others
# are properties that hold and were not tested before (184 tests the
# ordinary behaviour).  The breaks:
#  - any reader under REPEATABLE READ or SERIALIZABLE removes the counters
#    of the queues made since its snapshot (ql_stats_forget);
#  - a queue created in a transaction that began before the previous queue
#    of its name was created (created_at is now()) never counts;
#  - a tenant's 256 queues leave every other tenant's new queue uncounted;
#  - with the places of all databases taken, a queue's counters show 0
#    (not NULL) while its outcomes go to the row counted together, and the
#    places of dropped databases are never given back;
#  - the depth of a large table stays NULL while the database's workers
#    run long jobs (only a worker between jobs counts it);
#  - without shared_preload_libraries, reading either view crashes the
#    server (stats is NULL);
#  - (minor) the sum of wait times wraps around for jobs due long ago.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('stats_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n"
	  . "max_prepared_transactions = 4\nrestart_after_crash = on\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE app LOGIN;
CREATE ROLE mon LOGIN IN ROLE pg_read_all_stats;
CREATE ROLE sneak LOGIN NOINHERIT IN ROLE mon;
CREATE ROLE "a%" LOGIN;
CREATE TABLE done (label text);
GRANT INSERT ON done TO PUBLIC;
CREATE FUNCTION nap(label text, secs float8) RETURNS void LANGUAGE sql
  AS $$ SELECT pg_sleep(secs); INSERT INTO public.done VALUES (label) $$;
ALTER FUNCTION nap(text, float8) OWNER TO alice;
});

sub as
{
	my ($role, $q, $db) = @_;
	return $node->safe_psql($db // 'postgres', $q,
		defined $role ? (extra_params => [ '-U', $role ]) : ());
}

# psql that may fail: (rc, stdout, stderr)
sub try_as
{
	my ($role, $q, $db) = @_;
	my ($out, $err);
	my $rc = $node->psql($db // 'postgres', $q, stdout => \$out, stderr => \$err,
		defined $role ? (extra_params => [ '-U', $role ]) : ());
	return ($rc, $out, $err);
}

# the columns of a queue's row, as role sees it ('' if it sees none)
sub stats
{
	my ($role, $queue, $cols) = @_;
	return as($role,
		"SELECT concat_ws(' ', $cols) FROM qlater_queue_stats WHERE queue = \$q\$$queue\$q\$");
}

# role claims and completes n jobs of its external queue, one transaction
sub finish
{
	my ($role, $queue, $n) = @_;
	return as($role, "SELECT count(qlater_complete(id)) FROM qlater_lock(\$q\$$queue\$q\$, $n)");
}

### visibility: names with quotes, backslashes, LIKE wildcards, 63 bytes, multibyte
my @odd = ("a'q", 'a\\q', 'a%', 'a_', 'x' x 63, ("\xc3\xa9" x 31) . 'z', 'a"b');
my $odd_sql = join(',', map { "\$q\$$_\$q\$" } @odd);
as('alice', qq{
SELECT count(qlater_create_queue(q, external => true)) FROM unnest(ARRAY[$odd_sql]) q;
SELECT count(qlater_enqueue('Ext', '[]', queue => q)) FROM unnest(ARRAY[$odd_sql]) q, generate_series(1, 2);
SELECT count(qlater_complete(l.id)) FROM unnest(ARRAY[$odd_sql]) q, LATERAL qlater_lock(q, 1) l;
});
is( as('alice', qq{SELECT count(*) FROM qlater_queue_stats s JOIN unnest(ARRAY[$odd_sql]) q ON q = s.queue
		WHERE s.done_total = 1 AND s.ready = 1}),
	scalar(@odd), 'queues of odd names (quotes, backslash, wildcards, 63 bytes, multibyte) are counted each');
is(as('alice', qq{SELECT count(*) FROM qlater_queue_histograms WHERE queue = ANY (ARRAY[$odd_sql]) AND kind = 'wait' AND count = 1}),
	scalar(@odd), 'and have their own histograms');
as('bob', q{SELECT qlater_create_queue('A_', external => true)});
is(as('bob', q{SELECT string_agg(queue, ',') FROM qlater_queue_stats}), 'A_',
	'another tenant sees none of them in the view');
is(as('bob', q{SELECT count(*) FROM qlater_queue_stats() WHERE queue IS DISTINCT FROM 'A_'}), '0',
	'nor calling the function directly');
is(as('bob', q{SELECT count(*) FROM qlater_queue_histograms() WHERE queue IS DISTINCT FROM 'A_'}), '0',
	'nor the histograms');
is(as('a%', q{SELECT count(*) FROM qlater_queue_stats}), '0',
	'a role named like a queue (a wildcard) sees nothing');
my ($rc, $out, $err) = try_as('bob', q{SELECT count(*) FROM qlater_queue_depth});
like($err, qr/permission denied/, 'the background count is not readable by a tenant');
($rc, $out, $err) = try_as('bob', q{TRUNCATE qlater_queue_depth});
like($err, qr/permission denied|must be owner/, 'nor can a tenant empty it');
($rc, $out, $err) = try_as('bob', q{INSERT INTO qlater_queue_depth VALUES ('a_', 1, 1, 1, 1, now(), now())});
like($err, qr/permission denied/, 'nor forge it');

# SET ROLE and inheritance
is(as(undef, q{SET ROLE bob; SELECT string_agg(queue, ',') FROM qlater_queue_stats}), 'A_',
	'a superuser after SET ROLE bob sees what bob sees');
is(as('sneak', q{SELECT count(*) FROM qlater_queue_stats}), '0',
	'a NOINHERIT member of a monitoring role sees nothing without SET ROLE');
is(as('sneak', q{SET ROLE mon; SELECT count(*) > 7 FROM qlater_queue_stats}), 't',
	'and every queue after SET ROLE to it');

# a consume grant revoked takes effect at once, in the consumer's session
as('alice', q{SELECT qlater_grant_queue('a_', 'app')});
my $s = $node->background_psql('postgres', extra_params => [ '-U', 'app' ]);
is($s->query_safe(q{SELECT string_agg(queue, ',') FROM qlater_queue_stats}), 'a_',
	'a consumer sees the queue it consumes');
as('alice', q{SELECT qlater_revoke_queue('a_', 'app')});
is($s->query_safe(q{SELECT count(*) FROM qlater_queue_stats}), '0',
	'a revoked consumer sees it no more, in the same session');
is($s->query_safe(q{SELECT count(*) FROM qlater_queue_histograms}), '0',
	'nor its histograms');
$s->quit;

# a queue handed over: its counters go with it, to its new owner only
as('alice', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'a"b'});
($rc, $out, $err) = try_as(undef, q{SELECT qlater_alter_queue('a"b', owner => 'bob')});
is($err, '', 'a queue handed over to another role (by a superuser)');
is(stats('bob', 'a"b', 'owner, done_total'), 'bob 1', 'its new owner sees it, with its counters');
is(stats('alice', 'a"b', 'owner'), '', 'its former owner no more');

### counters: subtransactions, errors, two-phase commit, duplicates
as('alice', q{
SELECT qlater_create_queue('c1', external => true);
SELECT count(qlater_enqueue('Ext', '[]', queue => 'c1')) FROM generate_series(1, 10);
});
as('alice', q{
DO $$ BEGIN
  BEGIN
    PERFORM qlater_complete(id) FROM qlater_lock('c1', 1);
    RAISE EXCEPTION 'undo';
  EXCEPTION WHEN raise_exception THEN NULL;
  END;
END $$});
is(stats('alice', 'c1', 'done_total'), '0', 'a completion undone by an exception block counts nothing');
as('alice', q{
DO $$ BEGIN
  BEGIN
    PERFORM qlater_complete(id) FROM qlater_lock('c1', 1);
  EXCEPTION WHEN raise_exception THEN NULL;
  END;
END $$});
is(stats('alice', 'c1', 'done_total'), '1', 'one in a block that ends well counts once');
($rc) = try_as('alice', q{BEGIN; SELECT qlater_complete(id) FROM qlater_lock('c1', 1); SELECT 1/0; COMMIT;});
is(stats('alice', 'c1', 'done_total'), '1', 'an error after a completion in the same transaction: nothing counted');
as('alice', q{BEGIN; SAVEPOINT a; SELECT qlater_complete(id) FROM qlater_lock('c1', 1); RELEASE a;
	SAVEPOINT b; SELECT qlater_complete(id) FROM qlater_lock('c1', 1);
	SAVEPOINT c; SELECT qlater_complete(id) FROM qlater_lock('c1', 1); RELEASE c; ROLLBACK TO b; COMMIT;});
is(stats('alice', 'c1', 'done_total'), '2', 'nested savepoints: only the released one outside the rollback counts');
($rc, $out, $err) = try_as('alice', q{SELECT qlater_complete_many(ARRAY[id, id]) FROM qlater_lock('c1', 1)});
like($err, qr/more than once/, 'qlater_complete_many refuses a job twice');
is(stats('alice', 'c1', 'done_total'), '2', 'and counts nothing');

# bob slips alice's job into his batch: refused, nothing counted for either
as('bob', q{SELECT qlater_enqueue('Ext', '[]', queue => 'A_')});
my $alice_job = as('alice', q{SELECT min(id) FROM qlater_jobs WHERE queue = 'c1'});
($rc, $out, $err) = try_as('bob', qq{
DO \$\$ BEGIN
  BEGIN
    PERFORM qlater_complete_many(ARRAY[(SELECT id FROM qlater_lock('A_', 1)), $alice_job]);
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
END \$\$});
($rc, $out, $err) = try_as('bob', qq{SELECT qlater_complete_many(ARRAY[(SELECT id FROM qlater_lock('A_', 1)), $alice_job])});
isnt($rc, 0, "another's job in qlater_complete_many is refused");
is(stats('alice', 'c1', 'done_total'), '2', 'and counted for nobody: not the victim\'s queue');
is(stats('bob', 'A_', 'done_total'), '0', 'nor the caller\'s');

# two-phase commit: documented as not counted
my $lease = as('alice', q{SELECT id || ' ' || claim_token FROM qlater_lock('c1', 1, lease => '5 min')});
my ($lid, $ltok) = split / /, $lease;
($rc, $out, $err) = try_as('alice',
	qq{BEGIN; SELECT qlater_complete($lid, '$ltok'); PREPARE TRANSACTION 'p1';});
note "PREPARE of a completion: rc $rc, $err";
if ($rc == 0)
{
	as(undef, q{COMMIT PREPARED 'p1'});
	is(stats('alice', 'c1', 'done_total'), '2',
		'a completion committed by COMMIT PREPARED is not counted (as documented)');
}
else
{
	like($err, qr/PREPARE/, 'PREPARE of a completion is refused');
}
is(as(undef, q{SELECT count(*) FROM pg_prepared_xacts}), '0', 'no prepared transaction left');

# BREAK (minor): the sum of wait times wraps around.  A tenant's jobs due
# in 4713 BC each waited some 2.1e11 s (2.1e17 us): 100 of them overflow
# the uint64 sum of microseconds of its queue (and of the row of queues
# counted together, which mixes tenants)
as('alice', q{
SELECT qlater_create_queue('ancient', external => true);
SELECT count(qlater_enqueue('Ext', '[]', queue => 'ancient', run_at => '4713-01-01 BC')) FROM generate_series(1, 100);
});
finish('alice', 'ancient', 100);
is( as('alice', q{SELECT count || ' ' || (sum > 2e13) FROM qlater_queue_histograms WHERE queue = 'ancient' AND kind = 'wait'}),
	'100 true', 'BREAK (minor): the wait sum of 100 jobs due in 4713 BC does not wrap around');

### BREAK: a reader under REPEATABLE READ resets the counters of queues made since its snapshot
my $rr = $node->background_psql('postgres', extra_params => [ '-U', 'bob' ]);
$rr->query_safe(q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM qlater_queue_stats});
as('alice', q{
SELECT qlater_create_queue('late', external => true);
SELECT count(qlater_enqueue('Ext', '[]', queue => 'late')) FROM generate_series(1, 2);
});
finish('alice', 'late', 2);
is(stats('alice', 'late', 'done_total'), '2', 'a queue made after the reader\'s snapshot: 2 done');
$rr->query_safe(q{SELECT count(*) FROM qlater_queue_stats});
$rr->query_safe(q{COMMIT});
# BREAK: the RR reader, which does not see queue 'late', removed its entry
is(stats('alice', 'late', 'done_total'), '2',
	'BREAK: a REPEATABLE READ reader (any tenant) does not reset the counters of a queue made since its snapshot');
$rr->query_safe(q{BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM qlater_queue_stats});
as('alice', q{SELECT count(qlater_enqueue('Ext', '[]', queue => 'c1'))});
as('alice', q{
SELECT qlater_create_queue('late2', external => true);
SELECT count(qlater_enqueue('Ext', '[]', queue => 'late2')) FROM generate_series(1, 3);
});
finish('alice', 'late2', 3);
$rr->query_safe(q{SELECT count(*) FROM qlater_queue_stats});
$rr->query_safe(q{COMMIT});
is(stats('alice', 'late2', 'done_total'), '3',
	'BREAK: nor a SERIALIZABLE one');

### BREAK: a queue made in a transaction older than the last queue of its name never counts
as('alice', q{SELECT qlater_create_queue('reborn', external => true); SELECT qlater_enqueue('Ext', '[]', queue => 'reborn')});
my $old = $node->background_psql('postgres', extra_params => [ '-U', 'bob' ]);
$old->query_safe(q{BEGIN; SELECT now()});
# alice's queue is made again after bob's transaction began: its created_at is later
as('alice', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'reborn'; SELECT qlater_drop_queue('reborn')});
as('alice', q{SELECT qlater_create_queue('reborn', external => true); SELECT qlater_enqueue('Ext', '[]', queue => 'reborn')});
finish('alice', 'reborn', 1);
is(stats('alice', 'reborn', 'done_total'), '1', 'alice\'s queue made again counts its own');
as('alice', q{SELECT qlater_drop_queue('reborn')});
$old->query_safe(q{SELECT qlater_create_queue('reborn', external => true)});
$old->query_safe(q{COMMIT});
$old->quit;
as('bob', q{SELECT count(qlater_enqueue('Ext', '[]', queue => 'reborn')) FROM generate_series(1, 2)});
finish('bob', 'reborn', 2);
is(stats('bob', 'reborn', 'done_total'), '2',
	'BREAK: a queue created in a transaction begun before the last queue of its name was created counts its outcomes');

# a DBA drops alice's queue and gives its name to bob, in one transaction:
# bob's queue starts from zero (a later created_at than alice's)
as('alice', q{SELECT qlater_create_queue('handed', external => true);
	SELECT count(qlater_enqueue('Ext', '[]', queue => 'handed')) FROM generate_series(1, 3)});
finish('alice', 'handed', 3);
is(stats('alice', 'handed', 'done_total'), '3', 'alice\'s queue: 3 done');
as(undef, q{BEGIN;
	SELECT qlater_drop_queue('handed');
	SELECT qlater_create_queue('handed', external => true);
	SELECT qlater_alter_queue('handed', owner => 'bob');
	COMMIT});
is(stats('bob', 'handed', 'done_total, stats_since IS NOT NULL'), '0 t',
	'a queue dropped and made again for another role in one transaction does not show its predecessor\'s counters');

### the cancel of a running in-server job counts once, as cancelled
as('alice', q{SELECT qlater_register('nap(text,float8)', queue => 'r1')});
my $rid = as('alice', q{SELECT qlater_enqueue('nap(text,float8)', '["r", 30]')});
ok( $node->poll_query_until(
		'postgres', qq{SELECT state = 'running' FROM qlater_jobs WHERE id = $rid}),
	'a job runs');
is(stats('alice', 'r1', 'running, ready'), '1 0', 'it is counted running');
as('alice', qq{SELECT qlater_cancel($rid)});
ok( $node->poll_query_until(
		'postgres', q{SELECT cancelled_total = 1 AND running = 0 FROM qlater_queue_stats WHERE queue = 'r1'}),
	'the cancel of a running job is counted');
# the worker, interrupted, must not count it done nor failed
as('alice', q{SELECT qlater_enqueue('nap(text,float8)', '["r2", 0]')});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM done WHERE label = 'r2'}),
	'the worker goes on with the next job');
ok( $node->poll_query_until(
		'postgres', q{SELECT done_total = 1 FROM qlater_queue_stats WHERE queue = 'r1'}),
	'which is counted');
is(stats('alice', 'r1', 'done_total, failed_total, cancelled_total, timeout_total, crashed_total'), '1 0 1 0 0',
	'the interrupted job counted only as cancelled');

### robustness: read-only transactions, a reader while queues come and go
is(as('alice', q{BEGIN READ ONLY; SELECT count(*) > 0 FROM qlater_queue_stats; COMMIT}), 't',
	'the view reads in a read-only transaction');
as('alice', q{SELECT qlater_drop_queue('late2')});
is( as('alice', q{BEGIN READ ONLY; SELECT count(*) FROM qlater_queue_stats WHERE queue = 'late2';
	SELECT count(*) FROM qlater_queue_histograms WHERE queue = 'late2'; COMMIT}),
	"0\n0", 'and forgets a dropped queue there');

my ($fout, $ferr) = ('', '');
my $flip = IPC::Run::start(
	[
		'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-U', 'alice', '-c',
		q{DO $$ BEGIN FOR i IN 1..60 LOOP
			PERFORM qlater_create_queue('flip', external => true);
			PERFORM qlater_cancel(qlater_enqueue('Ext', '[]', queue => 'flip'));
			COMMIT;
			PERFORM qlater_drop_queue('flip');
			COMMIT;
		END LOOP; END $$}
	],
	'>', \$fout, '2>', \$ferr);
my ($rout, $rerr) = ('', '');
my $reader = IPC::Run::start(
	[
		'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-U', 'mon', '-c',
		q{DO $$ DECLARE n bigint; BEGIN FOR i IN 1..150 LOOP
			SELECT count(*) INTO n FROM qlater_queue_stats;
			SELECT count(*) INTO n FROM qlater_queue_histograms;
			COMMIT;
		END LOOP; END $$}
	],
	'>', \$rout, '2>', \$rerr);
$flip->finish;
$reader->finish;
is($ferr, '', 'queues made and dropped 60 times, each with an outcome');
is($rerr, '', 'while another session reads the views 150 times: no error');
is(stats('alice', 'flip', 'count(*)'), '0', 'the last one is gone from the view');

### denial of monitoring: a tenant takes every place of the database
# BREAK: bob's 256 queues, each with one outcome, leave no place for
# alice's: her new queue's counters are NULL (the README says a database
# tracks 256 queues, not that any tenant may take them all)
as('bob', q{
SELECT count(qlater_create_queue('bq' || i, external => true)) FROM generate_series(1, 256) i;
SELECT count(qlater_enqueue('Ext', '[]', queue => 'bq' || i)) FROM generate_series(1, 256) i;
SELECT count(qlater_cancel(id)) FROM qlater_jobs WHERE queue LIKE 'bq%';
});
as('alice', q{SELECT qlater_create_queue('victim', external => true); SELECT qlater_enqueue('Ext', '[]', queue => 'victim')});
finish('alice', 'victim', 1);
is(stats('alice', 'victim', "coalesce(done_total::text, 'NULL')"), '1',
	'BREAK: another tenant\'s 256 queues do not take away the counters of alice\'s new queue');
like(as('mon', q{SELECT done_total || ' ' || cancelled_total FROM qlater_queue_stats WHERE queue IS NULL}),
	qr/^0 19[2-9]$/, 'bob\'s queues beyond his 64 are counted together (192 cancelled at least), alice\'s is not among them');
as('bob', q{SELECT count(qlater_drop_queue('bq' || i)) FROM generate_series(1, 256) i});
as('alice', q{SELECT count(*) FROM qlater_queue_stats});
as('alice', q{SELECT qlater_create_queue('victim2', external => true); SELECT qlater_enqueue('Ext', '[]', queue => 'victim2')});
finish('alice', 'victim2', 1);
is(stats('alice', 'victim2', "coalesce(done_total::text, 'NULL')"), '1',
	'once those queues are dropped (and the view read), a new queue is counted again');

### a large job table: SIGHUP and a cancelled reader while workers count
as(undef, q{SELECT qlater_create_queue('big', external => true)});
as(undef, q{
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external, dead, attempts)
SELECT 'big', 'Ext', '[]', 100, now() - interval '1 min', 25, 'alice', true, false, 0
FROM generate_series(1, 30000) i;
});
as('alice', q{SELECT count(*) FROM qlater_queue_stats});
as(undef, q{SELECT pg_reload_conf()});
ok( $node->poll_query_until(
		'postgres', q{SELECT ready = 30000 FROM qlater_queue_stats WHERE queue = 'big'}),
	'a large table counted in the background across a reload');
is(stats('alice', 'c1', 'ready IS NOT NULL'), 't', 'the depth of other queues is shown too');
($rc, $out, $err) = try_as('alice', q{SET statement_timeout = '1ms'; SELECT count(*) FROM qlater_queue_stats, pg_sleep(0.01)});
like($err, qr/statement timeout/, 'a reader cancelled by statement_timeout in the statement that reads the view');
is(as('alice', q{SELECT count(*) > 0 FROM qlater_queue_stats}), 't', 'and the next read works');
as(undef, q{TRUNCATE qlater_queue_depth});
ok( $node->poll_query_until(
		'postgres', q{SELECT ready = 30000 FROM qlater_queue_stats WHERE queue = 'big'}),
	'the owner emptying qlater_queue_depth: the next count fills it again');
as(undef, q{DELETE FROM qlater_job WHERE queue = 'big'});

# DROP EXTENSION while a worker counts, in another database
$node->safe_psql('postgres', 'CREATE DATABASE dx');
$node->safe_psql('dx', q{
CREATE EXTENSION qlater;
CREATE FUNCTION nap(secs float8) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(secs) $$;
SELECT qlater_register('nap(float8)');
SELECT qlater_create_queue('big', external => true);
});
# BREAK: every worker of the database runs a long job: nobody counts the
# depth of a large table, which stays NULL for as long as the jobs run
# (the README: NULL "for a second or two while a worker makes one")
$node->safe_psql('dx', q{SELECT qlater_enqueue('nap(float8)', '[25]') FROM generate_series(1, 2)});
ok( $node->poll_query_until(
		'dx', q{SELECT count(*) > 0 AND bool_and(a.query LIKE 'qlater job %') FROM pg_stat_activity a
		 WHERE a.backend_type = 'qlater worker' AND a.datname = 'dx'}),
	'dx: every worker of the database runs a long job');
$node->safe_psql('dx', q{
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external, dead, attempts)
SELECT 'big', 'Ext', '[]', 100, now(), 25, 'alice', true, false, 0 FROM generate_series(1, 30000) i;
});
my $shown = 'f';
for (1 .. 16)
{
	$shown = $node->safe_psql('dx', q{SELECT ready IS NOT NULL FROM qlater_queue_stats WHERE queue = 'big'});
	last if $shown eq 't';
	usleep(500_000);
}
is($shown, 't', 'BREAK: the depth of a large table is shown within 8 s while the workers run long jobs');
$node->safe_psql('dx', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'default'});
ok($node->poll_query_until('dx', q{SELECT ready = 30000 FROM qlater_queue_stats WHERE queue = 'big'}),
	'dx: counted in the background');
$node->safe_psql('dx', q{SELECT pg_reload_conf(); DROP EXTENSION qlater CASCADE; CREATE EXTENSION qlater});
is($node->safe_psql('dx', q{SELECT count(*) FROM qlater_queue_stats}), '0',
	'dx: the extension dropped and made again while counting: an empty view');
$node->safe_psql('dx', q{SELECT qlater_create_queue('q', external => true); SELECT qlater_enqueue('Ext', '[]', queue => 'q'); SELECT qlater_complete(id) FROM qlater_lock('q', 1)});
is($node->safe_psql('dx', q{SELECT done_total || ' ' || ready FROM qlater_queue_stats WHERE queue = 'q'}), '1 0',
	'dx: and counting again');

### the bound of all databases: 8 other databases take the 2048 places
# (four owners of 64 queues each in each: no owner takes more than 64)
$node->safe_psql('postgres', join('', map { "CREATE ROLE o$_ LOGIN;" } 1 .. 4));
for my $d (1 .. 8)
{
	$node->safe_psql('postgres', "CREATE DATABASE d$d");
	$node->safe_psql("d$d", q{CREATE EXTENSION qlater});
	for my $o (1 .. 4)
	{
		$node->safe_psql("d$d", qq{
SELECT count(qlater_create_queue('dq${o}_' || i, external => true)) FROM generate_series(1, 64) i;
SELECT count(qlater_enqueue('Ext', '[]', queue => 'dq${o}_' || i)) FROM generate_series(1, 64) i;
SELECT count(qlater_cancel(id)) FROM qlater_jobs;
}, extra_params => [ '-U', "o$o" ]);
	}
}
as('alice', q{SELECT qlater_create_queue('crowded', external => true); SELECT count(qlater_enqueue('Ext', '[]', queue => 'crowded')) FROM generate_series(1, 2)});
finish('alice', 'crowded', 2);
# BREAK: the queue's outcomes went to the row of the others, yet its own
# row shows 0 (not NULL, as the README says of queues beyond the bound)
is(stats('alice', 'crowded', "coalesce(done_total::text, 'NULL')"), 'NULL',
	'BREAK: a queue beyond the bound of all databases shows NULL counters, not 0 (its 2 outcomes are counted elsewhere)');
like(as('mon', q{SELECT coalesce(done_total, 0) FROM qlater_queue_stats WHERE queue IS NULL}), qr/^[23]$/,
	'its outcomes are in the row counted together');
for my $d (1 .. 8)
{
	$node->safe_psql('postgres', "DROP DATABASE d$d WITH (FORCE)");
}
# the launcher finds them gone at its next look at pg_database (every 10 s)
my $counted = 'NULL';
for my $try (1 .. 30)
{
	as('alice', qq{SELECT qlater_create_queue('after_drop$try', external => true);
		SELECT qlater_enqueue('Ext', '[]', queue => 'after_drop$try')});
	finish('alice', "after_drop$try", 1);
	$counted = stats('alice', "after_drop$try", "coalesce(done_total::text, 'NULL')");
	last if $counted eq '1';
	sleep 2;
}
is($counted, '1', 'BREAK: the places of dropped databases are given back: a new queue is counted');

### a worker killed in the middle of a job: counted crashed after the restart
my $kid = as('alice', q{SELECT qlater_enqueue('nap(text,float8)', '["k", 30]')});
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) = 1 FROM qlater_jobs j JOIN pg_stat_activity a ON a.pid = j.locked_by
		 WHERE j.id = $kid AND a.backend_type = 'qlater worker' AND a.query LIKE 'qlater job $kid:%'}),
	'a job runs in a worker');
my $pid = as(undef, qq{SELECT locked_by FROM qlater_jobs WHERE id = $kid});
my $offset = -s $node->logfile;
ok(kill('KILL', $pid), 'SIGKILL to the worker');
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
ok($node->poll_query_until('postgres', 'SELECT 1', '1'), 'the server is back');
ok( $node->poll_query_until(
		'postgres', q{SELECT crashed_total = 1 AND done_total = 0 FROM qlater_queue_stats WHERE queue = 'r1'}),
	'the crash is counted once, after the restart (the counters began again)');

$node->stop;
my $log = slurp_file($node->logfile);
my @sig = grep { !/signal 9: Killed/ } ($log =~ /^.*terminated by signal.*$/mg);
is(scalar(@sig), 0, 'no process was terminated by a signal, but the worker killed on purpose')
  or diag join("\n", @sig);

### a server that does not preload qlater: the views must not crash it
# BREAK: qlater_queue_stats and qlater_queue_histograms read the shared
# counters, which exist only when qlater is preloaded
my $np = PostgreSQL::Test::Cluster->new('stats_no_preload');
$np->init;
$np->append_conf('postgresql.conf', "restart_after_crash = on\n");
$np->start;
$np->psql('postgres', q{CREATE EXTENSION qlater; CREATE ROLE carol LOGIN});
my ($nrc, $nout, $nerr);
$nrc = $np->psql('postgres', q{SELECT count(*) FROM qlater_queue_stats},
	stdout => \$nout, stderr => \$nerr, extra_params => [ '-U', 'carol' ]);
unlike($nerr, qr/server closed the connection|terminated abnormally/,
	'BREAK: without the preload, reading qlater_queue_stats does not crash the server');
ok($np->poll_query_until('postgres', 'SELECT 1', '1'), 'the server without the preload is up');
$nrc = $np->psql('postgres', q{SELECT count(*) FROM qlater_queue_histograms},
	stdout => \$nout, stderr => \$nerr, extra_params => [ '-U', 'carol' ]);
unlike($nerr, qr/server closed the connection|terminated abnormally/,
	'BREAK: nor reading qlater_queue_histograms');
ok($np->poll_query_until('postgres', 'SELECT 1', '1'), 'the server without the preload is up');
$np->stop;
ok(slurp_file($np->logfile) !~ /terminated by signal/,
	'BREAK: no process of the server without the preload was terminated by a signal');
done_testing();
