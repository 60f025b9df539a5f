/*-------------------------------------------------------------------------
 *
 * cron.h
 *	  Cron schedule parser and next-tick calculator of qlater.
 *
 * A schedule is either five cron fields (minute hour day-of-month month
 * day-of-week, Vixie cron syntax, or a macro such as "@daily"), evaluated in
 * an IANA time zone, or an interval of N seconds (1 to 59) counted from an
 * anchor time.  See cron.c for the syntax and the daylight saving time rules.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_CRON_H
#define QLATER_CRON_H

#include "datatype/timestamp.h"
#include "pgtime.h"

/*
 * ql_cron_next searches at most this many years past its "after" argument;
 * past that it reports that there is no tick.  Every schedule accepted by
 * ql_cron_parse fires at least once in any 40 years (the longest wait is for
 * February 29 on a given weekday), so this only matters near the end of the
 * timestamp range.
 */
#define QL_CRON_HORIZON_YEARS	50

/* Largest N of an "N seconds" schedule */
#define QL_CRON_MAX_INTERVAL_SECONDS	59

typedef enum QlCronKind
{
	QL_CRON_FIELDS,				/* five cron fields (or a macro) */
	QL_CRON_INTERVAL			/* every interval_seconds seconds */
} QlCronKind;

/*
 * A parsed schedule.  Bit n of a bitmap is set when value n matches.
 */
typedef struct QlCronSchedule
{
	QlCronKind	kind;
	int			interval_seconds;	/* QL_CRON_INTERVAL: 1 to 59 */
	uint64		minutes;		/* bits 0 to 59 */
	uint32		hours;			/* bits 0 to 23 */
	uint32		days_of_month;	/* bits 1 to 31 */
	uint16		months;			/* bits 1 to 12 */
	uint8		days_of_week;	/* bits 0 to 6, 0 = Sunday */

	/*
	 * A day field is restricted unless its text starts with "*".  When both
	 * are restricted a day matches if either field matches, otherwise it
	 * must match both (Vixie cron's rule).
	 */
	bool		dom_restricted;
	bool		dow_restricted;

	/*
	 * The hour field starts with "*": the schedule fires on every real hour,
	 * twice in a repeated hour and not at all in a skipped one.  Otherwise
	 * each matching local time fires exactly once.
	 */
	bool		hour_wildcard;
} QlCronSchedule;

/*
 * Parse a schedule; on invalid input report at elevel (ERROR: does not
 * return) with ERRCODE_INVALID_PARAMETER_VALUE and return false.
 */
extern bool ql_cron_parse(const char *schedule, QlCronSchedule *out,
						  int elevel);

/*
 * Look up a time zone as SET timezone does; if unrecognized, report at
 * elevel and return NULL.  The result is cached by PostgreSQL, never freed.
 */
extern pg_tz *ql_cron_find_timezone(const char *tzname, int elevel);

/*
 * The first tick strictly after "after" (five fields evaluated in tz; an
 * interval ticks at anchor + k * N seconds), or DT_NOEND if there is none
 * within QL_CRON_HORIZON_YEARS years or "after" is infinite.  No errors.
 */
extern TimestampTz ql_cron_next_tz(const QlCronSchedule *sched,
								   TimestampTz after, pg_tz *tz,
								   TimestampTz anchor);

/* As ql_cron_next_tz, the time zone by name; ERROR if unrecognized */
extern TimestampTz ql_cron_next(const QlCronSchedule *sched,
								TimestampTz after, const char *tzname,
								TimestampTz anchor);

#endif							/* QLATER_CRON_H */
