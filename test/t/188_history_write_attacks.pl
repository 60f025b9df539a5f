# 188_history_write_attacks.pl: a hostile review of ql_history_write (0.6):
# outcomes written without a statement, by ExecSimpleRelationInsert into
# the slot's table found by name, for qlater_complete and the workers'
# batches.  A DBA changes the history's tables (triggers of every kind,
# columns added with defaults, identity and generated columns, columns
# renamed or retyped, unique, expression and partial indexes, CHECK and
# foreign keys, partitions renamed, detached, swapped, replaced by views,
# partitioned tables or tables of another column order, RLS, a
# publication, session_replication_role); a tenant completes jobs with
# TOASTed arguments of more than a megabyte, in savepoints, aborted or
# prepared transactions, in lease and session mode, hundreds in one
# statement, racing a TRUNCATE of the slot.  Expected of every case: no
# server process crashes; a committed completion has exactly one outcome
# with the right columns; a rolled-back one none, its job claimable again;
# a table that cannot take the outcome a clear ERROR, the job not lost.
#
# Found on 7d2524d (these checks failed there and pass on 0.5's INSERT
# statement): ExecSimpleRelationInsert is not an INSERT.  It fired no
# statement trigger (nor filled transition tables) of qlater_outcome; it
# filled no column default: a DBA's column with a DEFAULT got NULL, one NOT
# NULL DEFAULT made every completion fail (and a worker's lone done job
# count as a failed attempt); a column of qlater's renamed away was
# silently not written (args NULL); a partition detached from
# qlater_outcome, found by name, still took the outcomes, out of sight of
# qlater_history.  Since then ql_history_write writes into the table an
# INSERT routes the row to, with the defaults, and leaves to an INSERT
# statement whatever asks for more (statement triggers, rules, forced row
# security, a column of qlater's missing or retyped, no table for the
# slot): the cases above behave as 0.5's did.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('history_write_attacks');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n"
	  . "max_prepared_transactions = 2\nwal_level = logical\nmax_replication_slots = 2\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE TABLE done (label text, who text);
GRANT INSERT, SELECT ON done TO PUBLIC;
CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user) $$;
ALTER FUNCTION ok(text) OWNER TO alice;
CREATE FUNCTION okb(label text, blob text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.done VALUES (label, current_user) $$;
ALTER FUNCTION okb(text, text) OWNER TO alice;
CREATE TABLE audit (what text, id bigint, n bigint, at timestamptz DEFAULT clock_timestamp());
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

# what a job was when enqueued: enqueued_at, run_at, md5 of its args
my %born;

sub enq
{
	my ($q, $args) = @_;
	$args //= q{'{"k": "v"}'};
	my $id = as('alice', qq{SELECT qlater_enqueue('W', $args, queue => '$q')});
	$born{$id} = [ split /\|/, su(qq{SELECT enqueued_at, run_at, coalesce(md5(args::text), 'none') FROM qlater_job WHERE id = $id}) ];
	return $id;
}

# the outcomes of job id: "rows:good", good the rows whose every column is
# right (keep: seconds of keep_history; args: 0 if history_args is off)
sub outcome
{
	my ($id, %o) = @_;
	my $keep = $o{keep} // 86400;
	my $ext = $o{external} // 'true';
	my $handler = $o{handler} // 'W';
	my $queue = $o{queue} // 'ext';
	my ($enq, $run, $md5) = @{ $born{$id} };
	my $args = (defined $o{args} && !$o{args}) ? 'args IS NULL' : "md5(args::text) = '$md5'";
	my $from = $o{from} // 'qlater_outcome';
	# the table the row is in: its slot's, unless the tables were renamed
	# or re-attached (any_table: wherever PostgreSQL routed it)
	my $table = $o{any_table} ? 'true' : q{tableoid = ('qlater_outcome_' || slot)::regclass};
	return su(qq{SELECT count(*) || ':' || count(*) FILTER (WHERE queue = '$queue' AND handler = '$handler'
	  AND role = 'alice' AND $args AND enqueued_at = '$enq' AND run_at = '$run'
	  AND started_at IS NOT NULL AND started_at <= finished_at AND finished_at <= now()
	  AND attempt = 1 AND outcome = 'done' AND error IS NULL
	  AND extract(epoch FROM expires_at - finished_at) = $keep AND external = $ext
	  AND $table)
	  FROM $from WHERE id = $id});
}

# alice completes job id of queue q (session mode); stderr
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
	my ($name, $id, $q) = @_;
	$q //= 'ext';
	is(su("SELECT state FROM qlater_jobs WHERE id = $id"), 'pending', "$name: the job still waits");
	is(complete($q, $id), '', "$name: ... and is completed once the table is repaired");
	is(outcome($id, queue => $q), '1:1', "$name: ... with its one outcome");
}

# an attack whose completion must work: setup, completion, check, undo
sub must_record
{
	my ($name, $setup, $undo, %o) = @_;
	my $id = enq('ext', $o{args_sql});
	su($setup) if $setup;
	my $err = complete('ext', $id);
	is($err, '', "$name: the completion succeeds");
	is(outcome($id, %o), '1:1', "$name: one outcome, every column right");
	my $extra = $o{check} ? su(sprintf($o{check}, $id)) : undef;
	su($undo) if $undo;
	# a job left behind would be claimed before the next ones
	su("SELECT qlater_cancel($id)") if $err ne '';
	return ($id, $extra);
}

# an attack whose completion must fail clearly: the job is not lost
sub must_refuse
{
	my ($name, $setup, $undo, $re) = @_;
	my $id = enq('ext');
	su($setup);
	my $err = complete('ext', $id);
	like($err, $re, "$name: the completion fails with a clear error");
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', "$name: no outcome");
	su($undo);
	not_lost($name, $id);
	return $err;
}

# a DO block over the 16 slots: body with %1$s the slot
sub each_slot
{
	my ($body) = @_;
	$body =~ s/'/''/g;
	return qq{DO \$\$ BEGIN FOR i IN 0..15 LOOP EXECUTE format('$body', i); END LOOP; END \$\$;};
}

### baseline: session and lease mode
{
	my $id = enq('ext');
	is(complete('ext', $id), '', 'session mode: completed');
	is(outcome($id), '1:1', 'session mode: one outcome, every column right');
	is(su("SELECT count(*) FROM qlater_history WHERE id = $id"), '1', 'session mode: shown by qlater_history');
	is(as('alice', "SELECT state FROM qlater_job_status($id)"), 'done', 'session mode: qlater_job_status says done');

	$id = enq('ext');
	my ($out, $err) = try_as('alice', qq{SELECT qlater_complete(id, claim_token) FROM qlater_lock('ext', 1, lease => '1 minute')});
	is($err, '', 'lease mode: completed');
	is(outcome($id), '1:1', 'lease mode: one outcome, every column right');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id AND started_at < finished_at"), '1',
		'lease mode: started_at is the lease\'s');
	$id = enq('ext');
	($out, $err) = try_as('alice', qq{SELECT qlater_complete(id, gen_random_uuid()) FROM qlater_lock('ext', 1, lease => '1 second') WHERE id = $id});
	like($err, qr/token|lease|claim/i, 'lease mode: a wrong token is refused');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', 'lease mode: a wrong token leaves no outcome');
	ok($node->poll_query_until('postgres', "SELECT state = 'pending' FROM qlater_jobs WHERE id = $id"),
		'lease mode: the lease runs out');
	is(complete('ext', $id), '', 'lease mode: the job completed once its lease is gone');
	is(su("SELECT string_agg(outcome || ':' || attempt, ',' ORDER BY finished_at) FROM qlater_outcome WHERE id = $id"),
		'done:1', 'lease mode: the refused completion took its lease back with it; then done');
}

### index scans find what was written (the (id) index kept)
{
	my $id = enq('ext');
	complete('ext', $id);
	is(su("SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM qlater_outcome WHERE id = $id"),
		'1', 'the id index has the outcome');
}

### triggers
su(q{
CREATE FUNCTION trg_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.handler := NEW.handler || '!'; RETURN NEW; END $$;
CREATE FUNCTION trg_null() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE FUNCTION trg_raise() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'no outcome for you (%)', TG_WHEN; END $$;
CREATE FUNCTION trg_slot() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.slot := (NEW.slot + 1) % 16; RETURN NEW; END $$;
CREATE FUNCTION trg_audit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  INSERT INTO public.audit (what, id, n)
    VALUES (TG_NAME, NEW.id, (SELECT count(*) FROM public.qlater_outcome o WHERE o.id = NEW.id));
  RETURN NEW;
END $$;
CREATE FUNCTION trg_stmt() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN INSERT INTO public.audit (what) VALUES (TG_NAME); RETURN NULL; END $$;
});

{
	my ($id) = must_record('BEFORE ROW trigger changing NEW',
		'CREATE TRIGGER t BEFORE INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_touch()',
		'DROP TRIGGER t ON qlater_outcome', handler => 'W!');

	($id) = must_record('AFTER ROW trigger on the parent',
		'CREATE TRIGGER ar AFTER INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_audit()',
		'DROP TRIGGER ar ON qlater_outcome');
	is(su("SELECT string_agg(what || ':' || n, ',') FROM audit WHERE id = $id"), 'ar:1',
		'AFTER ROW trigger: fired once, sees its row');

	($id) = must_record('BEFORE ROW trigger on the parent',
		'CREATE TRIGGER br BEFORE INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_audit()',
		'DROP TRIGGER br ON qlater_outcome');
	is(su("SELECT string_agg(what || ':' || n, ',') FROM audit WHERE id = $id"), 'br:0',
		'BEFORE ROW trigger: fired once, before its row');

	# a trigger on every partition itself (not cloned from the parent)
	($id) = must_record('AFTER ROW trigger on each partition',
		each_slot('CREATE TRIGGER pr AFTER INSERT ON qlater_outcome_%1$s FOR EACH ROW EXECUTE FUNCTION trg_audit()'),
		each_slot('DROP TRIGGER pr ON qlater_outcome_%1$s'));
	is(su("SELECT string_agg(what || ':' || n, ',') FROM audit WHERE id = $id"), 'pr:1',
		'AFTER ROW trigger on the partition: fired once');

	($id) = must_record('deferred constraint trigger',
		each_slot('CREATE CONSTRAINT TRIGGER dc AFTER INSERT ON qlater_outcome_%1$s DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION trg_audit()'),
		each_slot('DROP TRIGGER dc ON qlater_outcome_%1$s'));
	is(su("SELECT string_agg(what || ':' || n, ',') FROM audit WHERE id = $id"), 'dc:1',
		'deferred constraint trigger: fired once at commit');

	# an INSERT into qlater_outcome (0.5) fired the parent's statement triggers
	($id) = must_record('AFTER STATEMENT trigger on the parent',
		'CREATE TRIGGER st AFTER INSERT ON qlater_outcome FOR EACH STATEMENT EXECUTE FUNCTION trg_stmt()',
		'DROP TRIGGER st ON qlater_outcome');
	is(su("SELECT count(*) FROM audit WHERE what = 'st'"), '1',
		'AFTER STATEMENT trigger on qlater_outcome: fired once, as for the INSERT of 0.5');
	($id) = must_record('AFTER STATEMENT trigger with a transition table',
		q{CREATE FUNCTION trg_tt() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
		  BEGIN INSERT INTO public.audit (what, id, n) SELECT TG_NAME, max(id), count(*) FROM nt; RETURN NULL; END $$;
		  CREATE TRIGGER tt AFTER INSERT ON qlater_outcome REFERENCING NEW TABLE AS nt
		  FOR EACH STATEMENT EXECUTE FUNCTION trg_tt()},
		'DROP TRIGGER tt ON qlater_outcome');
	is(su("SELECT string_agg(what || ':' || n, ',') FROM audit WHERE id = $id"), 'tt:1',
		'AFTER STATEMENT trigger with a transition table: fired with the outcome');

	# a BEFORE trigger returning NULL drops the row, as it does an INSERT's
	$id = enq('ext');
	su('CREATE TRIGGER bn BEFORE INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_null()');
	is(complete('ext', $id), '', 'BEFORE ROW trigger returning NULL: the completion succeeds');
	su('DROP TRIGGER bn ON qlater_outcome');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id") . ':'
		  . su("SELECT count(*) FROM qlater_job WHERE id = $id"), '0:0',
		'BEFORE ROW trigger returning NULL: no outcome (as for an INSERT), the job done');

	must_refuse('BEFORE ROW trigger raising',
		'CREATE TRIGGER br BEFORE INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_raise()',
		'DROP TRIGGER br ON qlater_outcome', qr/no outcome for you \(BEFORE\)/);
	must_refuse('AFTER ROW trigger raising',
		'CREATE TRIGGER ar AFTER INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_raise()',
		'DROP TRIGGER ar ON qlater_outcome', qr/no outcome for you \(AFTER\)/);
	must_refuse('deferred constraint trigger raising at commit',
		each_slot('CREATE CONSTRAINT TRIGGER dr AFTER INSERT ON qlater_outcome_%1$s DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION trg_raise()'),
		each_slot('DROP TRIGGER dr ON qlater_outcome_%1$s'), qr/no outcome for you \(AFTER\)/);
	must_refuse('BEFORE ROW trigger moving the row to another slot',
		'CREATE TRIGGER bs BEFORE INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_slot()',
		'DROP TRIGGER bs ON qlater_outcome', qr/partition/);

	# session_replication_role: ordinary triggers sleep, replica ones fire
	su(q{CREATE TRIGGER ar AFTER INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_audit();
	     CREATE TRIGGER rr AFTER INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_audit();
	     ALTER TABLE qlater_outcome ENABLE REPLICA TRIGGER rr});
	$id = enq('ext');
	my ($out, $err) = try_as(undef,
		qq{SET session_replication_role = replica; SELECT count(qlater_complete(id)) FROM qlater_lock('ext', 1000) WHERE id = $id});
	is($err, '', 'session_replication_role = replica: a DBA completes a job');
	is(outcome($id), '1:1', 'session_replication_role = replica: one outcome, every column right');
	is(su("SELECT string_agg(what, ',') FROM audit WHERE id = $id"), 'rr',
		'session_replication_role = replica: only the replica trigger fired');
	su('DROP TRIGGER ar ON qlater_outcome; DROP TRIGGER rr ON qlater_outcome');
}

### triggers that complete another job: ql_history_write within itself
su(q{
CREATE TABLE chain (a bigint PRIMARY KEY, b bigint);
CREATE FUNCTION trg_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE nxt bigint;
BEGIN
  SELECT b INTO nxt FROM public.chain WHERE a = NEW.id;
  IF nxt IS NOT NULL THEN PERFORM public.qlater_complete(nxt); END IF;
  RETURN NEW;
END $$;
});
for my $when ('BEFORE', 'AFTER')
{
	my $a = enq('ext');
	my $b = enq('ext');
	su("INSERT INTO chain VALUES ($a, $b)");
	su("CREATE TRIGGER ch $when INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_chain()");
	my ($out, $err) = try_as('alice', qq{SELECT count(qlater_complete(id)) FROM qlater_lock('ext', 2) WHERE id = $a});
	su('DROP TRIGGER ch ON qlater_outcome');
	is($err, '', "$when ROW trigger completing another claimed job: no error");
	is(outcome($a) . ' ' . outcome($b), '1:1 1:1', "$when ROW trigger completing another job: one right outcome each");
	for my $id ($a, $b)
	{
		su("SELECT qlater_cancel($id)") if su("SELECT count(*) FROM qlater_job WHERE id = $id") ne '0';
	}
}

### logical decoding sees the outcome written
{
	su(q{SELECT pg_create_logical_replication_slot('hw', 'test_decoding')});
	my $id = enq('ext');
	is(complete('ext', $id), '', 'a logical slot: completed');
	like(su(q{SELECT string_agg(data, E'\n') FROM pg_logical_slot_get_changes('hw', NULL, NULL)}),
		qr/table public\.qlater_outcome_\d+: INSERT: slot\[smallint\]:\d+ id\[bigint\]:$id queue\[text\]:'ext'/,
		'a logical slot: the outcome\'s insert is decoded');
	su(q{SELECT pg_drop_replication_slot('hw')});
}

### columns
{
	# an INSERT naming qlater's columns gave the others their defaults
	my ($id, $v) = must_record('a column added with a DEFAULT',
		q{ALTER TABLE qlater_outcome ADD COLUMN site text DEFAULT 'eu-1'}, undef,
		check => q{SELECT coalesce(site, 'NULL') FROM qlater_outcome WHERE id = %d});
	is($v, 'eu-1', 'a column added with a DEFAULT: the outcome has the default, not NULL');
	su('ALTER TABLE qlater_outcome DROP COLUMN site');

	($id, $v) = must_record('a column added with a volatile DEFAULT',
		q{ALTER TABLE qlater_outcome ADD COLUMN written_at timestamptz DEFAULT clock_timestamp()}, undef,
		check => q{SELECT written_at IS NOT NULL FROM qlater_outcome WHERE id = %d});
	is($v, 't', 'a column added with a volatile DEFAULT: the outcome has it');
	su('ALTER TABLE qlater_outcome DROP COLUMN written_at');

	($id, $v) = must_record('a column added NOT NULL DEFAULT',
		q{ALTER TABLE qlater_outcome ADD COLUMN tier int NOT NULL DEFAULT 7},
		undef, check => q{SELECT tier FROM qlater_outcome WHERE id = %d});
	is($v // '', '7', 'a column added NOT NULL DEFAULT: the outcome has the default');

	# and the workers' batches with that column
	as('alice', q{SELECT qlater_create_queue('wq', batch_size => 8); SELECT qlater_register('ok(text)', queue => 'wq')});
	my $w = as('alice', q{SELECT qlater_enqueue('ok', '["nn"]', queue => 'wq')});
	my $seen = '';
	for (1 .. 12)
	{
		$seen = su("SELECT string_agg(outcome, ',' ORDER BY finished_at) FROM qlater_outcome WHERE id = $w");
		last if $seen ne '';
		select(undef, undef, undef, 0.5);
	}
	is($seen, 'done', 'a column added NOT NULL DEFAULT: a worker records the done outcome of the job it did');
	su('ALTER TABLE qlater_outcome DROP COLUMN tier');
	ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM qlater_outcome WHERE id = $w AND outcome = 'done'"),
		'... once the column is gone, the job is done (not lost)');
	is(su(q{SELECT count(*) FROM done WHERE label = 'nn'}), '1', '... and its work done once');

	my ($o1, $e1) = try_as(undef, q{ALTER TABLE qlater_outcome ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY});
	if ($e1 eq '')
	{
		su(q{ALTER TABLE qlater_outcome DROP COLUMN seq});
		($id, $v) = must_record('an identity column added',
			q{ALTER TABLE qlater_outcome ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY},
			undef, check => q{SELECT seq IS NOT NULL FROM qlater_outcome WHERE id = %d});
		is($v // '', 't', 'an identity column added: the outcome has a number');
		su('ALTER TABLE qlater_outcome DROP COLUMN seq');
	}
	else
	{
		note("an identity column cannot be added to qlater_outcome: $e1");
	}

	($id, $v) = must_record('a stored generated column added',
		q{ALTER TABLE qlater_outcome ADD COLUMN ran interval GENERATED ALWAYS AS (finished_at - started_at) STORED},
		undef, check => q{SELECT ran = finished_at - started_at FROM qlater_outcome WHERE id = %d});
	is($v, 't', 'a stored generated column: computed');
	su('ALTER TABLE qlater_outcome DROP COLUMN ran');

	must_record('columns added then dropped (dropped attributes)',
		q{ALTER TABLE qlater_outcome ADD COLUMN x1 int, ADD COLUMN x2 text; ALTER TABLE qlater_outcome DROP COLUMN x1}, 
		q{ALTER TABLE qlater_outcome DROP COLUMN x2});

	my ($out, $err) = try_as(undef, 'ALTER TABLE qlater_outcome ALTER COLUMN attempt TYPE bigint');
	like($err, qr/view|rule/, 'the type of a column the view reads cannot change');

	# one of qlater's columns of another type: written by an INSERT, as 0.5
	# wrote every outcome, which casts the values to the columns' types;
	# the column renamed away keeps its NOT NULL, and the INSERT fails
	must_refuse('attempt renamed away, a bigint attempt added',
		'ALTER TABLE qlater_outcome RENAME COLUMN attempt TO attempt_0; ALTER TABLE qlater_outcome ADD COLUMN attempt bigint',
		'ALTER TABLE qlater_outcome DROP COLUMN attempt; ALTER TABLE qlater_outcome RENAME COLUMN attempt_0 TO attempt',
		qr/null value in column "attempt_0" of relation "qlater_outcome_\d+" violates not-null constraint/);
	must_refuse('role renamed away, a text role added',
		'ALTER TABLE qlater_outcome RENAME COLUMN role TO role_0; ALTER TABLE qlater_outcome ADD COLUMN role text',
		'ALTER TABLE qlater_outcome DROP COLUMN role; ALTER TABLE qlater_outcome RENAME COLUMN role_0 TO role',
		qr/null value in column "role_0" of relation "qlater_outcome_\d+" violates not-null constraint/);
	must_record('args renamed away, a text args added',
		'ALTER TABLE qlater_outcome RENAME COLUMN args TO args_0; ALTER TABLE qlater_outcome ADD COLUMN args text',
		'ALTER TABLE qlater_outcome DROP COLUMN args; ALTER TABLE qlater_outcome RENAME COLUMN args_0 TO args');

	# a column of qlater's renamed: an INSERT naming it failed; nothing may
	# silently write the outcome without it
	$id = enq('ext');
	su('ALTER TABLE qlater_outcome RENAME COLUMN args TO payload');
	$err = complete('ext', $id);
	my $args = su("SELECT coalesce(md5(args::text), 'NULL') FROM qlater_history WHERE id = $id");
	su('ALTER TABLE qlater_outcome RENAME COLUMN payload TO args');
	ok($err ne '' || $args eq $born{$id}[2],
		'a column renamed (args): an error, or the outcome keeps its args; not a silent NULL');
	note("args renamed: error '$err', history's args md5 $args");
	su("SELECT qlater_cancel($id)") if $err ne '';

	$id = enq('ext');
	su('ALTER TABLE qlater_outcome RENAME COLUMN finished_at TO ended_at');
	$err = complete('ext', $id);
	my $fin = su("SELECT coalesce(ended_at::text, 'NULL') FROM qlater_outcome WHERE id = $id");
	su('ALTER TABLE qlater_outcome RENAME COLUMN ended_at TO finished_at');
	ok($err ne '' || $fin ne 'NULL',
		'a column renamed (finished_at): an error, or the outcome keeps its end; not a silent NULL');
	note("finished_at renamed: error '$err', finished_at $fin");
	su("SELECT qlater_cancel($id)") if $err ne '';

	# a partition with another column order and a dropped column
	su(each_slot(q{ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s;
	  ALTER TABLE qlater_outcome_%1$s RENAME TO old_outcome_%1$s;
	  CREATE TABLE qlater_outcome_%1$s (junk int, external boolean NOT NULL DEFAULT false, expires_at timestamptz NOT NULL,
	    error jsonb, outcome text NOT NULL, attempt int NOT NULL, finished_at timestamptz NOT NULL,
	    started_at timestamptz, run_at timestamptz NOT NULL, enqueued_at timestamptz NOT NULL, args jsonb,
	    role name NOT NULL, handler text NOT NULL, queue text NOT NULL, id bigint NOT NULL, slot smallint NOT NULL);
	  ALTER TABLE qlater_outcome_%1$s DROP COLUMN junk;
	  ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s)}));
	must_record('partitions of another column order, a dropped column first', undef, undef);
	su(each_slot(q{ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s;
	  INSERT INTO old_outcome_%1$s SELECT slot, id, queue, handler, role, args, enqueued_at, run_at, started_at,
	    finished_at, attempt, outcome, error, expires_at, external FROM qlater_outcome_%1$s;
	  DROP TABLE qlater_outcome_%1$s;
	  ALTER TABLE old_outcome_%1$s RENAME TO qlater_outcome_%1$s;
	  ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s)}));
}

### indexes and constraints
{
	su(each_slot(q{CREATE UNIQUE INDEX one_per_job_%1$s ON qlater_outcome_%1$s (id) WHERE queue = 'ext'}));
	my $id = enq('ext');
	as('alice', "SELECT qlater_fail(id, 'first try', now()) FROM qlater_lock('ext', 1000) WHERE id = $id");
	select(undef, undef, undef, 0.2);
	my $err = complete('ext', $id);
	like($err, qr/duplicate key value violates unique constraint/,
		'a unique index: a second outcome of a job in its slot is refused');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '1', 'a unique index: only the failure recorded');
	is(su("SELECT state FROM qlater_jobs WHERE id = $id"), 'pending', 'a unique index: the job still waits');
	su(each_slot('DROP INDEX one_per_job_%1$s'));
	is(complete('ext', $id), '', 'a unique index dropped: the job is completed');
	is(su("SELECT string_agg(outcome, ',' ORDER BY finished_at) FROM qlater_outcome WHERE id = $id"), 'failed,done',
		'a unique index dropped: failed then done');

	# a deferrable unique constraint and an exclusion constraint, each met
	# by a row the DBA wrote first with the next job's id in the slot now
	# written (the slot of the latest outcome: slots last two hours here)
	for my $c (
		[ 'a deferrable unique constraint, checked at commit',
		  q{ALTER TABLE qlater_outcome ADD CONSTRAINT du UNIQUE (id, slot, outcome) DEFERRABLE INITIALLY DEFERRED},
		  q{ALTER TABLE qlater_outcome DROP CONSTRAINT du}, qr/duplicate key value violates unique constraint/ ],
		[ 'an exclusion constraint on each partition',
		  each_slot(q{ALTER TABLE qlater_outcome_%1$s ADD CONSTRAINT ex_%1$s EXCLUDE USING btree (id WITH =) WHERE (queue = 'ext' AND outcome = 'done')}),
		  each_slot(q{ALTER TABLE qlater_outcome_%1$s DROP CONSTRAINT ex_%1$s}), qr/conflicting key value violates exclusion constraint/ ])
	{
		my ($name, $setup, $undo, $re) = @$c;
		my $slot = su(q{SELECT slot FROM qlater_outcome ORDER BY finished_at DESC LIMIT 1});
		su($setup);
		$id = enq('ext');
		su(qq{INSERT INTO qlater_outcome VALUES ($slot, $id, 'ext', 'W', 'alice', NULL, now(), now(), now(), now(), 1, 'done', NULL, now() + '1 day', true)});
		my $e = complete('ext', $id);
		like($e, $re, "$name: a duplicate outcome is refused");
		is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '1', "$name: only the DBA's row");
		su("DELETE FROM qlater_outcome WHERE id = $id");
		su($undo);
		not_lost($name, $id);
	}

	su(q{CREATE INDEX by_k ON qlater_outcome ((args->>'k'), lower(handler));
	     CREATE INDEX done_only ON qlater_outcome (queue, id) WHERE outcome = 'done' AND args ? 'k2'});
	$id = enq('ext', q{'{"k": "expr-idx", "k2": 1}'});
	is(complete('ext', $id), '', 'expression and partial indexes: completed');
	is(su(q{SET enable_seqscan = off; SET enable_bitmapscan = off;
	        SELECT count(*) FROM qlater_outcome WHERE args->>'k' = 'expr-idx' AND lower(handler) = 'w'}),
		'1', 'an expression index has the outcome');
	is(su(qq{SET enable_seqscan = off; SET enable_bitmapscan = off;
	        SELECT count(*) FROM qlater_outcome WHERE queue = 'ext' AND id = $id AND outcome = 'done' AND args ? 'k2'}),
		'1', 'a partial index has the outcome');
	like(su(qq{SET enable_seqscan = off; SET enable_bitmapscan = off;
	        EXPLAIN SELECT count(*) FROM qlater_outcome WHERE queue = 'ext' AND id = $id AND outcome = 'done' AND args ? 'k2'}),
		qr/done_only|qlater_outcome_\d+_queue_id_idx/, '... read through it');
	$id = enq('ext', q{'{"k": "other"}'});
	is(complete('ext', $id), '', 'a partial index, a row outside it: completed');
	is(su(qq{SET enable_seqscan = off; SET enable_bitmapscan = off;
	        SELECT count(*) FROM qlater_outcome WHERE queue = 'ext' AND id = $id AND outcome = 'done' AND args ? 'k2'}),
		'0', 'a partial index: a row outside it not found through it');
	su('DROP INDEX by_k; DROP INDEX done_only');

	must_record('a CHECK constraint that holds',
		q{ALTER TABLE qlater_outcome ADD CONSTRAINT known CHECK (outcome IN ('done', 'failed', 'dead', 'cancelled', 'timeout', 'crashed', 'purged'))},
		'ALTER TABLE qlater_outcome DROP CONSTRAINT known');
	must_refuse('a CHECK constraint that fails',
		'ALTER TABLE qlater_outcome ADD CONSTRAINT many CHECK (attempt > 5) NOT VALID',
		'ALTER TABLE qlater_outcome DROP CONSTRAINT many', qr/violates check constraint "many"/);
	must_refuse('a NOT NULL on a column written NULL (error)',
		each_slot('ALTER TABLE qlater_outcome_%1$s ADD CONSTRAINT en CHECK (error IS NOT NULL) NOT VALID'),
		each_slot('ALTER TABLE qlater_outcome_%1$s DROP CONSTRAINT en'), qr/violates check constraint "en"/);
	su(q{CREATE TABLE known_queue (name text PRIMARY KEY);
	     INSERT INTO known_queue SELECT DISTINCT queue FROM qlater_outcome UNION SELECT 'ext';
	     CREATE TABLE known_id (id bigint PRIMARY KEY)});
	must_record('a foreign key that holds',
		'ALTER TABLE qlater_outcome ADD CONSTRAINT fk FOREIGN KEY (queue) REFERENCES known_queue',
		'ALTER TABLE qlater_outcome DROP CONSTRAINT fk');
	must_refuse('a foreign key that fails',
		'INSERT INTO known_id SELECT DISTINCT id FROM qlater_outcome; '
		  . 'ALTER TABLE qlater_outcome ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES known_id',
		'ALTER TABLE qlater_outcome DROP CONSTRAINT fk', qr/violates foreign key constraint "fk"/);
}

### partitions
{
	# the tables' names do not matter: the outcome goes where PostgreSQL
	# routes it, as an INSERT into qlater_outcome
	must_record('every partition renamed',
		each_slot('ALTER TABLE qlater_outcome_%1$s RENAME TO gone_%1$s'),
		each_slot('ALTER TABLE gone_%1$s RENAME TO qlater_outcome_%1$s'), any_table => 1);

	# detached, the tables are no longer the history: an INSERT into
	# qlater_outcome failed (no partition for the row)
	my $id = enq('ext');
	su(each_slot('ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s'));
	my $err = complete('ext', $id);
	my $seen = su("SELECT count(*) FROM qlater_history WHERE id = $id");
	my $hidden = su(qq{SELECT count(*) FROM (} . join(' UNION ALL ', map { "SELECT id FROM qlater_outcome_$_" } 0 .. 15)
		  . qq{) s WHERE id = $id});
	su(each_slot('ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s)'));
	ok($err ne '' || $seen eq '1',
		'every partition detached: the completion fails, or its outcome is in qlater_history');
	note("partitions detached: error '$err', in qlater_history: $seen, in the detached tables: $hidden");
	su("SELECT qlater_cancel($id)") if $err ne '';

	# each table attached for the next slot's value: routed by its value
	must_record('partitions attached for other slots',
		each_slot('ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s; '
			  . 'ALTER TABLE qlater_outcome_%1$s RENAME TO kept_%1$s; '
			  . 'CREATE TABLE qlater_outcome_%1$s (LIKE kept_%1$s INCLUDING ALL)')
		  . each_slot('ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN ((%1$s + 1) %% 16)'),
		each_slot('ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s')
		  . each_slot('DROP TABLE qlater_outcome_%1$s; ALTER TABLE kept_%1$s RENAME TO qlater_outcome_%1$s; '
			  . 'ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s)'),
		any_table => 1);

	must_refuse('partitions replaced by views',
		each_slot('ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s; '
			  . 'ALTER TABLE qlater_outcome_%1$s RENAME TO kept_%1$s; '
			  . 'CREATE VIEW qlater_outcome_%1$s AS SELECT * FROM kept_%1$s'),
		each_slot('DROP VIEW qlater_outcome_%1$s; ALTER TABLE kept_%1$s RENAME TO qlater_outcome_%1$s; '
			  . 'ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s)'),
		qr/no partition of relation "qlater_outcome" found for row/);

	# partitioned further: the INSERT routes on
	must_record('partitions replaced by partitioned tables',
		each_slot('ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s; '
			  . 'ALTER TABLE qlater_outcome_%1$s RENAME TO kept_%1$s; '
			  . 'CREATE TABLE qlater_outcome_%1$s PARTITION OF qlater_outcome FOR VALUES IN (%1$s) PARTITION BY LIST (outcome); '
			  . 'CREATE TABLE qlater_outcome_%1$s_any PARTITION OF qlater_outcome_%1$s DEFAULT'),
		each_slot('DROP TABLE qlater_outcome_%1$s; ALTER TABLE kept_%1$s RENAME TO qlater_outcome_%1$s; '
			  . 'ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s)'),
		any_table => 1);

	my ($out, $e2) = try_as(undef, 'CREATE EXTENSION IF NOT EXISTS file_fdw');
	if ($e2 eq '')
	{
		must_refuse('partitions replaced by foreign tables',
			'CREATE SERVER files FOREIGN DATA WRAPPER file_fdw; '
			  . each_slot('ALTER TABLE qlater_outcome DETACH PARTITION qlater_outcome_%1$s; '
				  . 'ALTER TABLE qlater_outcome_%1$s RENAME TO kept_%1$s; '
				  . q{CREATE FOREIGN TABLE qlater_outcome_%1$s PARTITION OF qlater_outcome FOR VALUES IN (%1$s) SERVER files OPTIONS (filename '/dev/null')}),
			each_slot('DROP FOREIGN TABLE qlater_outcome_%1$s; ALTER TABLE kept_%1$s RENAME TO qlater_outcome_%1$s; '
				  . 'ALTER TABLE qlater_outcome ATTACH PARTITION qlater_outcome_%1$s FOR VALUES IN (%1$s)'),
			qr/foreign table/);
	}
}

### RLS, publication
{
	must_record('RLS enabled and forced, no policy',
		'ALTER TABLE qlater_outcome ENABLE ROW LEVEL SECURITY; ALTER TABLE qlater_outcome FORCE ROW LEVEL SECURITY; '
		  . each_slot('ALTER TABLE qlater_outcome_%1$s ENABLE ROW LEVEL SECURITY; ALTER TABLE qlater_outcome_%1$s FORCE ROW LEVEL SECURITY'),
		'ALTER TABLE qlater_outcome NO FORCE ROW LEVEL SECURITY; ALTER TABLE qlater_outcome DISABLE ROW LEVEL SECURITY; '
		  . each_slot('ALTER TABLE qlater_outcome_%1$s NO FORCE ROW LEVEL SECURITY; ALTER TABLE qlater_outcome_%1$s DISABLE ROW LEVEL SECURITY'));
	must_record('a publication FOR ALL TABLES',
		'CREATE PUBLICATION everything FOR ALL TABLES', undef);
	must_record('a publication FOR ALL TABLES, replica identity full',
		each_slot('ALTER TABLE qlater_outcome_%1$s REPLICA IDENTITY FULL'),
		each_slot('ALTER TABLE qlater_outcome_%1$s REPLICA IDENTITY DEFAULT') . ' DROP PUBLICATION everything');
}

### a tenant: large arguments, retention, transactions
{
	my $big = q{(SELECT jsonb_build_object('blob', string_agg(md5(g::text || random()::text), '')) FROM generate_series(1, 40000) g)};
	my ($id) = must_record('arguments of more than a megabyte, TOASTed', undef, undef, args_sql => $big);
	is(su("SELECT octet_length(args::text) > 1000000 FROM qlater_outcome WHERE id = $id"), 't', '... and kept whole');
	as('alice', q{SELECT qlater_alter_queue('ext', history_args => false)});
	must_record('arguments of more than a megabyte, history_args off', undef, undef, args_sql => $big, args => 0);
	as('alice', q{SELECT qlater_alter_queue('ext', history_args => true)});

	# the workers: large arguments, in a batch
	as('alice', q{SELECT qlater_create_queue('wb', batch_size => 16, batch_delay => '1 second');
	              SELECT qlater_pause_queue('wb'); SELECT qlater_register('ok(text)', queue => 'wb');
	              SELECT qlater_register('okb(text, text)', queue => 'wb')});
	as('alice', qq{SELECT count(qlater_enqueue('okb', jsonb_build_array('big' || g, ($big)->>'blob'), queue => 'wb')) FROM generate_series(1, 3) g});
	as('alice', q{SELECT count(qlater_enqueue('ok', jsonb_build_array('wb' || g), queue => 'wb')) FROM generate_series(1, 37) g});
	my %wb = map { split /\|/ } split /\n/, su(q{SELECT id, md5(args::text) FROM qlater_job WHERE queue = 'wb'});
	as('alice', q{SELECT qlater_resume_queue('wb')});
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 40 FROM qlater_outcome WHERE queue = 'wb'}),
		'workers in batches of 16: 40 outcomes');
	my $good = 0;
	for my $wid (keys %wb)
	{
		$good++ if su(qq{SELECT count(*) FROM qlater_outcome WHERE id = $wid AND outcome = 'done' AND md5(args::text) = '$wb{$wid}'
		  AND handler ~ 'ok' AND role = 'alice' AND NOT external AND attempt = 1 AND error IS NULL
		  AND started_at <= finished_at AND extract(epoch FROM expires_at - finished_at) = 86400
		  AND tableoid = ('qlater_outcome_' || slot)::regclass}) eq '1';
	}
	is($good, 40, 'workers in batches: every outcome right, large arguments whole');
	is(su(q{SELECT count(*) FROM done WHERE label ~ '^(big|wb)'}), '40', 'workers in batches: each job ran once');

	as('alice', q{SELECT qlater_alter_queue('ext', keep_history => '0')});
	$id = enq('ext');
	is(complete('ext', $id), '', 'keep_history 0: completed');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id") . ':' . su("SELECT count(*) FROM qlater_job WHERE id = $id"),
		'0:0', 'keep_history 0: no outcome, the job gone');
	as('alice', q{SELECT qlater_alter_queue('ext', keep_history => '1 hour')});
	($id) = must_record('keep_history an hour', undef, undef, keep => 3600);
	as('alice', q{SELECT qlater_alter_queue('ext', keep_history => '1 day')});

	# a queue dropped between the claim and the completion
	as('alice', q{SELECT qlater_create_queue('dq', external => true); SELECT qlater_alter_queue('dq', keep_history => '2 hours')});
	$id = enq('dq');
	my $s = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	$s->query_safe(qq{SELECT id FROM qlater_lock('dq', 1)});
	my ($o, $e) = try_as('alice', q{SELECT qlater_drop_queue('dq')});
	$s->query(qq{SELECT qlater_complete($id)});
	my $cerr = $s->{stderr};
	$s->{stderr} = '';
	$s->quit;
	note("queue dropped while claimed: drop '$e', completion '$cerr'");
	if ($e eq '')
	{
		is($cerr, '', 'a queue dropped after the claim: the completion succeeds');
		is(outcome($id, queue => 'dq'), '1:1', 'a queue dropped after the claim: one outcome (kept a day)');
	}
	else
	{
		is($cerr, '', 'a queue that cannot be dropped while claimed: the completion succeeds');
		is(outcome($id, queue => 'dq', keep => 7200), '1:1', '... one outcome, kept as the queue says');
	}

	# savepoints, aborts
	$id = enq('ext');
	as('alice', qq{BEGIN; SAVEPOINT a; SELECT qlater_complete(id) FROM qlater_lock('ext', 1000) WHERE id = $id; ROLLBACK TO a; COMMIT});
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', 'a completion rolled back to a savepoint: no outcome');
	is(complete('ext', $id), '', '... the job claimable again');
	is(outcome($id), '1:1', '... its completion then: one outcome');
	$id = enq('ext');
	as('alice', qq{BEGIN; SAVEPOINT a; SELECT qlater_complete(id) FROM qlater_lock('ext', 1000) WHERE id = $id; RELEASE a; ROLLBACK});
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', 'a completion in a released savepoint, rolled back: no outcome');
	my ($x, $aerr) = try_as('alice', qq{BEGIN; SELECT qlater_complete(id) FROM qlater_lock('ext', 1000) WHERE id = $id; SELECT 1/0; COMMIT});
	like($aerr, qr/division by zero/, 'a completion in a transaction that fails');
	is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', '... no outcome');
	is(complete('ext', $id), '', '... the job claimable again');
	is(outcome($id), '1:1', '... its completion then: one outcome');
	# nested savepoints, completed twice
	$id = enq('ext');
	($x, $aerr) = try_as('alice', qq{BEGIN; SELECT id FROM qlater_lock('ext', 1000) WHERE id = $id;
	  SAVEPOINT a; SELECT qlater_complete($id); ROLLBACK TO a;
	  SAVEPOINT b; SELECT qlater_complete($id); RELEASE b; COMMIT});
	is($aerr, '', 'completed, rolled back to a savepoint, completed again: no error');
	is(outcome($id), '1:1', '... exactly one outcome');

	# prepared transactions, lease mode
	for my $end ('COMMIT PREPARED', 'ROLLBACK PREPARED')
	{
		$id = enq('ext');
		($x, $aerr) = try_as('alice', qq{BEGIN; SELECT qlater_complete(id, claim_token) FROM qlater_lock('ext', 1, lease => '2 seconds') WHERE id = $id;
		  PREPARE TRANSACTION 'p1'});
		note("PREPARE of a lease-mode completion: '$aerr'");
		my $prepared = su(q{SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'p1'});
		if ($prepared eq '1')
		{
			is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', "prepared completion ($end): no outcome seen yet");
			su("$end 'p1'");
		}
		else
		{
			like($aerr, qr/cannot PREPARE/, "PREPARE of a completion ($end): refused");
		}
		if ($end eq 'COMMIT PREPARED' && $prepared eq '1')
		{
			is(outcome($id), '1:1', 'COMMIT PREPARED: one outcome, every column right');
			is(su("SELECT count(*) FROM qlater_job WHERE id = $id"), '0', 'COMMIT PREPARED: the job gone');
		}
		else
		{
			is(su("SELECT count(*) FROM qlater_outcome WHERE id = $id"), '0', "$end or refused: no outcome");
			ok($node->poll_query_until('postgres', "SELECT state = 'pending' FROM qlater_jobs WHERE id = $id"),
				"$end or refused: the job waits again once its lease ran out");
			is(complete('ext', $id), '', "$end or refused: ... and is completed");
			is(outcome($id), '1:1', "$end or refused: ... with one outcome");
		}
	}

	# many completions in one statement, and qlater_complete_many
	as('alice', q{SELECT count(qlater_enqueue('W', jsonb_build_array(g), queue => 'ext')) FROM generate_series(1, 500) g});
	is(as('alice', q{SELECT count(qlater_complete(id)) FROM qlater_lock('ext', 500)}), '500', '500 completions in one statement');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT id) FROM qlater_outcome WHERE queue = 'ext' AND jsonb_typeof(args) = 'array'
	        AND outcome = 'done' AND attempt = 1 AND error IS NULL AND external AND handler = 'W'}), '500:500', '... 500 outcomes');
	as('alice', q{SELECT count(qlater_enqueue('W', jsonb_build_array('m', g), queue => 'ext')) FROM generate_series(1, 50) g});
	is(as('alice', q{SELECT qlater_complete_many(array_agg(id)) FROM qlater_lock('ext', 50)}), '50', 'qlater_complete_many of 50');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT id) FROM qlater_outcome WHERE args->>0 = 'm' AND outcome = 'done'}),
		'50:50', '... 50 outcomes');
	# many completions, one per statement, in one transaction
	as('alice', q{SELECT count(qlater_enqueue('W', jsonb_build_array('t', g), queue => 'ext')) FROM generate_series(1, 200) g});
	my $sql = "BEGIN;\nCREATE TEMP TABLE mine AS SELECT id FROM qlater_lock('ext', 200);\n"
	  . join('', map { "SELECT qlater_complete((SELECT id FROM mine ORDER BY id OFFSET $_ LIMIT 1));\n" } 0 .. 199) . "COMMIT;\n";
	as('alice', $sql);
	is(su(q{SELECT count(*) || ':' || count(DISTINCT id) FROM qlater_outcome WHERE args->>0 = 't' AND outcome = 'done'}),
		'200:200', '200 completions in one transaction: 200 outcomes');
}

### a completion racing a TRUNCATE of its slot
{
	my $id = enq('ext');
	my $dba = $node->background_psql('postgres', on_error_stop => 0);
	$dba->query_safe('BEGIN');
	$dba->query_safe(join('; ', map { "LOCK TABLE qlater_outcome_$_ IN ACCESS EXCLUSIVE MODE" } 0 .. 15));
	$dba->query_safe(join('; ', map { "TRUNCATE qlater_outcome_$_" } 0 .. 15));
	my $app = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'alice' ]);
	$app->query_until(qr/go/, qq{\\echo go\nSELECT count(qlater_complete(id)) FROM qlater_lock('ext', 1000) WHERE id = $id;\n});
	ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_locks WHERE NOT granted AND relation::regclass::text LIKE 'qlater_outcome_%'}),
		'a completion waits for the slot a DBA truncates');
	$dba->query_safe('COMMIT');
	$dba->quit;
	$app->query('SELECT 1');
	is($app->{stderr}, '', 'the completion goes on once the TRUNCATE commits');
	$app->quit;
	is(outcome($id), '1:1', 'the completion after a TRUNCATE: one outcome, every column right');
	is(su("SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM qlater_outcome WHERE id = $id"),
		'1', '... in the index of the new table');
}

### the workers' batch whose outcomes' trigger enqueues a job each
{
	su(q{CREATE FUNCTION trg_enq() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	  IF NEW.queue = 'wt' THEN
	    PERFORM public.qlater_enqueue('W', jsonb_build_object('after', NEW.id), queue => 'ext');
	  END IF;
	  RETURN NEW;
	END $$;
	CREATE TRIGGER en BEFORE INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_enq()});
	as('alice', q{SELECT qlater_create_queue('wt', batch_size => 8, batch_delay => '1 second');
	              SELECT qlater_pause_queue('wt'); SELECT qlater_register('ok(text)', queue => 'wt')});
	as('alice', q{SELECT count(qlater_enqueue('ok', jsonb_build_array('wt' || g), queue => 'wt')) FROM generate_series(1, 12) g});
	as('alice', q{SELECT qlater_resume_queue('wt')});
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 12 FROM qlater_outcome WHERE queue = 'wt' AND outcome = 'done'}),
		'a trigger enqueueing from the workers\' outcomes: 12 done');
	su('DROP TRIGGER en ON qlater_outcome');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT args->>'after') FROM qlater_job WHERE queue = 'ext' AND args ? 'after'}),
		'12:12', '... and 12 jobs enqueued by the trigger, one per outcome');
	is(su(q{SELECT count(*) FROM done WHERE label ~ '^wt'}), '12', '... each job\'s work once');
	su(q{SELECT count(qlater_cancel(id)) FROM qlater_job WHERE queue = 'ext'});
}

### the workers' batch when the history refuses the outcomes
{
	as('alice', q{SELECT qlater_create_queue('wr', batch_size => 8, batch_delay => '1 second');
	              SELECT qlater_pause_queue('wr'); SELECT qlater_register('ok(text)', queue => 'wr')});
	as('alice', q{SELECT count(qlater_enqueue('ok', jsonb_build_array('wr' || g), queue => 'wr')) FROM generate_series(1, 10) g});
	su('CREATE TRIGGER br BEFORE INSERT ON qlater_outcome FOR EACH ROW EXECUTE FUNCTION trg_raise()');
	my $from = -s $node->logfile;
	as('alice', q{SELECT qlater_resume_queue('wr')});
	sleep(3);
	like(substr(slurp_file($node->logfile), $from), qr/no outcome for you/, 'the refusal is logged');
	is(su(q{SELECT count(*) FROM qlater_outcome WHERE queue = 'wr'}), '0', 'no outcome written meanwhile');
	su('DROP TRIGGER br ON qlater_outcome');
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM qlater_job WHERE queue = 'wr'}),
		'the trigger gone, every job ends');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT id) FROM qlater_outcome WHERE queue = 'wr' AND outcome = 'done'}),
		'10:10', 'each job done once in the history');
	is(su(q{SELECT count(*) || ':' || count(DISTINCT label) FROM done WHERE label ~ '^wr'}), '10:10',
		'each job\'s work done once');
}

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
unlike($log, qr/TRAP:|PANIC:/, 'no TRAP, no PANIC');
done_testing();
