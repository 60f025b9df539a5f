# 117_lease_lapse.pl: a lease that runs out counts as a failed attempt of
# its job, recorded by the next qlater_lock that meets the job (session
# mode or lease mode): attempts + 1, last_error says the lease ran out,
# the job waits out the usual backoff (or is 'dead' after max_attempts),
# and the claim goes on to the next job of the queue.  The old holder's
# token finishes nothing afterwards; a holder that finished the job before
# its lease ran out (its row locked, not committed yet) keeps it; a keyed
# job settles its key as a failed attempt does; the slot of a queue with
# a max_running is free afterwards.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('lease_lapse');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
SELECT qlater_create_queue('app', external => true);
SELECT qlater_create_queue('lim', external => true);
SELECT qlater_alter_queue('lim', max_running => 1);
CREATE ROLE app_worker LOGIN;
SELECT qlater_grant_queue('app', 'app_worker');
SELECT qlater_grant_queue('lim', 'app_worker');
SELECT qlater_grant_queue('app', 'app_worker', 'enqueue');
SELECT qlater_grant_queue('lim', 'app_worker', 'enqueue');
});

sub sql
{
	my ($q) = @_;
	return $node->safe_psql('postgres', $q, extra_params => [ '-U', 'app_worker' ]);
}

# enqueue: the id of a new job of a queue
sub enqueue
{
	my ($queue, $extra) = @_;
	$extra = defined $extra ? ", $extra" : '';
	return sql("SELECT qlater_enqueue('Job', '[]', queue => '$queue'$extra)");
}

# lease: claim the next job of a queue with a lease of a second (or of
# $len): "id|token"
sub lease
{
	my ($queue, $len) = @_;
	$len //= '1 second';
	return sql("SELECT id || '|' || claim_token FROM qlater_lock('$queue', 1, lease => '$len')");
}

# wait_lapse: wait until the lease of job $id has run out
sub wait_lapse
{
	my ($id) = @_;
	ok($node->poll_query_until('postgres', "SELECT lease_until < now() FROM qlater_job WHERE id = $id"),
		"the lease of job $id runs out");
}

# job: attempts, state, the backoff (run_at after the time of last_error),
# last_error's message, whether it holds no claim token and no lease
sub job
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT concat_ws(' | ', attempts, state,
		          coalesce((run_at - (last_error->>'at')::timestamptz)::text, '-'),
		          coalesce(last_error->>'message', '-'),
		          claim_token IS NULL, lease_until IS NULL)
		   FROM qlater_jobs WHERE id = $id});
}

sub fails_with
{
	my ($q, $re, $name) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $q, extra_params => [ '-U', 'app_worker' ]);
	isnt($ret, 0, "$name: refused");
	like($err, $re, "$name: error");
}

sub advisory_locks
{
	return $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 29036});
}

### 1. lease mode: the lapsed job is counted, the next job is handed out
my $a = enqueue('app');
my $b = enqueue('app');
my ($la, $ta) = split /\|/, lease('app');
is($la, $a, 'lease mode: the first job is leased for a second');
sleep(2);
my ($lb, $tb) = split /\|/,
  sql(q{SELECT id || '|' || claim_token FROM qlater_lock('app', 1, lease => '5 minutes')});
is($lb, $b, 'lease mode: after the lease ran out, the next claim hands out the next job');
is(job($a), "1 | pending | 00:00:04 | lease of job $a ran out before its consumer finished it | t | t",
	'lease mode: the lapsed job is counted: attempts 1, last_error, backoff, no token');
like($node->safe_psql('postgres', "SELECT last_error FROM qlater_jobs WHERE id = $a"),
	qr/"attempt": 1/, 'lease mode: last_error is the usual error record');
fails_with("SELECT qlater_complete($a, '$ta')", qr/claim token does not match job $a/,
	'lease mode: the old holder completes nothing');
fails_with("SELECT qlater_fail($a, 'late', NULL, '$ta')", qr/claim token does not match job $a/,
	'lease mode: nor fails it');
fails_with("SELECT qlater_extend($a, '$ta', '5 minutes')", qr/claim token does not match job $a/,
	'lease mode: nor renews it');
is(job($a), "1 | pending | 00:00:04 | lease of job $a ran out before its consumer finished it | t | t",
	'lease mode: the job is unchanged by the old holder, counted once');
sql("SELECT qlater_complete($b, '$tb')");
is(advisory_locks(), '0', 'lease mode: no claim is left behind');
$node->safe_psql('postgres', "SELECT qlater_cancel($a)");

### 2. session mode: the same
my $c = enqueue('app');
my $d = enqueue('app');
my ($lc) = split /\|/, lease('app');
is($lc, $c, 'session mode: the first job is leased for a second');
sleep(2);
my $s = $node->background_psql('postgres', on_error_stop => 0);
is($s->query_safe(q{SELECT id FROM qlater_lock('app', 1)}),
	$d, 'session mode: after the lease ran out, the next claim hands out the next job');
is(job($c), "1 | pending | 00:00:04 | lease of job $c ran out before its consumer finished it | t | t",
	'session mode: the lapsed job is counted');
is(advisory_locks(), '1', 'session mode: the claimer holds the claim of the job it got, only');
$s->query_safe("SELECT qlater_complete($d)");
is(advisory_locks(), '0', 'session mode: no claim is left behind');
$node->safe_psql('postgres', "SELECT qlater_cancel($c)");

### 3. max_attempts: a job that always overruns its lease ends dead
my $e = enqueue('app', 'max_attempts => 2');
lease('app');
sleep(2);
is(sql(q{SELECT count(*) FROM qlater_lock('app', 1)}), '0', 'dead: the first lapse is counted, nothing handed out');
is(job($e), "1 | pending | 00:00:04 | lease of job $e ran out before its consumer finished it | t | t",
	'dead: one attempt counted');
# skip the backoff
$node->safe_psql('postgres', "UPDATE qlater_job SET run_at = now() WHERE id = $e");
my ($le, $te) = split /\|/, lease('app');
is($le, $e, 'dead: the job is leased again after its backoff');
sleep(2);
is(sql(q{SELECT count(*) FROM qlater_lock('app', 1, lease => '5 minutes')}), '0',
	'dead: the second lapse is counted, nothing handed out');
is($node->safe_psql('postgres',
		"SELECT concat_ws(' | ', attempts, state, run_at = (last_error->>'at')::timestamptz, last_error->>'message', claim_token IS NULL) FROM qlater_jobs WHERE id = $e"),
	"2 | dead | t | lease of job $e ran out before its consumer finished it | t",
	'dead: after max_attempts lapses the job is dead');
fails_with("SELECT qlater_complete($e, '$te')", qr/claim token does not match job $e/,
	'dead: the old holder completes nothing');
my $f = enqueue('app', 'max_attempts => 1');
lease('app');
sleep(2);
is($s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)}), '0', 'dead: max_attempts 1, session mode');
is($node->safe_psql('postgres', "SELECT state || ' ' || attempts FROM qlater_jobs WHERE id = $f"),
	'dead 1', 'dead: max_attempts 1: dead at the first lapse');
is(advisory_locks(), '0', 'dead: no claim is left behind');
$node->safe_psql('postgres', "SELECT qlater_cancel($e); SELECT qlater_cancel($f)");

### 4. a holder that finished the job before its lease ran out keeps it
my $g = enqueue('app');
# the holder's session is open before the lease is taken: it completes the
# job at once, long before the lease runs out
my $h = $node->background_psql('postgres', on_error_stop => 0);
$h->query_safe('BEGIN');
my ($lg, $tg) = split /\|/,
  sql(q{SELECT id || '|' || claim_token FROM qlater_lock('app', 1, lease => '3 seconds')});
$h->query_safe("SELECT qlater_complete($g, '$tg')");
sleep(4);
is(sql(q{SELECT count(*) FROM qlater_lock('app', 1, lease => '5 minutes')}), '0',
	'finishing holder: a claim passes over the job whose row the holder locked');
$h->query_safe('COMMIT');
is($node->safe_psql('postgres', "SELECT count(*) FROM qlater_job WHERE id = $g"), '0',
	'finishing holder: its completion commits, nothing was counted');
$h->quit;

### 5. keys: a lapsed job settles its key as a failed attempt does
# another job of the key is alive: the lapsed job gives the key up
my $k = enqueue('app', "key => 'k1'");
my ($lk) = split /\|/, lease('app');
is($lk, $k, 'keys: the keyed job is leased');
my $k2 = enqueue('app', "key => 'k1'");
isnt($k2, $k, 'keys: an enqueue of the key while the lease holds makes a new job');
sleep(2);
is(sql(q{SELECT id FROM qlater_lock('app', 1, lease => '5 minutes')}), $k2,
	'keys: the claim counts the lapsed job and hands out the new one');
is($node->safe_psql('postgres', "SELECT attempts || ' ' || coalesce(key, '-') FROM qlater_jobs WHERE id = $k"),
	'1 -', 'keys: the lapsed job is counted and gives its key up');
is($node->safe_psql('postgres', "SELECT key FROM qlater_jobs WHERE id = $k2"),
	'k1', 'keys: the new job keeps it');
$node->safe_psql('postgres', "SELECT qlater_cancel($k); SELECT qlater_cancel($k2)");
# no other job of the key: it keeps the key, and an enqueue of it returns it
my $m = enqueue('app', "key => 'k2'");
lease('app');
sleep(2);
is(sql(q{SELECT count(*) FROM qlater_lock('app', 1, lease => '5 minutes')}), '0',
	'keys: the lapsed job alone is counted');
is($node->safe_psql('postgres', "SELECT attempts || ' ' || key FROM qlater_jobs WHERE id = $m"),
	'1 k2', 'keys: it keeps its key');
is(enqueue('app', "key => 'k2'"), $m, 'keys: an enqueue of the key returns the waiting job');
$node->safe_psql('postgres', "SELECT qlater_cancel($m)");

### 6. a queue with max_running 1: the slot is free afterwards
my $n1 = enqueue('lim');
my $n2 = enqueue('lim');
# a lease long enough to hold over the next claim's psql start-up
my ($ln) = split /\|/, lease('lim', '5 seconds');
is($ln, $n1, 'limited: the first job is leased');
is(sql(q{SELECT count(*) FROM qlater_lock('lim', 1, lease => '5 minutes')}), '0',
	'limited: no second job while the lease holds');
wait_lapse($n1);
is($s->query_safe(q{SELECT id FROM qlater_lock('lim', 1)}), $n2,
	'limited: after the lapse the next job is claimed in the one slot');
is(job($n1), "1 | pending | 00:00:04 | lease of job $n1 ran out before its consumer finished it | t | t",
	'limited: the lapsed job is counted');
$s->query_safe("SELECT qlater_complete($n2)");
my $n3 = enqueue('lim');
is(sql(q{SELECT id FROM qlater_lock('lim', 1, lease => '5 minutes')}), $n3,
	'limited: the slot is free: a new job is claimed');
$node->safe_psql('postgres', "SELECT qlater_cancel($n3)");
# a lapse that hands out nothing leaves the slot free too
$node->safe_psql('postgres', "UPDATE qlater_job SET run_at = now() WHERE id = $n1");
is((split /\|/, lease('lim'))[0], $n1, 'limited: the counted job is leased again after its backoff');
sleep(2);
is($s->query_safe(q{SELECT count(*) FROM qlater_lock('lim', 1)}), '0',
	'limited: its second lapse is counted, nothing handed out');
my $n5 = enqueue('lim');
is($s->query_safe(q{SELECT id FROM qlater_lock('lim', 1)}), $n5,
	'limited: the slot is free: a new job is claimed');
$s->query_safe("SELECT qlater_complete($n5)");
is(advisory_locks(), '0', 'limited: no claim is left behind');

### 7. a claim rolled back: the lapse is not recorded, no claim is left
my $p = enqueue('app');
lease('app');
sleep(2);
$s->query_safe('BEGIN');
is($s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)}), '0', 'rolled back: the lapse is counted');
$s->query_safe('ROLLBACK');
is(job($p), '0 | pending | - | - | f | f', 'rolled back: the count is undone');
is(advisory_locks(), '0', 'rolled back: no claim is left with the session');
is($s->query_safe(q{SELECT count(*) FROM qlater_lock('app', 1)}), '0', 'rolled back: counted again');
is(job($p), "1 | pending | 00:00:04 | lease of job $p ran out before its consumer finished it | t | t",
	'rolled back: once');
$s->quit;

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no server process was terminated by a signal');
done_testing();
