# Queues and the races around their names: an enqueue into a queue that is
# being dropped waits for the drop, and then puts its job into a queue of its
# own, never into a name without a row (which another role could take and,
# made external, read the job through); a drop waits for the enqueues under
# way and counts their jobs; a change of kind waits for them too.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('queue_races');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION qlater;
	CREATE ROLE owner_a LOGIN;
	CREATE ROLE tenant_b LOGIN;
	CREATE FUNCTION work_b(x int) RETURNS void LANGUAGE sql AS '';
	ALTER FUNCTION work_b(int) OWNER TO tenant_b;
});
$node->safe_psql('postgres', q{SELECT qlater_register('work_b(int)')}, extra_params => [ '-U', 'tenant_b' ]);

my $orphans = q{SELECT count(*) FROM qlater_job j
                 WHERE NOT EXISTS (SELECT FROM qlater_queue q WHERE q.name = j.queue)};

# waits: a session waits on a lock of qlater's queue key space
sub wait_for_queue_lock
{
	my ($what) = @_;
	ok( $node->poll_query_until('postgres',
			q{SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory'
			   AND objsubid = 29038 AND NOT granted}),
		$what);
}

# 1. a drop under way: the enqueue waits, then makes the queue its own
$node->safe_psql('postgres', q{
	SET ROLE owner_a;
	SELECT qlater_create_queue('race_q');
	SELECT qlater_grant_queue('race_q', 'tenant_b', 'enqueue');
});
my $dropper = $node->background_psql('postgres');
my $enqueuer = $node->background_psql('postgres');
$enqueuer->query_safe(q{SET ROLE tenant_b});
# the enqueuer's session has read the queue before the drop
$enqueuer->query_safe(q{BEGIN; SELECT qlater_enqueue('work_b', '[0]', queue => 'race_q',
	run_at => now() + interval '1 day'); ROLLBACK});
$dropper->query_safe(q{BEGIN; SET ROLE owner_a; SELECT qlater_drop_queue('race_q')});
$enqueuer->query_until(qr/started/, q{\echo started
SELECT qlater_enqueue('work_b', '[1]', queue => 'race_q', run_at => now() + interval '1 day');
\echo enqueued
});
wait_for_queue_lock('the enqueue waits for the drop under way');
$dropper->query_safe('COMMIT');
$enqueuer->query_until(qr/enqueued/, '');
is($node->safe_psql('postgres', $orphans), '0', 'no job is left in a queue without a row');
is($node->safe_psql('postgres', q{SELECT owner FROM qlater_queues WHERE name = 'race_q'}),
	'tenant_b', 'the enqueue made the queue anew, as its own');

# 2. an enqueue under way: the drop waits, then sees its job
$node->safe_psql('postgres', q{
	SET ROLE tenant_b;
	SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'race_q';
	SELECT qlater_create_queue('race_r');
	SELECT qlater_grant_queue('race_r', 'owner_a', 'enqueue');
});
$enqueuer->query_safe(q{BEGIN; SELECT qlater_enqueue('work_b', '[2]', queue => 'race_r',
	run_at => now() + interval '1 day')});
$dropper->query_until(qr/started/, q{\set ON_ERROR_STOP 0
\echo started
SET ROLE tenant_b;
SELECT qlater_drop_queue('race_r');
\echo dropped
});
wait_for_queue_lock('the drop waits for the enqueue under way');
$enqueuer->query_safe('COMMIT');
$dropper->query_until(qr/dropped/, '');
is($node->safe_psql('postgres', q{SELECT count(*) FROM qlater_queues WHERE name = 'race_r'}),
	'1', 'the drop saw the job committed while it waited, and was refused');
is($node->safe_psql('postgres', $orphans), '0', 'and no job is left without its queue');

# 3. the same in REPEATABLE READ: the drop's check is not fooled by an old snapshot
$node->safe_psql('postgres', q{SET ROLE tenant_b; SELECT qlater_create_queue('race_s')});
$dropper->quit;
$dropper = $node->background_psql('postgres');
$dropper->query_safe(q{RESET ROLE; BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1});
$enqueuer->query_safe(q{SELECT qlater_enqueue('work_b', '[3]', queue => 'race_s',
	run_at => now() + interval '1 day')});
$dropper->query_until(qr/dropped/, q{SELECT qlater_drop_queue('race_s');
\echo dropped
ROLLBACK;
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM qlater_queues WHERE name = 'race_s'}),
	'1', 'a drop in a repeatable read transaction sees a job committed after its snapshot');

$dropper->quit;
$enqueuer->quit;
ok(!$node->log_contains(qr/terminated by signal/), 'no server process was terminated by a signal');
done_testing();
