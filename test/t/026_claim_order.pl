# 026_claim_order.pl: the workers look for jobs from a claim frontier that
# moves past the jobs done; a job that lands before it (a higher priority,
# a retry, a job coming due) is still found at once, ahead of the rest of a
# drain, and one written around qlater's functions within
# qlater.poll_interval.
#
# "At once" is checked by order, not by the clock: with a minute's
# poll_interval, a job the frontier hid would wait for the end of the
# drain (or the poll); run ahead of the drain's last jobs, it was found by
# the look from the frontier.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('order');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 1\n"
	  . "qlater.poll_interval = '60s'\n"
	  . "max_worker_processes = 16\n");
$node->start;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

q1(q{
CREATE EXTENSION qlater;
CREATE TABLE ran (label text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION slow(label text) RETURNS void LANGUAGE sql AS $$
    SELECT pg_sleep(0.002);
    INSERT INTO ran (label) VALUES (label);
$$;
CREATE FUNCTION mark(label text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ran (label) VALUES (label);
$$;
CREATE FUNCTION fail(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM ran WHERE label = 'retry-now') THEN
        RAISE EXCEPTION 'not yet';
    END IF;
    INSERT INTO ran (label) VALUES (what);
END $$;
SELECT qlater_register('slow(text)');
SELECT qlater_register('mark(text)');
SELECT qlater_register('fail(text)', max_attempts => 1);
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'qlater worker'"),
	'the worker runs');

# a failed job of priority 0, dead, to retry later
my $dead = q1("SELECT qlater_enqueue('fail', '[\"retried\"]', priority => 0)");
ok($node->poll_query_until('postgres', "SELECT state = 'dead' FROM qlater_jobs WHERE id = $dead"),
	'a job of priority 0 is dead');

# a long drain at priority 100: about 2 ms a job
q1("SELECT count(*) FROM qlater_enqueue_many('slow', "
	  . "(SELECT jsonb_agg(jsonb_build_array('bulk')) FROM generate_series(1, 3000)))");
ok($node->poll_query_until('postgres', "SELECT count(*) > 200 FROM ran WHERE label = 'bulk'"),
	'the drain is under way');

# while it goes on: a job coming due at priority 50, one of priority 0,
# and a retry of priority 0
q1("SELECT qlater_enqueue('mark', '[\"due\"]', priority => 50, run_at => now() + interval '1.5 s')");
q1("SELECT qlater_enqueue('mark', '[\"urgent\"]', priority => 0)");
q1(q{INSERT INTO ran (label) VALUES ('retry-now')});
q1("SELECT qlater_retry($dead)");

ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 3 FROM ran WHERE label IN ('due', 'urgent', 'retried')"),
	'all three ran');
my $pending_bulk = q1("SELECT count(*) FROM qlater_jobs WHERE args = '[\"bulk\"]'");
note "$pending_bulk jobs of the drain left";
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM qlater_jobs'),
	'the drain ends');
is(q1("SELECT count(*) FROM ran WHERE label = 'bulk'"), '3000', 'every job of it ran once');
# how many jobs of the drain ran after each of the three
my ($urgent, $retried, $due) = split /\|/, q1(q{
SELECT concat_ws('|',
    (SELECT count(*) FROM ran r, ran u WHERE r.label = 'bulk' AND u.label = 'urgent' AND r.at > u.at),
    (SELECT count(*) FROM ran r, ran u WHERE r.label = 'bulk' AND u.label = 'retried' AND r.at > u.at),
    (SELECT count(*) FROM ran r, ran u WHERE r.label = 'bulk' AND u.label = 'due' AND r.at > u.at))});
note "jobs of the drain after them: urgent $urgent, retried $retried, due $due";
cmp_ok($urgent, '>', 0, 'a job of a higher priority runs at once, ahead of the rest of the drain');
cmp_ok($retried, '>', 0, 'so does a retried one');
cmp_ok($due, '>', 0, 'so does the job coming due');

# a job written around qlater's functions, which move the frontier back:
# only the look from the start, every poll_interval, finds it.  The drain
# is over, so the frontier is past every job before it.
$node->safe_psql(
	'postgres', q{
ALTER SYSTEM SET qlater.poll_interval = '2s';
SELECT pg_reload_conf();
});
sleep(1);    # the reload wakes the worker; it sleeps again with the new setting
q1(q{INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role)
     VALUES ('default', 'public.mark(text)', '["direct"]', 0, now(), 1, current_user)});
q1(q{INSERT INTO ran (label) VALUES ('written')});
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ran WHERE label = 'direct'"),
	'a job written directly runs');
my $direct = q1(q{
SELECT extract(epoch FROM r.at - w.at) FROM ran r, ran w WHERE r.label = 'direct' AND w.label = 'written'});
note "direct after $direct s";
cmp_ok($direct, '<', 30, 'within the poll_interval of 2 s, with room for a busy machine');

$node->stop;
done_testing();
