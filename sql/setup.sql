-- setup: install the extension and the objects later tests use
CREATE EXTENSION qlater;
SELECT extname, extversion FROM pg_extension WHERE extname = 'qlater';
SELECT rolname FROM pg_roles WHERE rolname = 'qlater_admin';

-- workers start in this database once CREATE EXTENSION has committed
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN EXISTS (SELECT FROM pg_stat_activity
                          WHERE backend_type = 'qlater worker'
                            AND datname = current_database());
        PERFORM pg_sleep(0.1);
        PERFORM pg_stat_clear_snapshot();
    END LOOP;
END
$$;
SELECT count(*) > 0 AS has_workers FROM pg_stat_activity
 WHERE backend_type = 'qlater worker' AND datname = current_database();

CREATE TABLE done (label text, tenant text, format text, who text);
CREATE FUNCTION export_stations(tenant text, format text DEFAULT 'csv')
RETURNS void LANGUAGE sql
AS $$ INSERT INTO done VALUES ('export', tenant, format, current_user) $$;

-- wait_for_jobs(): wait until every job of this role is finished or dead
CREATE FUNCTION wait_for_jobs() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM qlater_jobs WHERE state <> 'dead');
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION wait_for_jobs() TO PUBLIC;
