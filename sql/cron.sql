--
-- cron: schedule parser and next-tick calculator
-- (qlater_cron_next, qlater_cron_check)
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

-- n successive ticks of a schedule, in UTC and as local wall time of tz
CREATE FUNCTION cron_ticks(schedule text, after timestamptz,
                           tz text DEFAULT 'UTC', n int DEFAULT 5)
RETURNS TABLE (tick timestamptz, local text)
LANGUAGE sql AS $$
    WITH RECURSIVE t(i, tick) AS (
        SELECT 1, qlater_cron_next(schedule, after, tz)
        UNION ALL
        SELECT i + 1, qlater_cron_next(schedule, t.tick, tz)
        FROM t WHERE i < n AND t.tick IS NOT NULL
    )
    SELECT tick, to_char(tick AT TIME ZONE tz, 'YYYY-MM-DD Dy HH24:MI:SS')
    FROM t ORDER BY i
$$;

--
-- Basics: the first tick strictly after "after"
--
SELECT qlater_cron_next('* * * * *', '2024-01-01 10:00:00.5+00');
SELECT qlater_cron_next('* * * * *', '2024-01-01 10:00:00+00');
SELECT qlater_cron_next('* * * * *', '2024-01-01 09:59:59.999999+00');
-- default time zone is UTC
SELECT qlater_cron_next('0 12 * * *', '2024-01-01 12:00:00+00');
SELECT qlater_cron_next('0 12 * * *', '2024-01-01 12:00:00+00', 'UTC');
-- white space of any kind separates fields
SELECT qlater_cron_next(E'  0\t12 \n *  * *  ', '2024-01-01 12:00:00+00');
-- year, month and day boundaries
SELECT * FROM cron_ticks('59 23 31 12 *', '2023-12-31 23:59:00+00', n => 2);
SELECT * FROM cron_ticks('0 0 31 * *', '2024-01-01', n => 8);

--
-- Lists, ranges and steps
--
SELECT * FROM cron_ticks('*/15 * * * *', '2024-01-01 00:07:00+00');
SELECT * FROM cron_ticks('1-30/10 * * * *', '2024-01-01 00:00:00+00', n => 4);
SELECT * FROM cron_ticks('5/20 * * * *', '2024-01-01 00:00:00+00', n => 4);
SELECT * FROM cron_ticks('10,20-22,50-59/4 * * * *', '2024-01-01 00:00:00+00', n => 8);
SELECT * FROM cron_ticks('0 */6 * * *', '2024-01-01 00:00:00+00');
SELECT * FROM cron_ticks('30 9-17/4 * * *', '2024-01-01 00:00:00+00', n => 4);
SELECT * FROM cron_ticks('0 0 1 */4 *', '2024-01-01 00:00:00+00', n => 4);
SELECT * FROM cron_ticks('0 0 10/10 * *', '2024-01-01 00:00:00+00', n => 4);
-- a step as large as the field lets only its first value through
SELECT * FROM cron_ticks('*/60 */24 * * *', '2024-01-01 00:00:00+00', n => 2);
-- overlapping items
SELECT * FROM cron_ticks('0,0,0-1,1/59 0 1 1 *', '2024-01-01 00:00:00+00', n => 3);

--
-- Month and weekday names, weekday 7
--
SELECT * FROM cron_ticks('0 0 1 jan,Jul *', '2024-01-01', n => 3);
SELECT * FROM cron_ticks('0 0 1 MAR-may *', '2024-01-01', n => 4);
SELECT * FROM cron_ticks('0 0 1 feb-dec/3 *', '2024-01-01', n => 4);
SELECT * FROM cron_ticks('0 8 * * mon-fri', '2024-01-05', n => 4);
SELECT * FROM cron_ticks('0 8 * * fri-sun', '2024-01-01', n => 4);
SELECT * FROM cron_ticks('0 8 * * SAT,sun', '2024-01-01', n => 3);
-- Sunday as 0, 7 and sun
SELECT qlater_cron_next('0 0 * * 0', '2024-01-01'),
       qlater_cron_next('0 0 * * 7', '2024-01-01'),
       qlater_cron_next('0 0 * * sun', '2024-01-01'),
       qlater_cron_next('0 0 * * 5-7', '2024-01-01'),
       qlater_cron_next('0 0 * * 7/7', '2024-01-01');
SELECT * FROM cron_ticks('0 0 * * */2', '2024-01-01', n => 5);
-- sun ends a range as 7 only after a later start: sun-sun is Sunday alone
SELECT * FROM cron_ticks('0 0 * * sun-sun', '2024-01-01', n => 2);
SELECT * FROM cron_ticks('0 0 * * 0-sun', '2024-01-01', n => 2);
SELECT * FROM cron_ticks('0 0 * * sun-0', '2024-01-01', n => 2);
SELECT * FROM cron_ticks('0 0 * * sat-sun', '2024-01-01', n => 3);

--
-- The two day fields (Vixie cron): both restricted means either matches
--
-- the 13th of each month, and every Friday
SELECT * FROM cron_ticks('0 0 13 * fri', '2024-09-01', n => 6);
-- only the 13th; only Fridays
SELECT * FROM cron_ticks('0 0 13 * *', '2024-09-01', n => 2);
SELECT * FROM cron_ticks('0 0 * * 5', '2024-09-01', n => 2);
-- days 1 to 7, and every Monday
SELECT * FROM cron_ticks('0 0 1-7 * mon', '2024-09-01', n => 9);
-- a day field starting with "*" is unrestricted: then both must match
SELECT * FROM cron_ticks('0 0 */2 * fri', '2024-09-01', n => 4);
SELECT * FROM cron_ticks('0 0 1-7 * */1', '2024-09-01', n => 8);

--
-- Leap days
--
SELECT * FROM cron_ticks('0 0 29 2 *', '2023-01-01', n => 3);
-- 2100 is not a leap year
SELECT * FROM cron_ticks('0 0 29 2 *', '2096-03-01', n => 1);
-- February 29 on a Sunday: the longest wait, up to 40 years
SELECT * FROM cron_ticks('0 0 29 2 */7', '2000-01-01', n => 5);
-- either February 29 or a Monday in February
SELECT * FROM cron_ticks('0 0 29 feb mon', '2024-02-20', n => 3);

--
-- Macros
--
SELECT m, qlater_cron_next(m, '2024-05-15 13:45:00+00') AS next
FROM unnest(ARRAY['@yearly', '@annually', '@monthly', '@weekly', '@daily',
                  '@midnight', '@hourly', '@DAILY', ' @hourly ']) AS m;
-- macros are evaluated in the time zone too
SELECT * FROM cron_ticks('@daily', '2024-05-15', 'Asia/Kathmandu', 2);

--
-- Intervals of N seconds: multiples of N seconds since 2000-01-01 UTC,
-- whatever the time zone
--
SELECT * FROM cron_ticks('15 seconds', '2024-01-01 00:00:07+00');
SELECT * FROM cron_ticks('1 second', '2024-01-01 00:00:00+00', n => 3);
SELECT * FROM cron_ticks('59 Seconds', '2024-01-01 00:00:00+00', n => 3);
SELECT * FROM cron_ticks('7 SECOND', '1999-12-31 23:59:50+00', n => 3);
SELECT qlater_cron_next('30 seconds', '2024-03-10 06:59:45+00', 'America/New_York'),
       qlater_cron_next('30 seconds', '2024-03-10 06:59:45.5+00', 'Europe/Berlin');

--
-- Time zones
--
SELECT * FROM cron_ticks('0 9 * * *', '2024-06-01', 'America/New_York', 2);
SELECT * FROM cron_ticks('0 9 * * *', '2024-06-01', 'Asia/Kathmandu', 2);
SELECT * FROM cron_ticks('0 9 * * *', '2024-06-01', 'europe/berlin', 2);
-- a POSIX specification, as SET timezone accepts it (3 hours west of UTC)
SELECT * FROM cron_ticks('0 9 * * *', '2024-06-01', 'XXX3', 1);

--
-- Daylight saving time, America/New_York.  2024-03-10 02:00 EST becomes
-- 03:00 EDT (07:00 UTC); 2024-11-03 02:00 EDT becomes 01:00 EST (06:00 UTC).
--
-- a fixed time in the gap fires once at its end, 03:00 EDT
SELECT * FROM cron_ticks('30 2 * * *', '2024-03-09 12:00+00', 'America/New_York', 3);
-- several fixed times in the gap fire once together
SELECT * FROM cron_ticks('0,30 2 * * *', '2024-03-09 12:00+00', 'America/New_York', 4);
SELECT * FROM cron_ticks('* 2 * * *', '2024-03-10 06:58+00', 'America/New_York', 3);
SELECT * FROM cron_ticks('0 3 * * *', '2024-03-09 12:00+00', 'America/New_York', 2);
-- a wildcard hour has no tick in the missing hour
SELECT * FROM cron_ticks('30 * * * *', '2024-03-10 05:00+00', 'America/New_York', 3);
SELECT * FROM cron_ticks('0 */2 * * *', '2024-03-10 04:00+00', 'America/New_York', 3);
-- a fixed time in the repeated hour fires once, at its first occurrence
SELECT * FROM cron_ticks('30 1 * * *', '2024-11-02 12:00+00', 'America/New_York', 3);
SELECT * FROM cron_ticks('*/20 1 * * *', '2024-11-03 04:50+00', 'America/New_York', 4);
-- ... also when asked during the second occurrence
SELECT qlater_cron_next('45 1 * * *', '2024-11-03 06:10+00', 'America/New_York');
SELECT qlater_cron_next('* 1 * * *', '2024-11-03 06:10+00', 'America/New_York');
-- a wildcard hour fires in both occurrences
SELECT * FROM cron_ticks('30 * * * *', '2024-11-03 04:00+00', 'America/New_York', 4);
SELECT * FROM cron_ticks('*/30 */1 * * *', '2024-11-03 05:15+00', 'America/New_York', 4);
SELECT * FROM cron_ticks('@hourly', '2024-11-03 04:30+00', 'America/New_York', 3);

--
-- Europe/Berlin: 2024-03-31 02:00 CET becomes 03:00 CEST (01:00 UTC);
-- 2024-10-27 03:00 CEST becomes 02:00 CET (01:00 UTC).
--
SELECT * FROM cron_ticks('30 2 * * *', '2024-03-30 12:00+00', 'Europe/Berlin', 3);
SELECT * FROM cron_ticks('15 * * * *', '2024-03-31 00:00+00', 'Europe/Berlin', 3);
SELECT * FROM cron_ticks('30 2 * * *', '2024-10-26 12:00+00', 'Europe/Berlin', 2);
SELECT * FROM cron_ticks('0 * * * *', '2024-10-26 23:30+00', 'Europe/Berlin', 4);

--
-- Australia/Sydney: 2024-04-07 03:00 AEDT becomes 02:00 AEST (16:00 UTC the
-- day before); 2024-10-06 02:00 AEST becomes 03:00 AEDT (16:00 UTC).
--
SELECT * FROM cron_ticks('30 2 * * *', '2024-04-06 00:00+00', 'Australia/Sydney', 2);
SELECT * FROM cron_ticks('30 */1 * * *', '2024-04-06 14:00+00', 'Australia/Sydney', 4);
SELECT * FROM cron_ticks('30 2 * * *', '2024-10-05 00:00+00', 'Australia/Sydney', 2);
SELECT * FROM cron_ticks('30 * * * *', '2024-10-05 15:00+00', 'Australia/Sydney', 3);

-- Australia/Lord_Howe shifts by 30 minutes: 2024-04-07 02:00 +11 becomes
-- 01:30 +1030 (15:00 UTC the day before)
SELECT * FROM cron_ticks('45 1 * * *', '2024-04-06 12:00+00', 'Australia/Lord_Howe', 2);
SELECT * FROM cron_ticks('*/30 * * * *', '2024-04-06 14:00+00', 'Australia/Lord_Howe', 4);

-- America/Santiago skips midnight: 2024-09-08 00:00 -04 becomes 01:00 -03
SELECT * FROM cron_ticks('@daily', '2024-09-06 12:00+00', 'America/Santiago', 3);

--
-- The same rules checked by brute force, minute by minute, around the
-- changes of four zones.  A schedule with a fixed hour fires at the first
-- instant whose local time reaches a matching local time not reached
-- before; one whose hour field starts with "*" fires at every instant whose
-- local time matches.  (A local time matches if the schedule fires at it
-- in UTC.)
--
CREATE FUNCTION cron_brute(schedule text, after timestamptz, tz text)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    wild boolean := split_part(schedule, ' ', 2) LIKE '*%';
    t timestamptz := date_trunc('minute', after) - interval '2 days';
    reached timestamp := '-infinity';
    l timestamp;
BEGIN
    WHILE t < after + interval '3 days' LOOP
        IF t > after THEN
            l := CASE WHEN wild THEN t AT TIME ZONE tz
                      ELSE greatest(reached + interval '1 minute',
                                    (t AT TIME ZONE tz) - interval '2 hours') END;
            WHILE l <= t AT TIME ZONE tz LOOP
                IF qlater_cron_next(schedule, (l - interval '1 minute') AT TIME ZONE 'UTC')
                   = l AT TIME ZONE 'UTC' THEN
                    RETURN t;
                END IF;
                l := l + interval '1 minute';
            END LOOP;
        END IF;
        reached := greatest(reached, t AT TIME ZONE tz);
        t := t + interval '1 minute';
    END LOOP;
    RETURN NULL;
END $$;
WITH c AS (
    SELECT tz, s, change + m * interval '1 minute' AS after
      FROM (VALUES ('America/New_York', '2024-03-10 07:00+00'::timestamptz),
                   ('America/New_York', '2024-11-03 06:00+00'),
                   ('Europe/Berlin', '2024-03-31 01:00+00'),
                   ('Europe/Berlin', '2024-10-27 01:00+00'),
                   ('Australia/Lord_Howe', '2024-04-06 15:00+00'),
                   ('Australia/Lord_Howe', '2024-10-05 15:30+00'),
                   ('America/Santiago', '2024-04-07 03:00+00'),
                   ('America/Santiago', '2024-09-08 04:00+00')) z(tz, change),
           unnest(ARRAY['30 2 * * *', '0,30 2 * * *', '*/20 1 * * *', '15 0-3 * * *',
                        '0 0 * * *', '30 * * * *', '*/30 */1 * * *', '59 23 * * *']) s,
           unnest(ARRAY[-150, -70, -10, 0, 30, 80]) m
)
SELECT count(*) AS cases,
       count(*) FILTER (WHERE qlater_cron_next(s, after, tz)
                              IS DISTINCT FROM cron_brute(s, after, tz)) AS differ
  FROM c;
DROP FUNCTION cron_brute(text, timestamptz, text);

--
-- Bounded search: NULL when there is no tick before the end of the
-- timestamp range
--
SELECT qlater_cron_next('0 0 1 1 *', '294276-06-01 00:00+00');
SELECT qlater_cron_next('* * * * *', '294276-12-31 23:58:30+00'),
       qlater_cron_next('* * * * *', '294276-12-31 23:59:00+00');
SELECT qlater_cron_next('0 0 29 2 */7', '294270-01-01 00:00+00');
SELECT qlater_cron_next('59 seconds', '294276-12-31 23:59:30+00'),
       qlater_cron_next('59 seconds', '294276-12-31 23:59:33+00');

--
-- NULL arguments (STRICT)
--
SELECT qlater_cron_next(NULL, '2024-01-01'), qlater_cron_next('* * * * *', NULL),
       qlater_cron_next('* * * * *', '2024-01-01', NULL);

--
-- qlater_cron_check
--
SELECT qlater_cron_check('*/5 9-17 * * mon-fri');
SELECT qlater_cron_check('@weekly', 'Europe/Berlin');
SELECT qlater_cron_check('10 seconds');
SELECT qlater_cron_check('*/5 25 * * *');
SELECT qlater_cron_check('* * * * *', 'Mars/Olympus_Mons');

--
-- Errors
--
-- number of fields
SELECT qlater_cron_next('', '2024-01-01');
SELECT qlater_cron_next('   ', '2024-01-01');
SELECT qlater_cron_next('*', '2024-01-01');
SELECT qlater_cron_next('* * * *', '2024-01-01');
SELECT qlater_cron_next('* * * * * *', '2024-01-01');
SELECT qlater_cron_next('5 minutes', '2024-01-01');
-- macros
SELECT qlater_cron_next('@reboot', '2024-01-01');
SELECT qlater_cron_next('@', '2024-01-01');
SELECT qlater_cron_next('@daily 0', '2024-01-01');
-- intervals
SELECT qlater_cron_next('0 seconds', '2024-01-01');
SELECT qlater_cron_next('60 seconds', '2024-01-01');
SELECT qlater_cron_next('-5 seconds', '2024-01-01');
SELECT qlater_cron_next('1.5 seconds', '2024-01-01');
-- values out of range
SELECT qlater_cron_next('61 * * * *', '2024-01-01');
SELECT qlater_cron_next('60 * * * *', '2024-01-01');
SELECT qlater_cron_next('* 24 * * *', '2024-01-01');
SELECT qlater_cron_next('* * 0 * *', '2024-01-01');
SELECT qlater_cron_next('* * 32 * *', '2024-01-01');
SELECT qlater_cron_next('* * * 0 *', '2024-01-01');
SELECT qlater_cron_next('* * * 13 *', '2024-01-01');
SELECT qlater_cron_next('* * * * 8', '2024-01-01');
SELECT qlater_cron_next('0-99999999999 * * * *', '2024-01-01');
SELECT qlater_cron_next('1-70/5 * * * *', '2024-01-01');
-- unrecognized names, and names in the wrong field
SELECT qlater_cron_next('* * * foo *', '2024-01-01');
SELECT qlater_cron_next('* * * january *', '2024-01-01');
SELECT qlater_cron_next('* * * * funday', '2024-01-01');
SELECT qlater_cron_next('* * * * jan', '2024-01-01');
SELECT qlater_cron_next('* * * mon *', '2024-01-01');
SELECT qlater_cron_next('mon * * * *', '2024-01-01');
-- malformed items
SELECT qlater_cron_next('1-2-3 * * * *', '2024-01-01');
SELECT qlater_cron_next('*-5 * * * *', '2024-01-01');
SELECT qlater_cron_next('-5 * * * *', '2024-01-01');
SELECT qlater_cron_next('5- * * * *', '2024-01-01');
SELECT qlater_cron_next('5x * * * *', '2024-01-01');
SELECT qlater_cron_next('? * * * *', '2024-01-01');
SELECT qlater_cron_next('** * * * *', '2024-01-01');
SELECT qlater_cron_next('* * L * *', '2024-01-01');
-- empty items
SELECT qlater_cron_next('1,,2 * * * *', '2024-01-01');
SELECT qlater_cron_next('* ,1 * * *', '2024-01-01');
SELECT qlater_cron_next('* * * 1, *', '2024-01-01');
-- steps
SELECT qlater_cron_next('*/0 * * * *', '2024-01-01');
SELECT qlater_cron_next('*/61 * * * *', '2024-01-01');
SELECT qlater_cron_next('* */25 * * *', '2024-01-01');
SELECT qlater_cron_next('* * * * */8', '2024-01-01');
SELECT qlater_cron_next('*/ * * * *', '2024-01-01');
SELECT qlater_cron_next('*/x * * * *', '2024-01-01');
SELECT qlater_cron_next('*/-1 * * * *', '2024-01-01');
SELECT qlater_cron_next('1/2/3 * * * *', '2024-01-01');
SELECT qlater_cron_next('/5 * * * *', '2024-01-01');
-- reversed ranges
SELECT qlater_cron_next('5-1 * * * *', '2024-01-01');
SELECT qlater_cron_next('* * * dec-jan *', '2024-01-01');
SELECT qlater_cron_next('* * * * sat-mon', '2024-01-01');
SELECT qlater_cron_next('* * * * 6-0', '2024-01-01');
SELECT qlater_cron_next('* * * * sat-0', '2024-01-01');
-- schedules that can never fire
SELECT qlater_cron_next('0 0 30 2 *', '2024-01-01');
SELECT qlater_cron_next('0 0 31 2,4,6,9,11 *', '2024-01-01');
SELECT qlater_cron_next('0 0 30,31 feb */2', '2024-01-01');
-- time zones
SELECT qlater_cron_next('* * * * *', '2024-01-01', 'Foo/Bar');
SELECT qlater_cron_next('* * * * *', '2024-01-01', '');
SELECT qlater_cron_next('10 seconds', '2024-01-01', 'Nowhere');
-- a zone with leap seconds (Debian's tzdata has the right/ zones)
SELECT qlater_cron_check('* * * * *', 'right/UTC');
-- infinite times
SELECT qlater_cron_next('* * * * *', 'infinity');
SELECT qlater_cron_next('10 seconds', '-infinity');

DROP FUNCTION cron_ticks(text, timestamptz, text, int);
