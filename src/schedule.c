/*-------------------------------------------------------------------------
 *
 * schedule.c
 *		Recurring jobs: qlater_schedule and qlater_unschedule, and the
 *		firing of due ticks by the workers.
 *
 * A schedule is a row of qlater_schedule owned by a role; each tick of it
 * enqueues one job of its handler, run as that role.  The row's next_tick
 * is the next tick to fire.  Every worker of a database may act as its
 * scheduler: when a tick is due, a worker locks the due rows (FOR UPDATE
 * SKIP LOCKED), enqueues one job per row and moves next_tick past now, all
 * in one transaction.  A second worker either skips a locked row or, once
 * the first has committed, finds it no longer due; so each tick is
 * enqueued exactly once, across restarts, crashes and concurrent workers.
 * Ticks missed while the server was down are not replayed: the latest one
 * is enqueued once, or not at all with catch_up = false if it is later than
 * QL_SCHEDULE_GRACE_MS.  A tick that is late only because every worker was
 * busy is enqueued all the same.
 *
 * Each worker keeps in process-local memory the time of the earliest
 * next_tick it saw, and looks at the table again only when that time has
 * come or when a schedule changed (qlater_schedule and qlater_unschedule
 * send a relcache invalidation of the table).  No shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "api.h"
#include "args.h"
#include "catalog.h"
#include "consumer.h"
#include "cron.h"
#include "handlers.h"
#include "queue.h"
#include "schedule.h"
#include "xact.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(qlater_schedule);
PG_FUNCTION_INFO_V1(qlater_unschedule);

/* longest schedule name */
#define QL_MAX_SCHEDULE_NAME	200

/* longest time a scheduler trusts its cached next tick */
#define QL_SCHEDULE_MAX_WAIT_MS	(60 * 1000)

/* most ticks of one schedule enqueued by one pass */
#define QL_SCHEDULE_MAX_TICKS	1000

/*
 * A tick missed while the server was down is enqueued with catch_up = false
 * only if it is at most this late.
 */
#define QL_SCHEDULE_GRACE_MS	5000

/*
 * Shortest wait of a scheduler whose due tick another worker is firing (or
 * a long transaction holds locked).
 */
#define QL_SCHEDULE_RETRY_MS	100

/* a due schedule, as read by the scheduler */
typedef struct QlDueSchedule
{
	int64		id;
	char	   *name;
	char	   *owner;
	char	   *schedule;
	char	   *timezone;
	char	   *handler;		/* signature */
	Jsonb	   *args;
	char	   *queue;			/* NULL: the handler's */
	bool		has_priority;
	int32		priority;
	bool		catch_up;
	TimestampTz next_tick;
	TimestampTz created_at;		/* anchor of "N seconds" schedules */
} QlDueSchedule;

/* the scheduler's cache: when to look at qlater_schedule again */
static TimestampTz sched_next_check = 0;
static TimestampTz sched_next_tick = DT_NOEND;	/* of any active schedule */
static bool sched_stale = true;
static Oid	sched_relid = InvalidOid;
static bool sched_callback_registered = false;

/* a schedule changed in this transaction: wake the workers once it commits */
static bool sched_wake_pending = false;
static bool sched_release_cb_registered = false;

/* ql_schedule_invalidate: relcache callback; a schedule may have changed */
static void
ql_schedule_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == sched_relid)
		sched_stale = true;
}

/* ql_schedule_relid: the table of schedules; ERROR if missing */
static Oid
ql_schedule_relid(const QlCatalog *c)
{
	Oid			relid = get_relname_relid("qlater_schedule", c->schema_oid);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"qlater_schedule\" of extension \"qlater\" is missing"),
				 errhint("Reinstall the extension with DROP EXTENSION and CREATE EXTENSION.")));
	return relid;
}

/* ql_sched_arg_not_null: raise an error if argument n of the call is NULL */
static void
ql_sched_arg_not_null(FunctionCallInfo fcinfo, int n, const char *name)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

/* ql_check_schedule_name: raise an error for an empty or overlong name */
static void
ql_check_schedule_name(const char *name)
{
	const char *p;

	if (name[0] == '\0' || strlen(name) > QL_MAX_SCHEDULE_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid schedule name \"%s\"", name),
				 errhint("A schedule name has 1 to %d bytes.", QL_MAX_SCHEDULE_NAME)));
	for (p = name; *p; p++)
	{
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid schedule name \"%s\"", name),
					 errdetail("Schedule names cannot contain control characters.")));
	}
}

/*
 * ql_schedule_release: resource release callback.  At the end of a
 * committed top-level transaction that changed a schedule, after its
 * invalidation messages have been sent (AtEOXact_Inval runs between the
 * BEFORE_LOCKS and LOCKS phases, but after the transaction callbacks), set
 * the latch of every idle worker of this database: woken earlier, one could
 * miss the invalidation and sleep on its old next tick.  Every one, since
 * the first may take a long job before the tick.  A busy worker sees the
 * invalidation at its next job.
 */
static void
ql_schedule_release(ResourceReleasePhase phase, bool isCommit,
					bool isTopLevel, void *arg)
{
	int			i;
	bool		woken = false;

	if (phase != RESOURCE_RELEASE_AFTER_LOCKS || !isTopLevel || !sched_wake_pending)
		return;
	sched_wake_pending = false;
	if (!isCommit || ql_shared == NULL)
		return;
	for (i = 0; i < ql_shared->nslots; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];
		Latch	   *latch = slot->latch;

		if (slot->dboid == MyDatabaseId && latch != NULL &&
			pg_atomic_read_u32(&slot->idle) != 0)
		{
			SetLatch(latch);
			woken = true;
		}
	}
	/* no idle worker here: the launcher sends one if none will come */
	if (!woken)
		ql_database_due(ql_my_database(), GetCurrentTimestamp());
}

/*
 * ql_schedule_wake_pending: whether this transaction changed a schedule,
 * and wakes the workers when it commits (which COMMIT PREPARED cannot do:
 * qlater.c refuses PREPARE TRANSACTION then)
 */
bool
ql_schedule_wake_pending(void)
{
	return sched_wake_pending;
}

/*
 * ql_schedules_changed: make every worker of this database look at the
 * schedules again once the current transaction commits.
 */
static void
ql_schedules_changed(Oid relid)
{
	CacheInvalidateRelcacheByRelid(relid);
	if (!sched_release_cb_registered)
	{
		RegisterResourceReleaseCallback(ql_schedule_release, NULL);
		sched_release_cb_registered = true;
	}
	sched_wake_pending = true;
}

/*
 * qlater_schedule(name text, schedule text, handler text, args jsonb,
 *				   queue text, priority int, timezone text,
 *				   catch_up boolean) returns bigint
 *
 * Creates or replaces the current role's schedule of that name and returns
 * its id.  Everything is checked now as the caller, as qlater_enqueue
 * checks a job: the schedule and time zone, the handler (resolved under
 * the caller's search_path among registered handlers), EXECUTE on it, and
 * the arguments.  A replaced schedule keeps its last tick and counts its
 * "N seconds" ticks from now.
 */
Datum
qlater_schedule(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *name;
	char	   *schedule;
	char	   *handler;
	char	   *tzname;
	char	   *queue = NULL;
	Jsonb	   *args;
	QlCronSchedule sched;
	pg_tz	   *tz;
	Oid			proc;
	QlHandler  *h;
	QlProcInfo *pi;
	AclResult	aclresult;
	TimestampTz now;
	TimestampTz anchor;
	TimestampTz next;
	Oid			relid;
	Datum		values[11];
	char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[11] = {TEXTOID, NAMEOID, TEXTOID, TEXTOID, TEXTOID,
		JSONBOID, TEXTOID, INT4OID, BOOLOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	QlUserSave	save;
	bool		isnull;
	int64		id;

	ql_sched_arg_not_null(fcinfo, 0, "name");
	ql_sched_arg_not_null(fcinfo, 1, "schedule");
	ql_sched_arg_not_null(fcinfo, 2, "handler");
	ql_sched_arg_not_null(fcinfo, 3, "args");
	/* the schedule belongs to the role: it is not dropped meanwhile */
	ql_lock_job_role();
	ql_sched_arg_not_null(fcinfo, 6, "timezone");
	ql_sched_arg_not_null(fcinfo, 7, "catch_up");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	schedule = text_to_cstring(PG_GETARG_TEXT_PP(1));
	handler = text_to_cstring(PG_GETARG_TEXT_PP(2));
	args = PG_GETARG_JSONB_P(3);
	tzname = text_to_cstring(PG_GETARG_TEXT_PP(6));

	ql_check_schedule_name(name);
	(void) ql_cron_parse(schedule, &sched, ERROR);
	tz = ql_cron_find_timezone(tzname, ERROR);
	if (!PG_ARGISNULL(4))
	{
		queue = text_to_cstring(PG_GETARG_TEXT_PP(4));
		ql_check_queue_name(queue);
		values[6] = CStringGetTextDatum(queue);
	}
	else
		nulls[6] = 'n';
	if (!PG_ARGISNULL(5))
	{
		ql_check_priority(PG_GETARG_INT32(5));
		values[7] = Int32GetDatum(PG_GETARG_INT32(5));
	}
	else
		nulls[7] = 'n';

	/* the handler and its arguments, checked as qlater_enqueue does */
	proc = ql_resolve_handler(handler, &h);
	if (queue == NULL)
		queue = pstrdup(h->queue);
	if (ql_queue_is_external(c, queue))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot schedule jobs in external queue \"%s\"", queue),
				 errhint("Schedules enqueue jobs for the in-server workers: pass a queue that is not external.")));
	aclresult = pg_proc_aclcheck(proc, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult,
					   get_func_prokind(proc) == PROKIND_PROCEDURE ? OBJECT_PROCEDURE : OBJECT_FUNCTION,
					   get_func_name(proc));
	pi = ql_procinfo(proc);
	args = ql_args_normalize(pi, args);

	/* "N seconds" schedules tick at whole seconds from now */
	now = GetCurrentTransactionStartTimestamp();
	anchor = now - now % USECS_PER_SEC;
	next = ql_cron_next_tz(&sched, now, tz, anchor);

	values[0] = CStringGetTextDatum(name);
	values[1] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	values[2] = CStringGetTextDatum(schedule);
	values[3] = CStringGetTextDatum(tzname);
	values[4] = CStringGetTextDatum(pi->signature);
	values[5] = JsonbPGetDatum(args);
	values[8] = BoolGetDatum(PG_GETARG_BOOL(7));
	values[9] = TimestampTzGetDatum(anchor);
	values[10] = TimestampTzGetDatum(next);
	if (TIMESTAMP_NOT_FINITE(next))
		nulls[10] = 'n';

	relid = ql_schedule_relid(c);
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(psprintf("INSERT INTO %s.qlater_schedule AS s "
									   "(name, owner, schedule, timezone, handler, args, "
									   "queue, priority, catch_up, created_at, next_tick) "
									   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
									   "ON CONFLICT (owner, name) DO UPDATE SET "
									   "schedule = excluded.schedule, timezone = excluded.timezone, "
									   "handler = excluded.handler, args = excluded.args, "
									   "queue = excluded.queue, priority = excluded.priority, "
									   "catch_up = excluded.catch_up, created_at = excluded.created_at, "
									   "next_tick = excluded.next_tick, active = true "
									   "RETURNING id",
									   c->schema_quoted),
							  11, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not write schedule");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	ql_restore_user(&save);

	ql_schedules_changed(relid);
	PG_RETURN_INT64(id);
}

/*
 * qlater_unschedule(name text, owner name) returns boolean
 *
 * Removes a schedule of the current role, or with owner given of that role
 * (superusers and qlater_admin only, unless it is the current role).
 * Returns whether there was one.  Jobs already enqueued stay.
 */
Datum
qlater_unschedule(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *name;
	char	   *me = GetUserNameFromId(GetUserId(), false);
	char	   *owner = me;
	Oid			types[2] = {TEXTOID, NAMEOID};
	Datum		values[2];
	Oid			relid;
	QlUserSave	save;
	bool		found;

	ql_sched_arg_not_null(fcinfo, 0, "name");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!PG_ARGISNULL(1))
	{
		owner = pstrdup(NameStr(*PG_GETARG_NAME(1)));
		if (strcmp(owner, me) != 0 && !ql_is_admin())
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for schedules of role \"%s\"", owner),
					 errhint("Only superusers and members of qlater_admin may remove another role's schedules.")));
	}
	values[0] = CStringGetTextDatum(name);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(owner));

	relid = ql_schedule_relid(c);
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(psprintf("DELETE FROM %s.qlater_schedule "
									   "WHERE name = $1 AND owner = $2",
									   c->schema_quoted),
							  2, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not remove schedule");
	found = SPI_processed > 0;
	SPI_finish();
	ql_restore_user(&save);
	if (found)
		ql_schedules_changed(relid);
	PG_RETURN_BOOL(found);
}

/*
 * ql_latest_tick: the last tick at or before now, given "first", a tick at
 * or before now.  Looks back from now through windows of growing size, so
 * a long downtime costs no walk through every missed tick.
 */
static TimestampTz
ql_latest_tick(const QlCronSchedule *s, pg_tz *tz, TimestampTz anchor,
			   TimestampTz first, TimestampTz now)
{
	TimestampTz window = USECS_PER_MINUTE;
	TimestampTz t;
	TimestampTz n;

	if (s->kind == QL_CRON_INTERVAL)
	{
		int64		step = (int64) s->interval_seconds * USECS_PER_SEC;

		if (now < anchor)
			return first;
		t = anchor + ((now - anchor) / step) * step;
		return Max(t, first);
	}

	for (;;)
	{
		TimestampTz from = now - window;

		if (from <= first)
		{
			t = first;
			break;
		}
		/* the first tick at or after from */
		t = ql_cron_next_tz(s, from - 1, tz, anchor);
		if (t <= now)
			break;
		window *= 2;
	}
	for (;;)
	{
		n = ql_cron_next_tz(s, t, tz, anchor);
		if (n > now)
			break;
		t = n;
	}
	return t;
}

/*
 * ql_enqueue_tick: enqueue the job of a tick, as the schedule's owner.
 * Returns false, after a warning, if the owner or the handler is gone or
 * the queue became external (the schedule is then deactivated).  Caller
 * acts as the tables' owner.
 */
static bool
ql_enqueue_tick(const QlCatalog *c, const QlDueSchedule *d, TimestampTz tick)
{
	Oid			role = get_role_oid(d->owner, true);
	Oid			proc;
	QlHandler  *h;
	Oid			saved_userid;
	int			saved_sec_context;
	char	   *queue;
	int32		priority;
	int32		max_attempts;
	bool		has_timeout;
	Interval	timeout;

	if (!OidIsValid(role))
	{
		ereport(WARNING,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("qlater schedule \"%s\" is deactivated", d->name),
				 errdetail("Its role \"%s\" does not exist.", d->owner)));
		return false;
	}
	proc = ql_signature_oid(d->handler);
	h = OidIsValid(proc) ? ql_handler_lookup(proc) : NULL;
	if (h == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("qlater schedule \"%s\" of role \"%s\" is deactivated",
						d->name, d->owner),
				 errdetail("Function %s is not a registered job handler.", d->handler),
				 errhint("Register the handler, then call qlater_schedule again.")));
		return false;
	}
	/* copy what we need of h: the next lookup may reload the registry */
	queue = d->queue ? d->queue : pstrdup(h->queue);
	priority = d->has_priority ? d->priority : h->priority;
	max_attempts = h->max_attempts;
	has_timeout = h->has_timeout;
	timeout = h->timeout;
	if (ql_queue_is_external(c, queue))
	{
		ereport(WARNING,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("qlater schedule \"%s\" of role \"%s\" is deactivated",
						d->name, d->owner),
				 errdetail("Its queue \"%s\" is now external, served by applications.", queue),
				 errhint("Call qlater_schedule again with a queue that is not external.")));
		return false;
	}

	/* the job's role is the current user: the schedule's owner */
	GetUserIdAndSecContext(&saved_userid, &saved_sec_context);
	SetUserIdAndSecContext(role, saved_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	(void) ql_insert_job(c, queue, d->handler, d->args, priority, tick,
						 max_attempts, has_timeout ? &timeout : NULL, d->id);
	SetUserIdAndSecContext(saved_userid, saved_sec_context);
	return true;
}

/*
 * ql_fire_one: fire a due schedule whose row the caller has locked, and
 * record its last fired tick and its next tick.
 *
 * Due ticks before this process started may have fallen while the server
 * was down (or was a standby): of those only the latest is enqueued, and
 * with catch-up off only if it is at most QL_SCHEDULE_GRACE_MS late.  Every
 * later due tick fell while this worker ran, and is late only because every
 * worker of the database was busy: each is enqueued, up to
 * QL_SCHEDULE_MAX_TICKS (the rest at the next pass).  An error rolls back
 * this schedule's jobs, after a warning, and skips its due ticks.  Caller is
 * connected to SPI and acts as the tables' owner.
 */
static void
ql_fire_one(const QlCatalog *c, const QlDueSchedule *d, TimestampTz now)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile TimestampTz last = 0;
	volatile TimestampTz next = DT_NOEND;
	volatile bool fired = false;
	volatile bool active = true;
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	Oid			types[5] = {INT8OID, BOOLOID, TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID};

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		QlCronSchedule s;
		pg_tz	   *tz;
		TimestampTz t = d->next_tick;
		int			n;

		(void) ql_cron_parse(d->schedule, &s, ERROR);
		tz = ql_cron_find_timezone(d->timezone, ERROR);
		/* on error, skip every due tick */
		next = ql_cron_next_tz(&s, now, tz, d->created_at);

		/* of the ticks before this process started, the latest or none */
		if (t < MyStartTimestamp)
		{
			t = ql_latest_tick(&s, tz, d->created_at, t,
							   Min(now, MyStartTimestamp - 1));
			if (!d->catch_up &&
				now - t > (int64) QL_SCHEDULE_GRACE_MS * 1000)
				t = ql_cron_next_tz(&s, t, tz, d->created_at);
		}
		for (n = 0; t <= now && n < QL_SCHEDULE_MAX_TICKS; n++)
		{
			if (!ql_enqueue_tick(c, d, t))
			{
				active = false;
				break;
			}
			fired = true;
			last = t;
			t = ql_cron_next_tz(&s, t, tz, d->created_at);
		}
		if (active)
			next = t;
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("could not fire qlater schedule \"%s\" of role \"%s\": %s",
						d->name, d->owner, edata->message)));
		FreeErrorData(edata);
		fired = false;
		/* without a next tick the schedule would be retried at once */
		if (next == DT_NOEND)
			active = false;
	}
	PG_END_TRY();

	values[0] = Int64GetDatum(d->id);
	values[1] = BoolGetDatum(fired);
	values[2] = TimestampTzGetDatum(last);
	values[3] = TimestampTzGetDatum(next);
	if (TIMESTAMP_NOT_FINITE(next))
		nulls[3] = 'n';
	values[4] = BoolGetDatum(active);
	if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_schedule SET "
									   "last_tick = CASE WHEN $2 THEN $3 ELSE last_tick END, "
									   "next_tick = $4, active = $5 WHERE id = $1",
									   c->schema_quoted),
							  5, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record a tick of a schedule");
}

/*
 * ql_schedule_next_tick: the next tick of this database's schedules as of
 * the last ql_schedule_fire_due (which reads them again after a change),
 * DT_NOEND if none
 */
TimestampTz
ql_schedule_next_tick(void)
{
	return sched_next_tick;
}

/* ql_schedule_lower_sleep: shorten *sleep_ms to the next check */
static void
ql_schedule_lower_sleep(long *sleep_ms, TimestampTz now)
{
	int64		wait;

	/* round up: waking early only costs another look */
	wait = (sched_next_check - now + 999) / 1000;
	if (wait < 0)
		wait = 0;
	if (wait < *sleep_ms)
		*sleep_ms = (long) wait;
}

/*
 * ql_schedule_fire_due: enqueue the jobs of the due ticks of this
 * database's schedules, and shorten *sleep_ms to the time until the next
 * tick.  Called by a worker between jobs and when idle, outside any
 * transaction; costs a clock read unless a tick is due or a schedule
 * changed.  Runs its own transaction.
 */
void
ql_schedule_fire_due(long *sleep_ms)
{
	TimestampTz now = GetCurrentTimestamp();
	const QlCatalog *c;
	QlUserSave	save;
	QlDueSchedule *due;
	uint64		ndue;
	uint64		i;
	Oid			types[1] = {TIMESTAMPTZOID};
	Datum		values[1];
	bool		isnull;
	Datum		d;

	if (!sched_stale && now < sched_next_check)
	{
		ql_schedule_lower_sleep(sleep_ms, now);
		return;
	}
	/* schedules fire only on a primary */
	if (RecoveryInProgress())
	{
		sched_next_tick = DT_NOEND;
		sched_next_check = now + QL_SCHEDULE_MAX_WAIT_MS * INT64CONST(1000);
		return;
	}

	/*
	 * Read committed whatever the database's default: a due row that
	 * another worker fired after our snapshot is then read again and found
	 * not due, rather than failing the pass with a serialization error.
	 */
	ql_xact_begin_at(XACT_READ_COMMITTED);
	pgstat_report_activity(STATE_RUNNING, "qlater: firing due schedules");
	if (!sched_callback_registered)
	{
		CacheRegisterRelcacheCallback(ql_schedule_invalidate, (Datum) 0);
		sched_callback_registered = true;
	}
	/* from here on, a change of a schedule makes us look again */
	sched_stale = false;
	c = ql_catalog(true);
	/* none in a database still at an older version (worker.c) */
	sched_relid = c && c->current ? get_relname_relid("qlater_schedule", c->schema_oid) : InvalidOid;
	if (!OidIsValid(sched_relid))
	{
		ql_xact_commit();
		pgstat_report_activity(STATE_IDLE, NULL);
		sched_next_tick = DT_NOEND;
		sched_next_check = now + QL_SCHEDULE_MAX_WAIT_MS * INT64CONST(1000);
		return;
	}

	ql_become_owner(c, &save);

	now = GetCurrentTimestamp();
	values[0] = TimestampTzGetDatum(now);
	if (SPI_execute_with_args(psprintf("SELECT id, name, owner, schedule, timezone, handler, "
									   "args, queue, priority, catch_up, next_tick, created_at "
									   "FROM %s.qlater_schedule "
									   "WHERE active AND next_tick <= $1 "
									   "ORDER BY next_tick FOR UPDATE SKIP LOCKED",
									   c->schema_quoted),
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for due schedules");
	ndue = SPI_processed;
	due = ndue > 0 ? palloc0_array(QlDueSchedule, ndue) : NULL;
	for (i = 0; i < ndue; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		QlDueSchedule *s = &due[i];

		s->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		s->name = SPI_getvalue(tup, desc, 2);
		s->owner = SPI_getvalue(tup, desc, 3);
		s->schedule = SPI_getvalue(tup, desc, 4);
		s->timezone = SPI_getvalue(tup, desc, 5);
		s->handler = SPI_getvalue(tup, desc, 6);
		s->args = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 7, &isnull));
		s->queue = SPI_getvalue(tup, desc, 8);
		d = SPI_getbinval(tup, desc, 9, &isnull);
		s->has_priority = !isnull;
		s->priority = isnull ? 0 : DatumGetInt32(d);
		s->catch_up = DatumGetBool(SPI_getbinval(tup, desc, 10, &isnull));
		s->next_tick = DatumGetTimestampTz(SPI_getbinval(tup, desc, 11, &isnull));
		s->created_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 12, &isnull));
	}
	for (i = 0; i < ndue; i++)
		ql_fire_one(c, &due[i], now);

	/* the next tick of any schedule, ours as just moved included */
	if (SPI_execute(psprintf("SELECT min(next_tick) FROM %s.qlater_schedule WHERE active",
							 c->schema_quoted), false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for the next tick");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	now = GetCurrentTimestamp();
	if (isnull)
	{
		sched_next_tick = DT_NOEND;
		sched_next_check = now + QL_SCHEDULE_MAX_WAIT_MS * INT64CONST(1000);
	}
	else
	{
		TimestampTz next = DatumGetTimestampTz(d);

		/*
		 * A due row we skipped is being fired by another worker, or has
		 * more late ticks than one pass enqueues: look again soon.
		 */
		if (next <= now)
			next = now + QL_SCHEDULE_RETRY_MS * INT64CONST(1000);
		sched_next_tick = next;
		sched_next_check = Min(next, now + QL_SCHEDULE_MAX_WAIT_MS * INT64CONST(1000));
	}

	ql_restore_user(&save);
	ql_xact_commit();
	pgstat_report_activity(STATE_IDLE, NULL);
	ql_schedule_lower_sleep(sleep_ms, GetCurrentTimestamp());
}
