# 150_queue_limits.pl: pause and concurrency limits of queues, where jobs
# are claimed.  A pause stops new claims by workers and consumers from its
# commit on (enqueues go on, running jobs finish) and a resume runs the
# jobs at once; max_running holds exactly over workers, consumers and
# both; a slot comes back when its job ends, its lease runs out, or its
# consumer or worker is terminated; a job of another queue is not held up
# behind the jobs of a full queue, nor behind thousands of blocked jobs
# that sort before it; batches stop at the limit; a full table of slots is
# an error for consumers and a logged wait for workers.
#
# qlater.poll_interval is 10 minutes, longer than any wait here: whatever
# ran was woken, not found by the poll.  "Did not run" is told by order, not
# by the clock: a job of an unrestricted queue (the fence) enqueued after
# it has run, and a look reads jobs in claim order, so a job that was not
# blocked would have been claimed first.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('limits');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n"
	  . "qlater.poll_interval = '10min'\n"
	  . "qlater.max_limited_jobs = 12\n");
$node->start;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

q1(q{
CREATE EXTENSION qlater;
CREATE TABLE runs (queue text, k int, pid int, xid xid8, started timestamptz, ended timestamptz);
CREATE TABLE pass (name text PRIMARY KEY);
-- a job: waits until its gate opens (if it has one), sleeps, and records
-- when it started and ended
CREATE FUNCTION job(q text, k int, secs float8 DEFAULT 0, gate text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    IF gate IS NOT NULL THEN
        FOR i IN 1..6000 LOOP
            EXIT WHEN EXISTS (SELECT FROM pass WHERE name = gate);
            PERFORM pg_sleep(0.05);
        END LOOP;
    END IF;
    PERFORM pg_sleep(secs);
    INSERT INTO runs VALUES (q, k, pg_backend_pid(), pg_current_xact_id(), t0, clock_timestamp());
END $$;
SELECT qlater_register('job(text,int,float8,text)', max_attempts => 1);
-- the most jobs of a queue that ran at once
CREATE FUNCTION most_at_once(q text) RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(max((SELECT count(*) FROM runs x
                          WHERE x.queue = r.queue AND x.started <= r.started
                            AND x.ended > r.started)), 0)
      FROM runs r WHERE r.queue = q
$$;
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'4 workers run');

# enq(queue, k, secs, gate, priority): a job of queue; its id
sub enq
{
	my ($queue, $k, $secs, $gate, $prio) = @_;
	$secs //= 0;
	my $g = defined $gate ? "'$gate'" : 'NULL';
	my $p = defined $prio ? ", priority => $prio" : '';
	return q1(
		"SELECT qlater_enqueue('job', jsonb_build_array('$queue', $k, $secs, $g), queue => '$queue'$p)"
	);
}

# enq_many(queue, n, secs, priority): n jobs of queue, in one transaction
sub enq_many
{
	my ($queue, $n, $secs, $prio) = @_;
	$secs //= 0;
	my $p = defined $prio ? ", priority => $prio" : '';
	q1(     "SELECT count(*) FROM qlater_enqueue_many('job', "
		  . "(SELECT jsonb_agg(jsonb_build_array('$queue', g, $secs)) FROM generate_series(1, $n) g), "
		  . "queue => '$queue'$p)");
}

sub drained
{
	my ($queue, $msg) = @_;
	ok( $node->poll_query_until(
			'postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE queue = '$queue'"),
		$msg);
}

sub state_of
{
	my $id = shift;
	return q1("SELECT coalesce((SELECT state FROM qlater_jobs WHERE id = $id), 'gone')");
}

# fence(): a job of an unrestricted queue, enqueued now, has run: every job
# before it in claim order that was not blocked has been claimed
my $fences = 0;
sub fence
{
	$fences++;
	my $id = enq('fence', $fences);
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM qlater_jobs WHERE id = $id")
	  or die "fence job $id did not run";
}

sub wait_running
{
	my $id = shift;
	$node->poll_query_until('postgres', qq{
SELECT count(*) = 1 FROM qlater_jobs j JOIN pg_stat_activity a ON a.pid = j.locked_by
 WHERE j.id = $id AND a.backend_type = 'qlater worker' AND a.query LIKE 'qlater job $id:%'})
	  or die "job $id does not run";
	return q1("SELECT locked_by FROM qlater_jobs WHERE id = $id");
}

########################################################################
# 1. pause, in-server: no new claim from the commit on; the running job
# finishes; enqueues go on; a resume runs the waiting jobs at once
q1("SELECT qlater_create_queue('p')");
my $p_run = enq('p', 1, 0, 'p-run');
wait_running($p_run);
q1("SELECT qlater_pause_queue('p')");
my $p_wait = enq('p', 2);
ok($p_wait =~ /^\d+$/, 'a paused queue takes jobs');
fence();
is(state_of($p_wait), 'pending', 'no worker claims a job of a paused queue');
is(state_of($p_run), 'running', 'the job that ran when the queue was paused goes on');
q1("INSERT INTO pass VALUES ('p-run')");
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM runs WHERE queue = 'p' AND k = 1"),
	'and finishes');
fence();
is(state_of($p_wait), 'pending', 'the paused job still waits');
is(q1("SELECT paused FROM qlater_queues WHERE name = 'p'"), 't', 'qlater_queues shows the pause');
q1("SELECT qlater_resume_queue('p')");
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM runs WHERE queue = 'p' AND k = 2"),
	'a resume runs the waiting job at once (not at the poll)');

########################################################################
# 2. pause, external queue: qlater_lock gets nothing from the commit on
q1(q{SELECT qlater_create_queue('xp', external => true);
	 SELECT count(qlater_enqueue('Work', jsonb_build_array(g), queue => 'xp')) FROM generate_series(1, 3) g});
my $xa = $node->background_psql('postgres');
q1("SELECT qlater_pause_queue('xp')");
is($xa->query_safe("SELECT count(*) FROM qlater_lock('xp', 3)"), '0',
	'a consumer claims nothing of a paused queue');
q1("SELECT qlater_enqueue('Work', '[4]', queue => 'xp')");
q1("SELECT qlater_resume_queue('xp')");
is($xa->query_safe("SELECT count(qlater_complete(id)) FROM qlater_lock('xp', 10)"), '4',
	'after the resume it claims them all, the one enqueued while paused too');

########################################################################
# 3. max_running, workers: 4 workers, a queue limited to 2
q1("SELECT qlater_create_queue('two'); SELECT qlater_alter_queue('two', max_running => 2)");
enq_many('two', 12, 0.2);
drained('two', '12 jobs of a queue limited to 2 ran');
is(q1("SELECT most_at_once('two')"), '2', 'at most 2 ran at once, and 2 did');

########################################################################
# 4. a full queue holds back no other queue: 4 workers, 'exports' limited
# to 3, 10 exports that wait at a gate; a 'mail' job enqueued while 3 of
# them hold their workers and 7 wait runs on the fourth, before any of the
# 7 starts
q1(q{SELECT qlater_create_queue('exports'); SELECT qlater_alter_queue('exports', max_running => 3);
	 SELECT qlater_create_queue('mail')});
q1(     "SELECT count(*) FROM qlater_enqueue_many('job', "
	  . "(SELECT jsonb_agg(jsonb_build_array('exports', g, 0.1, 'exports-gate')) FROM generate_series(1, 10) g), "
	  . "queue => 'exports')");
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 3 FROM qlater_jobs WHERE queue = 'exports' AND state = 'running'"),
	'3 exports run');
enq('mail', 1);
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM runs WHERE queue = 'mail'"),
	'the mail job runs while the exports hold their 3 workers');
is( q1(
		"SELECT count(*) FILTER (WHERE state = 'running') || '|' || count(*) FROM qlater_jobs WHERE queue = 'exports'"),
	'3|10', 'and 7 exports wait');
q1("INSERT INTO pass VALUES ('exports-gate')");
drained('exports', 'the exports ran');
is( q1(q{SELECT count(*) FROM runs e, runs m
		 WHERE e.queue = 'exports' AND m.queue = 'mail' AND e.started > m.started}),
	'7', 'every export that waited started after the mail job');
is(q1("SELECT most_at_once('exports')"), '3', 'at most 3 exports ran at once');

########################################################################
# 5. batches stop at the limit: each job of a batch takes a slot
q1(q{SELECT qlater_create_queue('bl', batch_size => 64);
	 SELECT qlater_alter_queue('bl', max_running => 3)});
enq_many('bl', 60);
drained('bl', '60 quick jobs of a batched queue limited to 3 ran');
is(q1("SELECT max(c) <= 3 FROM (SELECT count(*) c FROM runs WHERE queue = 'bl' GROUP BY xid) b"),
	't', 'no batch held more than 3 of them');
note('batches of the limited queue: '
	  . q1("SELECT string_agg(c::text, ',') FROM (SELECT count(*) c FROM runs WHERE queue = 'bl' GROUP BY xid) b"));

########################################################################
# 6. max_running, consumers racing: 6 pgbench clients on a queue limited to 2
q1(q{SELECT qlater_create_queue('cons', external => true);
	 SELECT qlater_alter_queue('cons', max_running => 2);
	 SELECT count(qlater_enqueue('Work', jsonb_build_array(g), queue => 'cons')) FROM generate_series(1, 40) g});
my $script = q{
SELECT coalesce((SELECT id FROM qlater_lock('cons', 1)), 0) AS id \gset
\if :id > 0
BEGIN;
INSERT INTO runs (queue, k, started) VALUES ('cons', :id, clock_timestamp());
SELECT pg_sleep(0.02);
UPDATE runs SET ended = clock_timestamp() WHERE queue = 'cons' AND k = :id;
SELECT qlater_complete(:id);
COMMIT;
\else
SELECT pg_sleep(0.005);
\endif
};
for my $round (1 .. 30)
{
	last if q1("SELECT count(*) FROM qlater_jobs WHERE queue = 'cons'") eq '0';
	$node->pgbench('-n -c 6 -j 6 -T 2', 0, [qr/processed/], [qr/^$/],
		"consumers race for the queue (round $round)",
		$round == 1 ? { '150_cons' => $script } : undef,
		$round == 1 ? () : ('-f', $node->basedir . '/150_cons'));
}
is(q1("SELECT count(*), count(ended) FROM runs WHERE queue = 'cons'"), '40|40',
	'the consumers did the 40 jobs');
is(q1("SELECT most_at_once('cons')"), '2', 'at most 2 at once, and 2 did');

########################################################################
# 7. consumers: slots come back when the job is finished (at commit), given
# back, its session ends or its lease runs out; a renewed lease keeps it
q1(q{SELECT qlater_create_queue('ext', external => true);
	 SELECT qlater_alter_queue('ext', max_running => 2);
	 SELECT count(qlater_enqueue('Work', jsonb_build_array(g), queue => 'ext')) FROM generate_series(1, 20) g});
my $ca = $node->background_psql('postgres');
my $cb = $node->background_psql('postgres');
my $cc = $node->background_psql('postgres');
my $lock = "SELECT string_agg(id::text, ',') FROM qlater_lock('ext', 5)";
my $id_a = $ca->query_safe("SELECT id FROM qlater_lock('ext', 1)");
my $ids_b = $cb->query_safe($lock);
is(scalar(split(/,/, $ids_b)), 1, 'a consumer asking for 5 gets the one slot left');
is($cc->query_safe($lock), '', 'a third gets none');
$ca->query_safe("SELECT qlater_complete($id_a)");
my $id_c = $cc->query_safe($lock);
like($id_c, qr/^\d+$/, 'a completed job gives its slot back');
$cb->query_safe("BEGIN");
$cb->query_safe("SELECT qlater_complete($ids_b)");
$cb->query_safe("ROLLBACK");
is($ca->query_safe($lock), '', 'a completion rolled back keeps the slot');
my $pid_c = $cc->query_safe('SELECT pg_backend_pid()');
q1("SELECT pg_terminate_backend($pid_c)");
$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid_c")
  or die "consumer did not go away";
like($ca->query_safe($lock), qr/^\d+$/, "a terminated consumer's slot comes back");
$cb->query_safe("SELECT qlater_unlock($ids_b)");
like($ca->query_safe($lock), qr/^\d+$/, 'a job given back gives its slot back');
$ca->query_safe("SELECT count(qlater_unlock(id)) FROM qlater_jobs WHERE locked_by = pg_backend_pid()");

# leases
my $leased = $cb->query_safe(
	"SELECT count(*) FROM qlater_lock('ext', 5, lease => '1 second')");
is($leased, '2', 'leases take slots too');
is($ca->query_safe($lock), '', 'which the other consumers cannot have');
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE queue = 'ext' AND lease_until > now()"),
	'the leases run out');
my $after = $ca->query_safe("SELECT count(*) FROM qlater_lock('ext', 5)");
is($after, '2', 'and their slots come back');
$ca->query_safe("SELECT count(qlater_unlock(id)) FROM qlater_jobs WHERE locked_by = pg_backend_pid()");
$cb->query_safe("BEGIN");
$cb->query_safe("SELECT count(*) FROM qlater_lock('ext', 5, lease => '1 hour')");
$cb->query_safe("ROLLBACK");
is($ca->query_safe("SELECT count(qlater_unlock(id)) FROM qlater_lock('ext', 5)"), '2',
	'a lease rolled back takes no slot');
my $t0 = q1("SELECT clock_timestamp()");
my $tokens = $cb->query_safe(
	"SELECT string_agg(id || ':' || claim_token, ' ') FROM qlater_lock('ext', 5, lease => '2 seconds')");
my @tok = map { [ split /:/ ] } split / /, $tokens;
is(scalar(@tok), 2, 'two leases');
$cb->query_safe("SELECT qlater_extend($_->[0], '$_->[1]', '1 hour')") for @tok;
$node->poll_query_until('postgres', "SELECT clock_timestamp() > '$t0'::timestamptz + interval '3 seconds'")
  or die "clock";
is($ca->query_safe($lock), '', 'a renewed lease keeps its slot past its first end');
$cb->query_safe("BEGIN");
$cb->query_safe("SELECT qlater_complete($tok[0][0], '$tok[0][1]')");
is($ca->query_safe($lock), '', 'until the completing transaction commits');
$cb->query_safe("COMMIT");
like($ca->query_safe($lock), qr/^\d+$/, 'then the slot is free');
$cb->query_safe("SELECT qlater_unlock($tok[1][0], '$tok[1][1]')");
like($ca->query_safe($lock), qr/^\d+$/, 'a lease given back gives its slot back at commit');
$ca->query_safe("SELECT count(qlater_unlock(id)) FROM qlater_jobs WHERE locked_by = pg_backend_pid()");

########################################################################
# 8. workers and consumers share the limit: consumers hold the 2 slots of
# an external queue that becomes in-server; the workers run none of its
# jobs until the consumer is gone, then all
my $sig = q1("SELECT handler FROM qlater_handler WHERE handler LIKE '%job(%'");
q1(qq{SELECT qlater_create_queue('mix', external => true);
	  SELECT qlater_alter_queue('mix', max_running => 2);
	  SELECT count(qlater_enqueue('$sig', jsonb_build_array('mix', g, 0.3), queue => 'mix'))
	    FROM generate_series(1, 4) g});
is($ca->query_safe("SELECT count(*) FROM qlater_lock('mix', 4)"), '2',
	'a consumer holds both slots of the queue');
q1("SELECT qlater_alter_queue('mix', external => false)");
fence();
is(q1("SELECT count(*) FROM runs WHERE queue = 'mix'"), '0',
	"the workers run no job of the queue while the consumer's claims hold its slots");
my $pid_a = $ca->query_safe('SELECT pg_backend_pid()');
q1("SELECT pg_terminate_backend($pid_a)");
ok($node->poll_query_until('postgres', "SELECT count(*) = 4 FROM runs WHERE queue = 'mix'"),
	'once the consumer is gone, the workers run them all');
is(q1("SELECT most_at_once('mix')"), '2', 'two at a time');

########################################################################
# 9. a worker terminated in the middle of a job gives its slot back
q1("SELECT qlater_create_queue('k1'); SELECT qlater_alter_queue('k1', max_running => 1)");
my $k_long = enq('k1', 1, 0, 'k1-gate');
my $k_pid = wait_running($k_long);
my $k_short = enq('k1', 2);
fence();
is(state_of($k_short), 'pending', 'the second job of a queue limited to 1 waits');
q1("SELECT pg_terminate_backend($k_pid)");
$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $k_pid")
  or die "worker did not go away";
q1("INSERT INTO pass VALUES ('k1-gate')");
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE id IN ($k_long, $k_short)"),
	"the terminated worker's slot came back: both jobs ran");

########################################################################
# 10. thousands of blocked jobs sort before the runnable ones (paused,
# limited to 0, full): the runnable ones drain, and the blocked ones run
# once unblocked
q1(q{SELECT qlater_create_queue('bp'); SELECT qlater_pause_queue('bp');
	 SELECT qlater_create_queue('bz'); SELECT qlater_alter_queue('bz', max_running => 0);
	 SELECT qlater_create_queue('bf'); SELECT qlater_alter_queue('bf', max_running => 1);
	 SELECT qlater_create_queue('run')});
my $bf_hold = enq('bf', 0, 0, 'bf-gate', 40);
wait_running($bf_hold);
enq_many('bp', 1000, 0, 50);
enq_many('bz', 1000, 0, 50);
enq_many('bf', 200, 0, 50);
enq_many('run', 500, 0, 100);
drained('run', 'the 500 runnable jobs drain behind 2,200 blocked ones');
is( q1(
		"SELECT string_agg(queue || ':' || n, ' ' ORDER BY queue) FROM "
		  . "(SELECT queue, count(*) n FROM qlater_jobs WHERE queue IN ('bp', 'bz', 'bf') GROUP BY queue) s"),
	'bf:201 bp:1000 bz:1000',
	'the blocked jobs wait');
q1("SELECT qlater_resume_queue('bp')");
drained('bp', 'the paused queue drains after its resume');
q1("SELECT qlater_alter_queue('bz', max_running => -1)");
drained('bz', 'the queue limited to 0 drains once its limit is removed');
q1("INSERT INTO pass VALUES ('bf-gate')");
drained('bf', 'the full queue drains once its running job ends');
is(q1("SELECT most_at_once('bf')"), '1', 'one at a time');

########################################################################
# 11. the table of slots (qlater.max_limited_jobs = 12) full: a consumer
# gets fewer jobs, then an error with a hint; a worker leaves the job,
# logged once, and runs it once there is room
q1(q{SELECT qlater_create_queue('big', external => true);
	 SELECT qlater_alter_queue('big', max_running => 100);
	 SELECT count(qlater_enqueue('Work', jsonb_build_array(g), queue => 'big')) FROM generate_series(1, 20) g});
my $cx = $node->background_psql('postgres');
is($cx->query_safe("SELECT count(*) FROM qlater_lock('big', 20)"), '12',
	'a consumer gets as many jobs as the table has slots');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT * FROM qlater_lock('big', 1)");
isnt($ret, 0, 'a claim finds no slot left');
like($err, qr/ERROR:  too many jobs of queues with a limit are running/, 'with an error');
like($err, qr/HINT:  Raise qlater.max_limited_jobs/, 'and a hint');
my $log_pos = -s $node->logfile;
q1("SELECT qlater_create_queue('wl'); SELECT qlater_alter_queue('wl', max_running => 5)");
my $wl = enq('wl', 1);
fence();
is(state_of($wl), 'pending', 'a worker leaves a job that finds no slot');
ok($node->wait_for_log(qr/LOG:  too many jobs of queues with a limit are running/, $log_pos),
	'and logs it');
$cx->query_safe("SELECT count(qlater_unlock(id)) FROM qlater_jobs WHERE locked_by = pg_backend_pid()");
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM qlater_jobs WHERE id = $wl"),
	'once there is room, the job runs');
my @room_logs = grep { /too many jobs of queues with a limit are running/ }
  split /\n/, substr(slurp_file($node->logfile), $log_pos);
cmp_ok(scalar(@room_logs), '<=', 4, 'logged once per worker at most (' . scalar(@room_logs) . ')');

$xa->quit;
$cb->quit;
$cx->quit;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process ended by a signal');
$node->stop;
done_testing();
