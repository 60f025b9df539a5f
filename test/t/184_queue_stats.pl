# 184_queue_stats.pl: qlater_queue_stats and qlater_queue_histograms (0.5):
# each queue's ready, scheduled, running and dead jobs and its lag, counted
# at each read while the job table is small, by a worker in the
# background once it is large; outcome counters (done, failed, dead,
# timeout, cancelled, purged) of in-server jobs and external consumers,
# added when the outcome commits (a rollback, of a transaction or a
# savepoint, counts nothing); wait and run time percentiles and
# histograms; who sees which queue (its owner, its consumers, admins,
# members of pg_read_all_stats); a queue dropped and created again starts
# from zero; queues beyond the number tracked per database are counted
# together in a row whose queue is NULL; a restart starts every counter
# again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('queue_stats');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE app LOGIN;
CREATE ROLE mon LOGIN IN ROLE pg_read_all_stats;
CREATE ROLE boss LOGIN IN ROLE qlater_admin;
CREATE TABLE done (label text);
GRANT INSERT ON done TO PUBLIC;
CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label) $$;
CREATE FUNCTION bad(label text) RETURNS void LANGUAGE plpgsql
  AS $$ BEGIN RAISE EXCEPTION 'bad %', label; END $$;
CREATE FUNCTION nap(label text) RETURNS void LANGUAGE sql
  AS $$ SELECT pg_sleep(0.3); INSERT INTO public.done VALUES (label) $$;
ALTER FUNCTION ok(text) OWNER TO alice;
ALTER FUNCTION bad(text) OWNER TO alice;
ALTER FUNCTION nap(text) OWNER TO alice;
});

sub as
{
	my ($role, $q) = @_;
	return $node->safe_psql('postgres', $q, defined $role ? (extra_params => [ '-U', $role ]) : ());
}

# the columns of a queue's row, as role sees it ('' if it sees none)
sub stats
{
	my ($role, $queue, $cols) = @_;
	return as($role, "SELECT concat_ws(' ', $cols) FROM qlater_queue_stats WHERE queue = '$queue'");
}

as('alice', q{
SELECT qlater_register('ok(text)', queue => 'a_ok');
SELECT qlater_register('bad(text)', queue => 'a_bad', max_attempts => 2);
SELECT qlater_register('nap(text)', queue => 'a_nap');
SELECT qlater_create_queue('a_ext', external => true);
SELECT qlater_grant_queue('a_ext', 'app');
});
as('bob', q{SELECT qlater_create_queue('b_ext', external => true)});

### in-server jobs: done, failed then dead; the depth while they wait
as('alice', q{SELECT qlater_pause_queue('a_ok')});
as('alice', q{
SELECT count(qlater_enqueue('ok(text)', jsonb_build_array('ok' || i))) FROM generate_series(1, 5) i;
SELECT qlater_enqueue('ok(text)', '["later"]', run_at => now() + interval '1 hour');
});
is(stats('alice', 'a_ok', 'ready, scheduled, running, dead, paused, done_total'),
	'5 1 0 0 t 0', 'a paused queue: 5 ready, 1 scheduled, nothing done');
like(as('alice', q{SELECT oldest_ready_age FROM qlater_queue_stats WHERE queue = 'a_ok'}),
	qr/^00:00:0/, 'the lag of a paused queue is the age of its oldest ready job');
as('alice', q{SELECT qlater_resume_queue('a_ok')});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 5 FROM done WHERE label LIKE 'ok%'}),
	'the jobs run once resumed');
ok( $node->poll_query_until(
		'postgres', q{SELECT done_total = 5 AND ready = 0 AND oldest_ready_age IS NULL
		  FROM qlater_queue_stats WHERE queue = 'a_ok'}), 'done_total 5, nothing ready');
is(stats('alice', 'a_ok', 'scheduled, running, failed_total, dead_total, wait_p50 IS NOT NULL, run_p99 IS NOT NULL'),
	'1 0 0 0 t t', 'the scheduled job waits; wait and run percentiles are known');

as('alice', q{SELECT qlater_enqueue('bad(text)', '["b1"]')});
ok( $node->poll_query_until(
		'postgres', q{SELECT failed_total = 1 FROM qlater_queue_stats WHERE queue = 'a_bad'}),
	'a failed attempt is counted');
as(undef, q{UPDATE qlater_job SET run_at = now() WHERE queue = 'a_bad'});
as(undef, q{SELECT qlater_wake_launcher()});
ok( $node->poll_query_until(
		'postgres', q{SELECT dead_total = 1 AND dead = 1 FROM qlater_queue_stats WHERE queue = 'a_bad'}),
	'its last attempt is counted dead, and the job is dead');

### run time percentiles: jobs of 0.3 s
as('alice', q{SELECT count(qlater_enqueue('nap(text)', jsonb_build_array('n' || i))) FROM generate_series(1, 4) i});
ok( $node->poll_query_until(
		'postgres', q{SELECT done_total = 4 FROM qlater_queue_stats WHERE queue = 'a_nap'}),
	'the napping jobs are done');
is( as('alice', q{SELECT run_p50 BETWEEN '0.25 s' AND '0.5 s' AND run_p99 BETWEEN '0.25 s' AND '0.5 s'
		FROM qlater_queue_stats WHERE queue = 'a_nap'}),
	't', 'their run time percentiles lie in the bucket of 0.3 s');
is( as('alice', q{SELECT kind || ':' || count || ':' || (sum BETWEEN 1.2 AND 3) || ':' || buckets[8] || ':' || buckets[9]
		|| ':' || le[8] || ':' || le[9] || ':' || le[19]
		FROM qlater_queue_histograms WHERE queue = 'a_nap' AND kind = 'run'}),
	'run:4:true:0:4:0.25:0.5:Infinity',
	'the run time histogram: 4 jobs, cumulative buckets, none under 0.25 s, all under 0.5 s');
is( as('alice', q{SELECT count FROM qlater_queue_histograms WHERE queue = 'a_nap' AND kind = 'wait'}),
	'4', 'the wait time histogram counts each attempt');

### external consumers: claimed (running), completed, failed, rolled back
as('alice', q{SELECT count(qlater_enqueue('Ext', jsonb_build_array(i), queue => 'a_ext')) FROM generate_series(1, 6) i});
my $s = $node->background_psql('postgres', extra_params => [ '-U', 'app' ]);
$s->query_safe(q{SELECT count(*) FROM qlater_lock('a_ext', 2)});
is(stats('app', 'a_ext', 'ready, running, done_total'), '4 2 0',
	'a consumer sees the queue it consumes: 2 running (its session claims), 4 ready');
$s->query_safe(q{BEGIN; SELECT qlater_complete(id) FROM qlater_jobs WHERE queue = 'a_ext' AND locked_by = pg_backend_pid(); ROLLBACK});
is(stats('app', 'a_ext', 'running, done_total'), '2 0', 'a completion rolled back counts nothing');
$s->query_safe(q{BEGIN; SAVEPOINT s; SELECT qlater_complete(id) FROM qlater_jobs WHERE queue = 'a_ext' AND locked_by = pg_backend_pid(); ROLLBACK TO s; COMMIT});
is(stats('app', 'a_ext', 'running, done_total'), '2 0', 'nor one rolled back to a savepoint');
$s->query_safe(q{
SELECT qlater_complete(id) FROM qlater_jobs WHERE queue = 'a_ext' AND locked_by = pg_backend_pid() ORDER BY id LIMIT 1;
SELECT qlater_fail(id, 'nope') FROM qlater_jobs WHERE queue = 'a_ext' AND locked_by = pg_backend_pid();
});
is(stats('app', 'a_ext', 'ready, scheduled, running, done_total, failed_total'), '4 1 0 1 1',
	'one completed, one failed (retried later: scheduled)');
$s->query_safe(q{SELECT qlater_complete_many(array_agg(id)) FROM qlater_lock('a_ext', 3)});
is(stats('app', 'a_ext', 'ready, done_total'), '1 4', 'qlater_complete_many counts each job');
is(as('app', q{SELECT count FROM qlater_queue_histograms WHERE queue = 'a_ext' AND kind = 'wait'}),
	'5', 'each claim counts its wait');
is(as('app', q{SELECT count FROM qlater_queue_histograms WHERE queue = 'a_ext' AND kind = 'run'}),
	'5', 'each completion or failure counts its run, from its claim');
is(as('app', q{SELECT run_p99 < '1 min' FROM qlater_queue_stats WHERE queue = 'a_ext'}),
	't', 'the consumers\' run time percentiles are known');
$s->quit;

# a lease that ran out counts as a timeout when the next claim finds it
as('app', q{SELECT count(*) FROM qlater_lock('a_ext', 1, lease => '2 s')});
is(stats('app', 'a_ext', 'ready, running'), '0 1', 'a lease runs');
sleep 3;
is(stats('app', 'a_ext', 'ready, running'), '1 0', 'a lease run out: ready again');
as('app', q{SELECT qlater_unlock(id, claim_token) FROM qlater_lock('a_ext', 1, lease => '1 min')});
is(stats('app', 'a_ext', 'timeout_total'), '1', 'its lapse is counted as a timeout');

# cancel and purge
as('alice', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'a_ext'});
is(stats('alice', 'a_ext', 'ready, scheduled, cancelled_total'), '0 0 2', 'cancelled jobs are counted');
as('alice', q{SELECT qlater_purge_dead('a_bad')});
is(stats('alice', 'a_bad', 'dead, purged_total'), '0 1', 'a purged dead job is counted');

### who sees which queue
is(as('bob', q{SELECT string_agg(queue, ',' ORDER BY queue) FROM qlater_queue_stats}),
	'b_ext', 'a role sees only the queues it owns');
is(as('app', q{SELECT string_agg(queue, ',' ORDER BY queue) FROM qlater_queue_stats}),
	'a_ext', 'a consumer the queues it consumes');
is(as('bob', q{SELECT count(*) FROM qlater_queue_histograms}), '0',
	'nor any histogram of the queues of others');
my $all = as('alice', q{SELECT string_agg(queue, ',' ORDER BY queue) FROM qlater_queue_stats});
is(as('mon', q{SELECT string_agg(queue, ',' ORDER BY queue) FROM qlater_queue_stats}),
	"$all,b_ext", 'a member of pg_read_all_stats sees every queue');
is(as('boss', q{SELECT string_agg(queue, ',' ORDER BY queue) FROM qlater_queue_stats}),
	"$all,b_ext", 'an admin too');
is(as('mon', q{SELECT count(*) > 0 FROM qlater_queue_histograms WHERE queue = 'a_nap'}), 't',
	'and its histograms');
is(as('bob', q{SELECT has_table_privilege('qlater_queue_depth', 'SELECT')}), 'f',
	'the depth counted in the background is not readable directly');

### a queue dropped and created again starts from zero
as('alice', q{SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'a_nap'});
as('alice', q{SELECT qlater_unregister('nap(text)'); SELECT qlater_drop_queue('a_nap')});
as('alice', q{SELECT qlater_create_queue('a_nap')});
is(stats('alice', 'a_nap', 'done_total, run_p50 IS NULL'), '0 t',
	'a queue created again under a dropped one\'s name starts from zero');

### more queues than are tracked per database: the others counted together
as('alice', q{
SELECT count(qlater_create_queue('many_' || i, external => true)) FROM generate_series(1, 270) i;
SELECT count(qlater_enqueue('Ext', '[]', queue => 'many_' || i)) FROM generate_series(1, 270) i;
});
for my $i (1 .. 270)
{
	# one transaction per queue: each queue's entry is made in turn
	$node->safe_psql('postgres', "SELECT qlater_complete(id) FROM qlater_lock('many_$i', 1)",
		extra_params => [ '-U', 'alice' ]);
}
my ($tracked, $untracked) = split /\|/, as('mon', q{
SELECT count(*) FILTER (WHERE done_total = 1), count(*) FILTER (WHERE done_total IS NULL)
FROM qlater_queue_stats WHERE queue LIKE 'many\_%'});
ok($tracked >= 60 && $tracked <= 64 && $tracked + $untracked == 270,
	"an owner's queues tracked have their counters ($tracked, 64 of one owner at most), those beyond have none ($untracked)");
# another owner's queue is still tracked
as('bob', q{SELECT qlater_enqueue('Ext', '[]', queue => 'b_ext'); SELECT qlater_complete(id) FROM qlater_lock('b_ext', 1)});
is(stats('bob', 'b_ext', 'done_total'), '1', 'another owner\'s queue still has its own counters');
is(as('mon', q{SELECT done_total || ' ' || (ready IS NULL) FROM qlater_queue_stats WHERE queue IS NULL}),
	"$untracked true", 'the row whose queue is NULL counts the others together');
is(as('alice', q{SELECT count(*) FROM qlater_queue_stats WHERE queue IS NULL}), '0',
	'only those who see every queue see it');

### a large job table: counted by a worker in the background
as(undef, q{SELECT qlater_create_queue('big', external => true)});
as(undef, q{
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external, dead, attempts)
SELECT 'big', 'Ext', '[]', 100, now() - interval '1 min', 25, 'alice', true, i % 10 = 0, 0
FROM generate_series(1, 40000) i;
ANALYZE qlater_job;
});
# the first read finds no count (NULL), and asks for one
ok( $node->poll_query_until(
		'postgres', q{SELECT ready = 36000 AND dead = 4000 AND counted_at IS NOT NULL
		  FROM qlater_queue_stats WHERE queue = 'big'}),
	'a large table is counted in the background: 36000 ready, 4000 dead');
# (the first reads count the table themselves while a worker makes its count)
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM qlater_queue_depth WHERE queue = 'big'}),
	'the background count is kept in qlater_queue_depth');
is(as(undef, q{SELECT ready || ' ' || dead FROM qlater_queue_stats WHERE queue = 'big'}),
	'36000 4000', 'and read from there: 36000 ready, 4000 dead');
as(undef, q{DELETE FROM qlater_job WHERE queue = 'big'});

### a restart starts the counters again
my $since = as(undef, q{SELECT stats_since FROM qlater_queue_stats WHERE queue = 'a_ok'});
$node->restart;
is(stats('alice', 'a_ok', 'done_total, failed_total'), '0 0', 'after a restart the counters start again');
isnt(as(undef, q{SELECT stats_since FROM qlater_queue_stats WHERE queue = 'a_ok'}), $since,
	'stats_since says so');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process was terminated by a signal');
done_testing();
