# 175_unique_attacks.pl: a hostile review of unique jobs (keys, replace).
#
# Each break found is a TODO block that fails on the code it was found on
# (the integrator removes the TODO with the fix); the attacks that held are
# plain tests.
#
# Breaks (TODO):
#   U1. another role's keys are read from pg_locks: the lock of a key is an
#       advisory lock on a hash with a fixed, public seed, which any role
#       computes in SQL (hashtextextended), so a role tells whether another
#       role is enqueueing a key it guesses, in a queue it cannot read;
#   U2. a key with a C1 control character (U+0080..U+009F, e.g. U+0085 NEL)
#       is taken, though a key is "text without control characters";
#   U3. a job under a lease whose consumer completes it in a transaction
#       that commits after the lease ran out: an enqueue of its key in
#       between returns it (no job of the key is left: the work is lost),
#       or with replace fails with "could not replace the jobs of keys"
#       (XX000), having waited for the consumer.
# No server process may end on a signal, and no claim may outlive the
# enqueuing transaction.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $started = time;
my $node = PostgreSQL::Test::Cluster->new('unique_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n"
	  . "max_prepared_transactions = 2\n");
$node->start;

sub su
{
	my ($sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql);
}

sub as
{
	my ($role, $sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql, extra_params => [ '-U', $role ]);
}

# ($ret, $out, $err) of statements run as a role, with SQLSTATEs in $err
sub try_as
{
	my ($role, $sql, $db) = @_;
	my ($ret, $out, $err) = $node->psql($db // 'postgres',
		"\\set VERBOSITY verbose\n" . $sql,
		extra_params => [ '-U', $role ]);
	return ($ret, $out, $err);
}

# a session of a role that goes on after an error
sub session
{
	my ($role, $db) = @_;
	return $node->background_psql($db // 'postgres',
		on_error_stop => 0,
		extra_params => [ '-U', $role ]);
}

sub wait_for
{
	my ($sql, $name, $db) = @_;
	ok($node->poll_query_until($db // 'postgres', $sql), $name);
}

# the claims (objsubid 29036) a backend holds
sub claims_of
{
	my ($pid) = @_;
	return su(qq{SELECT count(*) FROM pg_locks
	              WHERE locktype = 'advisory' AND objsubid = 29036 AND pid = $pid});
}

su(q{
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE EXTENSION qlater;
CREATE TABLE ran (label text, at timestamptz DEFAULT clock_timestamp());
GRANT ALL ON ran TO PUBLIC;
CREATE FUNCTION note(label text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO ran (label) VALUES (label) $$;
CREATE FUNCTION boom(label text) RETURNS void LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'boom %', label; END $$;
SELECT qlater_register('note(text)');
SELECT qlater_register('boom(text)', max_attempts => 1);
});
as('alice', q{SELECT qlater_create_queue('held'); SELECT qlater_create_queue('ext2', external => true); SELECT qlater_pause_queue('held');
SELECT qlater_create_queue('ext', external => true);
SELECT qlater_grant_queue('held', 'bob', 'enqueue');});
my $alice_pid_sql = q{SELECT pg_backend_pid()};

# ---------------------------------------------------------------------
# U1: the key lock's hash is computed by anyone
{
	my $b = session('bob');
	$b->query_safe(q{BEGIN});
	my $id = $b->query_safe(
		q{SELECT qlater_enqueue('note(text)', '["x"]', queue => 'held', key => 'secret:42')});
	# alice guesses the key; she cannot see bob's job
	is(as('alice', qq{SELECT count(*) FROM qlater_jobs WHERE id = $id}), '0',
		'held: alice does not see bob\'s keyed job');
	my $guess = as('alice', q{
WITH RECURSIVE h AS (
  SELECT hashtextextended('secret:42',
           hashtextextended('bob',
             hashtextextended('held', x'0071a7e5ca11ab1e'::bigint))) AS v)
SELECT count(*) FROM pg_locks l, h
 WHERE l.locktype = 'advisory' AND l.objsubid = 29037
   AND l.classid::text::bigint = (h.v >> 32) & 4294967295
   AND l.objid::text::bigint = h.v & 4294967295});
	note "alice's guess of bob's key matched $guess lock(s)";
	is($guess, '0', 'U1: alice cannot confirm bob\'s key \'secret:42\' in pg_locks');
	# alice's own enqueue of the same key does not wait for bob's
	my ($ret, $out, $err) = try_as('alice', q{SET statement_timeout = '20s';
SELECT qlater_enqueue('note(text)', '["a"]', queue => 'held', key => 'secret:42') > 0});
	is($ret, 0, 'held: alice\'s enqueue of the key bob holds does not wait for bob');
	$b->query_safe(q{COMMIT});
	is(su(q{SELECT count(*) FROM qlater_job WHERE key = 'secret:42' AND queue = 'held'}), '2',
		'held: the same key of two roles makes two jobs');
	# bob's enqueue with replace changes his own job, never alice's
	as('bob', q{SELECT qlater_enqueue('note(text)', '["b2"]', queue => 'held',
	             key => 'secret:42', replace => true)});
	is(su(q{SELECT string_agg(role || '=' || (args->>0), ',' ORDER BY role)
	          FROM qlater_job WHERE key = 'secret:42'}), 'alice=a,bob=b2',
		'held: replace changes only the enqueuer\'s job');
	# a key alice holds with another handler: bob gets no 23505 and no id of hers
	as('alice', q{SELECT qlater_enqueue('boom(text)', '["a"]', queue => 'held', key => 'other:1')});
	($ret, $out, $err) = try_as('bob', q{SELECT qlater_enqueue('note(text)', '["b"]', queue => 'held', key => 'other:1') > 0});
	is($ret, 0, 'held: another role\'s key of another handler is no refusal');
	$b->quit;
}

# ---------------------------------------------------------------------
# U2 and odd keys
{
	my ($ret, $out, $err) = try_as('alice',
		q{SELECT qlater_enqueue('note(text)', '["c1"]', queue => 'held', key => E'a\u0085b')});
	like($err, qr/22023/, 'U2: a key with U+0085 (NEL) is refused');
	for my $case (
		[ q{''}, 'empty' ],
		[ q{repeat('x', 513)}, '513 bytes' ],
		[ q{repeat('é', 257)}, '514 bytes of 257 characters' ],
		[ q{E'a\tb'}, 'a tab' ],
		[ q{E'a\x7fb'}, 'DEL' ])
	{
		($ret, $out, $err) = try_as('alice',
			qq{SELECT qlater_enqueue('note(text)', '["k"]', queue => 'held', key => $case->[0])});
		like($err, qr/22023/, "held: a key of $case->[1] is refused (22023)");
	}
	my $k512 = as('alice', q{SELECT qlater_enqueue('note(text)', '["k"]', queue => 'held', key => repeat('é', 256))});
	is(as('alice', qq{SELECT length(key) FROM qlater_jobs WHERE id = $k512}),
		'256', 'held: a key of 512 bytes (256 two-byte characters) is taken');
	($ret, $out, $err) = try_as('alice',
		q{SELECT qlater_enqueue('note(text)', '["k"]', queue => 'held', replace => true)});
	like($err, qr/22023/, 'held: replace without a key is refused');
	($ret, $out, $err) = try_as('alice',
		q{SELECT qlater_enqueue_many('note(text)', '[["a"],["b"]]', queue => 'held',
		  keys => ARRAY[NULL, NULL]::text[], replace => true)});
	note "replace with keys all NULL: ret $ret err $err";
	($ret, $out, $err) = try_as('alice',
		q{SELECT qlater_enqueue_many('note(text)', '[["a"],["b"]]', queue => 'held', keys => ARRAY['m1'])});
	like($err, qr/22023|2202E/, 'held: keys of another length than args_list are refused');
	($ret, $out, $err) = try_as('alice',
		q{SELECT qlater_enqueue_many('note(text)', '[["a"],["b"]]', queue => 'held',
		  keys => ARRAY[['m1'],['m2']])});
	note "2-D keys: ret $ret err $err";
	like($err, qr/2202E/, 'held: 2-D keys are refused');
	is(as('alice', q{SELECT count(DISTINCT i) FROM qlater_enqueue_many('note(text)',
	    '[["a"],["b"],["c"],["d"]]', queue => 'held', keys => ARRAY['d1', NULL, 'd1', NULL]) i}),
		'3', 'held: duplicate keys and NULL elements: three jobs');
	# very many keys in one call: an error at worst, never a crash
	($ret, $out, $err) = try_as('alice', q{SELECT count(*) FROM qlater_enqueue_many('note(text)',
	    (SELECT jsonb_agg(jsonb_build_array(g::text)) FROM generate_series(1, 20000) g),
	    queue => 'held', keys => (SELECT array_agg('many:' || g) FROM generate_series(1, 20000) g))});
	note "20,000 keys: ret $ret out $out err " . substr($err // '', 0, 200);
	is(su('SELECT 1'), '1', 'held: the server lives after 20,000 keys in one call');
}

# ---------------------------------------------------------------------
# claims never outlive the enqueuing transaction
{
	as('alice', q{SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:1');
	              SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:2')});
	my $s = session('alice');
	my $pid = $s->query($alice_pid_sql);
	$s->query(q{BEGIN});
	$s->query(q{SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:1')});
	$s->query(q{SAVEPOINT a});
	$s->query(q{SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:2', replace => true)});
	is(claims_of($pid), '2', 'held: two keyed enqueues hold two claims');
	$s->query(q{ROLLBACK TO a});
	is(claims_of($pid), '1', 'held: the savepoint rolled back releases its claim');
	$s->query(q{SELECT 1/0});
	$s->query(q{ROLLBACK});
	is(claims_of($pid), '0', 'held: an aborted transaction releases its claims');

	# an exception block, then a commit
	$s->query(q{DO $$ BEGIN
	  PERFORM qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:1');
	  BEGIN
	    PERFORM qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:2');
	    RAISE EXCEPTION 'undo';
	  EXCEPTION WHEN raise_exception THEN NULL;
	  END;
	END $$});
	is(claims_of($pid), '0', 'held: a DO block with an exception leaves no claim');

	# cancel in the same transaction, then the key again
	$s->query(q{BEGIN});
	my $j = $s->query(q{SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:1')});
	$s->query(qq{SELECT qlater_cancel($j)});
	my $j2 = $s->query(q{SELECT qlater_enqueue('note(text)', '["t"]', queue => 'held', key => 's:1', replace => true)});
	isnt($j2, $j, 'held: a job cancelled in the transaction is not returned again');
	$s->query(q{COMMIT});
	is(claims_of($pid), '0', 'held: cancel after a keyed enqueue leaves no claim');
	is(su(qq{SELECT count(*) FROM qlater_job WHERE id = $j}), '0', 'held: the cancelled job is gone');

	# PREPARE TRANSACTION after a keyed enqueue
	$s->query(q{BEGIN});
	$s->query(q{SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:2')});
	$s->query(q{PREPARE TRANSACTION 'p1'});
	is(su(q{SELECT count(*) FROM pg_prepared_xacts}), '0', 'held: a keyed enqueue is not prepared');
	$s->query(q{ROLLBACK});
	is(claims_of($pid), '0', 'held: the refused PREPARE leaves no claim');

	# a statement cancelled while waiting for a key lock another session holds
	my $o2 = session('alice');
	$o2->query_safe(q{BEGIN});
	$o2->query_safe(q{SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:2')});
	$s->query(q{BEGIN});
	$s->query(q{SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:1')});
	$s->query_until(qr/go/, q{\echo go
SELECT qlater_enqueue_many('note(text)', '[["a"],["b"]]', queue => 'held', keys => ARRAY['s:2', 's:3']);
});
	wait_for(qq{SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid},
		'held: the enqueue waits for the key another session holds');
	su(qq{SELECT pg_cancel_backend($pid)});
	$s->query(q{ROLLBACK});
	$s->query(q{SELECT 1});
	is(claims_of($pid), '0', 'held: a cancel mid-enqueue leaves no claim');
	$o2->query_safe(q{COMMIT});
	$o2->quit;

	# a FATAL of the enqueuer
	$s->query(q{BEGIN});
	$s->query(q{SELECT qlater_enqueue('note(text)', '["s"]', queue => 'held', key => 's:1')});
	su(qq{SELECT pg_terminate_backend($pid)});
	wait_for(qq{SELECT count(*) = 0 FROM pg_locks WHERE pid = $pid AND locktype = 'advisory'},
		'held: a terminated enqueuer leaves no claim');
	$s->quit;
	is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'held' AND key IN ('s:1','s:2') AND NOT dead}), '2',
		'held: one job per key after all that');
}

# ---------------------------------------------------------------------
# consumers: a held job is not handed out in its enqueue's transaction; a
# claimed or leased job is not replaced
{
	my $id = as('alice', q{SELECT qlater_enqueue('note(text)', '["w"]', queue => 'ext', key => 'e:1')});
	my $s = session('alice');
	$s->query_safe(q{BEGIN});
	is($s->query_safe(q{SELECT qlater_enqueue('note(text)', '["w2"]', queue => 'ext', key => 'e:1', replace => true)}),
		$id, 'held: the waiting job of the external queue is returned');
	is($s->query_safe(q{SELECT count(*) FROM qlater_lock('ext', 5)}), '0',
		'held: qlater_lock in the same transaction does not take the held job');
	$s->query_safe(q{COMMIT});
	my $c = session('alice');
	is($c->query_safe(q{SELECT id FROM qlater_lock('ext', 1)}), $id, 'held: a consumer claims it');
	my $n = as('alice', q{SELECT qlater_enqueue('note(text)', '["w3"]', queue => 'ext', key => 'e:1', replace => true)});
	isnt($n, $id, 'held: replace of a job a consumer holds makes a new job');
	is(su(qq{SELECT args->>0 FROM qlater_job WHERE id = $id}), 'w2', 'held: the held job keeps its args');
	$c->query_safe(qq{SELECT qlater_complete($id)});
	my $l = $c->query_safe(q{SELECT id FROM qlater_lock('ext', 1, lease => '5 minutes')});
	is($l, $n, 'held: a consumer leases the new job');
	my $m = as('alice', q{SELECT qlater_enqueue('note(text)', '["w4"]', queue => 'ext', key => 'e:1', replace => true)});
	isnt($m, $n, 'held: replace of a leased job makes a new job');
	is(su(qq{SELECT args->>0 FROM qlater_job WHERE id = $n}), 'w3', 'held: the leased job keeps its args');
	# the consumer fails the leased job: it goes back to waiting without its key
	my $tok = su(qq{SELECT claim_token FROM qlater_job WHERE id = $n});
	$c->query_safe(qq{SELECT qlater_fail($n, 'no', now(), '$tok')});
	is(su(qq{SELECT coalesce(key, '-') FROM qlater_job WHERE id = $n}), '-',
		'held: a failed job whose key another job holds gives it up');
	is(su(q{SELECT count(*) FROM qlater_job WHERE key = 'e:1' AND NOT dead}), '1',
		'held: one job holds the key');
	$c->quit;
	$s->quit;
}

# ---------------------------------------------------------------------
# U3: a leased job completed in a transaction that commits after its lease
# ran out: an enqueue of its key meanwhile returns it, and it is gone
{
	as('alice', q{SELECT qlater_enqueue('note(text)', '["v1"]', queue => 'ext2', key => 'l:1')});
	my $c = session('alice');
	my ($j, $tok) = split /\|/, $c->query_safe(
		q{SELECT id, claim_token FROM qlater_lock('ext2', 1, lease => '2 seconds')});
	$c->query_safe(q{BEGIN});
	$c->query_safe(qq{SELECT qlater_complete($j, '$tok')});
	wait_for(qq{SELECT lease_until < clock_timestamp() FROM qlater_job WHERE id = $j},
		'U3 setup: the lease runs out while its completion is not committed');
	# the enqueue waits for the completing transaction (the job's row)
	my $q = session('alice');
	$q->query_until(qr/go/, q{\echo go
SELECT qlater_enqueue('note(text)', '["v2"]', queue => 'ext2', key => 'l:1') AS first_enqueue;
});
	wait_for(q{SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%first_enqueue%' AND pid <> pg_backend_pid()},
		'U3: the enqueue waits for the completing transaction');
	$c->query_safe(q{COMMIT});
	my $e = $q->query_safe(q{SELECT 'after'});
	$q->quit;
	note "the enqueue returned $e, the completed job was $j";
	is(su(q{SELECT count(*) FROM qlater_job WHERE key = 'l:1' AND NOT dead}), '1',
		'U3: after the enqueue of key l:1 commits, a job of the key waits');
	# (out of the way of the next claim)
	as('alice', q{SELECT count(qlater_cancel(id)) FROM qlater_jobs WHERE key = 'l:1'});
	# with replace: the enqueue waits for the completion, then fails
	as('alice', q{SELECT qlater_enqueue('note(text)', '["v1"]', queue => 'ext2', key => 'l:2')});
	($j, $tok) = split /\|/, $c->query_safe(
		q{SELECT id, claim_token FROM qlater_lock('ext2', 1, lease => '2 seconds')});
	$c->query_safe(q{BEGIN});
	$c->query_safe(qq{SELECT qlater_complete($j, '$tok')});
	wait_for(qq{SELECT lease_until < clock_timestamp() FROM qlater_job WHERE id = $j},
		'U3 setup: the second lease runs out');
	my $r = session('alice');
	$r->query_until(qr/go/, q{\echo go
SELECT qlater_enqueue('note(text)', '["v2"]', queue => 'ext2', key => 'l:2', replace => true) AS replaced;
});
	wait_for(q{SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%replaced%' AND pid <> pg_backend_pid()},
		'U3 setup: the enqueue with replace waits for the completing transaction');
	$c->query_safe(q{COMMIT});
	my $out = $r->query(q{SELECT 'after'});
	my $err = $r->{stderr};
	note "replace after the completion: out $out err $err";
	unlike($err, qr/could not replace/, 'U3: the enqueue with replace does not fail');
	is(su(q{SELECT count(*) FROM qlater_job WHERE key = 'l:2' AND NOT dead}), '1',
		'U3: a job of key l:2 waits');
	$r->quit;

	$c->quit;
}

# a keyed enqueue of a new key is not prepared either; SERIALIZABLE works
{
	my $s = session('alice');
	$s->query(q{BEGIN});
	$s->query(q{SELECT qlater_enqueue('note(text)', '["p"]', queue => 'held', key => 'p:new')});
	$s->query(q{PREPARE TRANSACTION 'p2'});
	is(su(q{SELECT count(*) FROM pg_prepared_xacts}), '0', 'held: a keyed enqueue of a new key is not prepared');
	$s->query(q{ROLLBACK});
	$s->quit;
	my ($ret, $out, $err) = try_as('alice', q{BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT qlater_enqueue('note(text)', '["p"]', queue => 'held', key => 'p:ser');
SELECT qlater_enqueue('note(text)', '["q"]', queue => 'held', key => 'p:ser', replace => true);
COMMIT;});
	is($ret, 0, 'held: keyed enqueues in a serializable transaction');
	is(su(q{SELECT string_agg(args->>0, ',') FROM qlater_job WHERE key = 'p:ser'}), 'q',
		'held: one job, replaced, in a serializable transaction');
}

# ---------------------------------------------------------------------
# concurrent enqueues of keys in different orders, with duplicates
{
	my @s = map { session('alice') } 1 .. 3;
	$s[0]->query_safe(q{BEGIN});
	$s[0]->query_safe(q{SELECT qlater_enqueue_many('note(text)', '[["a"],["b"],["a"]]', queue => 'held',
	                     keys => ARRAY['o:1','o:2','o:1'], replace => true)});
	$s[1]->query_until(qr/go/, q{\echo go
SELECT count(*) FROM qlater_enqueue_many('note(text)', '[["b"],["a"],["c"]]', queue => 'held', keys => ARRAY['o:2','o:1','o:3']);
});
	$s[2]->query_until(qr/go/, q{\echo go
SELECT count(*) FROM qlater_enqueue_many('note(text)', '[["c"],["b"],["b"]]', queue => 'held', keys => ARRAY['o:3','o:2','o:2'], replace => true);
});
	$s[0]->query_safe(q{COMMIT});
	wait_for(q{SELECT count(*) = 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = 'alice'},
		'held: keys in different orders: no enqueue waits for ever');
	$_->quit for @s;
	is(su(q{SELECT string_agg(key || '=' || n, ',' ORDER BY key) FROM
	        (SELECT key, count(*) n FROM qlater_job WHERE key LIKE 'o:%' AND NOT dead GROUP BY key) k}),
		'o:1=1,o:2=1,o:3=1', 'held: one job per key');
	ok(!$node->log_contains(qr/deadlock detected/), 'held: no deadlock');
}

# ---------------------------------------------------------------------
# qlater_retry of a dead job, while another job holds its key
{
	my $d = as('alice', q{SELECT qlater_enqueue('boom(text)', '["d"]', key => 'r:1')});
	wait_for(qq{SELECT dead FROM qlater_job WHERE id = $d}, 'held: the boom job dies');
	my $w = as('alice', q{SELECT qlater_enqueue('boom(text)', '["d"]', queue => 'held', key => 'r:1')});
	my $d2 = as('alice', q{SELECT qlater_enqueue('boom(text)', '["d"]', key => 'r:1', run_at => now() + interval '1 hour')});
	isnt($d2, $d, 'held: a dead job does not hold its key');
	as('alice', qq{SELECT qlater_retry($d)});
	is(su(qq{SELECT coalesce(key, '-') FROM qlater_job WHERE id = $d}), '-',
		'held: a dead job retried while another holds its key gives it up');
	is(as('alice', q{SELECT qlater_enqueue('boom(text)', '["d"]', key => 'r:1')}), $d2,
		'held: the key still names the waiting job');
	as('alice', qq{SELECT qlater_cancel($d); SELECT qlater_cancel($d2)});
}

# ---------------------------------------------------------------------
# the cost: a keyed enqueue among 100,000 keyed jobs
{
	su(q{INSERT INTO qlater_job (handler, args, queue, role, key, run_at, priority, max_attempts)
	     SELECT h.handler, '["z"]', 'held', 'alice', 'big:' || g, now(), 0, 3
	       FROM (SELECT handler FROM qlater_job WHERE queue = 'held' AND handler LIKE '%note%' LIMIT 1) h,
	            generate_series(1, 100000) g});
	su('ANALYZE qlater_job');
	my $t = time;
	my $id = as('alice', q{SELECT qlater_enqueue('note(text)', '["z"]', queue => 'held', key => 'big:77777')});
	as('alice', q{SELECT count(*) FROM qlater_enqueue_many('note(text)', '[["z"],["z"]]', queue => 'held', keys => ARRAY['big:1','big:99999'])});
	my $took = time - $t;
	note sprintf('two keyed enqueues among 100,000 keyed jobs: %.3f s', $took);
	is(su(q{SELECT count(*) FROM qlater_job WHERE key = 'big:77777'}), '1',
		'held: the key of 100,000 is found');
}

unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no server process ended on a signal');
note sprintf('run time %.1f s', time - $started);

$node->stop;
done_testing();
