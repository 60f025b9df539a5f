# 192_history_review.pl: what a code review of 0.6's history writing
# found, each a check that failed before its fix.
#
# The writer: a column a DBA added of a domain type gets the domain's
# default (and checks), and a column added with a default gets
# qlater_outcome's default, not one its partitions were given: as an
# INSERT into qlater_outcome.  The expiry: a slot's table that TRUNCATE
# cannot empty (one a foreign key refers to) is left with a warning, once,
# and the other slots are still emptied; a slot's table that is a foreign
# table is never emptied; a DBA's lock on another slot's table does not
# hold the expiry up (it read every slot's table through qlater_outcome).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $node = PostgreSQL::Test::Cluster->new('history_review');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n"
	  . "qlater.poll_interval = 500ms\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
GRANT USAGE ON SCHEMA public TO alice;
});

sub su { return $node->safe_psql('postgres', $_[0]); }

sub as_alice
{
	my ($ret, $out, $err) = $node->psql('postgres', $_[0], extra_params => [ '-U', 'alice' ]);
	return ($out, $err);
}

as_alice(q{SELECT qlater_create_queue('ext', external => true)});

# alice enqueues a job into ext, claims and completes it; its outcome's
# column col
sub completed
{
	my ($col) = @_;
	my ($id) = as_alice(q{SELECT qlater_enqueue('W', '[]', queue => 'ext')});
	my ($out, $err) = as_alice(qq{SELECT count(qlater_complete(id)) FROM qlater_lock('ext', 10) WHERE id = $id});
	return $err ne '' ? "error: $err" : su("SELECT $col FROM qlater_outcome WHERE id = $id");
}

### the writer
su(q{CREATE DOMAIN tagd AS text NOT NULL DEFAULT 'from-domain';
     ALTER TABLE qlater_outcome ADD COLUMN tag tagd});
is(completed('tag'), 'from-domain', "a column of a domain type added: the domain's default");
su('ALTER TABLE qlater_outcome DROP COLUMN tag');

su(q{ALTER TABLE qlater_outcome ADD COLUMN src text DEFAULT 'parent'}
	  . q{; DO $$ BEGIN FOR i IN 0..15 LOOP
            EXECUTE format('ALTER TABLE qlater_outcome_%s ALTER COLUMN src SET DEFAULT ''leaf''', i);
          END LOOP; END $$});
is(completed('src'), 'parent', "a column added with a default: qlater_outcome's, as an INSERT into it");
su('ALTER TABLE qlater_outcome DROP COLUMN src');

### the expiry
# the writer's outcomes above are kept a day, in a slot of a ring of
# 2-hour slots: the ring of 5-second slots below may write that slot again,
# which then keeps them (and whatever it takes) until tomorrow
su('TRUNCATE qlater_outcome');
# every queue keeps a second: a slot is written for 5 s; slots a, b, c far
# from the one written now hold a row expired an hour ago
su(q{SELECT qlater_alter_queue(name, keep_history => '1 second') FROM qlater_queues});
my $now_slot = q{(extract(epoch FROM clock_timestamp()) * 1000000)::bigint / 5000000 % 16};
# the expiry looks at the slots in their order, 0 to 15: a comes before c,
# all three 6 to 10 slots away from the one written now (skipped: the one
# written now and its two neighbours, for 20 s at least)
my $cur = su("SELECT $now_slot");
my @far = grep { my $k = ($_ - $cur) % 16; $k >= 6 && $k <= 10 } 0 .. 15;
my ($a, $b, $c) = ($far[0], $far[2], $far[-1]);
# a is referred to by a foreign key (TRUNCATE fails), b is a foreign table
# (file_fdw), c is as the extension made it
su(qq{
CREATE UNIQUE INDEX ON qlater_outcome_$a (id);
CREATE TABLE refers (id bigint REFERENCES qlater_outcome_$a (id));
CREATE EXTENSION file_fdw;
CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_$b;
ALTER TABLE qlater_outcome_$b RENAME TO kept_$b;
CREATE FOREIGN TABLE qlater_outcome_$b PARTITION OF qlater_outcome FOR VALUES IN ($b)
  SERVER files OPTIONS (filename '/dev/null');
});
for my $s ($a, $c)
{
	su(qq{INSERT INTO qlater_outcome (slot, id, queue, handler, role, enqueued_at, run_at,
	        finished_at, attempt, outcome, expires_at, external)
	      VALUES ($s, 900000 + $s, 'ext', 'W', 'alice', now() - interval '2 hours',
	        now() - interval '2 hours', now() - interval '2 hours', 1, 'done',
	        now() - interval '1 hour', true)});
}
my $log_offset = -s $node->logfile;
# shared memory forgets what the slots hold: the expiry looks at each
$node->restart;
# the expiry looks once a second; within 15 s, before a slot a comes next
# to the one written (where it would be skipped, and c reached anyway)
my $emptied = 0;
for (1 .. 30)
{
	$emptied = 1, last if su("SELECT count(*) FROM qlater_outcome_$c") eq '0';
	sleep 0.5;
}
ok($emptied, 'the expiry empties a slot although the TRUNCATE of an earlier one fails');
is(su("SELECT count(*) FROM qlater_outcome_$a"), '1', 'the table a foreign key refers to keeps its row');

# a DBA locks the table of another slot far from the one written now (a
# plain table, neither a, b nor c); an outcome
# kept a second is written now, and is emptied with its slot meanwhile
my $d = $far[1];
# the outcome's rows read without the locked table
my $others = join(',', grep { $_ != $d } 0 .. 15);
my $locker = $node->background_psql('postgres');
$locker->query_safe("BEGIN; LOCK TABLE qlater_outcome_$d IN ACCESS EXCLUSIVE MODE");
my ($id) = as_alice(q{SELECT qlater_enqueue('W', '[]', queue => 'ext')});
as_alice(qq{SELECT count(qlater_complete(id)) FROM qlater_lock('ext', 10) WHERE id = $id});
is(su("SELECT count(*) FROM qlater_outcome WHERE slot IN ($others) AND id = $id"), '1',
	'an outcome kept a second is written');
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM qlater_outcome WHERE slot IN ($others) AND id = $id"),
	"its slot is emptied while a DBA holds another slot's table locked")
  or diag su(qq{
SELECT 'row', slot, tableoid::regclass, expires_at, clock_timestamp() FROM qlater_outcome WHERE slot IN ($others) AND id = $id;
SELECT 'now slot', $now_slot;
SELECT 'activity', pid, backend_type, state, wait_event_type, wait_event, xact_start, left(query, 80)
  FROM pg_stat_activity WHERE pid <> pg_backend_pid();
SELECT 'lock', l.pid, l.locktype, l.relation::regclass, l.mode, l.granted FROM pg_locks l
 WHERE l.pid <> pg_backend_pid() AND l.locktype = 'relation';
SELECT 'slot max', tableoid::regclass, count(*), max(expires_at) FROM qlater_outcome WHERE slot IN ($others) GROUP BY 2;
});
$locker->query_safe('COMMIT');
$locker->quit;

my $log = slurp_file($node->logfile, $log_offset);
my $warned = () = $log =~ /WARNING:  could not empty the expired history in table public\.qlater_outcome_$a: cannot truncate a table referenced in a foreign key constraint/g;
# once per worker process (2 here), not at every look, once a second (10
# or more in this test)
ok($warned >= 1 && $warned <= 4, "the failed TRUNCATE is reported as a warning, once per worker ($warned)");
unlike($log, qr/cannot truncate foreign table|qlater_outcome_$b/, 'the foreign table is left alone');
unlike($log, qr/terminated by signal|PANIC|TRAP/, 'no server process crashed');

$node->stop;
done_testing();
