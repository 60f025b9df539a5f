-- unique: jobs with keys (qlater_enqueue key/replace, qlater_enqueue_many
-- keys).  The jobs here are due tomorrow, or in an external queue: no
-- worker runs them (running jobs and concurrency: TAP 140_unique.pl).
\set VERBOSITY default

CREATE ROLE ql_uniq_alice;
CREATE ROLE ql_uniq_bob;
CREATE SCHEMA uniq;
GRANT USAGE ON SCHEMA uniq TO PUBLIC;
CREATE FUNCTION uniq.touch(label text, n int DEFAULT 0) RETURNS void
LANGUAGE sql AS '';
CREATE FUNCTION uniq.other(label text) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION uniq.when(d date) RETURNS void LANGUAGE sql AS '';
SELECT qlater_register('uniq.touch(text,int)', queue => 'uniq');
SELECT qlater_register('uniq.other(text)', queue => 'uniq');
SELECT qlater_register('uniq.when(date)', queue => 'uniq');
SET search_path = uniq, public;

-- the jobs of this test, as their role sees them
CREATE VIEW uniq.jobs AS
SELECT id, queue, handler, args, priority, run_at, run_at - now() > interval '23 hours' AS tomorrow,
       attempts, state, role, key
  FROM qlater_jobs WHERE queue IN ('uniq', 'default', 'uniq_app') ORDER BY id;
GRANT SELECT ON uniq.jobs TO PUBLIC;

SET ROLE ql_uniq_alice;
-- a key whose job waits: the same id, nothing changed
SELECT qlater_enqueue('touch', '["a"]', run_at => now() + interval '1 day', key => 'k1') AS a1 \gset
SELECT qlater_enqueue('touch', '["b", 2]', run_at => now() + interval '2 days',
                      priority => 5, key => 'k1') = :a1 AS same_id;
SELECT args, priority, tomorrow, key FROM jobs;
-- with replace, the waiting job takes the new args, run_at and priority
-- (args normalized as at any enqueue)
SELECT qlater_enqueue('touch', '{"label": "c", "n": 3}', run_at => now() + interval '1 day 1 hour',
                      priority => 7, key => 'k1', replace => true) = :a1 AS same_id;
SELECT args, priority, tomorrow, key FROM jobs;
-- priority NULL: the handler's default, as a new job would have
SELECT qlater_enqueue('touch', '["d"]', run_at => now() + interval '1 day', key => 'k1',
                      replace => true) = :a1 AS same_id;
SELECT args, priority, key FROM jobs;
-- another key, a job without a key and the same key in another queue: new jobs
SELECT qlater_enqueue('touch', '["e"]', run_at => now() + interval '1 day', key => 'k2') <> :a1 AS new_job;
SELECT qlater_enqueue('touch', '["f"]', run_at => now() + interval '1 day') <> :a1 AS new_job;
SELECT qlater_enqueue('touch', '["g"]', run_at => now() + interval '1 day', queue => 'default',
                      key => 'k1') <> :a1 AS new_job;
SELECT queue, args, key FROM jobs;
-- a key of another handler of the queue is refused: a key names one job
\set VERBOSITY terse
SELECT qlater_enqueue('other', '["h"]', run_at => now() + interval '1 day', key => 'k1');
\set VERBOSITY default
-- replace normalizes args as any enqueue does
SET DateStyle = 'SQL, DMY';
SELECT qlater_enqueue('when', '["01/02/2024"]', run_at => now() + interval '1 day', key => 'w') AS w1 \gset
SELECT qlater_enqueue('when', '["03/04/2024"]', run_at => now() + interval '1 day', key => 'w',
                      replace => true) = :w1 AS same_id;
RESET DateStyle;
SELECT args, key FROM jobs WHERE key = 'w';
-- in one transaction, twice: one job; rolled back: none
BEGIN;
SELECT qlater_enqueue('touch', '["i"]', run_at => now() + interval '1 day', key => 'k3') AS i1 \gset
SELECT qlater_enqueue('touch', '["j"]', run_at => now() + interval '1 day', key => 'k3') = :i1 AS same_id;
SELECT qlater_enqueue('touch', '["k"]', run_at => now() + interval '1 day', key => 'k3',
                      replace => true) = :i1 AS same_id;
SELECT args, key FROM jobs WHERE key = 'k3';
-- a job this transaction's enqueue returned is held by it, not running:
-- it may cancel it
SELECT qlater_cancel(:i1);
SELECT qlater_enqueue('touch', '["l"]', run_at => now() + interval '1 day', key => 'k3') <> :i1 AS new_job;
ROLLBACK;
SELECT count(*) FROM jobs WHERE key = 'k3';
-- a savepoint rolled back takes its job back; the key's next enqueue makes one
BEGIN;
SAVEPOINT s;
SELECT qlater_enqueue('touch', '["m"]', run_at => now() + interval '1 day', key => 'k4') AS m1 \gset
ROLLBACK TO SAVEPOINT s;
SELECT qlater_enqueue('touch', '["n"]', run_at => now() + interval '1 day', key => 'k4') <> :m1 AS new_job;
COMMIT;
SELECT args, key FROM jobs WHERE key = 'k4';
-- a savepoint that returned the waiting job, rolled back: the key still has
-- its one job
BEGIN;
SAVEPOINT s;
SELECT qlater_enqueue('touch', '["o"]', run_at => now() + interval '1 day', key => 'k4',
                      replace => true) > 0 AS enqueued;
ROLLBACK TO SAVEPOINT s;
SELECT qlater_enqueue('touch', '["p"]', run_at => now() + interval '1 day', key => 'k4') > 0 AS enqueued;
COMMIT;
SELECT args, key FROM jobs WHERE key = 'k4';
-- a savepoint that returned it, released: the transaction holds the job
BEGIN;
SAVEPOINT s;
SELECT qlater_enqueue('touch', '["q"]', run_at => now() + interval '1 day', key => 'k4') AS n1 \gset
RELEASE SAVEPOINT s;
SELECT qlater_enqueue('touch', '["r"]', run_at => now() + interval '1 day', key => 'k4') = :n1 AS same_id;
COMMIT;
SELECT args, key FROM jobs WHERE key = 'k4';
RESET ROLE;

-- keys are per role: bob's key k1 is not alice's, and bob never sees,
-- gets or changes alice's job
SET ROLE ql_uniq_bob;
SELECT qlater_enqueue('touch', '["bob"]', run_at => now() + interval '1 day', key => 'k1') <> :a1 AS new_job;
SELECT qlater_enqueue('touch', '["bob2"]', run_at => now() + interval '1 day', key => 'k1',
                      replace => true) <> :a1 AS not_alices;
SELECT args, key FROM jobs;
RESET ROLE;
SELECT role, args, key FROM jobs WHERE queue = 'uniq' AND key = 'k1';

-- a dead job does not hold its key; retried while another job has the key,
-- it loses it; retried alone, it has it again
SET ROLE ql_uniq_alice;
-- (a retried job is due now: each retry is checked in its transaction,
-- and the job moved away from the workers before it commits)
SELECT qlater_enqueue('touch', '["dead"]', run_at => now() + interval '1 day', key => 'k5') AS d1 \gset
RESET ROLE;
UPDATE qlater_job SET dead = true, attempts = 25 WHERE id = :d1;
SET ROLE ql_uniq_alice;
SELECT qlater_enqueue('touch', '["alive"]', run_at => now() + interval '1 day', key => 'k5') <> :d1 AS new_job;
SELECT args, state, key FROM jobs WHERE args->>0 IN ('dead', 'alive');
BEGIN;
SELECT qlater_retry(:d1);
SELECT args, state, key FROM jobs WHERE args->>0 IN ('dead', 'alive');
SELECT qlater_cancel(id) FROM jobs WHERE args->>0 IN ('dead', 'alive');
COMMIT;
SELECT qlater_enqueue('touch', '["dead2"]', run_at => now() + interval '1 day', key => 'k6') AS d2 \gset
RESET ROLE;
UPDATE qlater_job SET dead = true, attempts = 25 WHERE id = :d2;
SET ROLE ql_uniq_alice;
BEGIN;
SELECT qlater_retry(:d2);
SELECT args, state, key FROM jobs WHERE key = 'k6';
SELECT qlater_enqueue('touch', '["dead2"]', run_at => now() + interval '1 day', key => 'k6',
                      replace => true) = :d2 AS same_id;
COMMIT;

-- bad keys change nothing
SELECT count(*) AS jobs_before FROM jobs \gset
SELECT qlater_enqueue('touch', '["x"]', key => '');
SELECT qlater_enqueue('touch', '["x"]', key => repeat('k', 513));
SELECT qlater_enqueue('touch', '["x"]', key => E'a\tb');
SELECT qlater_enqueue('touch', '["x"]', key => E'a\x7fb');
SELECT qlater_enqueue('touch', '["x"]', replace => true);
SELECT qlater_enqueue('touch', '["x"]', key => 'k1', replace => NULL);
SELECT count(*) = :jobs_before AS nothing_enqueued FROM jobs;
-- the longest key
SELECT qlater_enqueue('touch', '["long"]', run_at => now() + interval '1 day',
                      key => repeat('k', 512)) > 0 AS enqueued;

-- enqueue_many: a key per element (NULL: none); elements of one key make
-- one job, with the first element's args (with replace, the last's)
SELECT array_agg(id) AS ids FROM qlater_enqueue_many('touch',
    '[["m1"], ["m2"], ["m3"], ["m4"], ["m5"]]', run_at => now() + interval '1 day',
    keys => ARRAY['m', NULL, 'm', 'k1', NULL]) AS id \gset
SELECT (:'ids'::bigint[])[1] = (:'ids'::bigint[])[3] AS m_once,
       (:'ids'::bigint[])[4] = :a1 AS k1_waits,
       cardinality(ARRAY(SELECT DISTINCT unnest(:'ids'::bigint[]))) AS distinct_ids;
SELECT args, key FROM jobs WHERE args->>0 LIKE 'm_' OR key IN ('m', 'k1');
SELECT array_agg(id) AS ids2 FROM qlater_enqueue_many('touch',
    '[["r1"], ["r2"], ["r3"], ["r4"], ["r5"]]', run_at => now() + interval '1 day',
    keys => ARRAY['m', 'x1', 'm', 'k1', 'x2'], replace => true) AS id \gset
SELECT (:'ids2'::bigint[])[1] = (:'ids'::bigint[])[1] AS m_kept,
       (:'ids2'::bigint[])[3] = (:'ids'::bigint[])[1] AS m_kept_again,
       (:'ids2'::bigint[])[4] = :a1 AS k1_kept,
       cardinality(ARRAY(SELECT DISTINCT unnest(:'ids2'::bigint[]))) AS distinct_ids;
SELECT args, key FROM jobs WHERE args->>0 LIKE 'r_' OR key IN ('m', 'k1');
-- bad keys name their element; nothing is enqueued
SELECT count(*) AS jobs_before FROM jobs \gset
SELECT qlater_enqueue_many('touch', '[["y"], ["z"]]', keys => ARRAY['ok']);
SELECT qlater_enqueue_many('touch', '[["y"], ["z"]]', keys => ARRAY[['a'], ['b']]);
SELECT qlater_enqueue_many('touch', '[["y"], ["z"]]', keys => ARRAY['ok', '']);
SELECT qlater_enqueue_many('touch', '[["y"], ["z"]]', replace => true);
SELECT qlater_enqueue('other', '["held"]', run_at => now() + interval '1 day', key => 'hk') > 0 AS enqueued;
SELECT count(*) AS jobs_before FROM jobs \gset
\set VERBOSITY terse
SELECT qlater_enqueue_many('touch', '[["y"], ["z"]]', keys => ARRAY['fresh', 'hk']);
\set VERBOSITY default
SELECT count(*) = :jobs_before AS nothing_enqueued FROM jobs;
-- keys all NULL: plain jobs; no elements: nothing
SELECT count(*) FROM qlater_enqueue_many('touch', '[["n1"], ["n2"]]',
    run_at => now() + interval '1 day', keys => ARRAY[NULL, NULL]::text[]);
SELECT count(*) FROM qlater_enqueue_many('touch', '[]', keys => '{}');
RESET ROLE;

-- an external queue: a job claimed by a consumer runs, so the key's next
-- enqueue makes a new job; the claimed one, failed and rescheduled while
-- the new one waits, gives up its key
SELECT qlater_create_queue('uniq_app', external => true);
SELECT qlater_grant_queue('uniq_app', 'ql_uniq_alice');
SELECT qlater_grant_queue('uniq_app', 'ql_uniq_alice', 'enqueue');
SET ROLE ql_uniq_alice;
SELECT qlater_enqueue('App', '["one"]', queue => 'uniq_app', key => 'app') AS p1 \gset
SELECT id = :p1 AS claimed, key FROM qlater_lock('uniq_app');
SELECT qlater_enqueue('App', '["two"]', queue => 'uniq_app', key => 'app') AS p2 \gset
SELECT :p2 <> :p1 AS new_job;
SELECT qlater_enqueue('App', '["three"]', queue => 'uniq_app', key => 'app') = :p2 AS the_waiting_one;
SELECT args, state, key FROM jobs WHERE queue = 'uniq_app';
SELECT qlater_fail(:p1, 'boom');
SELECT args, attempts, state, key FROM jobs WHERE queue = 'uniq_app';
-- the one waiting with the key is returned, updated with replace
SELECT qlater_enqueue('App', '["four"]', queue => 'uniq_app', key => 'app', replace => true) = :p2 AS the_waiting_one;
SELECT args, state, key FROM jobs WHERE queue = 'uniq_app';
-- PREPARE TRANSACTION is refused while the transaction holds the job it
-- returned (even with nothing else to do at commit: nobody listens)
BEGIN;
SELECT qlater_enqueue('App', '["prep"]', queue => 'uniq_app', key => 'app') = :p2 AS the_waiting_one;
PREPARE TRANSACTION 'uniq_prep';
SELECT args, state, key FROM jobs WHERE queue = 'uniq_app';
SELECT qlater_cancel(id) FROM jobs WHERE queue = 'uniq_app';
-- a job failed while it is the key's only one keeps its key (backoff: it
-- waits), and the next enqueue returns it
SELECT qlater_enqueue('App', '["five"]', queue => 'uniq_app', key => 'app') AS p5 \gset
SELECT count(*) FROM qlater_lock('uniq_app');
SELECT qlater_fail(:p5, 'boom');
SELECT qlater_enqueue('App', '["six"]', queue => 'uniq_app', key => 'app') = :p5 AS same_id;
SELECT args, attempts, state, key FROM jobs WHERE queue = 'uniq_app';
-- with replace, the job in backoff takes the new run_at (now) and args;
-- its attempts stay
SELECT qlater_enqueue('App', '["seven"]', queue => 'uniq_app', key => 'app', replace => true) = :p5 AS same_id;
SELECT args, attempts, run_at <= now() AS due, state, key FROM jobs WHERE queue = 'uniq_app';
-- a lease is a claim too: the job runs
SELECT id = :p5 AS leased, claim_token AS token FROM qlater_lock('uniq_app', lease => '1 minute') \gset
SELECT :'leased' AS leased;
SELECT qlater_enqueue('App', '["eight"]', queue => 'uniq_app', key => 'app') AS p8 \gset
SELECT :p8 <> :p5 AS new_job;
SELECT args, state, key FROM jobs WHERE queue = 'uniq_app';
-- its lease ran out: it waits again, without a write, beside the new job;
-- the key's next enqueue keeps the key on the newest and returns it
RESET ROLE;
UPDATE qlater_job SET lease_until = now() - interval '1 second' WHERE id = :p5;
SET ROLE ql_uniq_alice;
SELECT args, state, key FROM jobs WHERE queue = 'uniq_app';
SELECT qlater_enqueue('App', '["nine"]', queue => 'uniq_app', key => 'app') = :p8 AS the_newest;
SELECT args, state, key FROM jobs WHERE queue = 'uniq_app';
-- leased again, failed with its token while another job has the key: it
-- gives the key up
SELECT qlater_enqueue('App', '["ten"]', queue => 'uniq_app', key => 'app2') AS p10 \gset
SELECT claim_token AS token FROM qlater_lock('uniq_app', max_jobs => 3, lease => '1 minute')
 WHERE id = :p10 \gset
SELECT qlater_enqueue('App', '["eleven"]', queue => 'uniq_app', key => 'app2') <> :p10 AS new_job;
SELECT qlater_fail(:p10, 'boom', token => :'token');
SELECT args, state, key FROM jobs WHERE key = 'app2' OR args->>0 = 'ten';
SELECT qlater_cancel(id) FROM jobs WHERE queue = 'uniq_app';
RESET ROLE;

-- clean up
SELECT qlater_cancel(id) FROM qlater_job WHERE role IN ('ql_uniq_alice', 'ql_uniq_bob');
SELECT qlater_revoke_queue('uniq_app', 'ql_uniq_alice');
SELECT qlater_revoke_queue('uniq_app', 'ql_uniq_alice', 'enqueue');
SELECT qlater_drop_queue('uniq_app');
DROP ROLE ql_uniq_alice;
DROP ROLE ql_uniq_bob;
SELECT qlater_unregister('uniq.touch(text,int)');
SELECT qlater_unregister('uniq.other(text)');
SELECT qlater_unregister('uniq.when(date)');
DROP SCHEMA uniq CASCADE;
RESET search_path;
