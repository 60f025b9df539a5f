# 027_reservations.pl: 8 workers draining batches look past the batches
# under way (the reservation, claim.c) rather than through them.  Asserts
# no speed: every job still takes effect once, a job the reservations pass
# over is still found (the poll look, which would also find it, comes only
# every 10 minutes here), a job of a higher priority still runs ahead of
# the rest of a drain, and slow jobs in batches still run 8 at once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('reservations');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 8\n"
	  . "qlater.poll_interval = '10min'\n"
	  . "max_worker_processes = 16\n");
$node->start;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

sub drained
{
	my ($msg) = @_;
	ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM qlater_jobs'), $msg);
}

q1(q{
CREATE EXTENSION qlater;
SELECT qlater_create_queue('fast', batch_size => 64);
SELECT qlater_create_queue('other', batch_size => 64);
-- no unique constraint: a second run of a job must show up as a duplicate
CREATE TABLE hits (k int NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
                   at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION hit(k int) RETURNS void LANGUAGE sql
AS $$ INSERT INTO hits (k) VALUES (k) $$;
CREATE FUNCTION hit_other(k int) RETURNS void LANGUAGE sql
AS $$ INSERT INTO hits (k) VALUES (k) $$;
CREATE FUNCTION hit_slowly(k int) RETURNS void LANGUAGE sql
AS $$ SELECT pg_sleep(0.001); INSERT INTO hits (k) VALUES (k) $$;
SELECT qlater_register('hit(int)', queue => 'fast', max_attempts => 1);
SELECT qlater_register('hit_other(int)', queue => 'other', max_attempts => 1);
SELECT qlater_register('hit_slowly(int)', queue => 'fast', max_attempts => 1);
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 8 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'8 workers run');

### a drain in full batches, due at once: every job once
my $n = 20000;
q1("SELECT count(*) FROM qlater_enqueue_many('hit', "
	  . "(SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, $n) g))");
drained('a drain of full batches ends');
is(q1('SELECT count(*), count(DISTINCT k), min(k), max(k) FROM hits'),
	"$n|$n|1|$n", 'every job took effect exactly once');
cmp_ok(q1('SELECT count(DISTINCT xid) FROM hits'), '<', $n / 8, 'in batches');
q1('TRUNCATE hits');

### batches that end early: the workers reserve what their last batches
### took, 64 jobs, and take fewer: every 10th job is of another queue, and
### a batch ends at it.  The jobs passed over are found.
q1(q{
SELECT count(qlater_enqueue(CASE WHEN g % 10 = 0 THEN 'hit_other' ELSE 'hit' END,
                            jsonb_build_array(g)))
  FROM generate_series(1, 20000) g;
});
drained('a drain of interleaved queues ends, without the poll look');
is(q1('SELECT count(*), count(DISTINCT k), min(k), max(k) FROM hits'),
	'20000|20000|1|20000', 'every job took effect exactly once');
q1('TRUNCATE hits');

### a job of a higher priority, enqueued while a drain goes on, runs ahead
### of the rest of it (batches of about 20 jobs of 1 ms)
q1("SELECT count(*) FROM qlater_enqueue_many('hit_slowly', "
	  . "(SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, $n) g))");
ok($node->poll_query_until('postgres', 'SELECT count(*) > 1000 FROM hits'),
	'the drain is under way');
q1(q{SELECT qlater_enqueue('hit', '[-1]', priority => 0)});
drained('the drain ends');
is(q1('SELECT count(*), count(DISTINCT k) FROM hits'),
	($n + 1) . '|' . ($n + 1), 'every job took effect exactly once');
my $after = q1(q{
SELECT count(*) FROM hits r, hits u WHERE u.k = -1 AND r.k > 0 AND r.at > u.at});
note "jobs of the drain after the urgent one: $after";
cmp_ok($after, '>', 0, 'the urgent job ran ahead of the rest of the drain');
q1('TRUNCATE hits');

### slow jobs in batches: 8 at once
q1(q{
SELECT qlater_create_queue('slow', batch_size => 64);
CREATE TABLE naps (k int, started timestamptz, ended timestamptz);
CREATE FUNCTION nap(k int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_sleep(0.5);
    INSERT INTO naps VALUES (k, t, clock_timestamp());
END $$;
SELECT qlater_register('nap(int)', queue => 'slow', max_attempts => 1);
SELECT count(*) FROM qlater_enqueue_many('nap',
    (SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 16) g));
});
drained('the slow jobs ran');
is(q1('SELECT count(*), count(DISTINCT k) FROM naps'), '16|16', 'each once');
is( q1(q{
SELECT max(c) FROM (SELECT count(*) c FROM naps a JOIN naps b
                      ON b.started <= a.started AND b.ended > a.started
                     GROUP BY a.k) o}),
	'8', 'the 8 workers ran them 8 at once');

is(q1("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'8', 'all 8 workers are still there');

$node->stop;
done_testing();
