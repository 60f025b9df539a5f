# 055_reload_storm.pl: a configuration reload storm during a drain.
#
# ALTER SYSTEM SET work_mem = '<varying>' and pg_reload_conf() every 0.2 s
# while 10,000 jobs drain, first on a plain queue (a transaction a job),
# then on a batched queue (batch_size 64).  Every job's effect happens
# exactly once, no job is left, no server process dies ("terminated by
# signal" in the log) and the server is never restarted.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $node = PostgreSQL::Test::Cluster->new('storm');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 4\n"
	  . "max_worker_processes = 16\n"
	  # a crash restarts the server, so that the test goes on and counts
	  # every crash (PostgreSQL::Test::Cluster turns this off)
	  . "restart_after_crash = on\n");
$node->start;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

q1(q{
CREATE EXTENSION qlater;
-- no unique constraint: a job that ran twice shows up as a duplicate
CREATE TABLE hits (queue text NOT NULL, k int NOT NULL,
                   pid int NOT NULL DEFAULT pg_backend_pid());
-- a little work a job (1 ms), so that reloads arrive while jobs run
CREATE FUNCTION hit(q text, k int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO hits (queue, k) VALUES (q, k);
    PERFORM pg_sleep(0.001);
END $$;
SELECT qlater_register('hit(text,int)', max_attempts => 3);
SELECT qlater_create_queue('fast', batch_size => 64, batch_delay => '20 ms');
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'4 workers run');

my $start_time = q1('SELECT pg_postmaster_start_time()');
my $log_offset = -s $node->logfile;

my $n = 10000;
my $max_reloads = 1500;    # at 0.2 s: 5 minutes at most a queue
my $max_seconds = 300;

# storm(queue): enqueues the queue's 10,000 jobs in one transaction, due in
# 20 steps 0.2 s apart (so that they run during the storm whatever the speed
# of the machine), then reloads every 0.2 s until the queue is drained (and
# at least 25 reloads were sent) or the bounds are reached.  Returns the
# number of reloads sent while jobs were left, whether the queue drained and
# the number of psql calls of the storm that failed.
sub storm
{
	my ($queue) = @_;
	my $sql = "BEGIN;\n";
	for my $step (0 .. 19)
	{
		my $lo = $step * $n / 20 + 1;
		my $hi = $lo + $n / 20 - 1;
		$sql .= "SELECT count(*) FROM qlater_enqueue_many('hit', "
		  . "(SELECT jsonb_agg(jsonb_build_array('$queue', g)) FROM generate_series($lo, $hi) g), "
		  . "run_at => now() + interval '0.2 s' * $step, queue => '$queue');\n";
	}
	q1($sql . "COMMIT;\n");
	my ($reloads, $during, $failed_psql, $drained) = (0, 0, 0, 0);
	my $t0 = time;
	while ($reloads < $max_reloads && time - $t0 < $max_seconds)
	{
		my $kb = 4096 + 64 * ($reloads % 97);
		my ($rc, $out, $err) = $node->psql('postgres',
			"ALTER SYSTEM SET work_mem = '${kb}kB';\n"
			  . "SELECT pg_reload_conf();\n"
			  . "SELECT count(*) FROM qlater_job;\n");
		$reloads++;
		if ($rc != 0)
		{
			# the server may be restarting after a crash: keep going
			$failed_psql++;
			note "psql failed during the storm: $err";
		}
		else
		{
			my @lines = split /\n/, $out;
			my $left = $lines[-1] // -1;
			$during++ if $left > 0;
			if ($left == 0 && $reloads >= 25)
			{
				$drained = 1;
				last;
			}
		}
		sleep 0.2;
	}
	note sprintf('%s: %d reloads in %.1f s, %d while jobs were left, %d failed psql calls',
		$queue, $reloads, time - $t0, $during, $failed_psql);
	return ($during, $drained, $failed_psql);
}

for my $queue ('default', 'fast')
{
	my ($during, $drained, $failed_psql) = storm($queue);
	# after a crash the server may still be starting
	$node->poll_query_until('postgres', 'SELECT true');
	ok($drained, "$queue: the queue drains during the reload storm");
	is($failed_psql, 0, "$queue: every statement of the storm succeeded (no restart in its way)");
	cmp_ok($during, '>=', 5, "$queue: reloads arrived while jobs were left");
	is( $node->safe_psql('postgres',
			"SELECT count(*), count(DISTINCT k), min(k), max(k) FROM hits WHERE queue = '$queue'"),
		"$n|$n|1|$n",
		"$queue: every job took effect exactly once");
	is( $node->safe_psql('postgres',
			"SELECT string_agg(k::text, ',') FROM (SELECT k FROM hits WHERE queue = '$queue' "
			  . "GROUP BY k HAVING count(*) > 1 ORDER BY k LIMIT 20) d"),
		'', "$queue: no job's effect twice");
	is( $node->safe_psql('postgres', 'SELECT count(*) FROM qlater_job'),
		'0', "$queue: no job is left, dead or pending");
	note "$queue: jobs ran in "
	  . $node->safe_psql('postgres', "SELECT count(DISTINCT pid) FROM hits WHERE queue = '$queue'")
	  . ' worker processes';
}

$node->psql('postgres', "ALTER SYSTEM RESET work_mem; SELECT pg_reload_conf();");

my $log = slurp_file($node->logfile, $log_offset);
my @lines   = split /\n/, $log;
my @signals = grep { /terminated by signal/ } @lines;
no warnings 'uninitialized';
is(scalar(@signals), 0, 'no server process was terminated by a signal')
  or diag join("\n",
	(grep { /terminated by signal|Failed process was running/ } @lines)[0 .. 9]);
is(q1('SELECT pg_postmaster_start_time()'), $start_time, 'the postmaster was not restarted');
# a crash-restart keeps the postmaster (and its start time): its log says it
is(scalar(grep { /reinitializing/ } @lines), 0, 'the server did not reinitialize after a crash');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'the 4 workers still run');

$node->stop('fast', fail_ok => 1);
done_testing();
