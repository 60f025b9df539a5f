# 189_history_route_attacks.pl: a hostile review of ql_history_write
# (0.6) where 188 does not look: routing and concurrency.  The outcome of
# a completion goes into the leaf table of qlater_outcome that the
# parent's partition descriptor gives for its slot (list bounds, else the
# default partition), by ExecSimpleRelationInsert; or through an INSERT
# statement when the parent asks for more.  Attacked here: a partition
# whose list holds two slots, a leaf's own BEFORE ROW trigger changing
# NEW.slot, a DEFAULT partition taking every slot, an ATTACH racing a
# completion that waits for the default partition, DETACH PARTITION
# CONCURRENTLY (waiting, cancelled, FINALIZEd) and ATTACH while consumers
# complete jobs in a loop, a statement trigger added meanwhile, the
# workers' batches of 16 (jobs done and dead) while a DBA adds a NOT NULL
# DEFAULT column and a statement trigger, a tenant's own tables, temporary
# tables, functions and operators named as those the write path uses, and
# a keep_history of a second while the expiry empties slots, with the
# partitions laid out otherwise than the extension made them (two slots
# in one table, a slot's table detached but kept, a default partition).
# Expected everywhere: no server process crashes; a committed completion
# has exactly one outcome with the right columns; an aborted one none, its
# job claimable; a table that cannot take the outcome a clear ERROR, the
# job not lost; no outcome removed before its expires_at.
#
# Found on 99c5c53 (2 checks fail): the expiry (ql_history_empty_slot)
# still finds a slot's table by its name, qlater_outcome_N, reads the
# latest expires_at of the rows of slot N through qlater_outcome (wherever
# PostgreSQL routes them), and TRUNCATEs the table of that name.  A table
# named for slot N that holds another slot too is emptied with that
# slot's rows of a minute a few seconds after they were written; a slot's
# table a DBA detached and kept (its rows going to a default partition)
# is emptied although it is no longer the history and holds a row of a
# day.  ql_history_write, routed by the partition descriptor, writes
# where PostgreSQL routes; the expiry emptied by name.  Since then the
# expiry finds the table as the writers do, and empties it only if it
# takes no other slot's rows (not the default, not a list of slots).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('history_route_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n"
	  . "qlater.poll_interval = 500ms\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE SCHEMA bob AUTHORIZATION bob;
CREATE TABLE done (label text, who text);
GRANT INSERT, SELECT ON done TO PUBLIC;
CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user); SELECT pg_sleep(0.02) $$;
ALTER FUNCTION ok(text) OWNER TO alice;
CREATE FUNCTION bad(label text) RETURNS void LANGUAGE plpgsql
  AS $$ BEGIN INSERT INTO public.done VALUES (label, current_user); RAISE EXCEPTION 'bad %', label; END $$;
ALTER FUNCTION bad(text) OWNER TO alice;
CREATE TABLE audit (what text, id bigint, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION trg_tt() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN INSERT INTO public.audit (what, id) SELECT TG_NAME, id FROM nt; RETURN NULL; END $$;
});

# as role (undef: the superuser that runs the tests)
sub as
{
	my ($role, $q) = @_;
	return $node->safe_psql('postgres', $q, defined $role ? (extra_params => [ '-U', $role ]) : ());
}
sub su { return as(undef, $_[0]); }

# psql as role: (stdout, stderr)
sub try_as
{
	my ($role, $q) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $q, defined $role ? (extra_params => [ '-U', $role ]) : ());
	return ($out, $err);
}

as('alice', q{SELECT qlater_create_queue('ext', external => true)});

# what a job was when enqueued: enqueued_at, run_at, md5 of its args, role
my %born;

sub enq
{
	my ($q, $role) = @_;
	$role //= 'alice';
	my $id = as($role, qq{SELECT qlater_enqueue('W', '{"k": "v"}', queue => '$q')});
	$born{$id} = [ split /\|/, su(qq{SELECT enqueued_at, run_at, md5(args::text) FROM qlater_job WHERE id = $id}) ];
	push @{ $born{$id} }, $role;
	return $id;
}

# the outcomes of job id: "rows:good", good the rows whose every column is
# right; table: SQL true of the table the row is in (default: its slot's)
sub outcome
{
	my ($id, %o) = @_;
	my $keep = $o{keep} // 86400;
	my $queue = $o{queue} // 'ext';
	my ($enq, $run, $md5, $role) = @{ $born{$id} };
	my $table = $o{table} // q{tableoid = ('qlater_outcome_' || slot)::regclass};
	return su(qq{SELECT count(*) || ':' || count(*) FILTER (WHERE queue = '$queue' AND handler = 'W'
	  AND role = '$role' AND md5(args::text) = '$md5' AND enqueued_at = '$enq' AND run_at = '$run'
	  AND started_at IS NOT NULL AND started_at <= finished_at AND finished_at <= now()
	  AND attempt = 1 AND outcome = 'done' AND error IS NULL
	  AND extract(epoch FROM expires_at - finished_at) = $keep AND external
	  AND $table)
	  FROM qlater_outcome WHERE id = $id});
}

# role completes job id of queue q (session mode); stderr
sub complete
{
	my ($q, $id, $role) = @_;
	my ($out, $err) = try_as($role // 'alice',
		qq{SELECT count(qlater_complete(id)) FROM qlater_lock('$q', 1000) WHERE id = $id});
	return $err;
}

# job id still waits and can be completed (after the attack is undone)
sub not_lost
{
	my ($name, $id, %o) = @_;
	is(su("SELECT state FROM qlater_jobs WHERE id = $id"), 'pending', "$name: the job still waits");
	is(complete($o{queue} // 'ext', $id), '', "$name: ... and is completed once the tables are repaired");
	is(outcome($id, %o), '1:1', "$name: ... with its one outcome");
}

# a DO block: for i in from..to, format(body, args) run
sub do_loop
{
	my ($from, $to, $args, $body) = @_;
	$body =~ s/'/''/g;
	return qq{DO \$\$ BEGIN FOR i IN $from..$to LOOP EXECUTE format('$body', $args); END LOOP; END \$\$;};
}
sub each_slot { return do_loop(0, 15, 'i', $_[0]); }

# the slot written now, when a slot lasts width seconds; and how many
# seconds of it have gone
sub slot_now
{
	my ($width) = @_;
	return split /\|/, su(qq{SELECT (floor(e / $width)::bigint % 16), round(e - floor(e / $width) * $width, 3)
	  FROM (SELECT extract(epoch FROM clock_timestamp()) - 946684800 AS e) x});
}

# how many slots have their table as the extension made it
sub tables_as_made
{
	return su(q{SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
	  WHERE i.inhparent = 'qlater_outcome'::regclass AND NOT i.inhdetachpending
	  AND c.relname ~ '^qlater_outcome_\d+$'
	  AND pg_get_expr(c.relpartbound, c.oid) = format('FOR VALUES IN (''%s'')', substring(c.relname FROM 16))});
}

# attach every slot's table that is not attached
my $attach_missing = q{DO $$ BEGIN FOR i IN 0..15 LOOP
  IF NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = format('qlater_outcome_%s', i)::regclass) THEN
    EXECUTE format('ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s)', i);
  END IF; END LOOP; END $$;};

as('alice', q{SELECT qlater_create_queue('ext2', external => true)});

### baseline
{
	is(tables_as_made(), '16', 'baseline: 16 slot tables');
	my $id = enq('ext');
	is(complete('ext', $id), '', 'baseline: completed');
	is(outcome($id), '1:1', 'baseline: one outcome, every column right, in its slot\'s table');
}

### a partition whose list holds two slots; a leaf's own BEFORE ROW trigger
{
	su(do_loop(0, 7, '2 * i, 2 * i + 1', q{ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s;
	  ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%2$s;
	  ALTER TABLE qlater_outcome_%1$s RENAME TO kept_%1$s; ALTER TABLE qlater_outcome_%2$s RENAME TO kept_%2$s;
	  CREATE TABLE qlater_outcome_%1$s PARTITION OF qlater_outcome FOR VALUES IN (%1$s, %2$s)}));
	my $pair = q{tableoid = ('qlater_outcome_' || (slot - slot % 2))::regclass};
	my $id = enq('ext');
	is(complete('ext', $id), '', 'two slots in one table: completed');
	is(outcome($id, table => $pair), '1:1', 'two slots in one table: one outcome, every column right, in the pair\'s table');

	# a trigger of the leaf itself (not cloned from the parent) moving the
	# row to the other slot of its table: the row still belongs there
	su(q{CREATE FUNCTION trg_twin() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.slot := NEW.slot # 1; RETURN NEW; END $$;
	     CREATE FUNCTION trg_away() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.slot := (NEW.slot + 2) % 16; RETURN NEW; END $$;});
	su(do_loop(0, 7, '2 * i', 'CREATE TRIGGER tw BEFORE INSERT ON qlater_outcome_%1$s FOR EACH ROW EXECUTE FUNCTION trg_twin()'));
	my ($s) = slot_now(7200);
	$id = enq('ext');
	is(complete('ext', $id), '', 'a leaf\'s BEFORE ROW trigger moving the row to its table\'s other slot: completed');
	is(outcome($id, table => $pair), '1:1', '... one outcome, every column right, in the pair\'s table');
	is(su("SELECT slot FROM qlater_outcome WHERE id = $id"), $s ^ 1, '... with the slot the trigger gave it');
	su(do_loop(0, 7, '2 * i', 'DROP TRIGGER tw ON qlater_outcome_%1$s'));

	# a leaf's trigger moving the row out of its table: refused, as an
	# INSERT's row would be
	su(do_loop(0, 7, '2 * i', 'CREATE TRIGGER ta BEFORE INSERT ON qlater_outcome_%1$s FOR EACH ROW EXECUTE FUNCTION trg_away()'));
	$id = enq('ext');
	my $err = complete('ext', $id);
	like($err, qr/new row for relation "qlater_outcome_\d+" violates partition constraint/,
		'a leaf\'s BEFORE ROW trigger moving the row out of its table: a clear error');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', '... no outcome');
	su(do_loop(0, 7, '2 * i', 'DROP TRIGGER ta ON qlater_outcome_%1$s'));
	not_lost('a leaf\'s trigger moving the row out of its table', $id, table => $pair);

	# as the extension made them again, the outcomes routed into them
	su(do_loop(0, 7, '2 * i, 2 * i + 1', q{ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s;
	  ALTER TABLE qlater_outcome_%1$s RENAME TO pair_%1$s;
	  ALTER TABLE kept_%1$s RENAME TO qlater_outcome_%1$s; ALTER TABLE kept_%2$s RENAME TO qlater_outcome_%2$s;
	  ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s);
	  ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%2$s FOR VALUES IN (%2$s);
	  INSERT INTO qlater_outcome SELECT * FROM pair_%1$s; DROP TABLE pair_%1$s}));
	is(tables_as_made(), '16', 'two slots in one table: undone');
}

### a DEFAULT partition
{
	su('CREATE TABLE qlater_outcome_def PARTITION OF qlater_outcome DEFAULT');
	my $id = enq('ext');
	is(complete('ext', $id), '', 'a DEFAULT partition beside the slots\' tables: completed');
	is(outcome($id), '1:1', '... one outcome, every column right, in its slot\'s table (not the default)');

	su(each_slot('ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s'));
	my $def = q{tableoid = 'qlater_outcome_def'::regclass};
	$id = enq('ext');
	is(complete('ext', $id), '', 'only a DEFAULT partition: completed');
	is(outcome($id, table => $def), '1:1', '... one outcome, every column right, in the default partition');
	is(as('alice', "SELECT count(*) FROM qlater_history WHERE id = $id"), '1', '... shown by qlater_history');
	$id = enq('ext');
	my ($out, $err) = try_as('alice', qq{BEGIN; SELECT count(qlater_complete(id)) FROM qlater_lock('ext', 1000) WHERE id = $id; ROLLBACK});
	is($err, '', 'only a DEFAULT partition: a completion rolled back');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', '... leaves no outcome');
	is(complete('ext', $id), '', '... the job claimable again');
	is(outcome($id, table => $def), '1:1', '... then one outcome');

	# an ATTACH of the slot's table (it locks the default partition to
	# check it) while a completion routed to the default waits for it
	my ($s) = slot_now(7200);
	su("WITH d AS (DELETE FROM qlater_outcome_def WHERE slot = $s RETURNING *) INSERT INTO qlater_outcome_$s SELECT * FROM d");
	$id = enq('ext');
	my $dba = $node->background_psql('postgres', on_error_stop => 0);
	$dba->query_safe('BEGIN');
	$dba->query_safe("ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_$s FOR VALUES IN ($s)");
	my $app = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	$app->query_until(qr/go/, qq{\\echo go\nSELECT count(qlater_complete(id)) FROM qlater_lock('ext', 1000) WHERE id = $id;\n});
	ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_locks WHERE NOT granted AND relation = 'qlater_outcome_def'::regclass}),
		'a completion routed to the default partition waits for an ATTACH in progress');
	$dba->query_safe('COMMIT');
	$dba->quit;
	$app->query('SELECT 1');
	$err = $app->{stderr};
	$app->quit;
	note("completion behind an ATTACH: '$err'");
	my $where = su("SELECT coalesce(string_agg(tableoid::regclass::text, ','), 'none') FROM qlater_outcome WHERE id = $id");
	ok(($err eq '' && $where eq "qlater_outcome_$s")
		  || ($err =~ /violates partition constraint/ && $where eq 'none'),
		'a completion behind an ATTACH: its outcome in the attached table, or a clear error and none (never in the default)');
	is(su("SELECT count(*) FROM qlater_outcome_def WHERE slot = $s"), '0', '... the default partition holds no row of the attached slot');
	not_lost('a completion behind an ATTACH', $id) if $err ne '';

	su("ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_def; $attach_missing
	    INSERT INTO qlater_outcome SELECT * FROM qlater_outcome_def; DROP TABLE qlater_outcome_def");
	is(tables_as_made(), '16', 'a DEFAULT partition: undone');
}

### DETACH PARTITION CONCURRENTLY, cancelled, FINALIZEd, ATTACH and a
### statement trigger, while two consumers complete jobs in a loop
{
	my ($s) = slot_now(7200);
	my $nojob = qr/no partition of relation "qlater_outcome" found for row/;
	as('alice', q{SELECT count(qlater_enqueue('W', jsonb_build_array('dc', g), queue => 'ext')) FROM generate_series(1, 500) g});
	# a completion in progress holds the tables
	my $holder = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	$holder->query_safe('BEGIN');
	my $hid = $holder->query_safe(q{SELECT id FROM (SELECT id, qlater_complete(id) FROM qlater_lock('ext', 1)) c});
	my @cons;
	for my $c (1 .. 2)
	{
		my $p = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
		$p->query_until(qr/go/, "\\echo go\n"
			  . join('', map { "SELECT count(qlater_complete(id)) FROM qlater_lock('ext', 1);\nSELECT pg_sleep(0.03);\n" } 1 .. 220));
		push @cons, $p;
	}
	my $dba = $node->background_psql('postgres', on_error_stop => 0);
	my $dpid = $dba->query_safe('SELECT pg_backend_pid()');
	$dba->query_until(qr/go/, "\\echo go\nALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_$s CONCURRENTLY;\n");
	ok($node->poll_query_until('postgres', "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $dpid"),
		'DETACH CONCURRENTLY of the slot written: waits for the completion in progress');
	is(su("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'qlater_outcome_$s'::regclass"), 't',
		'... the slot\'s table pending detach meanwhile');
	my $id = enq('ext2');
	my $err = complete('ext2', $id);
	like($err, $nojob, 'a completion while the slot\'s table is pending detach: a clear error (no table for the row)');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', '... no outcome');
	select(undef, undef, undef, 0.5);

	su("SELECT pg_cancel_backend($dpid)");
	$dba->query('SELECT 1');
	like($dba->{stderr}, qr/canceling statement due to user request/, 'DETACH CONCURRENTLY cancelled');
	$dba->{stderr} = '';
	is(su("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'qlater_outcome_$s'::regclass"), 't',
		'... the slot\'s table left pending detach');
	my $id2 = enq('ext2');
	$err = complete('ext2', $id2);
	like($err, $nojob, 'a completion after the cancel: a clear error');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id2"), '0', '... no outcome');
	select(undef, undef, undef, 0.5);

	$holder->query_safe('COMMIT');
	$holder->quit;
	$dba->query_safe("ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_$s FINALIZE");
	is(su("SELECT count(*) FROM pg_inherits WHERE inhrelid = 'qlater_outcome_$s'::regclass"), '0', 'DETACH ... FINALIZE: detached');
	is(su("SELECT count(*) FROM qlater_outcome_$s WHERE id = $hid"), '1',
		'... the completion that held it through the detach: its outcome in the detached table');
	select(undef, undef, undef, 0.5);
	$dba->query_safe("ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_$s FOR VALUES IN ($s)");
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $hid AND outcome = 'done'"), '1',
		'ATTACH while consumers complete jobs: the held completion\'s outcome is in the history again');
	not_lost('completion while pending detach', $id, queue => 'ext2');
	not_lost('completion after a cancelled detach', $id2, queue => 'ext2');
	select(undef, undef, undef, 0.5);

	# a statement trigger: the next completions take the INSERT statement
	$dba->query_safe(q{CREATE TRIGGER tt AFTER INSERT ON qlater_outcome REFERENCING NEW TABLE AS nt
	  FOR EACH STATEMENT EXECUTE FUNCTION trg_tt()});
	$id = enq('ext2');
	is(complete('ext2', $id), '', 'a statement trigger added while consumers complete jobs: a completion succeeds');
	is(outcome($id, queue => 'ext2'), '1:1', '... one outcome, every column right');
	is(su("SELECT count(*) FROM audit WHERE what = 'tt' AND id = $id"), '1', '... seen once by the statement trigger');
	my $cerr = '';
	for my $p (@cons)
	{
		$p->query('SELECT 1');
		$cerr .= $p->{stderr};
		$p->quit;
	}
	$dba->query_safe('DROP TRIGGER tt ON qlater_outcome');
	$dba->quit;
	my @errs = grep { /ERROR/ } split /\n/, $cerr;
	note(scalar(@errs) . ' completions of the consumers failed');
	is(join("\n", grep { !/$nojob/ } @errs), '', 'the consumers\' only errors: no table for the row, while the slot was detached');
	as('alice', q{SELECT count(qlater_complete(id)) FROM qlater_lock('ext', 1000)});
	is(su(q{SELECT count(*) FROM qlater_job WHERE args->>0 = 'dc'}), '0', 'every job of the consumers completed in the end');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT id) || ':' || count(*) FILTER (WHERE queue = 'ext' AND handler = 'W'
	          AND role = 'alice' AND attempt = 1 AND outcome = 'done' AND error IS NULL AND external
	          AND started_at <= finished_at AND extract(epoch FROM expires_at - finished_at) = 86400
	          AND tableoid = ('qlater_outcome_' || slot)::regclass)
	        FROM qlater_outcome WHERE args->>0 = 'dc'}), '500:500:500',
		'every job of the consumers: exactly one outcome, every column right, in its slot\'s table');
	cmp_ok(su(q{SELECT count(*) FROM audit WHERE what = 'tt'}), '>', 1, 'the statement trigger saw the consumers\' completions');
	is(su(q{SELECT count(*) FROM audit a WHERE what = 'tt' AND ((SELECT count(*) FROM qlater_outcome o WHERE o.id = a.id) <> 1
	        OR (SELECT count(*) FROM audit b WHERE b.what = 'tt' AND b.id = a.id) <> 1)}), '0',
		'each outcome the statement trigger saw: once, and in the history once');
	is(tables_as_made(), '16', 'the detached slot attached again');
}

### the workers' batches of 16, jobs done and dead, while a DBA adds a NOT
### NULL DEFAULT column and a statement trigger
{
	as('alice', q{SELECT qlater_create_queue('wq'); SELECT qlater_alter_queue('wq', batch_size => 16);
	  SELECT qlater_pause_queue('wq'); SELECT qlater_register('ok(text)', queue => 'wq');
	  SELECT qlater_register('bad(text)', queue => 'wq', max_attempts => 1);
	  SELECT count(qlater_enqueue(CASE WHEN g % 5 = 0 THEN 'bad' ELSE 'ok' END, jsonb_build_array('wq' || g), queue => 'wq'))
	  FROM generate_series(1, 160) g});
	as('alice', q{SELECT qlater_resume_queue('wq')});
	select(undef, undef, undef, 0.3);
	su('ALTER TABLE qlater_outcome ADD COLUMN tier int NOT NULL DEFAULT 7');
	select(undef, undef, undef, 0.3);
	su(q{CREATE TRIGGER wt AFTER INSERT ON qlater_outcome REFERENCING NEW TABLE AS nt
	  FOR EACH STATEMENT EXECUTE FUNCTION trg_tt()});
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM qlater_job WHERE queue = 'wq' AND NOT dead}),
		'workers in batches of 16 while the history changes: every job ends');
	su('DROP TRIGGER wt ON qlater_outcome');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT id) FROM qlater_outcome WHERE queue = 'wq' AND outcome = 'done'
	        AND handler ~ 'ok' AND role = 'alice' AND NOT external AND attempt = 1 AND error IS NULL
	        AND args->>0 ~ '^wq' AND started_at <= finished_at AND extract(epoch FROM expires_at - finished_at) = 86400}),
		'128:128', 'workers in batches: one done outcome per job done, every column right');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT id) FROM qlater_outcome WHERE queue = 'wq' AND outcome = 'dead'
	        AND handler ~ 'bad' AND error::text ~ 'bad wq'}),
		'32:32', 'workers in batches: one dead outcome per job that failed');
	is(su(q{SELECT count(*) FROM qlater_outcome WHERE queue = 'wq'}), '160', 'workers in batches: no other outcome');
	is(su(q{SELECT count(*) FROM qlater_outcome WHERE queue = 'wq' AND tier IS DISTINCT FROM 7}),
		'0', 'workers in batches: every outcome has the added column\'s default');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT label) FROM done WHERE label ~ '^wq'}), '128:128',
		'workers in batches: each done job\'s work once, the failed ones\' undone');
	is(su(q{SELECT count(*) FROM audit a WHERE what = 'wt' AND ((SELECT count(*) FROM qlater_outcome o WHERE o.id = a.id) <> 1
	        OR (SELECT count(*) FROM audit b WHERE b.what = 'wt' AND b.id = a.id) <> 1)}), '0',
		'workers in batches: the statement trigger saw each outcome it saw once');
	note(su(q{SELECT count(*) FROM audit WHERE what = 'wt'}) . ' outcomes of the workers written after the statement trigger');
	su('ALTER TABLE qlater_outcome DROP COLUMN tier');
}

### a tenant's own objects named as the write path's
{
	as('bob', q{SELECT qlater_create_queue('bq', external => true)});
	as('bob', q{
SET search_path = bob, pg_catalog, public;
CREATE TABLE bob.calls (who text, what text);
GRANT INSERT, SELECT ON bob.calls TO PUBLIC;
CREATE TABLE bob.qlater_outcome (slot smallint, id bigint, queue text, handler text, role name, args jsonb,
  enqueued_at timestamptz, run_at timestamptz, started_at timestamptz, finished_at timestamptz, attempt int,
  outcome text, error jsonb, expires_at timestamptz, external boolean);
DO $$ BEGIN FOR i IN 0..15 LOOP
  EXECUTE format('CREATE TABLE bob.qlater_outcome_%s (LIKE bob.qlater_outcome)', i);
  EXECUTE format('GRANT INSERT ON bob.qlater_outcome_%s TO PUBLIC', i);
END LOOP; END $$;
GRANT INSERT ON bob.qlater_outcome TO PUBLIC;
CREATE FUNCTION bob.unnest(a anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bob.calls VALUES (current_user, 'unnest'); RETURN QUERY SELECT * FROM pg_catalog.unnest(a); END $$;
CREATE FUNCTION bob.eq8(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bob.calls VALUES (current_user, '=8'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR bob.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = bob.eq8);
CREATE FUNCTION bob.eqt(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bob.calls VALUES (current_user, '=t'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR bob.= (LEFTARG = text, RIGHTARG = text, FUNCTION = bob.eqt);
CREATE FUNCTION bob.eq2(smallint, smallint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bob.calls VALUES (current_user, '=2'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR bob.= (LEFTARG = smallint, RIGHTARG = smallint, FUNCTION = bob.eq2);
CREATE FUNCTION bob.tsplus(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bob.calls VALUES (current_user, '+'); RETURN $1 OPERATOR(pg_catalog.+) $2; END $$;
CREATE OPERATOR bob.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = bob.tsplus);
CREATE FUNCTION bob.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bob.calls VALUES (current_user, 'now'); RETURN pg_catalog.now(); END $$;
});
	my $temps = q{SET search_path = pg_temp, bob, pg_catalog, public;
	  DO $$ BEGIN FOR i IN 0..15 LOOP
	    EXECUTE format('CREATE TEMP TABLE qlater_outcome_%s (LIKE bob.qlater_outcome)', i); END LOOP; END $$;
	  CREATE TEMP TABLE qlater_outcome (LIKE bob.qlater_outcome);};
	my $count = q{SELECT (SELECT count(*) FROM pg_temp.qlater_outcome) + (SELECT count(*) FROM bob.qlater_outcome)}
	  . join('', map { " + (SELECT count(*) FROM pg_temp.qlater_outcome_$_) + (SELECT count(*) FROM bob.qlater_outcome_$_)" } 0 .. 15);
	for my $path ('the fast path', 'the INSERT statement')
	{
		su(q{CREATE TRIGGER bt AFTER INSERT ON qlater_outcome REFERENCING NEW TABLE AS nt
		  FOR EACH STATEMENT EXECUTE FUNCTION trg_tt()}) if $path ne 'the fast path';
		my $id = enq('bq', 'bob');
		my ($out, $err) = try_as('bob', qq{$temps
		  SELECT count(qlater_complete(id)) FROM qlater_lock('bq', 1000);
		  $count;});
		is($err, '', "a tenant's own tables, temporary tables, functions and operators ($path): the completion succeeds");
		is($out, "1\n0", "... none of the tenant's tables took the outcome");
		is(outcome($id, queue => 'bq'), '1:1', "... one outcome, every column right, in the extension's table");
		is(su(q{SELECT count(*) FROM bob.calls WHERE who <> 'bob'}), '0', "... nothing of the tenant's ran as another role");
		if ($path ne 'the fast path')
		{
			is(su("SELECT count(*) FROM audit WHERE what = 'bt' AND id = $id"), '1', '... written by the INSERT statement');
			su('DROP TRIGGER bt ON qlater_outcome');
		}
	}
	note('calls of the tenant\'s functions: ' . su(q{SELECT coalesce(string_agg(who || ':' || what, ','), 'none') FROM bob.calls}));
}

### keep_history of a second, the expiry emptying slots while completions
### run, with the tables laid out otherwise: a table holding two slots, a
### slot's table detached but kept by the DBA, a default partition
{
	su(q{SELECT qlater_alter_queue(name, keep_history => '1 minute') FROM qlater_queues});
	as('alice', q{SELECT qlater_create_queue('short', external => true); SELECT qlater_alter_queue('short', keep_history => '1 second');
	  SELECT qlater_create_queue('long', external => true); SELECT qlater_alter_queue('long', keep_history => '1 minute')});
	is(su(q{SELECT max(keep_history) FROM qlater_queues}), '00:01:00', 'every queue keeps a minute at most: slots of 5 seconds');
	# s0: detached, kept (with a row of the DBA's), its rows go to the
	# default partition; s1 and s2: one table, named s1's
	# the slot before s0 (sp) begins 2 s from now at least: time for the
	# changes below and a worker's wake-up before its outcomes are written
	my ($c, $f) = slot_now(5);
	my $s = ($c + ($f < 3 ? 2 : 3)) % 16;
	my ($s0, $s1, $s2, $s3) = map { ($s + $_) % 16 } 0 .. 3;
	su(qq{INSERT INTO qlater_outcome VALUES ($s0, -1, 'archive', 'W', 'alice', NULL, now(), now(), now(), now(), 1, 'done',
	        NULL, now() + '1 day', true);
	  ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_$s0;
	  CREATE TABLE qlater_outcome_def PARTITION OF qlater_outcome DEFAULT;
	  ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_$s1;
	  ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_$s2;
	  ALTER TABLE qlater_outcome_$s1 RENAME TO kept_$s1;
	  ALTER TABLE qlater_outcome_$s2 RENAME TO kept_$s2;
	  CREATE TABLE qlater_outcome_$s1 PARTITION OF qlater_outcome FOR VALUES IN ($s1, $s2)});
	# a worker of the database does the expiry: one is there
	as('alice', q{SELECT qlater_enqueue('ok', '["wake"]', queue => 'wq')});
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM done WHERE label = 'wake'}), 'a worker runs in the database');
	my $from = -s $node->logfile;
	my $sp = ($s + 15) % 16;
	my (@short, @long, @asmade, $errs, @misplaced);
	$errs = '';
	my %table = ($sp => "qlater_outcome_$sp", $s0 => 'qlater_outcome_def', $s1 => "qlater_outcome_$s1", $s2 => "qlater_outcome_$s1");
	my $deadline = time + 45;
	while (time < $deadline)
	{
		($c, $f) = slot_now(5);
		last if $c == $s3 && $f >= 4;
		# before s0: outcomes of a minute in a slot's table as made
		if ($f >= 0.3 && $f < 4.3 && ($c == $sp || $c == $s0 || $c == $s1 || $c == $s2))
		{
			my $q = ($c == $s2 || $c == $sp) ? 'long' : 'short';
			my $id = enq($q);
			$errs .= complete($q, $id);
			# still slot c after the completion: it was written in slot c
			# (else the sample is dropped: its slot is not known here)
			my ($after) = slot_now(5);
			if ($after == $c)
			{
				push @{ $c == $sp ? \@asmade : $q eq 'long' ? \@long : \@short }, $id;
				my $at = su("SELECT slot || ':' || tableoid::regclass FROM qlater_outcome WHERE id = $id");
				push @misplaced, "$id $at" if $at ne "$c:$table{$c}";
			}
		}
		select(undef, undef, undef, 0.15);
	}
	is($errs, '', 'keep_history of a second: every completion succeeds');
	is(join(', ', @misplaced), '', 'each outcome written in the slot of its time, in the table PostgreSQL routes it to');
	cmp_ok(scalar(@long), '>', 0, 'outcomes kept a minute were written');
	# the expiry ran: slot s1's rows of a second are gone (or it did not run)
	note('outcomes of a second still there: ' . su('SELECT count(*) FROM qlater_outcome WHERE id IN (' . join(',', @short) . ')')
		  . ' of ' . scalar(@short));
	cmp_ok(scalar(@asmade), '>', 0, 'outcomes kept a minute were written in a slot\'s table as made, before');
	is(su('SELECT count(*) FROM qlater_outcome WHERE id IN (' . join(',', @asmade, -2) . ')'), scalar(@asmade),
		'a slot\'s table as made: no outcome kept a minute is removed before it expires');
	is(su('SELECT count(*) FROM qlater_outcome WHERE id IN (' . join(',', @long) . ')'), scalar(@long),
		'two slots in one table: no outcome kept a minute is removed before it expires');
	is(su("SELECT count(*) FROM qlater_outcome_$s0 WHERE id = -1"), '1',
		'a slot\'s table detached and kept by the DBA: not emptied by the expiry');
	is(su(q{SELECT count(*) FROM (SELECT id FROM qlater_outcome GROUP BY id, attempt, outcome HAVING count(*) > 1) d}), '0',
		'no outcome written twice');
	my @logerr = grep { /ERROR|FATAL/ } split /\n/, substr(slurp_file($node->logfile), $from);
	is(join("\n", @logerr), '', 'keep_history of a second: no error in the server log');
}

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
unlike($log, qr/TRAP:|PANIC:/, 'no TRAP, no PANIC');
done_testing();
