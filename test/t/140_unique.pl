# 140_unique.pl: jobs with keys while workers run them.  A running job
# does not hold its key for a new enqueue (a new job is made, and both
# run); a job that goes back to waiting while another job of its key is
# alive gives the key up (a failure recorded by a worker, alone and in a
# batch; an attempt that overran its timeout, counted later); and many
# sessions enqueueing a few keys at once, with and without replace, while
# the workers run and fail the jobs, never leave two waiting jobs of one
# key, never deadlock, and always get an id.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('unique');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n"
	  . "log_lock_waits = on\n");
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE TABLE ran (label text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE release (label text PRIMARY KEY);

-- runs until its label is released, then records its run (or fails)
CREATE FUNCTION hold(label text, fail boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        EXIT WHEN EXISTS (SELECT FROM release r WHERE r.label = hold.label);
        PERFORM pg_sleep(0.02);
    END LOOP;
    IF fail THEN
        RAISE EXCEPTION 'hold % failed', label;
    END IF;
    INSERT INTO ran (label) VALUES (label);
END
$$;
SELECT qlater_register('hold(text,boolean)', max_attempts => 5);

-- catches the cancel of its timeout and goes on: its worker is ended
CREATE FUNCTION stubborn(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM pg_sleep(30);
    EXCEPTION WHEN query_canceled THEN
        PERFORM pg_sleep(30);
    END;
END
$$;
SELECT qlater_register('stubborn(text)', timeout => '200 ms', max_attempts => 5);

SELECT qlater_create_queue('batched', batch_size => 4, batch_delay => '10 ms');
});

sub q1 { return $node->safe_psql('postgres', $_[0]); }

# wait until a worker runs job $id
sub running
{
	my ($id, $what) = @_;
	ok( $node->poll_query_until(
			'postgres', qq{
		SELECT count(*) = 1 FROM qlater_jobs j JOIN pg_stat_activity a ON a.pid = j.locked_by
		 WHERE j.id = $id AND a.backend_type = 'qlater worker'}),
		"$what runs");
}

# the keys of the waiting jobs of a key, in id order
sub keys_of
{
	my ($ids) = @_;
	return q1(qq{SELECT string_agg(coalesce(key, '-'), ',' ORDER BY id)
	               FROM qlater_job WHERE id IN ($ids)});
}

### 0. the functions of a database still at 0.1 (their arguments without
### key and replace) raise the error of an outdated extension; updated, they
### take keys
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('old', q{
CREATE EXTENSION qlater VERSION '0.1';
CREATE FUNCTION noop(int) RETURNS void LANGUAGE sql AS '';
});
for my $call (q{SELECT qlater_enqueue('noop', '[1]')},
	q{SELECT qlater_enqueue_many('noop', '[[1]]')})
{
	my ($ret, $out, $err) = $node->psql('old', $call);
	like($err, qr/extension "qlater" must be updated to version \d+\.\d+/,
		"at 0.1: $call");
}
$node->safe_psql('old', q{ALTER EXTENSION qlater UPDATE; SELECT qlater_register('noop(int)')});
is( $node->safe_psql(
		'old', q{
	SELECT qlater_enqueue('noop', '[1]', run_at => now() + interval '1 day', key => 'k')
	     = qlater_enqueue('noop', '[2]', run_at => now() + interval '1 day', key => 'k')}),
	't', 'updated: one job per key');
$node->safe_psql('postgres', 'DROP DATABASE old');

### 1. a running job's key: a new job, and both run
my $r1 = q1(q{SELECT qlater_enqueue('hold', '["r1"]', key => 'r')});
running($r1, 'the first job of key r');
my $r2 = q1(q{SELECT qlater_enqueue('hold', '["r2"]', key => 'r',
                                      run_at => now() + interval '1 hour')});
isnt($r2, $r1, 'an enqueue of a running job\'s key makes a new job');
is(q1(q{SELECT qlater_enqueue('hold', '["r3"]', key => 'r')}), $r2,
	'the next enqueue returns the job that waits, not the running one');
is(q1(q{SELECT qlater_enqueue('hold', '["r4"]', key => 'r', replace => true)}), $r2,
	'with replace too');
running($r2, 'the second job of key r, due now after replace, beside the first');
q1(q{INSERT INTO release VALUES ('r1'), ('r4')});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM qlater_job WHERE key = 'r'}),
	'both jobs of key r finish');
is(q1(q{SELECT string_agg(label, ',' ORDER BY label) FROM ran}), 'r1,r4',
	'both ran: the first with its args, the second with the replaced ones');

### 2. a failed attempt rescheduled while another job has the key gives it up
my $f1 = q1(q{SELECT qlater_enqueue('hold', '["f1", true]', key => 'f')});
running($f1, 'the failing job of key f');
my $f2 = q1(q{SELECT qlater_enqueue('hold', '["f2"]', key => 'f',
                                      run_at => now() + interval '1 hour')});
isnt($f2, $f1, 'a new job for key f while the first runs');
q1(q{INSERT INTO release VALUES ('f1')});
ok($node->poll_query_until('postgres', "SELECT attempts = 1 FROM qlater_job WHERE id = $f1"),
	'the first attempt failed and was rescheduled');
is(keys_of("$f1, $f2"), '-,f', 'the rescheduled job gave its key to the waiting one');
is(q1(q{SELECT qlater_enqueue('hold', '["f3"]', key => 'f')}), $f2,
	'which the next enqueue of the key returns');

# alone, it keeps its key: the next enqueue returns it in its backoff
my $g1 = q1(q{SELECT qlater_enqueue('hold', '["g1", true]', key => 'g')});
running($g1, 'the failing job of key g');
q1(q{INSERT INTO release VALUES ('g1')});
ok($node->poll_query_until('postgres', "SELECT attempts = 1 FROM qlater_job WHERE id = $g1"),
	'its attempt failed');
is(keys_of($g1), 'g', 'alone, the rescheduled job keeps its key');
is(q1(q{SELECT qlater_enqueue('hold', '["g2"]', key => 'g')}), $g1,
	'and the next enqueue returns it, in its backoff');
q1("SELECT qlater_cancel($g1)");

# in a batch: the same
my $b1 = q1(q{SELECT qlater_enqueue('hold', '["b1", true]', key => 'b', queue => 'batched')});
running($b1, 'the failing job of key b, in a batch');
my $b2 = q1(q{SELECT qlater_enqueue('hold', '["b2"]', key => 'b', queue => 'batched',
                                      run_at => now() + interval '1 hour')});
q1(q{INSERT INTO release VALUES ('b1')});
ok($node->poll_query_until('postgres', "SELECT attempts = 1 FROM qlater_job WHERE id = $b1"),
	'the attempt in the batch failed');
is(keys_of("$b1, $b2"), '-,b', 'the job failed in a batch gave its key to the waiting one');

# an attempt that overran its timeout, counted by another worker later
my $s1 = q1(q{SELECT qlater_enqueue('stubborn', '["s1"]', key => 's')});
running($s1, 'the stubborn job of key s');
my $s2 = q1(q{SELECT qlater_enqueue('stubborn', '["s2"]', key => 's',
                                      run_at => now() + interval '1 hour')});
ok($node->poll_query_until('postgres', "SELECT attempts = 1 FROM qlater_job WHERE id = $s1"),
	'the overrun was counted');
like(q1("SELECT last_error->>'message' FROM qlater_job WHERE id = $s1"), qr/timed out/,
	'as a timeout');
is(keys_of("$s1, $s2"), '-,s', 'the job whose overrun was counted gave its key up');
q1(q{SELECT qlater_cancel(id) FROM qlater_job WHERE NOT dead});

### 3. many sessions, a few keys, workers running and failing the jobs
$node->safe_psql(
	'postgres', q{
CREATE TABLE got (id bigint, n int);
CREATE TABLE violations (key text, ids bigint[], at timestamptz DEFAULT clock_timestamp());
CREATE TABLE stop ();

CREATE FUNCTION work(k int, c int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(random() * 0.01);
    INSERT INTO ran (label) VALUES ('w' || k);
    IF random() < 0.2 THEN
        RAISE EXCEPTION 'work % failed', k;
    END IF;
END
$$;
SELECT qlater_register('work(int,int)', max_attempts => 2);

/*
 * Two waiting jobs with one key, seen consistently: a row version read by
 * one statement, whose claim the lock table (read later in that statement)
 * shows free, and which a later statement finds still current, was a
 * waiting job when the lock table was read.  A job that finished or was
 * rescheduled in between is not counted.
 */
CREATE FUNCTION waiting_twice() RETURNS SETOF violations LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    FOR v IN
        WITH claims AS MATERIALIZED (
            SELECT (l.classid::bigint << 32) | l.objid::bigint AS id
              FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.objsubid = 29036 AND l.granted
               AND l.database = (SELECT oid FROM pg_database
                                  WHERE datname = current_database())),
        w AS (
            SELECT j.id, j.xmin::text AS x, j.queue, j.role, j.key
              FROM qlater_job j
             WHERE j.key IS NOT NULL AND NOT j.dead
               AND (j.lease_until IS NULL OR j.lease_until < now())
               AND j.id NOT IN (SELECT id FROM claims))
        SELECT key, array_agg(id ORDER BY id) AS ids, array_agg(x ORDER BY id) AS xs
          FROM w GROUP BY queue, role, key HAVING count(*) > 1
    LOOP
        IF (SELECT count(*) FROM qlater_job j, unnest(v.ids, v.xs) AS u (id, x)
             WHERE j.id = u.id AND j.xmin::text = u.x) > 1 THEN
            RETURN NEXT ROW(v.key, v.ids, clock_timestamp())::violations;
        END IF;
    END LOOP;
END
$$;

CREATE PROCEDURE watch() LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        EXIT WHEN EXISTS (SELECT FROM stop);
        INSERT INTO violations SELECT * FROM waiting_twice();
        COMMIT;
        PERFORM pg_sleep(0.01);
    END LOOP;
END
$$;
});

# the watcher checks all along, in a session of its own
my ($w_in, $w_out, $w_err) = ("CALL watch();\n", '', '');
my $watcher = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', '-' ],
	'<', \$w_in, '>', \$w_out, '2>', \$w_err);
$watcher->pump_nb while length $w_in;
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'CALL watch();'}),
	'the watcher watches');

my $clients = 12;
my $per_client = 300;
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=4 --transactions=$per_client",
	0,
	[qr{processed: @{[$clients * $per_client]}/@{[$clients * $per_client]}}],
	[qr{^$}],
	'12 sessions enqueue 6 keys at once, with and without replace',
	{
		'140_one@5' => q{
\set k random(1, 6)
\set r random(0, 1)
BEGIN;
SELECT qlater_enqueue('work', jsonb_build_array(:k, :client_id), key => 'c' || :k,
                      replace => :r = 1) AS id \gset
INSERT INTO got VALUES (:id, 1);
END;
},
		'140_many@2' => q{
\set a random(1, 6)
\set b random(1, 6)
\set r random(0, 1)
INSERT INTO got
SELECT id, 3 FROM qlater_enqueue_many('work',
    jsonb_build_array(jsonb_build_array(:a, :client_id), jsonb_build_array(:b, :client_id),
                      jsonb_build_array(0, :client_id)),
    keys => ARRAY['c' || :a, 'c' || :b, NULL], replace => :r = 1) AS id;
},
		'140_twice@1' => q{
\set k random(1, 6)
BEGIN;
SELECT qlater_enqueue('work', jsonb_build_array(:k, :client_id), key => 'c' || :k) AS id1 \gset
SELECT qlater_enqueue('work', jsonb_build_array(:k, :client_id), key => 'c' || :k,
                      replace => true) AS id2 \gset
INSERT INTO got SELECT :id1, 1 WHERE :id1 = :id2;
END;
},
	});

my $after = q1(q{SELECT count(*) FROM waiting_twice()});
q1(q{INSERT INTO stop DEFAULT VALUES});
$watcher->finish;
is($w_err, '', 'the watcher ran to the end');
is(q1(q{SELECT count(*) FROM violations}), '0',
	'never two waiting jobs of one key while the sessions enqueued')
  or diag(q1(q{SELECT string_agg(key || ' ' || ids::text, '; ') FROM violations}));
is($after, '0', 'nor once they stopped');
is(q1(q{SELECT count(*) FROM got WHERE id IS NULL}), '0', 'every enqueue returned an id');
is(q1(q{SELECT sum(CASE n WHEN 3 THEN 1.0 / 3 ELSE 1 END)::int FROM got}),
	$clients * $per_client, 'every transaction recorded its ids');
ok(q1(q{SELECT count(DISTINCT id) FROM got}) > 6, 'and keyed jobs ran and came again');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM qlater_job WHERE NOT dead}),
	'every job ran (or died)');
ok(q1(q{SELECT count(*) FROM ran WHERE label LIKE 'w%'}) > 0, 'the workers ran them');

my $log = slurp_file($node->logfile);
unlike($log, qr/deadlock detected/, 'no deadlock');
unlike($log, qr/terminated by signal/, 'no process crashed');

$node->stop;
done_testing();
