# 160_queue_attacks.pl: attacks on queues as owned objects with privileges
# (0.2: owners, 'enqueue' and 'consume' grants, min_priority, listeners,
# create/alter/drop/pause, the upgrade from 0.1), as tenants (alice, bob,
# carol, dave, mallory) and as an ordinary DBA would mount them.
#
# Each break found is a TODO block that fails on the code it was found on
# (the integrator removes the TODO with the fix); the attacks that held are
# plain tests, kept as regression guards.
#
# Breaks (TODO):
#   B1. 'default' has no row until first used: any role creates it with
#       qlater_create_queue, owns it, makes it external (or pauses it);
#   B2. qlater_schedule checks no queue right: a schedule puts jobs into
#       another role's queue without 'enqueue', below min_priority, into a
#       queue that gets no row; its ticks go on after a revoke;
#   B3. a revoked consumer's listener keeps getting the queue's
#       notifications (job ids), and takes wake-ups from the others;
#   B4. anyone may LISTEN on a consumer's channel qlater_<pid> and read the
#       notifications of a queue it may not consume;
#   B5. a queue created, handed over or granted in an open transaction is
#       not seen by a concurrent DROP ROLE: left to a dropped role's name;
#   B6. qlater_drop_queue does not see an uncommitted enqueue: the job is
#       left without its queue, whose name the next role takes;
#   B7. qlater_create_queue over other roles' jobs (no row): the creator
#       owns them, and made external sees their args;
#   B8. qlater_complete/fail/unlock/extend of another role's job name its
#       queue ("queue "q" is not an external queue", "permission denied for
#       queue "q"");
#   B9. a revoke of 'enqueue' leaves the handler registered under the grant
#       open: its owner still puts jobs into the queue;
#  B10. a queue other roles' handlers are registered into is turned external
#       by its owner alone: their next jobs go to its consumers;
#  B11. in a REPEATABLE READ transaction begun before a revoke, enqueue and
#       qlater_lock still use the revoked grant;
#  B12. upgrade from 0.1: a queue declared under 0.1 by a role that is not
#       its user keeps that owner; enqueue grants are not migrated for
#       other roles' in-server queues;
#  B13. the listener bound is per database: one role in 16 databases takes
#       every listener entry of the cluster;
#  B14. queue names take control characters (handler names do not).
# No server process may end on a signal.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $started = time;
my $node = PostgreSQL::Test::Cluster->new('queue_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_prepared_transactions = 2\n");
$node->start;

sub su
{
	my ($sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql);
}

sub as
{
	my ($role, $sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql, extra_params => [ '-U', $role ]);
}

# ($ret, $out, $err) of a statement run as a role; errors are the test's
sub try_as
{
	my ($role, $sql, $db) = @_;
	my ($ret, $out, $err) =
	  $node->psql($db // 'postgres', $sql, extra_params => [ '-U', $role ]);
	return ($ret, $out, $err);
}

# a session of a role that goes on after an error
sub session
{
	my ($role, $db) = @_;
	return $node->background_psql($db // 'postgres',
		on_error_stop => 0,
		extra_params => [ '-U', $role ]);
}

# (output, error text) of a query in a session; its stderr is cleared first
sub sq
{
	my ($s, $sql) = @_;
	$s->{stderr} = '';
	my ($out, $failed) = $s->query($sql);
	my $err = $s->{stderr};
	$s->{stderr} = '';
	return ($out, $failed ? $err : '');
}

sub wait_for
{
	my ($sql, $name, $db) = @_;
	ok($node->poll_query_until($db // 'postgres', $sql), $name);
}

my $ext_owner = su('SELECT current_user');

su(q{
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN;
CREATE ROLE dave LOGIN;
CREATE ROLE mallory LOGIN;
CREATE ROLE consumers NOLOGIN;
CREATE ROLE erin LOGIN IN ROLE consumers;
CREATE EXTENSION qlater;
});

### B13. one role in 16 databases takes every listener entry of the cluster
# (first, while no other session listens: 16 x 64 = 1,024 entries)
su('CREATE EXTENSION dblink');
my @ldbs = map { sprintf('l%02d', $_) } 1 .. 16;
for my $db (@ldbs)
{
	su("CREATE DATABASE $db");
	su('CREATE EXTENSION qlater', $db);
	as('mallory', q{SELECT count(qlater_create_queue('m' || g, external => true))
	                FROM generate_series(1, 64) g}, $db);
}
my $holder = session($ext_owner);
my $host = $node->host;
my $port = $node->port;
my $listened = 0;
for my $db (@ldbs)
{
	my ($l_out, $l_err) = sq($holder, qq{
SELECT dblink_connect('$db', 'host=$host port=$port dbname=$db user=mallory');
SELECT n FROM dblink('$db', \$\$SELECT count(qlater_listen('m' || g)) FROM generate_series(1, 64) g\$\$) AS t(n bigint);
});
	$listened += 64 if $l_err eq '';
	note "B13: listen in $db: $l_err" if $l_err ne '';
}
# the bound holds per role and database: 64 in each of 16 databases
note "B13: mallory's sessions took $listened listener entries";
as('alice', q{SELECT qlater_create_queue('alice_wakes', external => true)});
my ($ret, $out, $err) = try_as('alice', q{SELECT qlater_listen('alice_wakes')});
is($ret, 0, "B13: alice can still listen for her own queue in another database");
note "B13: alice's listen said: $err";
$holder->quit;
wait_for(q{SELECT count(*) = 0 FROM pg_stat_activity WHERE usename = 'mallory'},
	'B13: the listening sessions are gone');
su("DROP DATABASE $_") for @ldbs;

### B1. 'default' is the extension's, even before its row exists
su('CREATE DATABASE dflt');
su(q{
CREATE EXTENSION qlater;
CREATE SCHEMA shared;
GRANT USAGE, CREATE ON SCHEMA shared TO PUBLIC;
}, 'dflt');
is(su(q{SELECT count(*) FROM qlater_queues WHERE name = 'default'}, 'dflt'), '0',
	"B1: a fresh database has no row for 'default' yet");
($ret, $out, $err) = $node->psql('dflt', q{SELECT qlater_create_queue('default', external => true)});
like($err, qr/queue "default" cannot be external/,
	"B1: not even a superuser creates 'default' external: every role's unnamed jobs would go to its consumers");
is(su(q{SELECT count(*) FROM qlater_queues WHERE name = 'default'}, 'dflt'), '0',
	"B1: and the refused create left no row");
($ret, $out, $err) = try_as('mallory',
	q{SELECT qlater_create_queue('default', external => false)}, 'dflt');
like($err, qr/permission denied to create queue "default"/, "B1: mallory cannot create 'default'");
isnt(su(q{SELECT coalesce((SELECT owner FROM qlater_queues WHERE name = 'default'), 'none')}, 'dflt'),
	'mallory', "B1: mallory does not own 'default'");
($ret, $out, $err) = try_as('alice', q{
CREATE FUNCTION shared.ha(x int) RETURNS void LANGUAGE sql AS 'SELECT 1';
SELECT qlater_register('shared.ha(int)');
SELECT qlater_enqueue('shared.ha', '[1]');}, 'dflt');
is($ret, 0, "B1: and alice can still register into 'default' and enqueue");
note "B1: alice's register and enqueue said: $err";
# repair, so that the database serves the held tests below
su(q{DELETE FROM qlater_queue WHERE name = 'default' AND owner <> current_user;
     DELETE FROM qlater_handler}, 'dflt');
su(q{DROP FUNCTION IF EXISTS shared.ha(int)}, 'dflt');
as('alice', q{
CREATE FUNCTION shared.ha(x int) RETURNS void LANGUAGE sql AS 'SELECT 1';
SELECT qlater_register('shared.ha(int)');
SELECT qlater_enqueue('shared.ha', '[1]', run_at => now() + '1 hour');}, 'dflt');
is(su(q{SELECT owner FROM qlater_queues WHERE name = 'default'}, 'dflt'), $ext_owner,
	"held: 'default' made by a role's first use belongs to the extension's owner");
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_pause_queue('default')}, 'dflt');
like($err, qr/must be owner of queue "default"/, "held: nobody else pauses 'default' once it has its row");
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_alter_queue('default', external => true)}, 'dflt');
like($err, qr/queue "default" cannot be external/, "held: nor turns it external");
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_alter_queue('default', batch_size => 64)}, 'dflt');
like($err, qr/must be owner of queue "default"/, "held: nor changes its settings");

### setup of the main database
su(q{
CREATE SCHEMA shared;
GRANT USAGE, CREATE ON SCHEMA shared TO PUBLIC;
CREATE TABLE shared.log (who text, what text, cu text DEFAULT current_user,
                         at timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON shared.log TO PUBLIC;
});
as('alice', q{
CREATE FUNCTION shared.ha(x int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('ha', x::text) $$;
GRANT EXECUTE ON FUNCTION shared.ha(int) TO PUBLIC;
SELECT qlater_register('shared.ha(int)');
SELECT qlater_create_queue('aq');
SELECT qlater_create_queue('ext', external => true);
});
as('mallory', q{
CREATE FUNCTION shared.hm(what text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('hm', what) $$;
SELECT qlater_register('shared.hm(text)');
SELECT qlater_create_queue('mq');
});
as('bob', q{
CREATE FUNCTION shared.hb(secret text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('hb', secret) $$;
GRANT EXECUTE ON FUNCTION shared.hb(text) TO PUBLIC;
});

### held: nobody but the owner (or an admin) changes a queue
for my $call (
	q{qlater_alter_queue('aq', batch_size => 4)},
	q{qlater_alter_queue('aq', owner => 'mallory')},
	q{qlater_alter_queue('aq', max_running => 0)},
	q{qlater_alter_queue('aq', external => true)},
	q{qlater_pause_queue('aq')},
	q{qlater_resume_queue('aq')},
	q{qlater_drop_queue('aq')},
	q{qlater_grant_queue('aq', 'mallory', 'enqueue')},
	q{qlater_revoke_queue('aq', 'bob', 'enqueue')})
{
	($ret, $out, $err) = try_as('mallory', "SELECT $call");
	ok($ret != 0 && $err =~ /must be owner of queue "aq"/ && $err !~ /alice/,
		"held: mallory cannot $call, and the error names nobody");
}
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_create_queue('aq', external => true)});
like($err, qr/queue "aq" already exists/, 'held: declaring a queue again does not take it over');
($ret, $out, $err) = try_as('alice', q{SELECT qlater_alter_queue('aq', min_priority => 0)});
like($err, qr/permission denied to set the min_priority/, 'held: an owner does not set min_priority');
is(su(q{SELECT owner || external || paused FROM qlater_queues WHERE name = 'aq'}), 'alicefalsefalse',
	'held: the queue is as alice made it');

### held: putting jobs into another role's queue needs 'enqueue'
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_enqueue('shared.hm', '["x"]', queue => 'aq')});
like($err, qr/permission denied for queue "aq"/, "held: no enqueue into alice's in-server queue without 'enqueue'");
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_register('shared.hm(text)', queue => 'aq')});
like($err, qr/permission denied for queue "aq"/, "held: no registration into it");
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_enqueue('App', '[]', queue => 'ext')});
like($err, qr/permission denied for queue "ext"/, "held: no job for alice's consumers");
as('alice', q{
CREATE FUNCTION shared.ha_ext(x int) RETURNS void LANGUAGE sql AS 'SELECT 1';
GRANT EXECUTE ON FUNCTION shared.ha_ext(int) TO PUBLIC;
SELECT qlater_register('shared.ha_ext(int)', queue => 'ext');
});
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_enqueue('shared.ha_ext', '[1]')});
like($err, qr/permission denied for queue "ext"/,
	"held: not even through alice's handler registered into her external queue");
is(su(q{SELECT count(*) FROM qlater_job WHERE role = 'mallory'}), '0', 'held: mallory put no job anywhere');

### B2. qlater_schedule and its ticks check no queue right
su(q{SELECT qlater_alter_queue('mq', min_priority => 0)});
($ret, $out, $err) = try_as('mallory',
	q{SELECT qlater_schedule('into_aq', '1 seconds', 'shared.hm', '["into aq"]', queue => 'aq')});
like($err, qr/permission denied for queue "aq"/, "B2: mallory cannot schedule into alice's queue");
($ret, $out, $err) = try_as('mallory',
	q{SELECT qlater_schedule('urgent', '1 seconds', 'shared.hm', '["urgent"]', queue => 'mq', priority => -100)});
like($err, qr/priority -100 is below the lowest priority queue "mq" accepts/,
	'B2: mallory cannot schedule below the min_priority of a queue');
as('mallory', q{SELECT qlater_schedule('ghost', '1 seconds', 'shared.hm', '["ghost"]', queue => 'ghostq')});
is(su(q{SELECT coalesce((SELECT owner FROM qlater_queues WHERE name = 'ghostq'), 'none')}),
	'mallory', "B2: a schedule's new queue is its owner's, as an enqueue's is");
wait_for(q{SELECT count(*) > 0 FROM shared.log WHERE who = 'hm' AND what = 'ghost'},
	'B2: the schedule into the new queue ticks');
as('mallory', q{SELECT qlater_unschedule('ghost')});
# the ticks of a schedule made under a grant, after the revoke
as('alice', q{SELECT qlater_create_queue('aq_tick');
              SELECT qlater_grant_queue('aq_tick', 'mallory', 'enqueue')});
as('mallory', q{
SELECT qlater_schedule('tick_aq', '1 seconds', 'shared.hm', '["tick aq"]', queue => 'aq_tick');
SELECT qlater_schedule('witness', '1 seconds', 'shared.hm', '["witness"]', queue => 'mq');
});
wait_for(q{SELECT count(*) > 0 FROM shared.log WHERE what = 'tick aq'},
	"B2: mallory's schedule into alice's queue ticks while she may");
as('alice', q{SELECT qlater_revoke_queue('aq_tick', 'mallory', 'enqueue')});
my $revoked_at = su('SELECT clock_timestamp()');
wait_for(qq{SELECT count(*) >= 2 FROM shared.log WHERE what = 'witness'
             AND at > '$revoked_at'::timestamptz + interval '2.5 s'},
	'B2: ticks go on for two seconds after the revoke');
is(su(qq{SELECT count(*) FROM shared.log WHERE what = 'tick aq'
          AND at > '$revoked_at'::timestamptz + interval '1.5 s'}),
	'0', "B2: no tick of mallory's schedule lands in alice's queue after the revoke");
as('mallory', q{SELECT count(qlater_unschedule(name)) FROM qlater_schedules});

### B3, B4. listeners: after a revoke, and on another session's channel
as('alice', q{SELECT qlater_grant_queue('ext', 'carol')});
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_listen('ext')});
like($err, qr/permission denied for queue "ext"/, 'held: no listen without consume');
my $carol = session('carol');
my $channel = $carol->query_safe(q{SELECT qlater_listen('ext')});
like($channel, qr/^qlater_\d+_[0-9a-f]{16}$/, 'held: a consumer listens on its own channel');
# what another role can know of it: the session's pid (pg_stat_activity)
my $carol_pid = $carol->query_safe('SELECT pg_backend_pid()');
my $sniffer = session('mallory');
$sniffer->query_safe(qq{LISTEN "qlater_$carol_pid"});
as('alice', q{SELECT qlater_enqueue('Payroll', '{"n": 1}', queue => 'ext')});
like($carol->query_safe('SELECT 1'), qr/Asynchronous notification "$channel".*"queue": "ext"/,
	'held: the consumer is woken for its queue');
my $sniffed = $sniffer->query_safe('SELECT 1');
unlike($sniffed, qr/"queue": "ext"/, "B4: mallory does not read the notifications of alice's queue");
note "B4: mallory read: $sniffed";
$sniffer->quit;
as('alice', q{SELECT qlater_revoke_queue('ext', 'carol')});
as('alice', q{SELECT qlater_enqueue('Payroll', '{"n": 2}', queue => 'ext')});
my $after_revoke = $carol->query_safe('SELECT 1');
unlike($after_revoke, qr/Asynchronous notification/,
	'B3: a consumer whose right was revoked is no longer notified');
note "B3: carol read after the revoke: $after_revoke";
($ret, $out, $err) = try_as('carol', q{SELECT count(*) FROM qlater_lock('ext', 5)});
like($err, qr/permission denied for queue "ext"/, 'held: the revoked consumer claims nothing');
is(as('carol', q{SELECT count(*) FROM qlater_jobs}), '0', 'held: and sees nothing');
$carol->quit;

### held: grants are by name, not membership, in the C checks and the view alike
as('alice', q{SELECT qlater_grant_queue('ext', 'consumers')});
($ret, $out, $err) = try_as('erin', q{SELECT count(*) FROM qlater_lock('ext', 1)});
like($err, qr/permission denied for queue "ext"/, "held: a member of the grantee group does not claim as the group");
is(as('erin', q{SELECT count(*) FROM qlater_jobs}), '0', 'held: nor sees the jobs in qlater_jobs');
is(as('erin', q{SET ROLE consumers; SELECT count(*) FROM qlater_jobs WHERE queue = 'ext'}), '2',
	'held: after SET ROLE to the group, the view shows them');
is(as('erin', q{SET ROLE consumers; BEGIN; SELECT count(*) FROM qlater_lock('ext', 5); ROLLBACK}), '2',
	'held: and the group claims them');
as('alice', q{SELECT qlater_revoke_queue('ext', 'consumers')});

### held: the grants table and view
($ret, $out, $err) = try_as('mallory', q{SELECT * FROM qlater_queue_grant});
like($err, qr/permission denied for table qlater_queue_grant/, 'held: the grants table is not readable');
as('alice', q{SELECT qlater_grant_queue('ext', 'dave'); SELECT qlater_grant_queue('ext', 'bob', 'enqueue')});
is(as('mallory', q{SELECT count(*) FROM qlater_queue_grants}), '0', 'held: mallory sees no grant');
is(as('dave', q{SELECT string_agg(grantee || ':' || privilege, ',') FROM qlater_queue_grants}),
	'dave:consume', 'held: a grantee sees only its own grants');
is(as('alice', q{SELECT string_agg(grantee || ':' || privilege, ',' ORDER BY grantee) FROM qlater_queue_grants WHERE queue = 'ext'}),
	'bob:enqueue,dave:consume', "held: the owner sees her queue's grants");

### B5. DROP ROLE does not see a queue, hand-over or grant in an open transaction
su(q{CREATE ROLE victim LOGIN; CREATE ROLE victim2 LOGIN; CREATE ROLE victim3 LOGIN;
     GRANT victim3 TO alice});
as('alice', q{SELECT qlater_create_queue('v3q')});
my $granter = session('alice');
$granter->query_safe(q{BEGIN});
$granter->query_safe(q{SELECT qlater_grant_queue('aq', 'victim', 'enqueue')});
$granter->query_safe(q{SELECT qlater_alter_queue('v3q', owner => 'victim3')});
my $creator = session('victim2');
$creator->query_safe(q{BEGIN});
$creator->query_safe(q{SELECT qlater_create_queue('v2q', external => true)});
for my $r (qw(victim victim2 victim3))
{
	my ($r_ret, $r_out, $r_err) = $node->psql('postgres', "SET lock_timeout = '2s'; DROP ROLE $r");
	note "B5: DROP ROLE $r: " . ($r_ret == 0 ? 'dropped' : $r_err);
}
$granter->query_safe(q{COMMIT});
$creator->query(q{COMMIT});
$granter->quit;
$creator->quit;
is(su(q{SELECT count(*) FROM qlater_queue_grant g
         WHERE NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = g.grantee)}),
	'0', 'B5: no grant is left to a dropped role (a role created later under its name would hold it)');
is(su(q{SELECT count(*) FROM qlater_queue q
         WHERE NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = q.owner)}),
	'0', 'B5: no queue is left to a dropped role');
# what a role created later under such a name gets
su(q{DO $$ BEGIN
       IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'victim') THEN CREATE ROLE victim; END IF;
     END $$});
note 'B5: the new victim sees: ' . as('alice', q{SELECT string_agg(queue || ':' || grantee, ',') FROM qlater_queue_grants});

### held: ALTER ROLE RENAME and DROP ROLE of queue owners and grantees
($ret, $out, $err) = $node->psql('postgres', 'ALTER ROLE dave RENAME TO dave2');
like($err, qr/role "dave" cannot be renamed/, 'held: a grantee is not renamed');
($ret, $out, $err) = $node->psql('postgres', 'DROP ROLE dave');
like($err, qr/role "dave" cannot be dropped/, 'held: nor dropped');
($ret, $out, $err) = $node->psql('postgres', 'ALTER ROLE alice RENAME TO alice2');
like($err, qr/role "alice" cannot be renamed/, 'held: a queue owner is not renamed');

### held: PREPARE TRANSACTION after a change of queues
for my $change (q{qlater_create_queue('prep_q')}, q{qlater_grant_queue('aq', 'dave')},
	q{qlater_pause_queue('aq')})
{
	($ret, $out, $err) = try_as('alice', "BEGIN; SELECT $change; PREPARE TRANSACTION 'p160';");
	like($err, qr/cannot PREPARE a transaction that has enqueued or changed qlater jobs, queues or schedules/,
		"held: PREPARE after $change is refused");
}
is(su(q{SELECT count(*) FROM pg_prepared_xacts}), '0', 'held: nothing was prepared');

### B6, B7. a drop racing an enqueue; a queue created over other roles' jobs
as('alice', q{SELECT qlater_create_queue('dq')});
my $enq = session('alice');
$enq->query_safe(q{BEGIN});
my $orphan = $enq->query_safe(q{SELECT qlater_enqueue('shared.ha', '[6]', queue => 'dq', run_at => now() + '1 hour')});
($ret, $out, $err) = try_as('alice', q{SET lock_timeout = '2s'; SELECT qlater_drop_queue('dq')});
note 'B6: the drop said: ' . ($ret == 0 ? 'dropped' : $err);
$enq->query_safe(q{COMMIT});
$enq->quit;
is(su(q{SELECT count(*) FROM qlater_job j
         WHERE NOT EXISTS (SELECT FROM qlater_queue q WHERE q.name = j.queue)}),
	'0', 'B6: no job is left without its queue');
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_create_queue('dq', external => true)});
note "B7: mallory's create of dq: " . ($ret == 0 ? 'created' : $err);
isnt(su(q{SELECT owner FROM qlater_queues WHERE name = 'dq'}), 'mallory',
	"B7: mallory does not become the owner of a queue holding alice's job");
is(as('mallory', qq{SELECT count(*) FROM qlater_jobs WHERE id = $orphan}), '0',
	"B7: nor sees alice's job and its args");

### B8. finishing another role's job tells its queue
my $alice_aq = as('alice', q{SELECT qlater_enqueue('shared.ha', '[8]', queue => 'aq', run_at => now() + '1 hour')});
my $alice_ext = as('alice', q{SELECT qlater_enqueue('Secret', '{}', queue => 'ext', run_at => now() + '1 hour')});
for my $call ("qlater_complete($alice_aq)", "qlater_fail($alice_aq, 'x')",
	"qlater_complete($alice_ext)", "qlater_unlock($alice_ext)")
{
	($ret, $out, $err) = try_as('bob', "SELECT $call");
	isnt($ret, 0, "held: bob cannot $call");
	unlike($err, qr/"aq"|"ext"/, "B8: the error of $call does not name the job's queue");
}
($ret, $out, $err) = try_as('bob', "SELECT qlater_cancel($alice_aq)");
ok($err =~ /permission denied for job $alice_aq/ && $err !~ /alice|"aq"/,
	"held: cancel of another role's job says permission denied and nothing else");

### B9. a revoke of 'enqueue' and a handler registered under the grant
as('alice', q{SELECT qlater_create_queue('hq'); SELECT qlater_grant_queue('hq', 'bob', 'enqueue')});
as('bob', q{SELECT qlater_register('shared.hb(text)', queue => 'hq')});
as('alice', q{SELECT qlater_revoke_queue('hq', 'bob', 'enqueue')});
($ret, $out, $err) = try_as('bob', q{SELECT qlater_enqueue('shared.hb', '["after revoke"]', queue => 'hq', run_at => now() + '1 hour')});
isnt($ret, 0, "B9: after the revoke bob puts no job into alice's queue");
($ret, $out, $err) = try_as('carol', q{SELECT qlater_enqueue('shared.hb', '["via bob handler"]', run_at => now() + '1 hour')});
note "B9: carol's enqueue of bob's handler: " . ($ret == 0 ? "into alice's queue" : $err);
($ret, $out, $err) = try_as('alice', q{SELECT qlater_drop_queue('hq')});
note "B9: alice's drop of her queue: $err";

### B10. turning external a queue other roles' handlers are registered into
as('alice', q{SELECT qlater_create_queue('hq2'); SELECT qlater_grant_queue('hq2', 'bob', 'enqueue')});
as('bob', q{
CREATE FUNCTION shared.hb2(secret text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log (who, what) VALUES ('hb2', secret) $$;
SELECT qlater_register('shared.hb2(text)', queue => 'hq2');
});
($ret, $out, $err) = try_as('alice', q{SELECT qlater_alter_queue('hq2', external => true)});
like($err, qr/cannot make queue "hq2" external/,
	"B10: alice cannot turn external the queue bob's handler is registered into");
as('bob', q{SELECT qlater_enqueue('shared.hb2', '["bob-password"]', run_at => now() + '1 hour')});
is(as('alice', q{SELECT count(*) FROM qlater_jobs WHERE role = 'bob'}), '0',
	"B10: alice does not see bob's job and its args");

### held: min_priority binds non-admins everywhere but the schedules (B2)
su(q{SELECT qlater_alter_queue('ext', min_priority => 50)});
as('alice', q{SELECT qlater_create_queue('prio'); SELECT qlater_grant_queue('prio', 'bob', 'enqueue')});
su(q{SELECT qlater_alter_queue('prio', min_priority => 50)});
for my $call (
	q{qlater_enqueue('shared.ha', '[1]', queue => 'prio', priority => 10)},
	q{qlater_enqueue_many('shared.ha', '[[1], [2]]', queue => 'prio', priority => 49)},
	q{qlater_enqueue('App', '[]', queue => 'ext', priority => 0)},
	q{qlater_enqueue_many('App', '[[1]]', queue => 'ext', priority => 0)},
	q{qlater_register('shared.hb(text)', queue => 'prio', priority => 10)})
{
	($ret, $out, $err) = try_as('bob', "SELECT $call");
	like($err, qr/is below the lowest priority queue "(prio|ext)" accepts/, "held: bob cannot $call");
}
su(q{SELECT qlater_alter_queue('prio', min_priority => 200)});
as('bob', q{SELECT qlater_register('shared.hb(text)', queue => 'prio', priority => 200)});
su(q{SELECT qlater_alter_queue('prio', min_priority => 300)});
($ret, $out, $err) = try_as('carol', q{SELECT qlater_enqueue('shared.hb', '["x"]')});
like($err, qr/priority 200 is below the lowest priority queue "prio" accepts/,
	"held: a handler's registered priority below a bound raised later is refused");
is(su(q{SELECT count(*) FROM qlater_job WHERE queue IN ('prio', 'ext') AND priority < 50}), '0',
	'held: no job below the bound was written');
su(q{SELECT qlater_enqueue('shared.ha', '[1]', queue => 'prio', priority => -5, run_at => now() + '1 hour')});
is(su(q{SELECT count(*) FROM qlater_job WHERE queue = 'prio' AND priority = -5}), '1',
	'held: an admin enqueues below the bound');

### B11 and held: a revoke seen by sessions that started before it
as('alice', q{
SELECT qlater_create_queue('rr', external => true);
SELECT qlater_grant_queue('rr', 'bob', 'enqueue');
SELECT qlater_grant_queue('rr', 'dave');
SELECT qlater_enqueue('Job', '[1]', queue => 'rr');
SELECT qlater_enqueue('Job', '[2]', queue => 'rr');
});
my $bob_rc = session('bob');
my $dave_rc = session('dave');
$bob_rc->query_safe(q{SELECT qlater_enqueue('Job', '[3]', queue => 'rr')});
$dave_rc->query_safe(q{BEGIN; SELECT count(*) FROM qlater_lock('rr', 1); ROLLBACK});
my $bob_rr = session('bob');
my $dave_rr = session('dave');
$bob_rr->query_safe(q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1});
$dave_rr->query_safe(q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1});
as('alice', q{SELECT qlater_revoke_queue('rr', 'bob', 'enqueue'); SELECT qlater_revoke_queue('rr', 'dave')});
my ($o, $e) = sq($bob_rc, q{SELECT qlater_enqueue('Job', '[4]', queue => 'rr')});
like($e, qr/permission denied for queue "rr"/, 'held: a long-lived session sees the revoke of enqueue at once');
($o, $e) = sq($dave_rc, q{SELECT count(*) FROM qlater_lock('rr', 5)});
like($e, qr/permission denied for queue "rr"/, 'held: and of consume, in qlater_lock');
($o, $e) = sq($dave_rc, q{SELECT qlater_listen('rr')});
like($e, qr/permission denied for queue "rr"/, 'held: and in qlater_listen');
($o, $e) = sq($bob_rr, q{SELECT qlater_enqueue('Job', '[5]', queue => 'rr')});
my ($o2, $e2) = sq($dave_rr, q{SELECT count(*) FROM qlater_lock('rr', 5)});
like($e, qr/permission denied for queue "rr"/,
	'B11: a REPEATABLE READ transaction begun before the revoke cannot enqueue after it');
ok($e2 ne '' || $o2 eq '0', 'B11: nor claim after it');
note "B11: the RR session enqueued job $o, and claimed $o2 jobs, after the revoke";
$bob_rr->query('COMMIT');
$dave_rr->query('COMMIT');
$_->quit for ($bob_rc, $dave_rc, $bob_rr, $dave_rr);

### held: two roles create the same queue at once: one owns it, the other is refused
my $first = session('bob');
$first->query_safe(q{BEGIN});
$first->query_safe(q{SELECT qlater_enqueue('shared.ha', '[1]', queue => 'race', run_at => now() + '1 hour')});
my $second = session('mallory');
$second->{stdin} .= "SELECT qlater_enqueue('shared.hm', '[\"race\"]', queue => 'race', run_at => now() + '1 hour');\n";
$second->{run}->pump_nb;
wait_for(q{SELECT count(*) > 0 FROM pg_stat_activity WHERE usename = 'mallory' AND wait_event_type = 'Lock'},
	"held: the second role's creation waits for the first");
$first->query_safe(q{COMMIT});
$second->query(q{SELECT 1});
like($second->{stderr}, qr/permission denied for queue "race"/,
	'held: and is then refused, not an internal error');
is(su(q{SELECT owner FROM qlater_queues WHERE name = 'race'}), 'bob', 'held: the first role owns it');
$first->quit;
$second->quit;

### B12. the upgrade from 0.1 (its data written as 0.1's API allowed)
su('CREATE DATABASE old');
su(q{
CREATE EXTENSION qlater VERSION '0.1';
CREATE SCHEMA shared;
GRANT USAGE, CREATE ON SCHEMA shared TO PUBLIC;
CREATE TABLE shared.log (who text, what text);
GRANT INSERT, SELECT ON shared.log TO PUBLIC;
}, 'old');
as('alice', q{
CREATE FUNCTION shared.ha(x int) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO shared.log VALUES ('ha', x::text) $$;
}, 'old');
($ret, $out, $err) = try_as('alice', q{SELECT qlater_register('shared.ha(int)')}, 'old');
like($err, qr/extension "qlater" must be updated to version \d+\.\d+/, 'held: at 0.1 the API asks for the update');
# under 0.1: alice's jobs in 'aq' (never declared), which mallory then
# declared (0.1 let any role declare an in-server queue not declared yet);
# bob's declared in-server queue 'bq', where alice enqueued; bob's
# external queue 'be' with carol as consumer and a job of alice
su(q{
INSERT INTO qlater_handler (handler, queue, priority, max_attempts, registered_by)
VALUES ('shared.ha(integer)', 'default', 100, 25, 'alice');
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role)
VALUES ('aq', 'shared.ha(integer)', '[1]', 100, now() + '1 day', 25, 'alice'),
       ('bq', 'shared.ha(integer)', '[2]', 100, now() + '1 day', 25, 'alice'),
       ('default', 'shared.ha(integer)', '[12]', 100, now(), 25, 'alice');
INSERT INTO qlater_job (queue, handler, args, priority, run_at, max_attempts, role, external)
VALUES ('be', 'AppJob', '[3]', 100, now(), 25, 'alice', true);
INSERT INTO qlater_queue (name, external, owner) VALUES ('aq', false, 'mallory'),
       ('bq', false, 'bob'), ('be', true, 'bob');
INSERT INTO qlater_queue_consumer VALUES ('be', 'carol');
}, 'old');
ok($node->wait_for_log(qr/qlater waits in database "old" until its extension is updated/),
	'held: the workers wait for the update, and say so');
is(su(q{SELECT count(*) FROM shared.log}, 'old'), '0', 'held: no job runs before the update');
su(q{ALTER EXTENSION qlater UPDATE}, 'old');
wait_for(q{SELECT count(*) = 1 FROM shared.log WHERE what = '12'},
	'held: after the update the waiting job runs', 'old');
is(su(q{SELECT string_agg(queue || ':' || grantee || ':' || privilege, ',' ORDER BY queue, grantee)
        FROM qlater_queue_grant}, 'old'),
	'be:alice:enqueue,be:carol:consume',
	'held: the consumer of 0.1 consumes, the enqueuer of an external queue enqueues');
# an in-server queue goes to the roles that use it: bob declared 'bq', only
# alice's jobs use it (as mallory and 'aq'): alice owns it now
is(su(q{SELECT owner FROM qlater_queues WHERE name = 'bq'}, 'old'), 'alice',
	"held: an in-server queue declared under 0.1 goes to the role that uses it");
is(su(q{SELECT owner FROM qlater_queues WHERE name = 'default'}, 'old'), $ext_owner,
	"held: 'default' is the extension owner's");
isnt(su(q{SELECT owner FROM qlater_queues WHERE name = 'aq'}, 'old'), 'mallory',
	"B12: mallory, who declared alice's queue under 0.1, does not own it (and its jobs) after the update");
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_pause_queue('aq')}, 'old');
isnt($ret, 0, "B12: nor pauses alice's queue");
($ret, $out, $err) = try_as('alice',
	q{SELECT qlater_enqueue('shared.ha', '[3]', queue => 'bq', run_at => now() + '1 day')}, 'old');
is($ret, 0, "B12: alice still enqueues into bob's queue, as under 0.1");
note "B12: alice's enqueue into bq: $err";

### held: pg_dump and restore keep owners, grants, pause and bounds
su('CREATE DATABASE src');
su(q{CREATE EXTENSION qlater}, 'src');
as('alice', q{
SELECT qlater_create_queue('ext', external => true);
SELECT qlater_grant_queue('ext', 'bob', 'enqueue');
SELECT qlater_grant_queue('ext', 'dave');
SELECT qlater_create_queue('slow', batch_size => 3);
SELECT qlater_pause_queue('slow');
SELECT qlater_enqueue('Work', '[1]', queue => 'ext');
}, 'src');
su(q{SELECT qlater_alter_queue('slow', max_running => 2, min_priority => 7)}, 'src');
my $dump = $node->basedir . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ], 'held: pg_dump');
su('CREATE DATABASE dst');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('dst'), $dump ], 'held: pg_restore');
my $state = q{SELECT string_agg(concat_ws(':', name, owner, external, paused, max_running, min_priority, batch_size), ',' ORDER BY name) FROM qlater_queues};
is(su($state, 'dst'), su($state, 'src'), 'held: the queues are restored as they were');
my $grants = q{SELECT string_agg(concat_ws(':', queue, grantee, privilege), ',' ORDER BY 1) FROM qlater_queue_grant};
is(su($grants, 'dst'), su($grants, 'src'), 'held: so are the grants');
is(as('dave', q{SELECT count(*) FROM qlater_jobs}, 'dst'), '1', 'held: the restored consumer sees the job');
as('bob', q{SELECT qlater_enqueue('Work', '[2]', queue => 'ext')}, 'dst');
($ret, $out, $err) = try_as('mallory', q{SELECT qlater_enqueue('Work', '[3]', queue => 'ext')}, 'dst');
like($err, qr/permission denied for queue "ext"/, 'held: the restored grants decide who enqueues');

### B14. queue names with control characters
($ret, $out, $err) = try_as('mallory', qq{SELECT qlater_create_queue(E'evil\\nLOG:  forged line')});
isnt($ret, 0, 'B14: a queue name with a newline is refused');

unlike(slurp_file($node->logfile), qr/terminated by signal/,
	'no server process ended on a signal');
note sprintf('run time %.1f s', time - $started);

$node->stop;
done_testing();
