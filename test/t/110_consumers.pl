# External consumers claiming jobs over SQL: two sessions never get the same
# job; a killed consumer's claims come back; only the holder may finish a
# job; the claim is released only when the finishing transaction commits;
# NOTIFY reaches one listener at commit and nothing on rollback; a session's
# prepared statements follow the extension when it is dropped and created
# again elsewhere, and when its schema is renamed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('consumers');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION qlater;
	SELECT qlater_create_queue('app', external => true);
	CREATE TABLE done (job bigint PRIMARY KEY, by_pid int);
});

# 1. two consumers never get the same job
$node->safe_psql('postgres',
	q{SELECT count(qlater_enqueue('Work', jsonb_build_array(g), queue => 'app'))
	  FROM generate_series(1, 200) g});
my $a = $node->background_psql('postgres');
my $b = $node->background_psql('postgres');
my $ids_a = $a->query_safe(q{SELECT string_agg(id::text, ',') FROM qlater_lock('app', 60)});
my $ids_b = $b->query_safe(q{SELECT string_agg(id::text, ',') FROM qlater_lock('app', 60)});
my %seen;
my @all = (split(/,/, $ids_a), split(/,/, $ids_b));
$seen{$_}++ for @all;
is(scalar(@all), 120, 'two sessions claimed 60 jobs each');
is(scalar(grep { $seen{$_} > 1 } keys %seen), 0, 'no job was claimed by both sessions');
is($node->safe_psql('postgres', q{SELECT count(*) FROM qlater_jobs WHERE state = 'running'}),
	'120', 'claimed jobs show as running');
is($node->safe_psql('postgres',
		q{SELECT count(DISTINCT locked_by) FROM qlater_jobs WHERE state = 'running'}),
	'2', 'which session holds each claim is visible');

# 2. only the holder may complete; another session is refused
my $one_of_a = (split(/,/, $ids_a))[0];
my ($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT qlater_complete($one_of_a)");
isnt($ret, 0, 'a session that does not hold the claim cannot complete the job');
like($stderr, qr/is not claimed by this session/, 'with a clear error');

# 3. the claim is released only when the completing transaction commits
$a->query_safe("BEGIN");
$a->query_safe("INSERT INTO done VALUES ($one_of_a, pg_backend_pid())");
$a->query_safe("SELECT qlater_complete($one_of_a)");
my $still_claimed = $node->safe_psql('postgres', qq{
	SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036
	   AND objid = $one_of_a AND granted});
is($still_claimed, '1', 'the claim is held until the completing transaction ends');
$a->query_safe("ROLLBACK");
is($node->safe_psql('postgres', "SELECT state FROM qlater_jobs WHERE id = $one_of_a"),
	'running', 'after a rollback the job is still there and still claimed');
$a->query_safe("BEGIN");
$a->query_safe("INSERT INTO done VALUES ($one_of_a, pg_backend_pid())");
$a->query_safe("SELECT qlater_complete($one_of_a)");
$a->query_safe("COMMIT");
is($node->safe_psql('postgres', "SELECT count(*) FROM qlater_jobs WHERE id = $one_of_a"),
	'0', 'completed job is gone after commit');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036
	   AND objid = $one_of_a}), '0', 'and its claim is released');

# 4. a killed consumer's claims come back at once
my $pid_b = $b->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid_b)");
$node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid_b")
  or die "consumer did not go away";
is($node->safe_psql('postgres', q{SELECT count(*) FROM qlater_jobs WHERE state = 'running'}),
	'59', "the killed consumer's claims are released");
my $c = $node->background_psql('postgres');
my $reclaimed = $c->query_safe(qq{SELECT count(*) FROM qlater_lock('app', 1000)
	WHERE id IN ($ids_b)});
is($reclaimed, '60', 'and another consumer claims them again');

# drain everything with two consumers: each job done exactly once
$a->query_safe(q{SELECT qlater_unlock(id) FROM qlater_jobs WHERE locked_by = pg_backend_pid()});
$c->query_safe(q{SELECT qlater_unlock(id) FROM qlater_jobs WHERE locked_by = pg_backend_pid()});
for my $round (1 .. 300)
{
	my $left = 0;
	for my $s ($a, $c)
	{
		my $id = $s->query_safe(q{SELECT id FROM qlater_lock('app', 1)});
		next unless $id;
		$left = 1;
		$s->query_safe("BEGIN");
		$s->query_safe("INSERT INTO done VALUES ($id, pg_backend_pid())");
		$s->query_safe("SELECT qlater_complete($id)");
		$s->query_safe("COMMIT");
	}
	last unless $left;
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM done'), '200',
	'every job was done exactly once');
is($node->safe_psql('postgres', "SELECT count(*) FROM qlater_jobs WHERE queue = 'app'"),
	'0', 'and the queue is empty');

# 5. NOTIFY: one listener, at commit, not on rollback
my $channel = $a->query_safe(q{SELECT qlater_listen('app')});
like($channel, qr/^qlater_\d+_[0-9a-f]{16}$/, 'qlater_listen returns the session channel');
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT qlater_enqueue('Work', '["rolled back"]', queue => 'app');
	ROLLBACK;});
my ($out, $err) = $a->query('SELECT 1');
unlike($out . $err, qr/Asynchronous notification/, 'no notification for a rolled-back enqueue');
$node->safe_psql('postgres',
	q{SELECT qlater_enqueue('Work', '["committed"]', queue => 'app')});
($out, $err) = $a->query('SELECT 1');
like($out . $err, qr/Asynchronous notification "$channel" with payload "\{"queue": "app", "id": \d+\}"/,
	'the listener is notified at commit, with the queue and job id');

# 6. a session keeps working when the extension is dropped and created
# again in another schema ($c prepared its statements before), and when
# that schema is renamed
$node->safe_psql('postgres', q{
	DROP EXTENSION qlater;
	CREATE SCHEMA ql_elsewhere;
	CREATE EXTENSION qlater SCHEMA ql_elsewhere;
	SELECT ql_elsewhere.qlater_create_queue('app', external => true);
	SELECT count(ql_elsewhere.qlater_enqueue('Work', jsonb_build_array(g), queue => 'app'))
	  FROM generate_series(1, 3) g;
});
my $id = $c->query_safe(q{SELECT id FROM ql_elsewhere.qlater_lock('app', 1)});
like($id, qr/^\d+$/, 'a session claims from the extension created again elsewhere');
$c->query_safe("BEGIN");
$c->query_safe("SELECT ql_elsewhere.qlater_complete($id)");
$c->query_safe("COMMIT");
$id = $c->query_safe(q{SELECT id FROM ql_elsewhere.qlater_lock('app', 1)});
$c->query_safe("SELECT ql_elsewhere.qlater_fail($id, 'Error: once')");
my $token = $c->query_safe(
	q{SELECT claim_token FROM ql_elsewhere.qlater_lock('app', 1, lease => '1 minute')});
$c->query_safe(q{SELECT ql_elsewhere.qlater_complete(id, claim_token)
	FROM ql_elsewhere.qlater_jobs WHERE claim_token = '} . $token . q{'});
is($node->safe_psql('postgres', q{
	SELECT string_agg(attempts::text, ',') FROM ql_elsewhere.qlater_jobs}),
	'1', 'and completes, fails and leases there');
$node->safe_psql('postgres', q{
	ALTER SCHEMA ql_elsewhere RENAME TO ql_renamed;
	SELECT ql_renamed.qlater_enqueue('Work', '[4]', queue => 'app');
});
$id = $c->query_safe(q{SELECT id FROM ql_renamed.qlater_lock('app', 1)});
like($id, qr/^\d+$/, 'and claims after its schema was renamed');
$c->query_safe("SELECT ql_renamed.qlater_complete($id)");

$a->quit;
$c->quit;
$node->stop;
done_testing();
