-- args: JSON values to typed arguments, checked at enqueue under the
-- caller's settings, stored in a form that does not depend on settings
\set VERBOSITY default

CREATE TABLE seen (label text, val text);
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');

CREATE FUNCTION typed(i int, n numeric, b boolean, t timestamptz, d date,
                      iv interval, j jsonb, js json, m mood, p positive,
                      a text[], u uuid DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen VALUES
        ('i', i::text), ('n', n::text), ('b', b::text), ('t', t::text),
        ('d', d::text), ('iv', iv::text), ('j', j::text), ('js', js::text),
        ('m', m::text), ('p', p::text), ('a', a::text), ('u', coalesce(u::text, 'null'))
$$;
SELECT qlater_register('typed(int,numeric,boolean,timestamptz,date,interval,jsonb,json,mood,positive,text[],uuid)');

-- values are read under the caller's settings
SET timezone = 'America/New_York';
SET datestyle = 'SQL, DMY';
SET intervalstyle = 'sql_standard';
BEGIN;
SELECT qlater_enqueue('typed', '[7, 2.50, true, "01/02/2024 10:00", "03/04/2024",
                        "1 2:00:00", {"k": [1, null]}, [1, 2], "happy", "3", "{x,y}"]',
                      run_at => now() + interval '1 day') > 0 AS enqueued;
-- the stored form does not depend on settings
SELECT args FROM qlater_jobs;
ROLLBACK;
RESET timezone;
RESET datestyle;
RESET intervalstyle;

-- a value its type rejects is refused, naming the argument
SELECT qlater_enqueue('typed', '["x", 1, true, "2024-01-01", "2024-01-01", "1 day", {}, [], "ok", 1, "{}"]');
SELECT qlater_enqueue('typed', '[1, 1, "maybe", "2024-01-01", "2024-01-01", "1 day", {}, [], "ok", 1, "{}"]');
SELECT qlater_enqueue('typed', '[1, 1, true, "2024-01-01", "2024-01-01", "1 day", {}, [], "meh", 1, "{}"]');
SELECT qlater_enqueue('typed', '[1, 1, true, "2024-01-01", "2024-01-01", "1 day", {}, [], "ok", -1, "{}"]');
SELECT qlater_enqueue('typed', '[1, 1, true, "2024-01-01", "2024-01-01", "1 day", {}, [], "ok", 1, ["x"]]');
SELECT qlater_enqueue('typed', '[1, 1, true, "2024-01-01", "2024-01-01", "1 day", {}, [], "ok", 1, "{}", "not-a-uuid"]');
SELECT qlater_enqueue('typed', '[{"a": 1}, 1, true, "2024-01-01", "2024-01-01", "1 day", {}, [], "ok", 1, "{}"]');
SELECT count(*) FROM qlater_jobs;

-- JSON null is SQL NULL; a job runs with exactly those values
SET timezone = 'Asia/Tokyo';
SELECT qlater_enqueue('typed', '{"i": null, "n": 1e3, "b": false, "t": "2024-06-01 12:00+02",
                        "d": "2024-02-29", "iv": "90 minutes", "j": null, "js": {"a": "b"},
                        "m": "sad", "p": 1, "a": "{\"a b\",c}", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}') > 0 AS enqueued;
RESET timezone;
SELECT wait_for_jobs();
SELECT label, val FROM seen ORDER BY label;

-- procedures are handlers too, run in the job's transaction: they may not
-- commit (the attempt fails with invalid transaction termination)
CREATE PROCEDURE one_step(label text)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO seen VALUES (label, 'one step');
END
$$;
CREATE PROCEDURE two_steps(label text)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO seen VALUES (label, 'step 1');
    COMMIT;
    INSERT INTO seen VALUES (label, 'step 2');
END
$$;
SELECT qlater_register('one_step(text)');
SELECT qlater_register('two_steps(text)', max_attempts => 1);
SELECT qlater_enqueue('one_step', '["proc"]') > 0 AS enqueued;
SELECT qlater_enqueue('two_steps', '["proc"]') > 0 AS enqueued;
SELECT wait_for_jobs();
SELECT label, val FROM seen WHERE label = 'proc' ORDER BY val;
SELECT handler, state, last_error->>'sqlstate' AS sqlstate, last_error->>'message' AS message
  FROM qlater_jobs WHERE handler LIKE '%two_steps%';
SELECT qlater_cancel(id) FROM qlater_jobs WHERE handler LIKE '%two_steps%';

-- variadic parameters take an array
CREATE FUNCTION joined(sep text, VARIADIC parts text[]) RETURNS void
LANGUAGE sql AS $$ INSERT INTO seen VALUES ('joined', array_to_string(parts, sep)) $$;
SELECT qlater_register('joined(text,text[])');
SELECT qlater_enqueue('joined', '["-", "{a,b,c}"]') > 0 AS enqueued;
SELECT wait_for_jobs();
SELECT label, val FROM seen WHERE label = 'joined';
SELECT count(*) FROM qlater_jobs;

-- a signature of any length: a long schema name and a type of its own
CREATE SCHEMA "a schema whose name is long enough to be quoted, 63 bytes long";
CREATE TYPE "a schema whose name is long enough to be quoted, 63 bytes long"."a type whose name is long enough to be quoted and 63 bytes long"
  AS (v text);
CREATE FUNCTION "a schema whose name is long enough to be quoted, 63 bytes long"."a handler whose name is long enough to be quoted, 63 bytes long"(
    a "a schema whose name is long enough to be quoted, 63 bytes long"."a type whose name is long enough to be quoted and 63 bytes long",
    b "a schema whose name is long enough to be quoted, 63 bytes long"."a type whose name is long enough to be quoted and 63 bytes long")
RETURNS void LANGUAGE sql AS $$ INSERT INTO seen VALUES ('long', (a).v || (b).v) $$;
SELECT qlater_register(p.oid::regprocedure)
  FROM pg_proc p WHERE proname = 'a handler whose name is long enough to be quoted, 63 bytes long';
SELECT length(handler) >= 256 AS long_signature FROM qlater_handler WHERE handler LIKE '"a schema%';
SELECT qlater_enqueue('"a schema whose name is long enough to be quoted, 63 bytes long"."a handler whose name is long enough to be quoted, 63 bytes long"',
                      '["(x)", "(y)"]') > 0 AS enqueued;
SELECT wait_for_jobs();
SELECT label, val FROM seen WHERE label = 'long';
SELECT count(*) FROM qlater_jobs;
