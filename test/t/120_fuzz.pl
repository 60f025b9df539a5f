# 120_fuzz.pl: a seeded, bounded fuzzer over every qlater_* SQL function.
#
# Every function the extension owns (read from pg_depend) is called with
# random arguments: NULLs, extreme numbers, odd JSON (deep nesting, huge
# strings, unicode escapes, \u0000, 1e999), odd texts (empty, 10,000
# characters, quotes, parentheses, control characters, names of pseudo-type
# and overloaded functions), intervals and timestamps (infinity), cron
# strings and time zones, as a superuser, as a plain role and as a member of
# qlater_admin.  Handlers with odd parameter types (domains, composites,
# arrays, enums, int2vector, oidvector, record-returning functions,
# procedures, 100 parameters, ...) are registered and fuzzed jobs of them are
# enqueued, so that the workers run them.
#
# Asserted: every call ends in a result or an error with a SQLSTATE; no
# error is an internal one (class XX: elog); no server process dies and no
# worker exits on an error (a job that cannot run must not stop one); the
# properties of qlater_cron_next hold (its tick is after `after`, and the
# first tick after a microsecond before it is itself); at the end the
# workers still run a normal job.
#
# The calls are made from the seed alone: QL_FUZZ_SEED=<n> repeats a run
# (the default seed is fixed, so that the suite is deterministic; try
# others with QL_FUZZ_SEED=$RANDOM).  QL_FUZZ_CALLS sets the number of
# calls (default 20000); the calls stop after QL_FUZZ_SECONDS (default 60)
# whatever is left.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $seed = $ENV{QL_FUZZ_SEED} // 3;
$seed = int($seed);
my $ncalls = int($ENV{QL_FUZZ_CALLS} // 20000);
my $budget = $ENV{QL_FUZZ_SECONDS} // 60;
diag "fuzz seed $seed ($ncalls calls, at most $budget s): rerun with QL_FUZZ_SEED=$seed";
srand($seed);

my $node = PostgreSQL::Test::Cluster->new('fuzz');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\n"
	  . "qlater.max_workers = 2\n"
	  . "max_worker_processes = 16\n"
	  # the SQLSTATE of every error in the log (workers' included)
	  . "log_error_verbosity = verbose\n"
	  # a crash restarts the server, so that the fuzzer goes on and finds
	  # more (PostgreSQL::Test::Cluster turns this off)
	  . "restart_after_crash = on\n");
$node->start;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

### setup: roles, the driver, handlers with odd parameter types
q1(<<'EOSQL');
CREATE EXTENSION qlater;
CREATE ROLE fz_user LOGIN;
CREATE ROLE fz_admin LOGIN IN ROLE qlater_admin;
CREATE SCHEMA fzu AUTHORIZATION fz_user;
GRANT USAGE ON SCHEMA fzu TO PUBLIC;

-- the calls, made by the test, and their driver: each call runs in a
-- subtransaction of its own and ends in its SQLSTATE ('00000': a result).
-- 'qlfuzz <id>' goes to the server log before each call, so that a crash
-- names the call that caused it.
CREATE TABLE fz_call (id int PRIMARY KEY, role text NOT NULL, fn text NOT NULL,
                      call text NOT NULL);
GRANT SELECT ON fz_call TO PUBLIC;
CREATE FUNCTION fz_run(lo int, hi int, skip int[]) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    st text;
    msg text;
BEGIN
    FOR c IN SELECT id, call FROM public.fz_call
              WHERE id BETWEEN lo AND hi AND id <> ALL (skip) ORDER BY id LOOP
        RAISE LOG 'qlfuzz %', c.id;
        BEGIN
            EXECUTE c.call;
            st := '00000';
            msg := '';
        EXCEPTION WHEN others THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        END;
        RETURN NEXT c.id || ' ' || st || ' '
                    || left(translate(msg, E'\n\r\t', '   '), 300);
    END LOOP;
END $$;

-- properties of qlater_cron_next: its tick is after `after`, and the first
-- tick after a microsecond before it is itself (QLF01, QLF02)
CREATE FUNCTION fz_cron_prop(s text, t timestamptz, tz text) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    r timestamptz;
    r2 timestamptz;
BEGIN
    r := qlater_cron_next(s, t, tz);
    IF r IS NOT NULL AND t IS NOT NULL THEN
        IF r <= t THEN
            RAISE EXCEPTION 'qlater_cron_next(%, %, %) = %: not after', s, t, tz, r
                USING ERRCODE = 'QLF01';
        END IF;
        IF isfinite(r) AND r - interval '1 microsecond' >= t THEN
            r2 := qlater_cron_next(s, r - interval '1 microsecond', tz);
            IF r2 IS DISTINCT FROM r THEN
                RAISE EXCEPTION 'qlater_cron_next(%, %, %) = % but from a microsecond before it: %',
                    s, t, tz, r, r2 USING ERRCODE = 'QLF02';
            END IF;
        END IF;
    END IF;
    RETURN r;
END $$;

CREATE TABLE fz_sink (h text, v text, who name DEFAULT current_user,
                      at timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON fz_sink TO PUBLIC;
CREATE DOMAIN fz_posint AS int CHECK (VALUE > 0);
CREATE DOMAIN fz_nntext AS text NOT NULL CHECK (length(VALUE) < 100);
CREATE TYPE fz_comp AS (a int, b text, c fz_posint);
CREATE TYPE fz_nested AS (p fz_comp, q int[]);
CREATE TYPE fz_enum AS ENUM ('a', 'b', 'c');
SELECT qlater_create_queue('fzbatch', batch_size => 8, batch_delay => '5 ms');
SELECT qlater_grant_queue('fzbatch', 'fz_user', 'enqueue');
EOSQL

# handlers: [name, parameters, returns, language, extra]
my @handlers = (
	[ 'fz_h_int',    'x integer' ],
	[ 'fz_h_i2',     'x smallint' ],
	[ 'fz_h_i8',     'x bigint' ],
	[ 'fz_h_num',    'x numeric' ],
	[ 'fz_h_f8',     'x double precision' ],
	[ 'fz_h_f4',     'x real' ],
	[ 'fz_h_bool',   'x boolean' ],
	[ 'fz_h_text',   'x text' ],
	[ 'fz_h_over',   'x text' ],
	[ 'fz_h_over',   'x integer' ],
	[ 'fz_h_over',   'x integer, y integer' ],
	[ 'fz_h_dom',    'x fz_posint' ],
	[ 'fz_h_domnn',  'x fz_nntext' ],
	[ 'fz_h_comp',   'x fz_comp' ],
	[ 'fz_h_nested', 'x fz_nested' ],
	[ 'fz_h_arr',    'x integer[]' ],
	[ 'fz_h_arr2',   'x text[]' ],
	[ 'fz_h_domarr', 'x fz_posint[]' ],
	[ 'fz_h_comparr', 'x fz_comp[]' ],
	[ 'fz_h_enum',   'x fz_enum' ],
	[ 'fz_h_i2v',    'x int2vector' ],
	[ 'fz_h_oidv',   'x oidvector' ],
	[ 'fz_h_json',   'x json' ],
	[ 'fz_h_jsonb',  'x jsonb' ],
	[ 'fz_h_bytea',  'x bytea' ],
	[ 'fz_h_time',
		'a timestamptz, b timestamp, c date, d time, e timetz, f interval' ],
	[ 'fz_h_reg',
		'a regclass, b regprocedure, c regtype, d regrole, e regnamespace, f regoper, g regconfig' ],
	[ 'fz_h_misc',
		'a uuid, b inet, c point, d bit varying, e money, f tsvector, g int4range, '
		  . 'h int4multirange, i pg_lsn, j "char", k character(2), l character varying(3), '
		  . 'm name, n oid, o xml, p cidr, q macaddr, r box, s tsquery, t bit(3)' ],
	[ 'fz_h_var',     'VARIADIC xs integer[]' ],
	[ 'fz_h_vartext', 'a text, VARIADIC xs text[]' ],
	[ 'fz_h_def',     "a integer, b text DEFAULT 'd', c integer DEFAULT 7" ],
	[ 'fz_h_defexpr', "a integer DEFAULT (random() * 10)::int, b timestamptz DEFAULT now()" ],
	[ 'fz_h_rec',     'x integer', 'record', 'sql', "SELECT x, 'r'::text" ],
	[ 'fz_h_setof',   'x integer', 'SETOF integer', 'sql', 'SELECT generate_series(1, least(x, 5))' ],
	[ 'fz_h_table',   'x integer', 'TABLE (a integer, b text)', 'sql', "SELECT x, 'b'::text" ],
	[ 'fz_h_compret', 'x integer', 'fz_comp', 'sql', "SELECT ROW(x, 't', 1)::fz_comp" ],
	[ 'fz_h_out',     'x integer, OUT y integer, OUT z text', undef, 'sql', "SELECT x, 'z'::text" ],
	[ 'fz_h_noargs',  '' ],
	[ 'fz_h_strict',  'x integer', 'void', 'sql', undef, 'STRICT' ],
	[ 'fz_h_secdef',  'x integer', 'void', 'sql', undef, 'SECURITY DEFINER' ],
	[ 'fz_h_setcfg',  'x integer', 'void', 'sql', undef,
		"SET search_path = pg_catalog SET work_mem = '1MB'" ],
	[ 'fz_h_many',
		join(', ', map { "a$_ integer DEFAULT $_" } 1 .. 100) ],
);
my $setup = '';
for my $h (@handlers)
{
	my ($name, $params, $returns, $lang, $body, $extra) = @$h;
	$returns //= 'void';
	$lang //= 'sql';
	$extra //= '';
	my $ins = "INSERT INTO public.fz_sink (h, v) VALUES ('$name', " . lit($params) . ');';
	my $ret = defined $body ? "$ins $body" : $ins;
	my $rclause = $params =~ /OUT / ? '' : "RETURNS $returns";
	$setup .= "CREATE FUNCTION $name($params) $rclause LANGUAGE $lang $extra AS \$fz\$ $ret \$fz\$;\n";
}
$setup .= <<'EOSQL';
CREATE FUNCTION fz_h_fail(x integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'fail %', x USING ERRCODE = 'QL999'; END $$;
CREATE FUNCTION fz_h_plpgsql(x fz_comp) RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.fz_sink (h, v) VALUES ('fz_h_plpgsql', x::text); END $$;
CREATE FUNCTION fz_h_atomic(x integer) RETURNS void LANGUAGE sql
BEGIN ATOMIC INSERT INTO public.fz_sink (h, v) VALUES ('fz_h_atomic', x::text); END;
CREATE PROCEDURE fz_h_proc(x integer) LANGUAGE sql AS $$
INSERT INTO public.fz_sink (h, v) VALUES ('fz_h_proc', x::text) $$;
CREATE PROCEDURE fz_h_proc_commit(x integer) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.fz_sink (h, v) VALUES ('fz_h_proc_commit 1', x::text);
    COMMIT;
    INSERT INTO public.fz_sink (h, v) VALUES ('fz_h_proc_commit 2', x::text);
END $$;
CREATE PROCEDURE fz_h_proc_inout(INOUT x integer) LANGUAGE plpgsql AS $$ BEGIN x := x + 1; END $$;
CREATE FUNCTION fz_h_poly(x anyelement) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION fz_h_trig() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE FUNCTION fz_h_evt() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
EOSQL
q1($setup);

# a plain role's own handlers, with its own domain and composite
$node->safe_psql(
	'postgres', <<'EOSQL', extra_params => [ '-U', 'fz_user' ]);
CREATE DOMAIN fzu.dom AS text CHECK (length(VALUE) > 0);
CREATE TYPE fzu.comp AS (a fzu.dom, b int);
CREATE FUNCTION fzu.h(x integer) RETURNS void LANGUAGE sql AS
$$ INSERT INTO public.fz_sink (h, v) VALUES ('fzu.h', x::text) $$;
CREATE FUNCTION fzu.hd(x fzu.dom) RETURNS void LANGUAGE sql AS
$$ INSERT INTO public.fz_sink (h, v) VALUES ('fzu.hd', x::text) $$;
CREATE FUNCTION fzu.hc(x fzu.comp, y fzu.dom[] DEFAULT NULL) RETURNS void LANGUAGE sql AS
$$ INSERT INTO public.fz_sink (h, v) VALUES ('fzu.hc', x::text) $$;
SELECT qlater_register('fzu.h(integer)');
SELECT qlater_register('fzu.hd(fzu.dom)', queue => 'fzbatch', max_attempts => 2);
SELECT qlater_register('fzu.hc(fzu.comp,fzu.dom[])', max_attempts => 1);
EOSQL

# the signatures, as PostgreSQL prints them
my @sigs = split /\n/, q1(q{
SELECT p.oid::regprocedure FROM pg_proc p
 WHERE p.proname LIKE 'fz\_h\_%' OR p.pronamespace = 'fzu'::regnamespace ORDER BY 1::text});
# register the superuser's (some are refused: polymorphic, INOUT, ...)
my $i = 0;
my $reg_sql = '';
for my $sig (@sigs)
{
	next if $sig =~ /^fzu\./;
	$i++;
	my $queue = $i % 2 ? 'default' : 'fzbatch';
	$reg_sql .= "DO \$\$ BEGIN PERFORM qlater_register('$sig', queue => '$queue', max_attempts => 2); "
	  . "EXCEPTION WHEN others THEN RAISE NOTICE 'not registered: $sig: %', SQLERRM; END \$\$;\n";
}
my ($rc, $out, $err) = $node->psql('postgres', $reg_sql);
note $err if $err ne '';
my $registered = q1('SELECT count(*) FROM qlater_handler');
note "$registered handlers registered of " . scalar(@sigs) . ' created';
ok($registered >= 40, 'most odd handlers register');

### the functions under test
my @fns;
for my $line (split /\n/, q1(q{
SELECT p.oid::regprocedure, p.pronamespace::regnamespace || '.' || p.proname,
       p.pronargs, p.pronargdefaults, p.proretset,
       array_to_string(ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t), ','),
       array_to_string(ARRAY(SELECT n FROM unnest(p.proargnames, coalesce(p.proargmodes,
               array_fill('i'::"char", ARRAY[coalesce(cardinality(p.proargnames), 0)]))) u(n, m)
           WHERE m IN ('i', 'b', 'v')), ',')
  FROM pg_depend d JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'qlater')
 ORDER BY 1::text}))
{
	my ($sig, $qname, $nargs, $ndef, $retset, $types, $names) = split /\|/, $line, 7;
	my @t = $types eq '' ? () : split /,/, $types;
	my @n = $names eq '' ? () : split /,/, $names;
	push @fns,
	  {
		sig    => $sig,
		name   => $qname,
		nargs  => $nargs,
		ndef   => $ndef,
		retset => $retset eq 't',
		types  => \@t,
		names  => \@n
	  };
}
note 'functions under test: ' . join(', ', map { $_->{sig} } @fns);
cmp_ok(scalar(@fns), '>=', 20, 'the extension owns the qlater_* functions');

### the generator (rand() only, seeded above; no hash order is used)
sub pick { return $_[ int(rand(@_)) ]; }
sub chance { return rand() < $_[0]; }
sub lit { my $s = shift; $s =~ s/'/''/g; return "'$s'"; }

my @odd_text = (
	"''", "' '", "'x'", "'a''b'", q{'a"b'}, "'('", "')'", "'()'", "'((('", "'a(b'",
	"'default'", "'DEFAULT'", "'public'", "'pg_catalog'", q{'"quoted"'}, q{'"'},
	"'a.b.c.d'", "'.'", "'..'", "'" . ('x' x 63) . "'", "'" . ('x' x 64) . "'",
	"repeat('x', 10000)", "repeat('(', 10000)", "repeat(chr(233), 5000)",
	"chr(1) || 'ctl'", "E'tab\\there'", "E'nl\\nhere'", "chr(127)", "chr(65533)",
	"chr(1114111)", "repeat('''', 100)", "U&'\\00e9t\\00e9'", "repeat('a.', 200)",
	"'pg_catalog.textin(cstring)'", "'textin'", "'textin(cstring)'",
	"'pg_catalog.int4in(cstring)'", "'record_in'", "'array_in(cstring,oid,integer)'",
	"'fz_h_over'", "'fz_h_over(text)'", "'fz_h_over(integer)'", "'fz_h_int'",
	"'ExportStations'", "'nosuch'", "'%s'", "'%'", "'\\'", "'NULL'",
	"'''; DROP TABLE fz_sink; --'", "'\$1'", "'*'", "'-'", "'\@daily'", "'0'",
	"'-1'", "'2147483648'", "'NaN'", "'Infinity'", "'1e999'",
	"repeat('x', 1000000)", "NULL", "NULL::text");

my @handler_texts = (
	(map { lit($_) } @sigs),
	(map { lit($_->[0]) } @handlers),
	"'fz_h_over'", "'public.fz_h_over'", "'fz_h_over(text)'", "'fz_h_over(integer)'",
	"'fz_h_over(int)'", "'fz_h_over(int, int)'", "'FZ_H_INT'", "'\"fz_h_int\"'",
	"'public.fz_h_int(int4)'", "'fz_h_int( integer )'", "'fzu.h'", "'fzu.hd'", "'fzu.hc'",
	"'fz_h_var(integer[])'", "'fz_h_var(VARIADIC integer[])'", "'fz_h_proc'",
	"'pg_catalog.textin(cstring)'", "'textin'", "'textin(cstring)'", "'pg_catalog.upper'",
	"'upper(text)'", "'pg_catalog.now()'", "'ExportStations'", "'Export::Stations#call'",
	"'nosuch'", "'nosuch.fz_h_int'", "'a.b.c'", "'fz_h_int('", "'fz_h_int)'",
	"'fz_h_int(nosuchtype)'", "'fz_h_int(integer,'", "'(integer)'", "'()'",
	"repeat('h', 300)", "('fz_h_int(' || repeat('integer,', 100) || 'integer)')",
	"NULL");

my @builtin_sigs = (
	'pg_catalog.textin(cstring)', 'pg_catalog.int4in(cstring)',
	'pg_catalog.textout(text)', 'pg_catalog.upper(text)', 'pg_catalog.now()',
	'pg_catalog.abs(integer)', 'pg_catalog.concat("any")',
	'pg_catalog.format(text,"any")', 'pg_catalog.array_in(cstring,oid,integer)',
	'pg_catalog.record_in(cstring,oid,integer)', 'pg_catalog.int4recv(internal)',
	'pg_catalog.trigger_in(cstring)', 'pg_catalog.set_config(text,text,boolean)',
	'pg_catalog.txid_current()', 'pg_catalog.pg_notify(text,text)',
	'pg_catalog.jsonb_typeof(jsonb)', 'pg_catalog.count()', 'pg_catalog.sum(integer)',
	'pg_catalog.row_number()', 'pg_catalog.pg_advisory_unlock_all()',
	'pg_catalog.array_length(anyarray,integer)');
my @regproc_vals = (
	(map { lit($_) . '::regprocedure' } @sigs),
	(map { lit($_) . '::regprocedure' } @builtin_sigs),
	(map { lit($_) } @builtin_sigs),
	"'1'", "'0'", "'-'", "'2147483647'", "'4294967295'", "'-1'", "'1'::regprocedure",
	"'0'::regprocedure", "'-'::regprocedure", "'textin'", "'nosuch()'", "''", "'fz_h_int'",
	"'fz_h_over(integer)'", "'fz_h_over'", "'pg_class'", "1::oid::regprocedure",
	"'pg_catalog.textin(cstring)'::regprocedure::oid::regprocedure", "NULL");

my @queues = (
	"'default'", "'default'", "'fz'", "'fz'", "'fzext'", "'fzext'", "'fzbatch'", "'ruby'",
	"''", "' '", "'Default'", "repeat('q', 300)", "'a''q'", "chr(233)", "NULL");

my @names = (
	"'n1'", "'n2'", "'nightly'", "''", "repeat('s', 1000)", "'a''b'", "chr(1)", "NULL");

my @roles = (
	"'fz_user'", "'fz_admin'", 'current_user', "'qlater_admin'", "'public'", "'PUBLIC'",
	"'pg_signal_backend'", "'nosuchrole'", "''", "repeat('n', 100)", "'pg_database_owner'",
	"chr(233)", "NULL");

my @tzs = (
	"'UTC'", "'Europe/Paris'", "'America/New_York'", "'Australia/Lord_Howe'",
	"'America/Santiago'", "'Asia/Kathmandu'", "'Pacific/Chatham'", "'Pacific/Kiritimati'",
	"'Pacific/Apia'", "'America/St_Johns'", "''", "'Nope/Zone'", "'+05'", "'EST5EDT'",
	"'UTC+14'", "'<+03>-3'", "'Etc/GMT-14'", "'Etc/GMT+12'", "'posix/Europe/Paris'",
	"'localtime'", "'Z'", "'utc'", "'europe/paris'", "repeat('Z', 10000)",
	"'America/New_York '", "'../../etc/passwd'", "'GMT+0'", "'XXX3YYY,M3.2.0,M11.1.0'",
	"'Antarctica/Troll'", "'Asia/Tehran'", "NULL");

my @timestamps = (
	"'infinity'", "'-infinity'", "'4713-11-24 00:00:00+00 BC'", "'294276-12-31 23:59:59+00'",
	"'294276-12-31 23:59:59.999999+00'", "'294276-12-31 23:00:00+00'",
	"'2000-01-01 00:00:00+00'", "'1970-01-01'", "'2038-01-19 03:14:07+00'",
	"'2024-02-29 12:00+00'", "'2024-03-10 02:30 America/New_York'",
	"'2024-11-03 01:30 America/New_York'", "'2024-10-27 02:30 Europe/Paris'",
	"'2023-09-24 02:00 Pacific/Apia'", "'0001-01-01 00:00+00'", "'9999-12-31 23:59:59+00'",
	"'1900-02-28 23:59:59+00'", "now()", "now() + interval '1 hour'",
	"now() - interval '100 years'", "'epoch'", "'allballs'", "'garbage'", "NULL");

my @intervals = (
	"'0'", "'-1 second'", "'1 microsecond'", "'20 ms'", "'5 ms'", "'10 s'",
	"'10.000001 s'", "'1 hour'", "'-178000000 years'", "'178000000 years'", "'1 day'",
	"'1 mon'", "'infinity'", "'@ 1 minute ago'", "'-2147483648 days'", "'2147483647 months'",
	"'1 day -86400 seconds'", "'P1Y'", "'PT0.5S'", "NULL");

my @uuids = (
	"'00000000-0000-0000-0000-000000000000'", "gen_random_uuid()",
	"(SELECT claim_token FROM qlater_jobs WHERE claim_token IS NOT NULL ORDER BY id LIMIT 1)",
	"(SELECT claim_token FROM qlater_jobs WHERE claim_token IS NOT NULL ORDER BY id DESC LIMIT 1)",
	"'not-a-uuid'", "NULL");

my @job_ids = (
	"(SELECT min(id) FROM qlater_jobs)", "(SELECT max(id) FROM qlater_jobs)",
	"(SELECT min(id) FROM qlater_jobs WHERE state = 'dead')",
	"(SELECT min(id) FROM qlater_jobs WHERE state = 'running')",
	"(SELECT max(id) FROM qlater_jobs WHERE queue = 'fzext')",
	"(SELECT max(id) FROM qlater_jobs WHERE claim_token IS NOT NULL)",
	"(SELECT last_value FROM pg_sequences WHERE sequencename = 'qlater_job_id_seq')");

my %int_pool = (
	priority => [ -32768, 32767, -32769, 32768, 0, 100, -1 ],
	max_attempts => [ 1, 0, -1, 25, 2 ],
	batch_size => [ 1, 64, 65, 0, -1, 8 ],
	max_jobs => [ 0, 1, 2, 64, 1000000 ],
);
my @int_extreme = (0, -1, 1, 2147483647, -2147483648, 'NULL', 'NULL::integer');
my @int_raw = ("2147483648", "'NaN'", "'1e999'", "'Infinity'", "1.5", "'1.5'", "'0x10'",
	"' 7 '", "true");
my @bigint_vals = (0, -1, 1, 2, '9223372036854775807', '-9223372036854775808',
	'4294967296', '4294967297', '2147483648', 'NULL', "'9223372036854775808'", "'NaN'");

# JSON scalars, as JSON text
my @jscalars = (qw(0 -1 1 2147483647 -2147483648 2147483648 9223372036854775807
	  9223372036854775808 -9223372036854775809 1e999 -1e999 1e-999 0.5 -0 1.0e2 true
	  false null 32767 32768),
	map { '"' . $_ . '"' } (
		'', 'x', 'NaN', 'Infinity', '-Infinity', '\\u0000', '\\u00e9',
		'\\ud83d\\ude00', '\\ud800', '\\\\', '\\"', "''", '{1,2,3}', '{}',
		'{{1,2},{3}}', '{1,{2}}', '{NULL}', '(1,abc,5)', '(1,abc,-5)', '()', '(',
		'(,,)', '("(1,a,1)","{1}")', '1 2 3', '1 2 99999999999', 'a', 'b', 'zz',
		'2024-01-02', '2024-02-30', 'infinity', '-infinity', 'epoch', 'now',
		'allballs', '1 day', 'P1Y2M3DT4H5M6S', '-178000000 years', 'pg_class',
		'pg_catalog.pg_class', 'nosuch', 'pg_catalog.textin(cstring)', 'int4',
		'integer[]', 'nosuchtype', '+', '=(integer,integer)', 'english', 'fz_user',
		'public', '[1,10)', 'empty', '{[1,2),[3,4)}', '0/0', 'FFFFFFFF/FFFFFFFF',
		'127.0.0.1/33', '::1', '(1,2)', '((0,0),(1,1))', '1010', '101', '$1.00',
		'a & b', 'a:1 b:2', '<a/>', '<a>', '08:00:2b:01:02:03', 'ab', 'abcd',
		'\\\\x00ff', '\\\\xZZ', 't', 'yes', '00000000-0000-0000-0000-000000000000',
		'fz_h_int(integer)', '1e999', '-1', '0', '2147483648', '12:00+25',
		'24:00:00', 'a b', 'a,b', '"', ('y' x 200)));

my @jkeys = ('x', 'y', 'a', 'b', 'c', 'd', 'xs', 'a1', 'a100', 'a101', 'X', '', 'nosuch',
	'x ', 'k');

sub jvalue
{
	my ($depth) = @_;
	my $r = rand();
	if ($depth < 3 && $r < 0.08)
	{
		return '[' . join(',', map { jvalue($depth + 1) } 1 .. int(rand(4))) . ']';
	}
	if ($depth < 3 && $r < 0.12)
	{
		return '{' . join(',', map { '"' . pick(@jkeys) . '":' . jvalue($depth + 1) }
			  1 .. int(rand(3))) . '}';
	}
	return pick(@jscalars);
}

# good arguments for some handlers, so that jobs run (JSON text)
my %good = (
	fz_h_int  => [ '[1]', '[2147483647]', '{"x": 5}' ],
	fz_h_over => [ '["t"]', '[1]', '[1, 2]', '{"x": "t"}', '{"x": 1, "y": 2}' ],
	fz_h_dom  => [ '[1]', '[-1]', '["2147483647"]' ],
	fz_h_domnn => [ '["ok"]', '[null]' ],
	fz_h_comp => [ '["(1,abc,5)"]', '["(1,abc,-5)"]', '[{"a": 1}]' ],
	fz_h_nested => [ '["(\"(1,a,1)\",\"{1,2}\")"]' ],
	fz_h_arr  => [ '["{1,2,3}"]', '["{{1,2},{3,4}}"]', '[[1,2]]' ],
	fz_h_domarr => [ '["{1,2}"]', '["{1,-2}"]' ],
	fz_h_comparr => [ '["{\"(1,a,1)\"}"]' ],
	fz_h_enum => [ '["a"]', '["zz"]' ],
	fz_h_i2v  => [ '["1 2 3"]', '["1 2 99999"]', '[""]' ],
	fz_h_oidv => [ '["1 2 3"]', '["4294967295"]', '["-1"]' ],
	fz_h_json => [ '[{"a": [1, 2]}]', '["s"]', '[null]', '[1e999]' ],
	fz_h_jsonb => [ '[{"a": [1, 2]}]', '[[[[[]]]]]' ],
	fz_h_time => [ '["infinity", "-infinity", "infinity", "24:00", "24:00+15:59", "178000000 years"]' ],
	fz_h_reg  => [ '["pg_class", "fz_h_int(integer)", "int4", "fz_user", "public", "+(integer,integer)", "english"]' ],
	fz_h_misc => [
		'["00000000-0000-0000-0000-000000000000", "::1", "(1,2)", "101", "$1.00", "a:1", "[1,2)", "{[1,2)}", "0/0", "x", "ab", "abc", "n", "0", "<a/>", "10.0.0.0/8", "08:00:2b:01:02:03", "((0,0),(1,1))", "a & b", "101"]'
	],
	fz_h_var     => [ '["{1,2,3}"]', '[[1,2,3]]', '[1, 2]' ],
	fz_h_vartext => [ '["a", "{b,c}"]' ],
	fz_h_def     => [ '[1]', '{"a": 1, "c": 2}', '{"c": 3}' ],
	fz_h_defexpr => [ '[]', '[1]' ],
	fz_h_rec     => [ '[1]' ],
	fz_h_setof   => [ '[3]' ],
	fz_h_table   => [ '[3]' ],
	fz_h_compret => [ '[3]' ],
	fz_h_out     => [ '[3]' ],
	fz_h_noargs  => [ '[]' ],
	fz_h_strict  => [ '[null]', '[1]' ],
	fz_h_fail    => [ '[1]' ],
	fz_h_proc    => [ '[1]' ],
	fz_h_proc_commit => [ '[1]' ],
	fz_h_many    => [ '[]', '{"a100": 1}', '[' . join(',', 1 .. 100) . ']' ],
	'fzu.h'      => [ '[1]' ],
	'fzu.hd'     => [ '["x"]', '[""]' ],
	'fzu.hc'     => [ '["(x,1)"]', '["(,1)", "{a,\"\"}"]' ],
);
my @good_names = sort keys %good;

sub gen_args
{
	my ($handler) = @_;
	my $r = rand();
	if (defined $handler && $handler =~ /'(?:public\.)?(fz_h_\w+|fzu\.\w+)/ && $good{$1} && $r < 0.45)
	{
		return lit(pick(@{ $good{$1} }));
	}
	$r = rand();
	return lit('[' . join(',', map { jvalue(0) } 1 .. int(rand(5))) . ']') if $r < 0.45;
	return lit('{' . join(',', map { '"' . pick(@jkeys) . '":' . jvalue(0) } 1 .. int(rand(4))) . '}')
	  if $r < 0.6;
	return lit(jvalue(0)) if $r < 0.68;
	return 'NULL' if $r < 0.72;
	my $d = pick(10, 100, 1000, 5000);
	return lit('[' x $d . '1' . ']' x $d) if $r < 0.78;
	return pick(
		"jsonb_build_array(repeat('x', 100000))",
		"jsonb_build_array(repeat('x', 1000000))",
		"(repeat('[', 100000) || repeat(']', 100000))::jsonb",
		"jsonb_build_array((repeat('[', 3000) || repeat(']', 3000))::jsonb)",
		"jsonb_build_object('x', (repeat('{\"a\":', 2000) || '1' || repeat('}', 2000))::jsonb)",
		"(SELECT jsonb_agg(g) FROM generate_series(1, 100) g)",
		"(SELECT jsonb_agg(g) FROM generate_series(1, 101) g)",
		"(SELECT jsonb_agg(g::text) FROM generate_series(1, 1000) g)",
		"(SELECT jsonb_object_agg('a' || g, g) FROM generate_series(1, 101) g)",
		"jsonb_build_array(chr(1114111) || chr(233))",
		"jsonb_build_array(repeat(chr(233), 1000))",
		"jsonb_build_array('1e999'::numeric)",
		"jsonb_build_array('NaN'::numeric)",
		"jsonb_build_array(repeat('9', 1000)::numeric)",
		"jsonb_build_array('-1e-999'::numeric)",
		"to_jsonb(repeat('x', 10000))",
		"'[\"\\u0000\"]'::json::jsonb",
		"'[]'::jsonb",
		"'{}'::jsonb",
		"'null'::jsonb");
}

sub gen_args_list
{
	my ($handler) = @_;
	my $r = rand();
	if ($r < 0.6)
	{
		my @el;
		for (1 .. int(rand(6)))
		{
			my $a = gen_args($handler);
			# literal args only inside a literal list
			push @el, ($a =~ /^'(.*)'$/s ? $1 =~ s/''/'/gr : 'null');
		}
		return lit('[' . join(',', @el) . ']');
	}
	return pick(
		"'[]'", "'{}'", "'null'", "'[1, 2]'", "'[null]'", "'[[], {}]'", "'[[1], \"x\"]'",
		"NULL", "'\"str\"'", "('[[1]' || repeat(', [1]', 499) || ']')::jsonb",
		"(SELECT jsonb_agg(jsonb_build_array(g)) FROM generate_series(1, 300) g)",
		"(SELECT jsonb_agg('[]'::jsonb) FROM generate_series(1, 200) g)",
		"jsonb_build_array(" . gen_args($handler) . ")");
}

# cron schedules: five fields of odd values, macros, 'N seconds'
my @cron_field = (
	'*', '*/1', '*/2', '*/15', '*/59', '*/60', '*/0', '*/-1', '*/2147483648', '0', '1', '5',
	'7', '12', '23', '24', '29', '30', '31', '32', '59', '60', '61', '-1', '99999999999999999999',
	'1-5', '5-1', '0-59', '1-31', '1-30/5', '5/10', '0/0', '1-', '-', ',', '1,,2', '1,2,3',
	'1,2-4,*/5', '', '?', 'L', 'W', '#', '1#2', 'jan', 'DEC', 'feb-mar', 'sun', 'SAT',
	'fri-sun', 'sun-mon', 'mon-fri/2', 'foo', '0x10', '1.5', '+1', '01', '0001', '*,5',
	'*-5', '**', '*/*', '1-2-3', '1/2/3');
my @cron_whole = (
	'@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly',
	'@reboot', '@', '@every 5m', '@YEARLY', '@daily ', ' @daily',
	'1 seconds', '5 seconds', '59 seconds', '60 seconds', '0 seconds', '-1 seconds',
	'2147483648 seconds', '1e3 seconds', '1 second', ' 5 seconds ', '5seconds',
	'5 SECONDS', '5  seconds', '05 seconds', '0 0 30 2 *', '0 0 29 2 *', '0 0 31 4 *',
	'0 0 29 2 1', '0 0 1 * mon', '* * * * *', '0 0 * * 7', '30 2 * * *', '0 */2 * * *',
	'', ' ', "\t", '* * * *', '* * * * * *', '* * * * * * *', '0 0 1 1 * 2099');

sub gen_cron
{
	my $r = rand();
	return lit(pick(@cron_whole)) if $r < 0.25;
	return pick("NULL", "repeat('* ', 10000)", "repeat('1,', 5000) || '1 * * * *'",
		"E'0\\t0 * * *'", "chr(233) || ' * * * *'", "('* * * * ' || chr(1))")
	  if $r < 0.3;
	my $n = chance(0.85) ? 5 : pick(4, 6);
	my $sep = chance(0.9) ? ' ' : pick('  ', "\t", ' , ');
	my @f;
	for (1 .. $n)
	{
		push @f, (chance(0.5) ? pick('*', '0', '1', '*/5', '1-5') : pick(@cron_field));
	}
	return lit(join($sep, @f));
}

sub gen_value
{
	my ($fn, $pname, $type) = @_;
	# a value of another type now and then
	$type = pick('integer', 'text', 'jsonb', 'boolean', 'bigint') if chance(0.03);
	return 'NULL' if chance(0.06);
	if ($type eq 'text')
	{
		return pick(@handler_texts) if $pname eq 'handler' && chance(0.8);
		return pick(@queues) if $pname eq 'queue' && chance(0.85);
		return gen_cron() if $pname eq 'schedule' && chance(0.9);
		return pick(@tzs) if $pname eq 'timezone' && chance(0.85);
		return pick(@names) if $pname eq 'name' && $fn =~ /schedule/ && chance(0.85);
		return pick(@queues) if $pname eq 'name' && chance(0.85);
		return pick("'consume'", "'enqueue'") if $pname eq 'privilege' && chance(0.8);
		return pick(@odd_text);
	}
	if ($type eq 'integer')
	{
		return pick(@int_raw) if chance(0.05);
		return pick(@{ $int_pool{$pname} }) if $int_pool{$pname} && chance(0.7);
		return pick(@int_extreme);
	}
	return pick(@bigint_vals) if $type eq 'bigint' && chance(0.4);
	return pick(@job_ids) if $type eq 'bigint';
	return pick('true', 'false', 'NULL', "'maybe'", "'t'") if $type eq 'boolean';
	return gen_args(undef) if $type eq 'jsonb';
	return pick(@timestamps) if $type =~ /^timestamp/;
	return pick(@intervals) if $type eq 'interval';
	return pick(@uuids) if $type eq 'uuid';
	return pick(@roles) if $type eq 'name';
	return pick(@regproc_vals) if $type eq 'regprocedure';
	return pick(@odd_text);
}

# one call of a function, as a SELECT
sub gen_call
{
	my ($f) = @_;
	my @types = @{ $f->{types} };
	my @pnames = @{ $f->{names} };
	my $req = $f->{nargs} - $f->{ndef};
	my @vals;
	my $handler;
	my $named = @pnames && chance(0.3);
	my $k = $req + int(rand($f->{ndef} + 1));
	$k = $f->{nargs} + 1 if chance(0.02);
	$k = $req - 1 if $req > 0 && chance(0.02);
	my @idx = (0 .. $k - 1);
	for my $j (@idx)
	{
		my $type = $types[$j] // 'text';
		my $pname = $pnames[$j] // "p$j";
		my $v;
		if ($pname eq 'args' && $type eq 'jsonb')
		{
			$v = gen_args($handler);
		}
		elsif ($pname eq 'args_list')
		{
			$v = gen_args_list($handler);
		}
		elsif ($f->{name} =~ /cron_next|cron_check/ && $pname eq 'after')
		{
			$v = pick(@timestamps);
		}
		else
		{
			$v = gen_value($f->{name}, $pname, $type);
		}
		$handler = $v if $pname eq 'handler';
		# a typed literal half of the time
		if ($v =~ /^'(?:[^']|'')*'$/ && $j < @types && chance(0.5))
		{
			$v = "${v}::$types[$j]";
		}
		push @vals, [ $pname, $v ];
	}
	my $args;
	if ($named)
	{
		# the required ones in order, the others shuffled
		my @opt = @vals[ ($req < @vals ? $req : scalar(@vals)) .. $#vals ];
		for (my $m = @opt - 1; $m > 0; $m--)
		{
			my $s = int(rand($m + 1));
			@opt[ $m, $s ] = @opt[ $s, $m ];
		}
		my @req = @vals[ 0 .. ($req < @vals ? $req : scalar(@vals)) - 1 ];
		$args = join(', ',
			(map { $_->[1] } @req),
			(map { ($_->[0] =~ /^p\d+$/ ? 'nosuch' : $_->[0]) . ' => ' . $_->[1] } @opt));
	}
	else
	{
		$args = join(', ', map { $_->[1] } @vals);
	}
	my $call = "$f->{name}($args)";
	if ($f->{name} =~ /cron_next/ && @vals == 3 && !$named && chance(0.4))
	{
		return "SELECT public.fz_cron_prop($args)";
	}
	return $f->{retset} && chance(0.5) ? "SELECT count(*) FROM $call" : "SELECT $call";
}

# the calls, in blocks of one role
my @calls;    # [role, fn, text]
my @weights = map { $_->{name} =~ /enqueue|cron|register|create_queue|alter_queue|pause|resume|grant|lock|schedule/ ? 3 : 1 } @fns;
my @wfns = map { ($fns[$_]) x $weights[$_] } 0 .. $#fns;
while (@calls < $ncalls)
{
	my $role = pick('super', 'super', 'fz_user', 'fz_user', 'fz_admin');
	for (1 .. 20 + int(rand(60)))
	{
		last if @calls >= $ncalls;
		my $f = pick(@wfns);
		push @calls, [ $role, $f->{name}, gen_call($f) ];
	}
}
my %called;
$called{ $_->[1] }++ for @calls;
is(scalar(grep { !$called{ $_->{name} } } @fns), 0, 'every function is among the calls');

# load the calls
for (my $lo = 0; $lo < @calls; $lo += 500)
{
	my $hi = $lo + 499 < $#calls ? $lo + 499 : $#calls;
	q1("INSERT INTO fz_call VALUES "
		  . join(",\n", map { '(' . ($_ + 1) . ", '$calls[$_][0]', '$calls[$_][1]', " . lit($calls[$_][2]) . ')' } $lo .. $hi));
}

### run them
my $start_time = q1('SELECT pg_postmaster_start_time()');
my %result;       # id -> [sqlstate, message]
my @failures;     # text of each failure
my $crashes = 0;
my %skip;         # ids not to run again (they crashed or hung)
my %lost;         # ids of blocks given up
my $t0 = time;
my $next = 1;
my $retries = 0;
my $stopped_early = 0;

sub wait_ready
{
	for (1 .. 240)
	{
		my ($rc) = $node->psql('postgres', 'SELECT 1');
		return 1 if $rc == 0;
		sleep 0.5;
	}
	return 0;
}

while ($next <= @calls)
{
	if (time - $t0 > $budget)
	{
		$stopped_early = 1;
		last;
	}
	my $role = $calls[ $next - 1 ][0];
	# the block: ids $next .. $last, one role, 200 calls at most
	my $last = $next;
	$last++ while $last < @calls && $calls[$last][0] eq $role && $last - $next < 199;
	my $offset = -s $node->logfile;
	my $skip = '{' . join(',', sort { $a <=> $b } keys %skip) . '}';
	my ($out, $err, $timed_out) = ('', '', 0);
	my @user = $role eq 'super' ? () : ('-U', $role);
	my $rc = $node->psql(
		'postgres',
		"SET statement_timeout = '60s';\nSELECT public.fz_run($next, $last, '$skip');\n",
		stdout => \$out,
		stderr => \$err,
		extra_params => \@user,
		timeout => 300,
		timed_out => \$timed_out);
	$err .= ' (psql timed out after 300 s)' if $timed_out;
	my $log = slurp_file($node->logfile, $offset);
	# what the driver logged, by process
	my (%logged, $maxid);
	while ($log =~ /\[(\d+)\][^\n]*LOG:\s+(?:00000: )?qlfuzz (\d+)/g)
	{
		$logged{$1} = $2;
		$maxid = $2 if !defined $maxid || $2 > $maxid;
	}
	my @lines = split /\n/, $log;
	my @signals;
	for my $l (0 .. $#lines)
	{
		next unless $lines[$l] =~ /\(PID (\d+)\) was terminated by signal/;
		my $pid = $1;
		$crashes++;
		push @signals, $pid;
	}
	for my $l (split /\n/, $out)
	{
		next unless $l =~ /^(\d+) (\S+) ?(.*)$/;
		$result{$1} = [ $2, $3 ];
	}
	if ($rc == 0)
	{
		$next = $last + 1;
		$retries = 0;
		next;
	}
	# the batch did not end: a crash, a hang or an error no handler catches
	my ($culprit) = grep { defined $logged{$_} } @signals;
	my $id = defined $culprit ? $logged{$culprit} : undef;
	if (defined $id)
	{
		push @failures, "call $id ($calls[$id-1][0]) crashed its server process: $calls[$id-1][2]";
	}
	elsif (!@signals && defined $maxid && $err =~ /statement timeout|ERROR|FATAL|timed out/)
	{
		$id = $maxid;
		$err =~ s/\s+/ /g;
		push @failures, "call $id ($calls[$id-1][0]) did not end in a result or an error it can catch ($err): $calls[$id-1][2]";
	}
	last if $crashes > 30;
	wait_ready();
	if (defined $id)
	{
		# run the block again without it
		$skip{$id} = 1;
		$retries = 0;
	}
	elsif (++$retries > 3)
	{
		$err =~ s/\s+/ /g;
		push @failures, "calls $next..$last ($role) never ran to their end: $err";
		$lost{$_} = 1 for $next .. $last;
		$next = $last + 1;
		$retries = 0;
	}
}
my $ran = keys %result;
note sprintf('%d calls with a result or an error in %.1f s%s; %d crashes', $ran, time - $t0,
	$stopped_early ? ' (time budget reached)' : '', $crashes);
my @missing = grep { !$result{$_} && !$skip{$_} && !$lost{$_} } 1 .. $next - 1;
is(scalar(@missing), 0, 'every call run has its outcome')
  or diag 'no outcome for calls ' . join(',', @missing[ 0 .. ($#missing < 20 ? $#missing : 19) ]);
cmp_ok($ran, '>', 0, 'calls ran');

# what came out, by function
my (%by_fn, %ok_fn);
for my $id (sort { $a <=> $b } keys %result)
{
	my ($st, $msg) = @{ $result{$id} };
	my $fn = $calls[ $id - 1 ][1];
	$by_fn{$fn}{$st}++;
	$ok_fn{$fn}++ if $st eq '00000';
	if ($st =~ /^XX/)
	{
		push @failures, "call $id ($calls[$id-1][0]) ended in internal error $st ($msg): $calls[$id-1][2]";
	}
	elsif ($st =~ /^QLF/)
	{
		push @failures, "call $id ($calls[$id-1][0]) broke a property of qlater_cron_next ($msg): $calls[$id-1][2]";
	}
}
for my $fn (sort keys %by_fn)
{
	my $h = $by_fn{$fn};
	note "$fn: " . join(' ', map { "$_ x$h->{$_}" } sort { $h->{$b} <=> $h->{$a} || $a cmp $b } keys %$h);
}
my $ok_total = grep { $_->[0] eq '00000' } values %result;
cmp_ok($ok_total, '>=', $ran / 20, 'a fair share of the calls succeed (the generator makes sense)');
# each function is reached: some of its calls end other than in a syntax
# error or a function signature that does not match
my @unreached = grep {
	my $h = $by_fn{ $_->{name} } // {};
	!grep { $_ ne '42601' && $_ ne '42883' } keys %$h
} @fns;
is(join(', ', map { $_->{name} } @unreached), '', 'the calls reach every function');

# let the workers run the jobs due (20 s at most: this is no assertion)
for (1 .. 20)
{
	my ($rc, $left) = $node->psql('postgres',
		"SELECT count(*) FROM qlater_job WHERE NOT dead AND NOT external AND attempts = 0 "
		  . "AND run_at <= now() - interval '1 second'");
	last if $rc == 0 && $left eq '0';
	sleep 1;
}
note 'jobs run: ' . q1('SELECT count(*) FROM fz_sink') . '; jobs left: '
  . q1("SELECT string_agg(state || ' ' || c, ', ') FROM (SELECT state, count(*) c FROM qlater_jobs GROUP BY 1) s");
for my $j (split /\n/, q1(q{
SELECT id || ' ' || handler || ' ' || left(args::text, 300) || ': ' || (last_error->>'sqlstate') || ' ' || (last_error->>'message')
  FROM qlater_job WHERE last_error->>'sqlstate' LIKE 'XX%' ORDER BY id}))
{
	push @failures, "job $j";
}

# every call and its outcome, for bug reports
my $dump = "$PostgreSQL::Test::Utils::log_path/120_fuzz_calls_seed$seed.txt";
open(my $fh, '>', $dump) or die "$dump: $!";
for my $id (1 .. @calls)
{
	my $st = $result{$id} ? "$result{$id}[0] $result{$id}[1]" : ($skip{$id} ? 'CRASH/HANG' : 'not run');
	print $fh "$id\t$calls[$id-1][0]\t$st\t$calls[$id-1][2]\n";
}
close $fh;
note "calls and outcomes: $dump";

my $log = slurp_file($node->logfile);
my @internal = grep { /(ERROR|FATAL|PANIC):\s+XX\d\d\d:/ } split /\n/, $log;
push @failures, map { "log: $_" } @internal;

is(scalar(@failures), 0, 'every call ends in a result or an error, never an internal error')
  or diag join("\n", @failures[ 0 .. ($#failures < 60 ? $#failures : 59) ]);
# crashes, with what the process was running, and the jobs they were
# counted against
my @log_lines = split /\n/, $log;
my @all_signals;
for my $l (0 .. $#log_lines)
{
	next unless $log_lines[$l] =~ /terminated by signal/;
	push @all_signals, $log_lines[$l];
	push @all_signals, $log_lines[ $l + 1 ]
	  if $l < $#log_lines && $log_lines[ $l + 1 ] =~ /Failed process/;
}
my $crashed_jobs = q1(q{
SELECT string_agg(format('job %s %s %s crashes %s', id, handler, left(args::text, 300), crashes), E'\n' ORDER BY id)
  FROM qlater_job WHERE crashes > 0});
is(scalar(grep { /terminated by signal/ } @all_signals), 0, 'no server process was terminated by a signal')
  or diag join("\n", @all_signals[ 0 .. ($#all_signals < 40 ? $#all_signals : 39) ], $crashed_jobs);
is(scalar(grep { /reinitializing/ } split /\n/, $log), 0, 'the server never reinitialized after a crash');
# workers that exited on an error, with the error
my (%last_error, @exits);
for my $l (split /\n/, $log)
{
	$last_error{$1} = $2 if $l =~ /\[(\d+)\] (?:ERROR|FATAL):\s+(.*)$/;
	push @exits, $1 if $l =~ /background worker "qlater worker" \(PID (\d+)\) exited with exit code 1/;
}
my %why;
$why{ $last_error{$_} // '(no error logged)' }++ for @exits;
is(scalar(@exits), 0, 'no worker exited on an error')
  or diag join("\n", map { "$why{$_} worker exits after: $_" } sort keys %why);
is(q1('SELECT pg_postmaster_start_time()'), $start_time, 'the postmaster was not restarted');

### the workers still run a normal job
q1(q{
SELECT qlater_unschedule(name, owner) FROM qlater_schedules;
CREATE TABLE fz_final_t (k int);
CREATE FUNCTION fz_final(k int) RETURNS void LANGUAGE sql AS $$ INSERT INTO fz_final_t VALUES (k) $$;
SELECT CASE WHEN EXISTS (SELECT FROM qlater_queues WHERE name = 'fz_final_q')
            THEN qlater_alter_queue('fz_final_q', external => false, batch_size => 1, max_running => -1)
            ELSE qlater_create_queue('fz_final_q', batch_size => 1) END;
SELECT qlater_resume_queue('fz_final_q');
SELECT qlater_register('fz_final(integer)', queue => 'fz_final_q', priority => -32768);
SELECT qlater_enqueue('fz_final', '[42]');
});
my $final = 0;
for (1 .. 60)
{
	last if ($final = q1('SELECT count(*) FROM fz_final_t WHERE k = 42')) eq '1';
	sleep 1;
}
is($final, '1', 'after the fuzzing the workers still run a normal job (within 60 s)');
note "fuzz seed $seed";

$node->stop('fast', fail_ok => 1);
done_testing();
