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
 * A schedule without overlap (the default) skips a tick while a job of its
 * own (qlater_job.schedule_id) waits or runs, that is, is not dead, and
 * counts it in skipped_ticks.  The scheduler looks for such a job once per
 * pass, after it has locked the schedule's row, under a snapshot taken
 * then (the pass is read committed): every job of the schedule is written
 * by a tick under that lock, so the look sees each one that committed, and
 * only a job whose removal commits after the look is taken for one that
 * still waits (that tick is skipped: the race of the job ending just then).
 *
 * Each worker keeps in process-local memory the time of the earliest
 * next_tick it saw, and looks at the table again only when that time has
 * come or when a schedule changed (qlater_schedule, qlater_alter_schedule
 * and qlater_unschedule send a relcache invalidation of the table, and wake
 * the idle workers after the commit).  No shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_proc.h"
#include "storage/lock.h"
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
PG_FUNCTION_INFO_V1(qlater_alter_schedule);
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
	bool		overlap;		/* a tick may enqueue while a job waits */
	TimestampTz next_tick;
	TimestampTz created_at;		/* anchor of "N seconds" schedules */
} QlDueSchedule;

/* what became of a tick */
typedef enum QlTickResult
{
	QL_TICK_ENQUEUED,			/* its job is written */
	QL_TICK_DEACTIVATE,			/* the schedule cannot go on (warned) */
	QL_TICK_LATER				/* its queue's name is locked: try again */
} QlTickResult;

/* the scheduler's statements, prepared once per backend */
typedef enum QlSchedStmt
{
	QL_S_JOB_WAITS,				/* a job of schedule $1 waits or runs */
	QL_NUM_S_STMTS
} QlSchedStmt;

static const QlStmtDef s_stmt_defs[QL_NUM_S_STMTS] = {
	/*
	 * Dead jobs do not count.  Run for one row at most, but without LIMIT:
	 * with one, a generic plan may take a sequential scan that expects to
	 * meet a job of the schedule soon and, when none waits, reads the
	 * whole table; without, the index qlater_job_schedule is taken.
	 */
	[QL_S_JOB_WAITS] = {
		"SELECT FROM %1$s.qlater_job WHERE schedule_id OPERATOR(pg_catalog.=) $1 "
		"AND NOT dead",
		1, {INT8OID}
	},
};

static QlStmtSet s_stmts = {s_stmt_defs, QL_NUM_S_STMTS, NULL, 0};

/* the scheduler's cache: when to look at qlater_schedule again */
static TimestampTz sched_next_check = 0;
static TimestampTz sched_next_tick = DT_NOEND;	/* of any active schedule */
static bool sched_stale = true;
static Oid	sched_relid = InvalidOid;
static bool sched_callback_registered = false;
/*
 * When this process first looked at the schedules at the current version:
 * ticks before it were missed (the server was down, or the database waited
 * for its update), and get at most one catch-up job, not one each.
 */
static TimestampTz sched_since = 0;
/* a tick of the last pass was held by a lock: look again in a second */
static bool sched_held = false;

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

/* ql_external_queue_error: the error for a schedule into an external queue */
static void
ql_external_queue_error(const char *queue)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot schedule jobs in external queue \"%s\"", queue),
			 errhint("Schedules enqueue jobs for the in-server workers: pass a queue that is not external.")));
}

/*
 * ql_check_schedule_queue: raise an error unless the current role may
 * schedule jobs of a handler (proc) registered into handler_queue, with this
 * priority, into queue: not an external queue, and one the role may put
 * jobs into as an enqueue may (a queue that does not exist is made for the
 * role).  The queue's name stays locked in share mode until the end of
 * the transaction, as an enqueue's.
 */
static void
ql_check_schedule_queue(const QlCatalog *c, const char *queue,
						const char *handler_queue, Oid proc, int32 priority)
{
	/* this error rather than a missing 'enqueue' grant */
	if (ql_queue_is_external(c, queue))
		ql_external_queue_error(queue);
	/* locks the name, then checks */
	if (ql_queue_check_put(c, queue, handler_queue, ql_proc_owner(proc),
						   priority)->external)
		ql_external_queue_error(queue);
}

/* ql_check_execute: raise an error unless a role may execute proc */
static void
ql_check_execute(Oid proc, Oid roleid)
{
	AclResult	aclresult = pg_proc_aclcheck(proc, roleid, ACL_EXECUTE);

	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult,
					   get_func_prokind(proc) == PROKIND_PROCEDURE ? OBJECT_PROCEDURE : OBJECT_FUNCTION,
					   get_func_name(proc));
}

/*
 * qlater_schedule(name text, schedule text, handler text, args jsonb,
 *				   queue text, priority int, timezone text,
 *				   catch_up boolean, overlap boolean) returns bigint
 *
 * Creates or replaces the current role's schedule of that name and returns
 * its id.  Everything is checked now as the caller, as qlater_enqueue
 * checks a job: the schedule and time zone, the handler (resolved under
 * the caller's search_path among registered handlers), EXECUTE on it, the
 * arguments, and the queue (made for the role if it does not exist).  A
 * replaced schedule keeps its last tick and its count of skipped ticks,
 * and counts its "N seconds" ticks from now.
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
	char	   *handler_queue;
	int32		priority;
	Jsonb	   *args;
	QlCronSchedule sched;
	pg_tz	   *tz;
	Oid			proc;
	QlHandler  *h;
	QlProcInfo *pi;
	TimestampTz now;
	TimestampTz anchor;
	TimestampTz next;
	Oid			relid;
	Datum		values[12];
	char		nulls[12] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[12] = {TEXTOID, NAMEOID, TEXTOID, TEXTOID, TEXTOID,
		JSONBOID, TEXTOID, INT4OID, BOOLOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	BOOLOID};
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
	ql_sched_arg_not_null(fcinfo, 8, "overlap");
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
	proc = ql_resolve_handler(handler, &h, false, NULL);
	/* copy what we need of h: the next lookup may reload the registry */
	handler_queue = pstrdup(h->queue);
	priority = PG_ARGISNULL(5) ? h->priority : PG_GETARG_INT32(5);
	if (queue == NULL)
		queue = handler_queue;
	ql_check_schedule_queue(c, queue, handler_queue, proc, priority);
	ql_check_execute(proc, GetUserId());
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
	values[11] = BoolGetDatum(PG_GETARG_BOOL(8));

	relid = ql_schedule_relid(c);
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(psprintf("INSERT INTO %s.qlater_schedule AS s "
									   "(name, owner, schedule, timezone, handler, args, "
									   "queue, priority, catch_up, created_at, next_tick, overlap) "
									   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
									   "ON CONFLICT (owner, name) DO UPDATE SET "
									   "schedule = excluded.schedule, timezone = excluded.timezone, "
									   "handler = excluded.handler, args = excluded.args, "
									   "queue = excluded.queue, priority = excluded.priority, "
									   "catch_up = excluded.catch_up, created_at = excluded.created_at, "
									   "next_tick = excluded.next_tick, overlap = excluded.overlap, "
									   "active = true "
									   "RETURNING id",
									   c->schema_quoted),
							  12, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not write schedule");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	ql_restore_user(&save);

	ql_schedules_changed(relid);
	PG_RETURN_INT64(id);
}

/*
 * ql_schedule_owner_arg: the owner of the schedules a call acts on: the
 * current role, or argument n if given, which only superusers and members
 * of qlater_admin may set to another role ("verb" says what they may do:
 * "change", "remove").
 */
static char *
ql_schedule_owner_arg(FunctionCallInfo fcinfo, int n, const char *verb)
{
	char	   *me = GetUserNameFromId(GetUserId(), false);
	char	   *owner;

	if (PG_ARGISNULL(n))
		return me;
	owner = pstrdup(NameStr(*PG_GETARG_NAME(n)));
	if (strcmp(owner, me) != 0 && !ql_is_admin())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for schedules of role \"%s\"", owner),
				 errhint("Only superusers and members of qlater_admin may %s another role's schedules.",
						 verb)));
	return owner;
}

/*
 * ql_alter_check: what qlater_schedule checks, for a schedule that an
 * alter turns on or whose definition it changes, as the schedule's owner
 * would be checked by a tick (with as_owner, the caller is the owner and
 * its queue is checked as qlater_schedule checks it: a queue that does
 * not exist is made for it).  The stored handler must still be a
 * registered handler, its owner role must exist and may execute it, and
 * the queue (queue, else the handler's) must be in-server and take the
 * owner's jobs of that priority (priority_null: the handler's).  Returns
 * the handler's function.
 */
static Oid
ql_alter_check(const QlCatalog *c, const char *name, const char *owner,
			   const char *handler, const char *queue, bool priority_null,
			   int32 priority, bool as_owner)
{
	Oid			role = get_role_oid(owner, true);
	Oid			proc;
	QlHandler  *h;
	char	   *handler_queue;

	if (!OidIsValid(role))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" of schedule \"%s\" does not exist", owner, name),
				 errhint("Remove the schedule with qlater_unschedule.")));
	proc = ql_signature_oid(handler);
	h = OidIsValid(proc) ? ql_handler_lookup(proc) : NULL;
	if (h == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s is not a registered job handler", handler),
				 errdetail("Schedule \"%s\" of role \"%s\" runs it.", name, owner),
				 errhint("Register the handler with qlater_register, or replace the schedule with qlater_schedule.")));
	/* copy what we need of h: the next lookup may reload the registry */
	handler_queue = pstrdup(h->queue);
	if (priority_null)
		priority = h->priority;
	if (queue == NULL)
		queue = handler_queue;
	ql_check_execute(proc, role);
	if (as_owner)
	{
		ql_check_schedule_queue(c, queue, handler_queue, proc, priority);
		return proc;
	}
	/* as a tick checks it, after the lock a tick takes */
	(void) ql_queue_lock_put(queue, false);
	if (ql_queue_is_external(c, queue))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot schedule jobs in external queue \"%s\"", queue),
				 errdetail("Schedule \"%s\" of role \"%s\" puts its jobs there.", name, owner),
				 errhint("Its owner may give it another queue with qlater_alter_schedule(..., queue => ...).")));
	if (!ql_queue_may_put(c, queue, handler_queue, ql_proc_owner(proc), priority, role))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" may not put jobs of priority %d into queue \"%s\"",
						owner, priority, queue),
				 errdetail("Schedule \"%s\" of role \"%s\" puts its jobs there.", name, owner),
				 errhint("The queue's owner may grant it: qlater_grant_queue('%s', '%s', 'enqueue').",
						 queue, owner)));
	return proc;
}

/*
 * qlater_alter_schedule(name text, active boolean, schedule text,
 *						 args jsonb, queue text, priority int,
 *						 timezone text, catch_up boolean, overlap boolean,
 *						 owner name) returns void
 *
 * Changes a schedule of the current role (NULL: unchanged), or with owner
 * given of that role: superusers and members of qlater_admin may switch
 * another role's schedule on and off and set its overlap, nothing else
 * (its other settings say what runs as that role, and when).
 *
 * Turning a schedule on, or changing its schedule, arguments, queue,
 * priority or time zone, checks it as qlater_schedule checks a new one
 * (ql_alter_check): a schedule deactivated by the system is turned on only
 * once the reason is gone.  Switching it off, catch_up and overlap are
 * not checked: they can be set whatever became of its handler or queue.
 * Turning it on, or a new schedule or time zone, computes its next tick
 * from now: ticks that fell while it was off are not enqueued, catch_up or
 * not.  "N seconds" schedules keep counting from their creation.  The
 * workers see the change when it commits.
 */
Datum
qlater_alter_schedule(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *name;
	char	   *owner;
	bool		as_owner;
	bool		defines;
	Oid			relid;
	QlUserSave	save;
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	int64		id;
	char	   *schedule;
	char	   *timezone;
	char	   *handler;
	Jsonb	   *args;
	char	   *queue;
	bool		priority_null;
	int32		priority;
	bool		was_active;
	bool		active;
	bool		catch_up;
	bool		overlap;
	TimestampTz created_at;
	bool		next_null;
	TimestampTz next;
	QlCronSchedule sched;
	pg_tz	   *tz;
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[10] = {INT8OID, TEXTOID, TEXTOID, JSONBOID, TEXTOID,
		INT4OID, BOOLOID, BOOLOID, BOOLOID, TIMESTAMPTZOID};
	Oid			key_types[2] = {TEXTOID, NAMEOID};
	MemoryContext oldcxt = CurrentMemoryContext;
	MemoryContext spicxt;

	ql_sched_arg_not_null(fcinfo, 0, "name");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	owner = ql_schedule_owner_arg(fcinfo, 9, "change");
	as_owner = strcmp(owner, GetUserNameFromId(GetUserId(), false)) == 0;

	/* what the schedule runs as its owner, where and when */
	defines = !PG_ARGISNULL(2) || !PG_ARGISNULL(3) || !PG_ARGISNULL(4) ||
		!PG_ARGISNULL(5) || !PG_ARGISNULL(6);
	/* those, and catch_up, are the owner's to say */
	if ((defines || !PG_ARGISNULL(7)) && !as_owner)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to change schedule \"%s\" of role \"%s\"", name, owner),
				 errdetail("Admins may switch another role's schedule on and off and set its overlap; "
						   "what it runs as that role, and when, only its owner changes."),
				 errhint("Call qlater_alter_schedule with active or overlap only, or as the role \"%s\".",
						 owner)));
	if (!PG_ARGISNULL(2))
		(void) ql_cron_parse(text_to_cstring(PG_GETARG_TEXT_PP(2)), &sched, ERROR);
	if (!PG_ARGISNULL(4))
		ql_check_queue_name(text_to_cstring(PG_GETARG_TEXT_PP(4)));
	if (!PG_ARGISNULL(5))
		ql_check_priority(PG_GETARG_INT32(5));
	if (!PG_ARGISNULL(6))
		(void) ql_cron_find_timezone(text_to_cstring(PG_GETARG_TEXT_PP(6)), ERROR);

	/*
	 * The schedule, locked until the commit: a worker that would fire it
	 * meanwhile skips it and looks again soon, then reads the new row.
	 */
	relid = ql_schedule_relid(c);
	values[0] = CStringGetTextDatum(name);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(owner));
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(psprintf("SELECT id, schedule, timezone, handler, args, queue, "
									   "priority, active, catch_up, overlap, created_at, next_tick "
									   "FROM %s.qlater_schedule "
									   "WHERE name = $1 AND owner = $2 FOR UPDATE",
									   c->schema_quoted),
							  2, key_types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read schedule");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("schedule \"%s\" of role \"%s\" does not exist", name, owner),
				 errhint("The view qlater_schedules shows the schedules you may change.")));
	/* what is read outlives SPI_finish */
	spicxt = MemoryContextSwitchTo(oldcxt);
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
	schedule = SPI_getvalue(row, desc, 2);
	timezone = SPI_getvalue(row, desc, 3);
	handler = SPI_getvalue(row, desc, 4);
	args = DatumGetJsonbPCopy(SPI_getbinval(row, desc, 5, &isnull));
	queue = SPI_getvalue(row, desc, 6);
	d = SPI_getbinval(row, desc, 7, &priority_null);
	priority = priority_null ? 0 : DatumGetInt32(d);
	was_active = DatumGetBool(SPI_getbinval(row, desc, 8, &isnull));
	catch_up = DatumGetBool(SPI_getbinval(row, desc, 9, &isnull));
	overlap = DatumGetBool(SPI_getbinval(row, desc, 10, &isnull));
	created_at = DatumGetTimestampTz(SPI_getbinval(row, desc, 11, &isnull));
	d = SPI_getbinval(row, desc, 12, &next_null);
	next = next_null ? DT_NOEND : DatumGetTimestampTz(d);
	MemoryContextSwitchTo(spicxt);
	SPI_finish();
	ql_restore_user(&save);

	/* the new settings */
	active = PG_ARGISNULL(1) ? was_active : PG_GETARG_BOOL(1);
	if (!PG_ARGISNULL(2))
		schedule = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (!PG_ARGISNULL(4))
		queue = text_to_cstring(PG_GETARG_TEXT_PP(4));
	if (!PG_ARGISNULL(5))
	{
		priority_null = false;
		priority = PG_GETARG_INT32(5);
	}
	if (!PG_ARGISNULL(6))
		timezone = text_to_cstring(PG_GETARG_TEXT_PP(6));
	if (!PG_ARGISNULL(7))
		catch_up = PG_GETARG_BOOL(7);
	if (!PG_ARGISNULL(8))
		overlap = PG_GETARG_BOOL(8);

	/* as qlater_schedule checks a new schedule, as the caller */
	if (defines || (active && !was_active))
	{
		Oid			proc = ql_alter_check(c, name, owner, handler, queue,
										  priority_null, priority, as_owner);

		if (!PG_ARGISNULL(3))
			args = ql_args_normalize(ql_procinfo(proc), PG_GETARG_JSONB_P(3));
	}

	/* turned on, or a new schedule or time zone: the next tick from now */
	if ((active && !was_active) || !PG_ARGISNULL(2) || !PG_ARGISNULL(6))
	{
		(void) ql_cron_parse(schedule, &sched, ERROR);
		tz = ql_cron_find_timezone(timezone, ERROR);
		next = ql_cron_next_tz(&sched, GetCurrentTimestamp(),
							   tz, created_at);
	}

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(schedule);
	values[2] = CStringGetTextDatum(timezone);
	values[3] = JsonbPGetDatum(args);
	if (queue != NULL)
		values[4] = CStringGetTextDatum(queue);
	else
		nulls[4] = 'n';
	values[5] = Int32GetDatum(priority);
	nulls[5] = priority_null ? 'n' : ' ';
	values[6] = BoolGetDatum(active);
	values[7] = BoolGetDatum(catch_up);
	values[8] = BoolGetDatum(overlap);
	values[9] = TimestampTzGetDatum(next);
	if (TIMESTAMP_NOT_FINITE(next))
		nulls[9] = 'n';
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_schedule SET "
									   "schedule = $2, timezone = $3, args = $4, queue = $5, "
									   "priority = $6, active = $7, catch_up = $8, overlap = $9, "
									   "next_tick = $10 WHERE id = $1",
									   c->schema_quoted),
							  10, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not change schedule");
	SPI_finish();
	ql_restore_user(&save);

	ql_schedules_changed(relid);
	PG_RETURN_VOID();
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
	char	   *owner;
	Oid			types[2] = {TEXTOID, NAMEOID};
	Datum		values[2];
	Oid			relid;
	QlUserSave	save;
	bool		found;

	ql_sched_arg_not_null(fcinfo, 0, "name");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	owner = ql_schedule_owner_arg(fcinfo, 1, "remove");
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
 * Returns QL_TICK_DEACTIVATE, after a warning, if the owner or the handler
 * is gone, the queue became external, or the owner may no longer put jobs
 * of that priority into the queue.  The queue's name is locked in share
 * mode first, as every enqueue locks it, so that no drop or change of kind
 * happens under the job; but a worker does not wait for it (a transaction
 * left open holds it): QL_TICK_LATER if it is taken.  So is the owner's
 * role (an enqueue locks its role against DROP ROLE): a DROP ROLE left
 * open in any database must not hold a worker, nor the schedules it was
 * firing.  Each check reads caches: the handler registry, the queue rows
 * and grants.  With check_only, only the checks (no lock, no job): a tick
 * skipped for its schedule's waiting job still deactivates a schedule
 * whose owner may no longer enqueue it (QL_TICK_ENQUEUED: it may).  Caller
 * acts as the tables' owner.
 */
static QlTickResult
ql_enqueue_tick(const QlCatalog *c, const QlDueSchedule *d, TimestampTz tick,
				bool check_only)
{
	Oid			role = get_role_oid(d->owner, true);
	Oid			proc;
	QlHandler  *h;
	Oid			saved_userid;
	int			saved_sec_context;
	char	   *queue;
	char	   *handler_queue;
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
		return QL_TICK_DEACTIVATE;
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
				 errhint("Register the handler, then turn the schedule on with qlater_alter_schedule('%s', active => true).",
						 d->name)));
		return QL_TICK_DEACTIVATE;
	}
	/* copy what we need of h: the next lookup may reload the registry */
	handler_queue = pstrdup(h->queue);
	queue = d->queue ? d->queue : handler_queue;
	priority = d->has_priority ? d->priority : h->priority;
	max_attempts = h->max_attempts;
	has_timeout = h->has_timeout;
	timeout = h->timeout;
	if (!check_only)
	{
		LOCKTAG		tag;

		SET_LOCKTAG_OBJECT(tag, InvalidOid, AuthIdRelationId, role, 0);
		if (LockAcquire(&tag, AccessShareLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
			return QL_TICK_LATER;
		if (!ql_queue_lock_put(queue, true))
			return QL_TICK_LATER;
	}
	if (ql_queue_is_external(c, queue))
	{
		ereport(WARNING,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("qlater schedule \"%s\" of role \"%s\" is deactivated",
						d->name, d->owner),
				 errdetail("Its queue \"%s\" is now external, served by applications.", queue),
				 errhint("Give it a queue that is not external: qlater_alter_schedule('%s', queue => ..., active => true).",
						 d->name)));
		return QL_TICK_DEACTIVATE;
	}
	/* as an enqueue of the owner's would be checked */
	if (!ql_queue_may_put(c, queue, handler_queue, ql_proc_owner(proc), priority, role))
	{
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("qlater schedule \"%s\" of role \"%s\" is deactivated",
						d->name, d->owner),
				 errdetail("Role \"%s\" may no longer put jobs of priority %d into queue \"%s\".",
						   d->owner, priority, queue),
				 errhint("Once the queue's owner grants it (qlater_grant_queue('%s', '%s', 'enqueue')), "
						 "turn the schedule on with qlater_alter_schedule('%s', active => true).",
						 queue, d->owner, d->name)));
		return QL_TICK_DEACTIVATE;
	}

	if (check_only)
		return QL_TICK_ENQUEUED;
	/* the job's role is the current user: the schedule's owner */
	GetUserIdAndSecContext(&saved_userid, &saved_sec_context);
	SetUserIdAndSecContext(role, saved_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	(void) ql_insert_job(c, queue, d->handler, d->args, priority, tick,
						 max_attempts, has_timeout ? &timeout : NULL, d->id);
	SetUserIdAndSecContext(saved_userid, saved_sec_context);
	return QL_TICK_ENQUEUED;
}

/*
 * ql_schedule_job_waits: whether a job of a schedule waits or runs (is not
 * dead), under a snapshot taken now.  Caller is connected to SPI and acts
 * as the tables' owner, in a read committed transaction that holds the
 * schedule's row locked, so that every job a tick of it wrote is seen.
 */
static bool
ql_schedule_job_waits(const QlCatalog *c, int64 schedule_id)
{
	Datum		values[1];

	values[0] = Int64GetDatum(schedule_id);
	/* not read-only: a snapshot of its own, after the lock; one row */
	if (ql_stmt_exec(&s_stmts, c, QL_S_JOB_WAITS, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for the jobs of a schedule");
	return SPI_processed > 0;
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
 * QL_SCHEDULE_MAX_TICKS (the rest at the next pass).  A tick whose queue
 * is locked by a drop or a change of kind stays due: the next pass, soon,
 * fires it.
 *
 * Without overlap, a tick is skipped while a job of the schedule waits or
 * runs (looked for once: after the first tick enqueued here, its job
 * waits), and counted in skipped_ticks; last_tick stays the last tick that
 * enqueued a job, and next_tick moves past now as for any fired tick.
 *
 * An error rolls back this schedule's jobs, after a warning, and skips its
 * due ticks (not counted).  Caller is connected to SPI and acts as the
 * tables' owner; the pass is read committed.
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
	volatile int64 skipped = 0;
	volatile bool later = false;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[6] = {INT8OID, BOOLOID, TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID,
	INT8OID};

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		QlCronSchedule s;
		pg_tz	   *tz;
		TimestampTz t = d->next_tick;
		int			n;
		int			waits = -1; /* a job of the schedule waits: unknown */
		QlTickResult r;

		(void) ql_cron_parse(d->schedule, &s, ERROR);
		tz = ql_cron_find_timezone(d->timezone, ERROR);
		/* on error, skip every due tick */
		next = ql_cron_next_tz(&s, now, tz, d->created_at);

		/* of the ticks before this process started, the latest or none */
		if (t < sched_since)
		{
			t = ql_latest_tick(&s, tz, d->created_at, t,
							   Min(now, sched_since - 1));
			if (!d->catch_up &&
				now - t > (int64) QL_SCHEDULE_GRACE_MS * 1000)
				t = ql_cron_next_tz(&s, t, tz, d->created_at);
		}
		for (n = 0; t <= now && n < QL_SCHEDULE_MAX_TICKS; n++)
		{
			if (!d->overlap)
			{
				if (waits < 0)
				{
					waits = ql_schedule_job_waits(c, d->id) ? 1 : 0;
					if (waits > 0 &&
						ql_enqueue_tick(c, d, t, true) == QL_TICK_DEACTIVATE)
					{
						active = false;
						break;
					}
				}
				if (waits > 0)
				{
					skipped++;
					t = ql_cron_next_tz(&s, t, tz, d->created_at);
					continue;
				}
			}
			r = ql_enqueue_tick(c, d, t, false);
			if (r == QL_TICK_DEACTIVATE)
				active = false;
			if (r == QL_TICK_LATER)
				later = true;
			if (r != QL_TICK_ENQUEUED)
				break;
			fired = true;
			last = t;
			waits = 1;
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
		skipped = 0;
		/* without a next tick the schedule would be retried at once */
		if (next == DT_NOEND)
			active = false;
	}
	PG_END_TRY();

	/* held: nothing to record (no row rewritten), look again later */
	if (later && !fired && skipped == 0 && active)
	{
		sched_held = true;
		return;
	}
	values[0] = Int64GetDatum(d->id);
	values[1] = BoolGetDatum(fired);
	values[2] = TimestampTzGetDatum(last);
	values[3] = TimestampTzGetDatum(next);
	if (TIMESTAMP_NOT_FINITE(next))
		nulls[3] = 'n';
	values[4] = BoolGetDatum(active);
	values[5] = Int64GetDatum(skipped);
	if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_schedule SET "
									   "last_tick = CASE WHEN $2 THEN $3 ELSE last_tick END, "
									   "next_tick = $4, active = $5, "
									   "skipped_ticks = skipped_ticks + $6 WHERE id = $1",
									   c->schema_quoted),
							  6, types, values, nulls, false, 0) != SPI_OK_UPDATE)
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
		pgstat_report_activity(STATE_IDLE, "");
		sched_next_tick = DT_NOEND;
		sched_next_check = now + QL_SCHEDULE_MAX_WAIT_MS * INT64CONST(1000);
		return;
	}

	ql_become_owner(c, &save);

	now = GetCurrentTimestamp();
	if (sched_since == 0)
		sched_since = now;
	sched_held = false;
	values[0] = TimestampTzGetDatum(now);
	if (SPI_execute_with_args(psprintf("SELECT id, name, owner, schedule, timezone, handler, "
									   "args, queue, priority, catch_up, next_tick, created_at, "
									   "overlap "
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
		s->overlap = DatumGetBool(SPI_getbinval(tup, desc, 13, &isnull));
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
			next = now + (sched_held ? 1000 : QL_SCHEDULE_RETRY_MS) * INT64CONST(1000);
		sched_next_tick = next;
		sched_next_check = Min(next, now + QL_SCHEDULE_MAX_WAIT_MS * INT64CONST(1000));
	}

	ql_restore_user(&save);
	ql_xact_commit();
	pgstat_report_activity(STATE_IDLE, "");
	ql_schedule_lower_sleep(sleep_ms, GetCurrentTimestamp());
}
