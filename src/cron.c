/*-------------------------------------------------------------------------
 *
 * cron.c
 *	  Cron schedule parser and next-tick calculator of qlater.
 *
 * A schedule is one of:
 *
 * - Five fields, "minute hour day-of-month month day-of-week", in the syntax
 *	 of Vixie cron.  Each field is a comma-separated list of items; an item is
 *	 "*", a value or a range "a-b", optionally followed by a step "/n":
 *	 "1-30/5" is every 5th value from 1 to 30, "5/10" every 10th value from 5
 *	 to the largest, and "*" with step 15 every 15th value of the field.
 *	 Months may be named jan to dec and weekdays sun to sat, in any case and
 *	 also in ranges ("sun" ends a range as 7: "fri-sun"); weekday 7 is
 *	 Sunday like 0.  When both day fields are restricted, a day matches if
 *	 either field matches; a day field whose text starts with "*" (with or
 *	 without a step) is unrestricted, and then a day must match both fields.
 * - A macro: @yearly, @annually, @monthly, @weekly, @daily, @midnight or
 *	 @hourly.
 * - An interval "N seconds" (or "N second"), N from 1 to 59: ticks fall at
 *	 anchor + k * N seconds for integer k.
 *
 * Five-field schedules are evaluated in local time of an IANA time zone.
 * Daylight saving time follows Vixie cron:
 *
 * - If the hour field starts with "*" (with or without a step), the schedule
 *	 fires on every real hour whose local time matches: twice in an hour
 *	 repeated when clocks go back, never in an hour skipped when they go
 *	 forward.
 * - Otherwise each matching local time fires exactly once: a repeated local
 *	 time fires at its first occurrence, and a skipped one fires at the first
 *	 valid instant after the gap (several skipped ones fire once there).
 *
 * Local times are handled as "local seconds": seconds from 1970-01-01 00:00
 * local time, counted as if the zone were UTC.  Instants are pg_time_t
 * seconds since the Unix epoch; ticks are always whole seconds.
 *
 * The parser rejects a schedule that can never fire (such as "0 0 30 2 *"),
 * and ql_cron_next searches at most QL_CRON_HORIZON_YEARS years ahead, so
 * every call ends in bounded time; if it finds no tick, it returns DT_NOEND
 * (qlater_cron_next returns NULL), which only happens near the end of the
 * timestamp range.
 *
 * This module keeps no state: no shared memory and no locks.  Time zones
 * come from PostgreSQL's time zone library, which caches each zone it loads
 * for the life of the process.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/int.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "cron.h"

PG_FUNCTION_INFO_V1(qlater_cron_next);
PG_FUNCTION_INFO_V1(qlater_cron_check);

/* Seconds from the Unix epoch to the PostgreSQL epoch */
#define QL_CRON_EPOCH_DIFF \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY)

/* Index of each field in ql_cron_fields */
#define QL_CRON_MINUTE	0
#define QL_CRON_HOUR	1
#define QL_CRON_DOM		2
#define QL_CRON_MONTH	3
#define QL_CRON_DOW		4
#define QL_CRON_NFIELDS 5

/*
 * Description of one of the five fields.
 */
typedef struct QlCronFieldDef
{
	const char *name;			/* in error messages: "minute field" */
	int			min;			/* smallest value */
	int			max;			/* largest value accepted */
	int			last;			/* largest value "*" and "n/step" reach */
	const char *const *names;	/* three-letter names, or NULL */
	int			first_name_value;	/* value of names[0] */
} QlCronFieldDef;

static const char *const ql_cron_month_names[] = {
	"jan", "feb", "mar", "apr", "may", "jun",
	"jul", "aug", "sep", "oct", "nov", "dec", NULL
};

static const char *const ql_cron_dow_names[] = {
	"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL
};

static const QlCronFieldDef ql_cron_fields[QL_CRON_NFIELDS] = {
	{"minute", 0, 59, 59, NULL, 0},
	{"hour", 0, 23, 23, NULL, 0},
	{"day-of-month", 1, 31, 31, NULL, 0},
	{"month", 1, 12, 12, ql_cron_month_names, 1},
	{"day-of-week", 0, 7, 6, ql_cron_dow_names, 0}
};

/*
 * A macro and the five fields it stands for.
 */
typedef struct QlCronMacro
{
	const char *name;
	const char *fields;
} QlCronMacro;

static const QlCronMacro ql_cron_macros[] = {
	{"@yearly", "0 0 1 1 *"},
	{"@annually", "0 0 1 1 *"},
	{"@monthly", "0 0 1 * *"},
	{"@weekly", "0 0 * * 0"},
	{"@daily", "0 0 * * *"},
	{"@midnight", "0 0 * * *"},
	{"@hourly", "0 * * * *"}
};

/* Days in each month of a leap year, for the never-fires check */
static const int ql_cron_max_mday[13] = {
	0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
};


/*
 * ql_cron_isspace
 *		True if c separates fields.
 */
static inline bool
ql_cron_isspace(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
		c == '\f' || c == '\v';
}

/*
 * ql_cron_floor_div
 *		a / b rounded towards minus infinity; b must be positive.
 */
static inline int64
ql_cron_floor_div(int64 a, int64 b)
{
	int64		q = a / b;

	if (a % b < 0)
		q--;
	return q;
}

/*
 * ql_cron_all_digits
 *		True if str[0..len) is non-empty and made of ASCII digits only.
 */
static bool
ql_cron_all_digits(const char *str, int len)
{
	int			i;

	if (len <= 0)
		return false;
	for (i = 0; i < len; i++)
	{
		if (str[i] < '0' || str[i] > '9')
			return false;
	}
	return true;
}

/*
 * ql_cron_all_letters
 *		True if str[0..len) is non-empty and made of ASCII letters only.
 */
static bool
ql_cron_all_letters(const char *str, int len)
{
	int			i;

	if (len <= 0)
		return false;
	for (i = 0; i < len; i++)
	{
		char		c = str[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
			return false;
	}
	return true;
}

/*
 * ql_cron_parse_uint
 *		Parse str[0..len) as a non-negative integer of at most 9 digits.
 *
 * Returns false if it is not one.
 */
static bool
ql_cron_parse_uint(const char *str, int len, int *value)
{
	int			i;
	int			v = 0;

	if (!ql_cron_all_digits(str, len) || len > 9)
		return false;
	for (i = 0; i < len; i++)
		v = v * 10 + (str[i] - '0');
	*value = v;
	return true;
}

/*
 * ql_cron_errdetail_allowed
 *		Report the values a field allows, as errdetail; for use in ereport.
 */
static int
ql_cron_errdetail_allowed(const QlCronFieldDef *def)
{
	if (def->names == ql_cron_month_names)
		return errdetail("Allowed values are 1 to 12 and the names jan to dec.");
	if (def->names == ql_cron_dow_names)
		return errdetail("Allowed values are 0 to 7 (0 and 7 are Sunday) and the names sun to sat.");
	return errdetail("Allowed values are %d to %d.", def->min, def->max);
}

/*
 * ql_cron_parse_value
 *		Parse str[0..len), a number or a name, as a value of a field.
 *
 * Returns false if str is not a valid value.
 */
static bool
ql_cron_parse_value(const char *str, int len, const QlCronFieldDef *def,
					int *value)
{
	int			i;

	if (ql_cron_all_digits(str, len))
	{
		if (!ql_cron_parse_uint(str, len, value))
			return false;
		return *value >= def->min && *value <= def->max;
	}
	if (def->names == NULL || len != 3)
		return false;
	for (i = 0; def->names[i] != NULL; i++)
	{
		if (pg_strncasecmp(str, def->names[i], 3) == 0)
		{
			*value = def->first_name_value + i;
			return true;
		}
	}
	return false;
}

/*
 * ql_cron_report_value
 *		Report an invalid value in a field at elevel.
 *
 * The offending text is the token if it looks like a single number or name
 * (so "61" or "foo" is named, with the values allowed), otherwise the whole
 * item ("1-2-3", "*-5", with the syntax of an item).
 */
static void
ql_cron_report_value(const char *schedule, const QlCronFieldDef *def,
					 const char *item, int itemlen,
					 const char *token, int toklen, int elevel)
{
	if (ql_cron_all_digits(token, toklen) || ql_cron_all_letters(token, toklen))
		ereport(elevel,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value \"%s\" in %s field of schedule \"%s\"",
						pnstrdup(token, toklen), def->name, schedule),
				 ql_cron_errdetail_allowed(def)));
	else
		ereport(elevel,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value \"%s\" in %s field of schedule \"%s\"",
						pnstrdup(item, itemlen), def->name, schedule),
				 errdetail("An item is \"*\", a value or a range \"a-b\", optionally followed by a step \"/n\".")));
}

/*
 * ql_cron_parse_item
 *		Parse one item of a field's list, item[0..itemlen), and set the bits
 *		of the values it matches in *bits.
 *
 * Returns false after reporting an error at elevel (below ERROR).
 */
static bool
ql_cron_parse_item(const char *schedule, const QlCronFieldDef *def,
				   const char *item, int itemlen, uint64 *bits, int elevel)
{
	const char *slash;
	const char *dash;
	int			baselen;
	int			lo;
	int			hi;
	int			step = 1;
	int			v;

	if (itemlen == 0)
	{
		ereport(elevel,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("empty item in %s field of schedule \"%s\"",
						def->name, schedule),
				 errdetail("Items of a list are separated by single commas.")));
		return false;
	}

	slash = memchr(item, '/', itemlen);
	baselen = slash ? (int) (slash - item) : itemlen;

	/* The step, if any */
	if (slash != NULL)
	{
		int			nvalues = def->last - def->min + 1;

		if (!ql_cron_parse_uint(slash + 1, itemlen - baselen - 1, &step) ||
			step < 1 || step > nvalues)
		{
			ereport(elevel,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid step \"%s\" in %s field of schedule \"%s\"",
							pnstrdup(item, itemlen), def->name, schedule),
					 errdetail("A step must be an integer between 1 and %d.",
							   nvalues)));
			return false;
		}
	}

	/* The values the step applies to */
	dash = memchr(item, '-', baselen);
	if (baselen == 1 && item[0] == '*')
	{
		lo = def->min;
		hi = def->last;
	}
	else if (dash != NULL)
	{
		int			lolen = (int) (dash - item);
		int			hilen = baselen - lolen - 1;

		if (!ql_cron_parse_value(item, lolen, def, &lo))
		{
			ql_cron_report_value(schedule, def, item, itemlen,
								 item, lolen, elevel);
			return false;
		}
		if (!ql_cron_parse_value(dash + 1, hilen, def, &hi))
		{
			ql_cron_report_value(schedule, def, item, itemlen,
								 dash + 1, hilen, elevel);
			return false;
		}
		/* "sun" ending a range that starts later is 7: "fri-sun" */
		if (def->names == ql_cron_dow_names && hi == 0 && lo > 0 &&
			!ql_cron_all_digits(dash + 1, hilen))
			hi = 7;
		if (lo > hi)
		{
			ereport(elevel,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid range \"%s\" in %s field of schedule \"%s\"",
							pnstrdup(item, itemlen), def->name, schedule),
					 errdetail("The start of a range must not be greater than its end.")));
			return false;
		}
	}
	else
	{
		if (!ql_cron_parse_value(item, baselen, def, &lo))
		{
			ql_cron_report_value(schedule, def, item, itemlen,
								 item, baselen, elevel);
			return false;
		}
		/* weekday 7 is Sunday; fold it now so that "7/2" means "0/2" */
		if (lo > def->last)
			lo = def->min;
		/* "5/10" means "5-<last>/10" */
		hi = (slash != NULL) ? def->last : lo;
	}

	for (v = lo; v <= hi; v += step)
	{
		/* only the day-of-week field has values above last: 7 is 0 */
		*bits |= UINT64CONST(1) << (v > def->last ? def->min : v);
	}
	return true;
}

/*
 * ql_cron_parse_field
 *		Parse one field, field[0..len), into a bitmap of matching values.
 *
 * Returns false after reporting an error at elevel (below ERROR).
 */
static bool
ql_cron_parse_field(const char *schedule, const QlCronFieldDef *def,
					const char *field, int len, uint64 *bits, int elevel)
{
	const char *item = field;
	const char *end = field + len;

	*bits = 0;
	for (;;)
	{
		const char *comma = memchr(item, ',', end - item);
		const char *item_end = comma ? comma : end;

		if (!ql_cron_parse_item(schedule, def, item, (int) (item_end - item),
								bits, elevel))
			return false;
		if (comma == NULL)
			break;
		item = comma + 1;
	}
	return true;
}

/*
 * ql_cron_parse
 *		Parse a schedule into *out.
 *
 * On invalid input, reports an error at elevel with
 * ERRCODE_INVALID_PARAMETER_VALUE, naming the field and the offending text.
 * With elevel ERROR or above this does not return; with a lower level (such
 * as WARNING or LOG, for a caller that must not fail) it returns false, and
 * *out is then undefined.  Returns true on success.  Also rejects a schedule
 * whose day-of-month and month fields leave no date at all, because it
 * could never fire.  Allocates a little in CurrentMemoryContext only when
 * reporting an error.
 */
bool
ql_cron_parse(const char *schedule, QlCronSchedule *out, int elevel)
{
	const char *tokens[QL_CRON_NFIELDS + 1];
	int			lens[QL_CRON_NFIELDS + 1];
	int			ntokens = 0;
	const char *p = schedule;
	uint64		bits[QL_CRON_NFIELDS];
	int			i;

	memset(out, 0, sizeof(*out));

	/* Split at white space; remember the first few tokens */
	for (;;)
	{
		const char *start;

		while (*p != '\0' && ql_cron_isspace(*p))
			p++;
		if (*p == '\0')
			break;
		start = p;
		while (*p != '\0' && !ql_cron_isspace(*p))
			p++;
		if (ntokens < (int) lengthof(tokens))
		{
			tokens[ntokens] = start;
			lens[ntokens] = (int) (p - start);
		}
		ntokens++;
	}

	/* A macro */
	if (ntokens >= 1 && tokens[0][0] == '@')
	{
		if (ntokens > 1)
		{
			ereport(elevel,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid schedule \"%s\"", schedule),
					 errdetail("A macro such as \"@daily\" must be the whole schedule.")));
			return false;
		}
		for (i = 0; i < (int) lengthof(ql_cron_macros); i++)
		{
			if (lens[0] == (int) strlen(ql_cron_macros[i].name) &&
				pg_strncasecmp(tokens[0], ql_cron_macros[i].name, lens[0]) == 0)
				return ql_cron_parse(ql_cron_macros[i].fields, out, elevel);
		}
		ereport(elevel,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unrecognized macro \"%s\" in schedule \"%s\"",
						pnstrdup(tokens[0], lens[0]), schedule),
				 errhint("The macros are @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly.")));
		return false;
	}

	/* An interval, "N seconds" */
	if (ntokens == 2 &&
		((lens[1] == 6 && pg_strncasecmp(tokens[1], "second", 6) == 0) ||
		 (lens[1] == 7 && pg_strncasecmp(tokens[1], "seconds", 7) == 0)))
	{
		int			seconds;

		if (!ql_cron_parse_uint(tokens[0], lens[0], &seconds) ||
			seconds < 1 || seconds > QL_CRON_MAX_INTERVAL_SECONDS)
		{
			ereport(elevel,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid number of seconds \"%s\" in schedule \"%s\"",
							pnstrdup(tokens[0], lens[0]), schedule),
					 errdetail("The number of seconds must be an integer between 1 and %d.",
							   QL_CRON_MAX_INTERVAL_SECONDS),
					 errhint("Use a five-field schedule for intervals of a minute or more.")));
			return false;
		}
		out->kind = QL_CRON_INTERVAL;
		out->interval_seconds = seconds;
		return true;
	}

	if (ntokens != QL_CRON_NFIELDS)
	{
		ereport(elevel,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid schedule \"%s\"", schedule),
				 errdetail_plural("A schedule has 5 fields (minute, hour, day of month, month, day of week), but %d field was found.",
								  "A schedule has 5 fields (minute, hour, day of month, month, day of week), but %d fields were found.",
								  ntokens, ntokens),
				 errhint("Write five fields, a macro such as \"@daily\", or an interval such as \"30 seconds\".")));
		return false;
	}

	for (i = 0; i < QL_CRON_NFIELDS; i++)
	{
		if (!ql_cron_parse_field(schedule, &ql_cron_fields[i],
								 tokens[i], lens[i], &bits[i], elevel))
			return false;
	}

	out->kind = QL_CRON_FIELDS;
	out->minutes = bits[QL_CRON_MINUTE];
	out->hours = (uint32) bits[QL_CRON_HOUR];
	out->days_of_month = (uint32) bits[QL_CRON_DOM];
	out->months = (uint16) bits[QL_CRON_MONTH];
	out->days_of_week = (uint8) bits[QL_CRON_DOW];
	out->hour_wildcard = (tokens[QL_CRON_HOUR][0] == '*');
	out->dom_restricted = (tokens[QL_CRON_DOM][0] != '*');
	out->dow_restricted = (tokens[QL_CRON_DOW][0] != '*');

	/*
	 * A restricted day of month with an unrestricted day of week must match
	 * both, so some listed month must have some listed day.  Every date
	 * falls on every weekday over the years, so this is the only way a
	 * schedule can never fire.  (An unrestricted day of month always has day
	 * 1; two restricted day fields match on every listed weekday.)
	 */
	if (out->dom_restricted && !out->dow_restricted)
	{
		bool		possible = false;
		int			m;

		for (m = 1; m <= 12; m++)
		{
			/* bits 1 to the last day of month m */
			uint32		days = (uint32) ((UINT64CONST(1) <<
										  (ql_cron_max_mday[m] + 1)) - 2);

			if ((out->months & (1 << m)) && (out->days_of_month & days))
				possible = true;
		}
		if (!possible)
		{
			ereport(elevel,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("schedule \"%s\" can never fire", schedule),
					 errdetail("None of the months in the month field has a day listed in the day-of-month field.")));
			return false;
		}
	}
	return true;
}

/*
 * ql_cron_find_timezone
 *		Look up a time zone by name, as "SET timezone" accepts it (an IANA
 *		name such as "Europe/Berlin", or a POSIX time zone specification).
 *
 * Reports an error at elevel with ERRCODE_INVALID_PARAMETER_VALUE if the
 * zone is not recognized, or uses leap seconds, which PostgreSQL does not
 * support; with elevel below ERROR it then returns NULL.  The result is
 * cached by PostgreSQL for the life of the process and must not be freed.
 */
pg_tz *
ql_cron_find_timezone(const char *tzname, int elevel)
{
	pg_tz	   *tz = NULL;

	if (tzname[0] != '\0')
		tz = pg_tzset(tzname);
	if (tz == NULL)
	{
		ereport(elevel,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time zone \"%s\" not recognized", tzname),
				 errhint("The view pg_timezone_names lists the time zones, such as \"Europe/Berlin\".")));
		return NULL;
	}
	if (!pg_tz_acceptable(tz))
	{
		ereport(elevel,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time zone \"%s\" appears to use leap seconds", tzname),
				 errdetail("PostgreSQL does not support leap seconds.")));
		return NULL;
	}
	return tz;
}

/*
 * ql_cron_offset_at
 *		The UTC offset (seconds east) in tz at instant t, and the first
 *		instant after t at which it may change (PG_INT64_MAX if never).
 *
 * Returns false if the time zone library cannot tell, which only happens for
 * instants far outside any real date.
 */
static bool
ql_cron_offset_at(pg_time_t t, pg_tz *tz, long *gmtoff, pg_time_t *seg_end)
{
	long		before_gmtoff;
	long		after_gmtoff;
	int			before_isdst;
	int			after_isdst;
	pg_time_t	boundary;
	int			res;

	res = pg_next_dst_boundary(&t, &before_gmtoff, &before_isdst,
							   &boundary, &after_gmtoff, &after_isdst, tz);
	if (res < 0)
		return false;
	*gmtoff = before_gmtoff;
	*seg_end = (res == 0) ? PG_INT64_MAX : boundary;
	return true;
}

/*
 * ql_cron_day_matches
 *		True if the day fields of sched match a day, by Vixie cron's rule.
 */
static inline bool
ql_cron_day_matches(const QlCronSchedule *sched, int mday, int wday)
{
	bool		dom = (sched->days_of_month & (UINT64CONST(1) << mday)) != 0;
	bool		dow = (sched->days_of_week & (1 << wday)) != 0;

	if (sched->dom_restricted && sched->dow_restricted)
		return dom || dow;
	return dom && dow;
}

/*
 * ql_cron_next_local
 *		Find the first local time at or after "from" (rounded up to a whole
 *		minute) and before "limit" that the fields of sched match.
 *
 * Both bounds are local seconds.  Walks day by day and skips months that do
 * not match, so the cost is at most one step per day up to the limit.
 * Returns false if there is no such time.
 */
static bool
ql_cron_next_local(const QlCronSchedule *sched, int64 from, int64 limit,
				   int64 *result)
{
	int64		day;
	int			start_minute;

	from = ql_cron_floor_div(from + 59, 60) * 60;
	day = ql_cron_floor_div(from, SECS_PER_DAY);
	start_minute = (int) ((from - day * SECS_PER_DAY) / 60);

	/* j2date works from Julian day 0, the first day of the timestamp range */
	if (day + UNIX_EPOCH_JDATE < 0)
	{
		day = -UNIX_EPOCH_JDATE;
		start_minute = 0;
	}

	while (day * SECS_PER_DAY < limit)
	{
		int			jd = (int) (day + UNIX_EPOCH_JDATE);
		int			year;
		int			month;
		int			mday;
		int			hour;

		j2date(jd, &year, &month, &mday);
		if ((sched->months & (1 << month)) == 0)
		{
			/* skip to the first day of the next month */
			if (month == 12)
			{
				year++;
				month = 1;
			}
			else
				month++;
			day = date2j(year, month, 1) - UNIX_EPOCH_JDATE;
			start_minute = 0;
			continue;
		}

		if (ql_cron_day_matches(sched, mday, j2day(jd)))
		{
			for (hour = start_minute / 60; hour < 24; hour++)
			{
				int			minute;

				if ((sched->hours & (1 << hour)) == 0)
					continue;
				minute = (hour == start_minute / 60) ? start_minute % 60 : 0;
				for (; minute < 60; minute++)
				{
					if (sched->minutes & (UINT64CONST(1) << minute))
					{
						*result = day * SECS_PER_DAY + hour * SECS_PER_HOUR +
							minute * SECS_PER_MINUTE;
						return *result < limit;
					}
				}
			}
		}
		day++;
		start_minute = 0;
	}
	return false;
}

/*
 * ql_cron_local_to_instant
 *		The first instant whose local time in tz is at or after "local".
 *
 * That is the instant showing "local" for an ordinary local time; the first
 * of the two for a local time repeated when clocks go back; and for a local
 * time skipped when clocks go forward, the instant of the jump, the first
 * valid instant after the gap.  Walks the zone's offset periods from two
 * days before (UTC offsets are well under a day, so local time there is
 * still before "local").  Returns false if the zone library cannot tell.
 */
static bool
ql_cron_local_to_instant(int64 local, pg_tz *tz, pg_time_t *result)
{
	pg_time_t	t = local - 2 * SECS_PER_DAY;
	int			i;

	/* bounded: only a handful of offset changes fit in four days */
	for (i = 0; i < 100; i++)
	{
		long		gmtoff;
		pg_time_t	seg_end;
		pg_time_t	candidate;

		if (!ql_cron_offset_at(t, tz, &gmtoff, &seg_end))
			return false;

		/* local time rises with t within [t, seg_end) */
		candidate = Max(t, local - gmtoff);
		if (candidate < seg_end)
		{
			*result = candidate;
			return true;
		}
		t = seg_end;
	}
	return false;
}

/*
 * ql_cron_next_fixed
 *		The first tick after instant "after" of a five-field schedule whose
 *		hour field is fixed: each matching local time fires once, at the first
 *		instant whose local time reaches it.
 *
 * after_gmtoff is tz's offset at "after"; limit bounds the local times
 * searched.  A matching local time after after's own local time may still
 * map to an instant not after "after" (a repeated hour already fired, or
 * several skipped times sharing one instant): those are passed over, a
 * bounded number of times.  Returns false if there is no tick.
 */
static bool
ql_cron_next_fixed(const QlCronSchedule *sched, pg_tz *tz, pg_time_t after,
				   long after_gmtoff, int64 limit, pg_time_t *tick)
{
	int64		from = ql_cron_floor_div(after + after_gmtoff, 60) * 60 + 60;

	for (;;)
	{
		int64		local;
		pg_time_t	t;

		if (!ql_cron_next_local(sched, from, limit, &local))
			return false;
		if (!ql_cron_local_to_instant(local, tz, &t))
			return false;
		if (t > after)
		{
			*tick = t;
			return true;
		}
		from = local + 60;
	}
}

/*
 * ql_cron_next_wildcard
 *		The first tick after instant "after" of a five-field schedule whose
 *		hour field starts with "*": the first real instant whose local time
 *		matches.
 *
 * Walks the periods of constant UTC offset of tz; within one, local time
 * rises with real time, so the first matching local time in it is the
 * answer.  A repeated hour is thus seen twice and a skipped one never.
 * limit bounds the local times searched.  Returns false if there is no tick.
 */
static bool
ql_cron_next_wildcard(const QlCronSchedule *sched, pg_tz *tz,
					  pg_time_t after, int64 limit, pg_time_t *tick)
{
	pg_time_t	t = after + 1;

	for (;;)
	{
		long		gmtoff;
		pg_time_t	seg_end;
		int64		local_end;
		int64		local;

		if (!ql_cron_offset_at(t, tz, &gmtoff, &seg_end))
			return false;
		if (seg_end == PG_INT64_MAX || seg_end + gmtoff >= limit)
			local_end = limit;
		else
			local_end = seg_end + gmtoff;

		if (ql_cron_next_local(sched, t + gmtoff, local_end, &local))
		{
			*tick = local - gmtoff;
			return true;
		}
		if (local_end >= limit)
			return false;
		t = seg_end;
	}
}

/*
 * ql_cron_next_interval
 *		The first tick after "after" of an "N seconds" schedule: the smallest
 *		anchor + k * N seconds, k an integer, greater than "after".
 *
 * Returns DT_NOEND if that is outside the timestamp range.
 */
static TimestampTz
ql_cron_next_interval(int seconds, TimestampTz after, TimestampTz anchor)
{
	int64		step = seconds * USECS_PER_SEC;
	int64		diff;
	int64		result;

	if (TIMESTAMP_NOT_FINITE(anchor) ||
		pg_sub_s64_overflow(after, anchor, &diff) ||
		pg_mul_s64_overflow(ql_cron_floor_div(diff, step) + 1, step, &result) ||
		pg_add_s64_overflow(anchor, result, &result) ||
		!IS_VALID_TIMESTAMP(result))
		return DT_NOEND;
	return result;
}

/*
 * ql_cron_next_tz
 *		The first tick of sched strictly after "after", five-field schedules
 *		being evaluated in time zone tz.
 *
 * anchor matters only to an "N seconds" schedule, whose ticks are
 * anchor + k * N seconds (pass the schedule's creation time, or 0 to align
 * ticks on multiples of N seconds since 2000-01-01 00:00:00 UTC).
 *
 * Returns DT_NOEND (TIMESTAMP_IS_NOEND) if there is no tick: if "after" is
 * infinite, or if the schedule does not fire within QL_CRON_HORIZON_YEARS
 * years, which for a schedule accepted by ql_cron_parse only happens near the
 * end of the timestamp range.  Does not raise errors; takes time roughly
 * proportional to the number of days until the tick (bounded by the horizon).
 */
TimestampTz
ql_cron_next_tz(const QlCronSchedule *sched, TimestampTz after, pg_tz *tz,
				TimestampTz anchor)
{
	pg_time_t	after_secs;
	long		after_gmtoff;
	pg_time_t	seg_end;
	int64		limit;
	int64		range_end;
	pg_time_t	tick;
	bool		found;

	if (TIMESTAMP_NOT_FINITE(after))
		return DT_NOEND;

	if (sched->kind == QL_CRON_INTERVAL)
		return ql_cron_next_interval(sched->interval_seconds, after, anchor);

	/* a tick, a whole second, is after "after" iff it is after this */
	after_secs = ql_cron_floor_div(after, USECS_PER_SEC) + QL_CRON_EPOCH_DIFF;
	if (!ql_cron_offset_at(after_secs, tz, &after_gmtoff, &seg_end))
		return DT_NOEND;

	/* search the horizon, and nothing far past the timestamp range */
	limit = after_secs + after_gmtoff +
		(int64) QL_CRON_HORIZON_YEARS * 366 * SECS_PER_DAY;
	range_end = END_TIMESTAMP / USECS_PER_SEC + QL_CRON_EPOCH_DIFF +
		2 * SECS_PER_DAY;
	if (limit > range_end)
		limit = range_end;

	if (sched->hour_wildcard)
		found = ql_cron_next_wildcard(sched, tz, after_secs, limit, &tick);
	else
		found = ql_cron_next_fixed(sched, tz, after_secs, after_gmtoff,
								   limit, &tick);

	if (!found ||
		tick - QL_CRON_EPOCH_DIFF >= END_TIMESTAMP / USECS_PER_SEC)
		return DT_NOEND;
	return (tick - QL_CRON_EPOCH_DIFF) * USECS_PER_SEC;
}

/*
 * ql_cron_next
 *		As ql_cron_next_tz, with the time zone given by name.
 *
 * Raises ERROR if the time zone is not recognized (see
 * ql_cron_find_timezone).
 */
TimestampTz
ql_cron_next(const QlCronSchedule *sched, TimestampTz after,
			 const char *tzname, TimestampTz anchor)
{
	pg_tz	   *tz = ql_cron_find_timezone(tzname, ERROR);

	return ql_cron_next_tz(sched, after, tz, anchor);
}

/*
 * qlater_cron_next(schedule text, after timestamptz, timezone text)
 *		SQL-callable: the first tick of a schedule strictly after "after",
 *		evaluated in the given time zone.
 *
 * "N seconds" schedules tick on multiples of N seconds since 2000-01-01
 * 00:00:00 UTC.  Returns NULL if there is no tick within
 * QL_CRON_HORIZON_YEARS years.  Raises an error for an invalid schedule, an
 * unrecognized time zone or an infinite "after".
 */
Datum
qlater_cron_next(PG_FUNCTION_ARGS)
{
	char	   *schedule = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz after = PG_GETARG_TIMESTAMPTZ(1);
	char	   *tzname = text_to_cstring(PG_GETARG_TEXT_PP(2));
	QlCronSchedule sched;
	pg_tz	   *tz;
	TimestampTz next;

	(void) ql_cron_parse(schedule, &sched, ERROR);
	tz = ql_cron_find_timezone(tzname, ERROR);
	if (TIMESTAMP_NOT_FINITE(after))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("cannot compute the next tick after an infinite timestamp")));

	next = ql_cron_next_tz(&sched, after, tz, 0);
	if (TIMESTAMP_IS_NOEND(next))
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(next);
}

/*
 * qlater_cron_check(schedule text, timezone text)
 *		SQL-callable: raise the error that makes a schedule or a time zone
 *		invalid, or return nothing if both are valid.
 */
Datum
qlater_cron_check(PG_FUNCTION_ARGS)
{
	char	   *schedule = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *tzname = text_to_cstring(PG_GETARG_TEXT_PP(1));
	QlCronSchedule sched;

	(void) ql_cron_parse(schedule, &sched, ERROR);
	(void) ql_cron_find_timezone(tzname, ERROR);
	PG_RETURN_VOID();
}
