-- queues: owned objects, privileges, pause, limits and their checks
\set VERBOSITY default
SELECT setval('qlater_job_id_seq', 5000, false) > 0 AS ids_reset;

CREATE ROLE tenant_a;
CREATE ROLE tenant_b;
CREATE ROLE tenant_c;
CREATE ROLE tenant_boss;
GRANT tenant_a TO tenant_boss;
CREATE FUNCTION send_mail(who text) RETURNS void LANGUAGE sql AS '';
ALTER FUNCTION send_mail(text) OWNER TO tenant_a;
CREATE FUNCTION export_b(who text) RETURNS void LANGUAGE sql AS '';
ALTER FUNCTION export_b(text) OWNER TO tenant_b;

-- 'default' belongs to the extension's owner; everyone puts jobs into it
SELECT name, owner = (SELECT r.rolname FROM pg_extension e JOIN pg_roles r ON r.oid = e.extowner
                       WHERE e.extname = 'qlater') AS ext_owner, external, paused
  FROM qlater_queues WHERE name = 'default';

-- naming a queue that does not exist makes it, for the naming role
SET ROLE tenant_a;
SELECT qlater_register('send_mail(text)', queue => 'mail');
SELECT name, owner, external, paused, max_running, min_priority, batch_size
  FROM qlater_queues WHERE name = 'mail';
SELECT qlater_enqueue('send_mail', '["x"]', run_at => now() + interval '1 day') AS mail_job \gset
RESET ROLE;

-- the take-over of 0.1: another role cannot claim the queue, see into it,
-- turn it external, pause, limit, grant, hand over or drop it
SET ROLE tenant_b;
SELECT qlater_create_queue('mail', external => true);
SELECT qlater_alter_queue('mail', external => true);
SELECT qlater_alter_queue('mail', max_running => 1);
SELECT qlater_alter_queue('mail', owner => 'tenant_b');
SELECT qlater_pause_queue('mail');
SELECT qlater_resume_queue('mail');
SELECT qlater_grant_queue('mail', 'tenant_b', 'consume');
SELECT qlater_revoke_queue('mail', 'tenant_a', 'enqueue');
SELECT qlater_drop_queue('mail');
SELECT count(*) FROM qlater_jobs WHERE queue = 'mail';
SELECT qlater_cancel(:mail_job);
SELECT qlater_retry(:mail_job);
-- nor put its own jobs into it, nor register a handler into it
SELECT qlater_register('export_b(text)', queue => 'mail');
-- its own queue, made by naming it, is its own
SELECT qlater_register('export_b(text)', queue => 'exports_b');
SELECT owner FROM qlater_queues WHERE name = 'exports_b';
SELECT qlater_enqueue('export_b', '["y"]', queue => 'mail');
SELECT qlater_enqueue_many('export_b', '[["y"]]', queue => 'mail');
-- 'default' is everyone's
SELECT qlater_enqueue('export_b', '["y"]', queue => 'default', run_at => now() + interval '1 day') > 0 AS into_default;
RESET ROLE;

-- a grant of 'enqueue' lets another role put jobs into the queue; its jobs
-- stay its own (the owner does not see them in an in-server queue)
SET ROLE tenant_a;
SELECT qlater_grant_queue('mail', 'tenant_b', 'enqueue');
SELECT qlater_grant_queue('mail', 'tenant_b', 'enqueue');  -- again: nothing changes
RESET ROLE;
SET ROLE tenant_b;
SELECT qlater_enqueue('export_b', '["y"]', queue => 'mail', run_at => now() + interval '1 day') AS b_job \gset
-- grants are seen by the grantee and the queue's owner, not by others
SELECT queue, grantee, privilege FROM qlater_queue_grants;
RESET ROLE;
SET ROLE tenant_c;
SELECT count(*) FROM qlater_queue_grants;
SELECT count(*) FROM qlater_queue_grant;
RESET ROLE;
SET ROLE tenant_a;
SELECT count(*) AS a_sees_b FROM qlater_jobs WHERE id = :b_job;
SELECT qlater_cancel(:b_job);
SELECT qlater_revoke_queue('mail', 'tenant_b', 'enqueue');
SELECT qlater_revoke_queue('mail', 'tenant_b', 'enqueue');
RESET ROLE;
SET ROLE tenant_b;
SELECT qlater_enqueue('export_b', '["z"]', queue => 'mail');
SELECT qlater_cancel(:b_job);
RESET ROLE;

-- a role enqueueing another role's handler lands in the handler's queue
-- (the queue its owner registered it into) without a grant
GRANT EXECUTE ON FUNCTION send_mail(text) TO tenant_c;
SET ROLE tenant_c;
SELECT qlater_enqueue('send_mail', '["c"]', run_at => now() + interval '1 day') AS c_job \gset
SELECT queue, role FROM qlater_jobs WHERE id = :c_job;
SELECT qlater_cancel(:c_job);
-- but naming another role's queue needs the grant
SELECT qlater_enqueue('send_mail', '["c"]', queue => 'exports_b');
RESET ROLE;

-- priorities: admins bound what a queue accepts; a new queue takes the
-- bound of 'default'
SET ROLE tenant_a;
SELECT qlater_alter_queue('mail', min_priority => 0);
RESET ROLE;
SELECT qlater_alter_queue('default', min_priority => 0);
SELECT qlater_alter_queue('mail', min_priority => 10);
SELECT qlater_alter_queue('mail', min_priority => 40000);
SET ROLE tenant_a;
SELECT qlater_enqueue('send_mail', '["p"]', priority => 9);
SELECT qlater_enqueue('send_mail', '["p"]', priority => -32768);
SELECT qlater_enqueue('send_mail', '["p"]', priority => 10, run_at => now() + interval '1 day') > 0 AS at_bound;
SELECT qlater_register('send_mail(text)', queue => 'mail', priority => 5);
SELECT qlater_enqueue('send_mail', '["p"]', queue => 'mail_new', priority => -1);
SELECT qlater_create_queue('mail_new2');
SELECT name, min_priority FROM qlater_queues WHERE name IN ('mail', 'mail_new2') ORDER BY name;
RESET ROLE;
-- admins are not bound
SELECT qlater_enqueue('send_mail', '["p"]', priority => -5, run_at => now() + interval '1 day') > 0 AS admin_jumps;
SELECT qlater_alter_queue('default', min_priority => -32768);

-- pause and resume: the owner (or an admin); the view shows it
SET ROLE tenant_a;
SELECT qlater_pause_queue('mail');
SELECT qlater_pause_queue('mail');  -- again: nothing changes
SELECT name, paused FROM qlater_queues WHERE name = 'mail';
SELECT qlater_pause_queue('no_such_queue');
SELECT qlater_pause_queue(NULL);
SELECT qlater_resume_queue('mail');
SELECT name, paused FROM qlater_queues WHERE name = 'mail';
RESET ROLE;

-- limits: max_running (NULL: unchanged; -1: no limit)
SET ROLE tenant_a;
SELECT qlater_alter_queue('mail', max_running => 3);
SELECT qlater_alter_queue('mail', batch_size => 4);
SELECT name, max_running, batch_size FROM qlater_queues WHERE name = 'mail';
SELECT qlater_alter_queue('mail', max_running => -1);
SELECT name, max_running FROM qlater_queues WHERE name = 'mail';
RESET ROLE;

-- handing a queue over: to a role one may become, or by an admin
SET ROLE tenant_a;
SELECT qlater_create_queue('handed');
SELECT qlater_alter_queue('handed', owner => 'tenant_b');
SELECT qlater_alter_queue('handed', owner => 'no_such_role');
RESET ROLE;
SET ROLE tenant_boss;
SELECT qlater_create_queue('boss_q');
SELECT qlater_alter_queue('boss_q', owner => 'tenant_a');
SELECT owner FROM qlater_queues WHERE name = 'boss_q';
RESET ROLE;
SELECT qlater_alter_queue('handed', owner => 'tenant_b');
SELECT owner FROM qlater_queues WHERE name = 'handed';

-- drop: only a queue nothing uses; never 'default'
SELECT qlater_drop_queue('default');
SET ROLE tenant_a;
SELECT qlater_drop_queue('mail');
SELECT qlater_drop_queue('boss_q');
SELECT qlater_drop_queue('no_such_queue');
RESET ROLE;
SET ROLE tenant_b;
SELECT qlater_drop_queue('handed');
SELECT qlater_drop_queue('handed');
RESET ROLE;

-- bad input changes nothing
SELECT qlater_create_queue(NULL);
SELECT qlater_create_queue(repeat('q', 64));
SELECT qlater_alter_queue(NULL);
SELECT qlater_alter_queue('mail', batch_size => 100);
SELECT qlater_grant_queue('mail', 'tenant_b', 'read');
SELECT qlater_grant_queue('mail', 'no_such_role', 'consume');

-- a role with queues or grants cannot be dropped (they would pass to a
-- role created later under its name)
DROP ROLE tenant_b;

-- clean up
SELECT count(qlater_cancel(id)) FROM qlater_jobs
 WHERE queue IN ('mail', 'default', 'exports_b', 'mail_new');
SELECT qlater_unregister('send_mail(text)');
SELECT qlater_unregister('export_b(text)');
SELECT count(qlater_drop_queue(name)) FROM qlater_queues
 WHERE name IN ('mail', 'exports_b', 'mail_new', 'mail_new2', 'boss_q');
DROP FUNCTION send_mail(text), export_b(text);
DROP ROLE tenant_a, tenant_b, tenant_c, tenant_boss;
SELECT name FROM qlater_queues WHERE name IN ('mail', 'exports_b', 'mail_new', 'mail_new2', 'boss_q', 'handed');
