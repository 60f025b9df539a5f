/*-------------------------------------------------------------------------
 *
 * api.c
 *		SQL-callable functions: registration, enqueue (one job or many),
 *		retry, cancel.
 *
 * Only these functions write qlater's tables.  Each one checks what the
 * caller may do as the caller, then writes as the tables' owner (a local
 * user-ID change, see catalog.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/sinvaladt.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "api.h"
#include "args.h"
#include "catalog.h"
#include "consumer.h"
#include "handlers.h"
#include "history.h"
#include "limits.h"
#include "qlater.h"
#include "queue.h"
#include "running.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(qlater_register);
PG_FUNCTION_INFO_V1(qlater_unregister);
PG_FUNCTION_INFO_V1(qlater_enqueue);
PG_FUNCTION_INFO_V1(qlater_enqueue_many);
PG_FUNCTION_INFO_V1(qlater_retry);
PG_FUNCTION_INFO_V1(qlater_retry_dead);
PG_FUNCTION_INFO_V1(qlater_cancel);
PG_FUNCTION_INFO_V1(qlater_workers);
PG_FUNCTION_INFO_V1(qlater_wake_launcher);

/* a job to enqueue, checked: everything but its args */
typedef struct QlJobSpec
{
	const char *queue;
	const char *handler;		/* signature, or an application's name */
	QlProcInfo *pi;				/* the handler, for an in-server queue */
	bool		external;
	int32		priority;
	int32		max_attempts;
	TimestampTz run_at;
	bool		has_timeout;
	Interval	timeout;
	int64		schedule_id;	/* the schedule whose tick it is, or 0 */
} QlJobSpec;

/* the most listeners one call wakes for jobs of an external queue */
#define QL_MAX_NOTIFY_PER_CALL	16

/* whether this backend has made sure the launcher serves its database */
static bool launcher_checked = false;

/* ql_check_priority: raise an error for a priority out of range */
void
ql_check_priority(int32 priority)
{
	if (priority < QL_MIN_PRIORITY || priority > QL_MAX_PRIORITY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("priority %d is out of range", priority),
				 errhint("A priority is between %d and %d; lower values run first.",
						 QL_MIN_PRIORITY, QL_MAX_PRIORITY)));
}

/* ql_check_max_attempts: raise an error for a max_attempts below 1 */
void
ql_check_max_attempts(int32 max_attempts)
{
	if (max_attempts < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be at least 1, not %d", max_attempts)));
}

/*
 * ql_control_char: whether the text at p starts with a control character:
 * C0 or DEL, or in a UTF-8 database a C1 one (U+0080 to U+009F)
 */
static bool
ql_control_char(const char *p)
{
	unsigned char b = (unsigned char) *p;

	if (b < 0x20 || b == 0x7f)
		return true;
	return b == 0xc2 && GetDatabaseEncoding() == PG_UTF8 &&
		(unsigned char) p[1] >= 0x80 && (unsigned char) p[1] <= 0x9f;
}

/*
 * ql_check_queue_name: raise an error for an empty or overlong queue name,
 * or one with control characters (which would reach the server log as they
 * are, in messages that name the queue)
 */
void
ql_check_queue_name(const char *queue)
{
	const char *p;

	size_t		len = strlen(queue);

	/* an overlong name is shown by its first bytes (it may be huge) */
	if (len == 0 || len >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 len < NAMEDATALEN + 8 ?
				 errmsg("invalid queue name \"%s\"", queue) :
				 errmsg("invalid queue name \"%s...\" (%zu bytes)",
						pnstrdup(queue, pg_mbcliplen(queue, len, NAMEDATALEN - 1)), len),
				 errhint("A queue name has 1 to %d bytes.", NAMEDATALEN - 1)));
	for (p = queue; *p; p++)
	{
		if (ql_control_char(p))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid queue name"),
					 errdetail("Queue names cannot contain control characters.")));
	}
}

/* ql_arg_not_null: raise an error if argument n of the call is NULL */
static void
ql_arg_not_null(FunctionCallInfo fcinfo, int n, const char *name)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

/*
 * ql_check_proc_owner: raise an error unless the current user owns the
 * function (superusers own everything).
 */
static void
ql_check_proc_owner(Oid proc)
{
#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(ProcedureRelationId, proc, GetUserId()))
#else
	if (!pg_proc_ownercheck(proc, GetUserId()))
#endif
		aclcheck_error(ACLCHECK_NOT_OWNER,
					   get_func_prokind(proc) == PROKIND_PROCEDURE ? OBJECT_PROCEDURE : OBJECT_FUNCTION,
					   get_func_name(proc));
}

/*
 * ql_is_admin: whether the current user sees and manages every role's jobs
 * (superuser or member of qlater_admin).
 */
bool
ql_is_admin(void)
{
	return ql_role_is_admin(GetUserId());
}

/*
 * ql_check_adoption: refuse a registration that would hand other roles'
 * jobs (waiting, dead or written for applications) or schedules of a
 * signature to a function of another
 * owner than the one they were enqueued for: a handler dropped (and its
 * registration left, or removed) and created again by another role under
 * the same signature.  Those jobs and schedules hold only a signature and
 * their role's name: registered, the new function would run as each of
 * those roles with their arguments.  The registration must still be the
 * new owner's, or nothing of other roles may wait on the signature.
 */
static void
ql_check_adoption(const QlCatalog *c, Oid proc, Datum signature, Datum owner)
{
	Oid			types[2] = {TEXTOID, NAMEOID};
	Datum		values[2];
	QlUserSave	save;
	bool		refuse;
	bool		isnull;

	values[0] = signature;
	values[1] = owner;
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(psprintf("SELECT NOT EXISTS (SELECT FROM %s.qlater_handler "
									   "                   WHERE handler = $1 AND registered_by = $2) "
									   "AND (EXISTS (SELECT FROM %s.qlater_job "
									   "             WHERE handler = $1 AND role <> $2) "
									   "  OR EXISTS (SELECT FROM %s.qlater_schedule "
									   "             WHERE handler = $1 AND owner <> $2))",
									   c->schema_quoted, c->schema_quoted, c->schema_quoted),
							  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for the jobs of a handler");
	refuse = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	ql_restore_user(&save);
	if (refuse)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("other roles' jobs or schedules wait on handler %s, which was not registered for role \"%s\"",
						format_procedure(proc), NameStr(*DatumGetName(owner))),
				 errdetail("They were enqueued for a function of that signature registered for another role."),
				 errhint("Remove them first (qlater_cancel, qlater_unschedule): a dead one retried, a schedule reactivated or an application's job in a queue turned in-server would run this function as their role.")));
}

/*
 * qlater_register(handler regprocedure, queue text, priority int,
 *				   max_attempts int, timeout interval) returns void
 */
Datum
qlater_register(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	Oid			proc;
	char	   *queue;
	int32		priority;
	int32		max_attempts;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[6] = {TEXTOID, TEXTOID, INT4OID, INT4OID, INTERVALOID, NAMEOID};
	QlUserSave	save;
	char	   *query;

	ql_arg_not_null(fcinfo, 0, "handler");
	ql_arg_not_null(fcinfo, 1, "queue");
	ql_arg_not_null(fcinfo, 2, "priority");
	ql_arg_not_null(fcinfo, 3, "max_attempts");
	proc = PG_GETARG_OID(0);
	queue = text_to_cstring(PG_GETARG_TEXT_PP(1));
	priority = PG_GETARG_INT32(2);
	max_attempts = PG_GETARG_INT32(3);

	if (!SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(proc)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", proc)));
	ql_check_proc_owner(proc);
	ql_check_handler_signature(proc);
	ql_check_queue_name(queue);
	ql_check_priority(priority);
	ql_check_max_attempts(max_attempts);
	if (!PG_ARGISNULL(4))
	{
		Interval   *t = PG_GETARG_INTERVAL_P(4);

		if (t->month < 0 || t->day < 0 || t->time < 0 ||
			(t->month == 0 && t->day == 0 && t->time == 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must be positive")));
		values[4] = PG_GETARG_DATUM(4);
	}
	else
		nulls[4] = 'n';

	values[0] = CStringGetTextDatum(ql_signature(proc));
	values[1] = CStringGetTextDatum(queue);
	values[2] = Int32GetDatum(priority);
	values[3] = Int32GetDatum(max_attempts);
	/* the registration holds for the function of this owner (handlers.c) */
	values[5] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(ql_proc_owner(proc), false)));

	ql_check_adoption(c, proc, values[0], values[5]);
	/* made for the role if new; another role's needs its 'enqueue' */
	(void) ql_queue_check_put(c, queue, NULL, InvalidOid, priority);

	query = psprintf("INSERT INTO %s.qlater_handler AS h "
					 "(handler, queue, priority, max_attempts, timeout, registered_by) "
					 "VALUES ($1, $2, $3, $4, $5, $6) "
					 "ON CONFLICT (handler) DO UPDATE SET queue = excluded.queue, "
					 "priority = excluded.priority, max_attempts = excluded.max_attempts, "
					 "timeout = excluded.timeout, registered_by = excluded.registered_by, "
					 "registered_at = now()",
					 c->schema_quoted);
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(query, 6, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not register job handler");
	SPI_finish();
	ql_restore_user(&save);
	ql_handlers_changed();
	PG_RETURN_VOID();
}

/* qlater_unregister(handler regprocedure) returns boolean */
Datum
qlater_unregister(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	Oid			proc = PG_GETARG_OID(0);
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	QlUserSave	save;
	bool		found;

	if (!SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(proc)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", proc)));
	ql_check_proc_owner(proc);
	values[0] = CStringGetTextDatum(ql_signature(proc));

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/*
	 * While other roles' jobs or schedules still name the signature, the
	 * row stays as a tombstone (registered_at -infinity, skipped by the
	 * registry): it keeps the owner the registration was made for, so that
	 * only that role may register the signature again (ql_check_adoption).
	 */
	if (SPI_execute_with_args(psprintf("UPDATE %1$s.qlater_handler h SET registered_at = '-infinity' "
									   " WHERE handler = $1 AND registered_at <> '-infinity' "
									   "   AND (EXISTS (SELECT FROM %1$s.qlater_job j "
									   "                 WHERE j.handler = $1 AND j.role <> h.registered_by) "
									   "     OR EXISTS (SELECT FROM %1$s.qlater_schedule s "
									   "                 WHERE s.handler = $1 AND s.owner <> h.registered_by))",
									   c->schema_quoted),
							  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not unregister job handler");
	found = SPI_processed > 0;
	if (!found)
	{
		if (SPI_execute_with_args(psprintf("DELETE FROM %s.qlater_handler "
										   "WHERE handler = $1 AND registered_at <> '-infinity'",
										   c->schema_quoted),
								  1, types, values, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not unregister job handler");
		found = SPI_processed > 0;
	}
	SPI_finish();
	ql_restore_user(&save);
	if (found)
		ql_handlers_changed();
	PG_RETURN_BOOL(found);
}

/*
 * ql_check_launcher: once per backend, make sure the launcher serves this
 * database (a database copied from a template that has qlater was never
 * announced by CREATE EXTENSION).
 */
static void
ql_check_launcher(void)
{
	QlDatabase *db;
	bool		active;

	if (launcher_checked || ql_shared == NULL)
		return;
	LWLockAcquire(ql_shared->lock, LW_SHARED);
	db = ql_find_database(MyDatabaseId, false);
	active = (db != NULL && db->state == QL_DB_ACTIVE);
	LWLockRelease(ql_shared->lock);
	if (!active)
		ql_wake_launcher_at_commit();
	launcher_checked = true;
}

/*
 * The enqueue statements, prepared once per catalog generation; the one
 * for many keyed jobs on its first use (keys: below).
 */
typedef struct QlEnqueuePlans
{
	uint32		generation;
	SPIPlanPtr	one;			/* one row: VALUES */
	SPIPlanPtr	many;			/* one row per element of a jsonb[] */
	SPIPlanPtr	many_keyed;		/* the same, with a text[] of keys */
} QlEnqueuePlans;

static QlEnqueuePlans enqueue_plans;

#define QL_ENQUEUE_COLUMNS \
	"(queue, handler, args, priority, run_at, max_attempts, timeout, role, external, schedule_id, key)"

/* ql_prepare_enqueue: (re)prepare the enqueue statements if needed */
static void
ql_prepare_enqueue(const QlCatalog *c, bool keyed_many)
{
	Oid			types[11] = {TEXTOID, TEXTOID, JSONBOID, INT4OID,
		TIMESTAMPTZOID, INT4OID, INTERVALOID, NAMEOID, BOOLOID, INT8OID, TEXTOID};
	SPIPlanPtr	one;
	SPIPlanPtr	many;

	if (enqueue_plans.one == NULL || enqueue_plans.generation != c->generation)
	{
		one = ql_prepare_kept(psprintf("INSERT INTO %s.qlater_job " QL_ENQUEUE_COLUMNS " "
									   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
									   c->schema_quoted),
							  11, types, CURSOR_OPT_GENERIC_PLAN);
		types[2] = JSONBARRAYOID;
		many = ql_prepare_kept(psprintf("INSERT INTO %s.qlater_job " QL_ENQUEUE_COLUMNS " "
										"SELECT $1, $2, a, $4, $5, $6, $7, $8, $9, $10, NULL "
										"FROM pg_catalog.unnest($3) WITH ORDINALITY AS u (a, n) "
										"ORDER BY n RETURNING id",
										c->schema_quoted),
							   10, types, CURSOR_OPT_GENERIC_PLAN);
		if (enqueue_plans.one != NULL)
		{
			SPI_freeplan(enqueue_plans.one);
			SPI_freeplan(enqueue_plans.many);
		}
		if (enqueue_plans.many_keyed != NULL)
			SPI_freeplan(enqueue_plans.many_keyed);
		enqueue_plans.one = one;
		enqueue_plans.many = many;
		enqueue_plans.many_keyed = NULL;
		enqueue_plans.generation = c->generation;
	}
	if (keyed_many && enqueue_plans.many_keyed == NULL)
	{
		types[2] = JSONBARRAYOID;
		types[10] = TEXTARRAYOID;
		enqueue_plans.many_keyed =
			ql_prepare_kept(psprintf("INSERT INTO %s.qlater_job " QL_ENQUEUE_COLUMNS " "
									 "SELECT $1, $2, a, $4, $5, $6, $7, $8, $9, $10, k "
									 "FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($11)) "
									 "WITH ORDINALITY AS u (a, k, n) ORDER BY n RETURNING id",
									 c->schema_quoted),
							11, types, CURSOR_OPT_GENERIC_PLAN);
	}
}

/* ql_text_array: a text[] of n C strings, NULL ones as NULL elements */
static ArrayType *
ql_text_array(char **strings, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * n);
	bool	   *nulls = palloc(sizeof(bool) * n);
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	for (i = 0; i < n; i++)
	{
		nulls[i] = (strings[i] == NULL);
		elems[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(strings[i]);
	}
	return construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false,
							  TYPALIGN_INT);
}

/*
 * ql_insert_exec: write n job rows (n >= 1) of a role, alike but for their
 * args and keys (keys NULL: none has one; else n of them, NULL for no
 * key); the new ids go to ids[], in order.  Caller acts as the tables'
 * owner, is connected to SPI, and has checked everything (and, for keys,
 * holds their locks and looked for their jobs: below).
 */
static void
ql_insert_exec(const QlCatalog *c, const QlJobSpec *spec, const char *role,
			   Jsonb **args, char **keys, int n, int64 *ids)
{
	Datum		values[11];
	char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', 'n'};
	SPIPlanPtr	plan;
	int			i;
	bool		isnull;

	values[0] = CStringGetTextDatum(spec->queue);
	values[1] = CStringGetTextDatum(spec->handler);
	if (n == 1)
		values[2] = JsonbPGetDatum(args[0]);
	else
		values[2] = PointerGetDatum(construct_array((Datum *) args, n, JSONBOID,
													-1, false, TYPALIGN_INT));
	values[3] = Int32GetDatum(spec->priority);
	values[4] = TimestampTzGetDatum(spec->run_at);
	values[5] = Int32GetDatum(spec->max_attempts);
	if (spec->has_timeout)
		values[6] = IntervalPGetDatum(&spec->timeout);
	else
		nulls[6] = 'n';
	values[7] = DirectFunctionCall1(namein, CStringGetDatum(role));
	values[8] = BoolGetDatum(spec->external);
	values[9] = Int64GetDatum(spec->schedule_id);
	nulls[9] = spec->schedule_id != 0 ? ' ' : 'n';
	if (keys != NULL && n == 1 && keys[0] != NULL)
	{
		values[10] = CStringGetTextDatum(keys[0]);
		nulls[10] = ' ';
	}
	else if (keys != NULL && n > 1)
	{
		values[10] = PointerGetDatum(ql_text_array(keys, n));
		nulls[10] = ' ';
	}

	ql_prepare_enqueue(c, keys != NULL && n > 1);
	plan = n == 1 ? enqueue_plans.one :
		keys != NULL ? enqueue_plans.many_keyed : enqueue_plans.many;
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != (uint64) n)
		elog(ERROR, "could not enqueue jobs");
	for (i = 0; i < n; i++)
		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * ql_inserted: n new jobs, the first of them ids[0], will be there at
 * commit: wake a listener of an external queue, or idle workers (in-server
 * jobs are woken for, and the claim frontier lowered for them, at commit).
 */
static void
ql_inserted(const QlJobSpec *spec, int n, const int64 *ids)
{
	int			i;

	if (spec->external)
	{
		/* wake listeners: one per job, a few at most */
		for (i = 0; i < Min(n, QL_MAX_NOTIFY_PER_CALL); i++)
			ql_notify_listener(spec->queue, ids[i]);
	}
	else
	{
		QlClaimKey	first = {spec->priority, spec->run_at, ids[0]};

		ql_check_launcher();
		ql_lower_frontier_at_commit(&first);
		ql_wake_workers_at_commit(n, spec->run_at);
	}
}

/*
 * ql_insert_rows: write n job rows (n >= 1) of the current role, alike but
 * for their args, as the tables' owner (ql_insert_exec), and wake for
 * them (ql_inserted).  The caller has checked everything.
 */
static void
ql_insert_rows(const QlCatalog *c, const QlJobSpec *spec, Jsonb **args,
			   int n, int64 *ids)
{
	char	   *role = GetUserNameFromId(GetUserId(), false);
	QlUserSave	save;

	ql_lock_job_role();
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ql_insert_exec(c, spec, role, args, NULL, n, ids);
	SPI_finish();
	ql_restore_user(&save);
	ql_inserted(spec, n, ids);
}

/*
 * ql_insert_job: write a job of an in-server queue for a handler (its
 * signature), for the tick of a schedule (0: none); returns its id.  The
 * caller has checked everything.
 */
int64
ql_insert_job(const QlCatalog *c, const char *queue, const char *signature,
			  Jsonb *args, int32 priority, TimestampTz run_at,
			  int32 max_attempts, const Interval *timeout, int64 schedule_id)
{
	QlJobSpec	spec;
	int64		id;

	memset(&spec, 0, sizeof(spec));
	spec.queue = queue;
	spec.handler = signature;
	spec.priority = priority;
	spec.run_at = run_at;
	spec.max_attempts = max_attempts;
	spec.has_timeout = (timeout != NULL);
	if (timeout)
		spec.timeout = *timeout;
	spec.schedule_id = schedule_id;
	ql_insert_rows(c, &spec, &args, 1, &id);
	return id;
}

/*
 * ql_check_app_handler: raise an error for the handler name of a job for
 * applications: free text, checked only for sanity.
 */
static void
ql_check_app_handler(const char *handler)
{
	const char *p;

	if (handler[0] == '\0' || strlen(handler) > QL_MAX_APP_HANDLER)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid handler name \"%s\"", handler),
				 errhint("An application handler name has 1 to %d bytes.", QL_MAX_APP_HANDLER)));
	for (p = handler; *p; p++)
	{
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid handler name \"%s\"", handler),
					 errdetail("Handler names cannot contain control characters.")));
	}
}

/*
 * ql_job_spec: what qlater_enqueue and qlater_enqueue_many are asked, but
 * the args (arguments 0 and 2 to 5 of the call: handler, run_at, queue,
 * priority, max_attempts), checked.
 *
 * The handler of an in-server queue is resolved under the caller's
 * search_path among registered handlers, and EXECUTE is checked as the
 * caller; NULL options take its registered defaults.  The handler of an
 * external queue is the application's business.
 */
static void
ql_job_spec(FunctionCallInfo fcinfo, const QlCatalog *c, QlJobSpec *spec)
{
	char	   *name;
	const char *handler_queue = NULL;
	Oid			handler_owner = InvalidOid;

	memset(spec, 0, sizeof(*spec));
	ql_arg_not_null(fcinfo, 0, "handler");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	spec->run_at = PG_ARGISNULL(2) ? GetCurrentTransactionStartTimestamp() : PG_GETARG_TIMESTAMPTZ(2);
	if (TIMESTAMP_NOT_FINITE(spec->run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_at must be finite")));

	if (!PG_ARGISNULL(3))
	{
		spec->queue = text_to_cstring(PG_GETARG_TEXT_PP(3));
		ql_check_queue_name(spec->queue);
		spec->external = ql_queue_is_external(c, spec->queue);
	}
	if (spec->external)
	{
		ql_check_app_handler(name);
		spec->handler = name;
		spec->priority = PG_ARGISNULL(4) ? QL_DEFAULT_PRIORITY : PG_GETARG_INT32(4);
		spec->max_attempts = PG_ARGISNULL(5) ? QL_DEFAULT_MAX_ATTEMPTS : PG_GETARG_INT32(5);
	}
	else
	{
		QlHandler  *h;
		Oid			proc = ql_resolve_handler(name, &h, true, spec->queue);
		AclResult	aclresult;

		/* copy what we need of h: the next lookup may reload the registry */
		spec->priority = PG_ARGISNULL(4) ? h->priority : PG_GETARG_INT32(4);
		spec->max_attempts = PG_ARGISNULL(5) ? h->max_attempts : PG_GETARG_INT32(5);
		spec->has_timeout = h->has_timeout;
		spec->timeout = h->timeout;
		handler_queue = pstrdup(h->queue);
		handler_owner = ql_proc_owner(proc);
		if (spec->queue == NULL)
		{
			spec->queue = handler_queue;

			/*
			 * Registered into an external queue: the job is the
			 * applications', as if that queue had been named.
			 */
			if (ql_queue_is_external(c, spec->queue))
			{
				ql_check_app_handler(name);
				spec->external = true;
				spec->handler = name;
				spec->has_timeout = false;
			}
		}
		if (!spec->external)
		{
			aclresult = pg_proc_aclcheck(proc, GetUserId(), ACL_EXECUTE);
			if (aclresult != ACLCHECK_OK)
				aclcheck_error(aclresult,
							   get_func_prokind(proc) == PROKIND_PROCEDURE ? OBJECT_PROCEDURE : OBJECT_FUNCTION,
							   get_func_name(proc));
			spec->pi = ql_procinfo(proc);
			spec->handler = spec->pi->signature;
		}
	}
	ql_check_queue_name(spec->queue);
	ql_check_priority(spec->priority);
	ql_check_max_attempts(spec->max_attempts);
	/* a new queue is made for the role; another role's needs its leave */
	(void) ql_queue_check_put(c, spec->queue, handler_queue, handler_owner,
							  spec->priority);
}

/*
 * ql_job_args: the args to store for one job: checked against the
 * handler's parameters, or, for an application, any JSON array or object.
 */
static Jsonb *
ql_job_args(const QlJobSpec *spec, Jsonb *args)
{
	if (spec->external)
	{
		if (JB_ROOT_IS_SCALAR(args))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("job arguments must be a JSON array or object")));
		return args;
	}
	return ql_args_normalize(spec->pi, args);
}

/*
 * Job keys.
 *
 * A key names at most one waiting job of a queue and role: an enqueue with
 * the key of a job that waits (pending, or in backoff after a failure)
 * returns that job, or with replace updates its args, run_at and
 * priority, instead of adding one.  A claim is an advisory lock, not a
 * state of the row, so the check is made at enqueue, and a running job is
 * told from a waiting one by its claim:
 *
 * - Enqueues of one (queue, role, key) are serialized by a transaction
 *   lock on its hash (QLATER_KEY_SPACE, held until commit), and under it
 *   look up the key's jobs that are not dead under the latest snapshot
 *   (whatever the isolation level: a job committed by the enqueue before
 *   must be seen).
 * - For each, the enqueue tries the job's claim, to hold it until its
 *   transaction ends.  If it gets it, the job waits, and stays waiting
 *   until the enqueuer commits: no worker or consumer can start it before
 *   the enqueuer's writes are visible.  Its row is read again under a fresh snapshot
 *   (the claim may follow a session that finished the job meanwhile).
 *   If another session holds the claim (or a lease holds), the job runs:
 *   its data may be older than the enqueuer's, so a new job is enqueued,
 *   with the key.  (A worker takes a claim before it checks the row, and
 *   gives it back if the row changed since its look: a claim held by a
 *   worker that runs no job yet is waited for, ql_job_waits.)
 * - A job that goes back to waiting while another job of its key is alive
 *   (a failed attempt rescheduled, a crash or timeout counted, a dead job
 *   retried) drops its key: ql_key_settle.  Its recorder never waits for
 *   the key's lock (a worker must not wait for a user's transaction):
 *   without it, the job drops its key anyway.  A recorder that holds the
 *   job's claim releases it at commit, before its key lock (a transaction
 *   callback runs before the transaction's locks are released), so that
 *   the next enqueue of the key never takes the job for a running one;
 *   so does an enqueue with the claims it took (ql_held_xact_callback).
 * - A job can also go back to waiting without a write (a lease that ran
 *   out, a consumer's session that ended, qlater_unlock, a worker ended by
 *   a shutdown), and then meet the job enqueued meanwhile: the next
 *   enqueue of the key keeps the key on the newest waiting job and drops
 *   it from the others, whose claims it holds.
 *
 * Deadlocks: an enqueuer waits only for the locks of keys (taken in one
 * order by qlater_enqueue_many), and tries claims without waiting; the
 * recorders of failures never wait for a key.
 */

/* the longest an enqueue waits for a worker checking a claimed job's row */
#define QL_CLAIM_CHECK_WAIT_MS	1000

/* the hash of key locks, from which ql_key_hash starts */
#define QL_KEY_HASH_SEED	UINT64CONST(0x71a7e5ca11ab1e)

/* the statements of keys, prepared on first use (ql_key_exec) */
typedef enum QlKeyStmt
{
	QL_KEY_LOOKUP_ONE,			/* the jobs of a key, not dead */
	QL_KEY_LOOKUP,				/* the jobs of keys, not dead */
	QL_KEY_REREAD,				/* the jobs claimed, still waiting with a key */
	QL_KEY_DROP,				/* jobs give up their keys */
	QL_KEY_REPLACE,				/* new args, run_at and priority */
	QL_KEY_SETTLE,				/* a job back to waiting gives up its key
								 * if another job has it */
	QL_KEY_RETRY_GROUPS,		/* the (queue, role)s of dead keyed jobs */
	QL_KEY_RETRY_DEAD,			/* dead jobs back to waiting, keys settled */
	QL_KEY_NUM_STMTS
} QlKeyStmt;

/* a job held under a lease that has not run out */
#define QL_KEY_LEASED \
	"(lease_until IS NOT NULL " \
	"AND lease_until OPERATOR(pg_catalog.>=) pg_catalog.clock_timestamp())"

static const QlStmtDef key_stmt_defs[QL_KEY_NUM_STMTS] = {
	[QL_KEY_LOOKUP_ONE] = {
		"SELECT id, key, " QL_KEY_LEASED " FROM %1$s.qlater_job "
		"WHERE queue OPERATOR(pg_catalog.=) $1 AND role OPERATOR(pg_catalog.=) $2 "
		"AND key OPERATOR(pg_catalog.=) $3 AND NOT dead ORDER BY id",
		3, {TEXTOID, NAMEOID, TEXTOID}
	},
	/* a join, not key = ANY ($3): that may be planned as a filter */
	[QL_KEY_LOOKUP] = {
		"SELECT j.id, j.key, " QL_KEY_LEASED " "
		"FROM pg_catalog.unnest($3) AS k (key), %1$s.qlater_job j "
		"WHERE j.queue OPERATOR(pg_catalog.=) $1 AND j.role OPERATOR(pg_catalog.=) $2 "
		"AND j.key OPERATOR(pg_catalog.=) k.key AND NOT j.dead ORDER BY j.id",
		3, {TEXTOID, NAMEOID, TEXTARRAYOID}
	},
	[QL_KEY_REREAD] = {
		"SELECT id, key, handler, priority, run_at, external FROM %1$s.qlater_job "
		"WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND key IS NOT NULL AND NOT dead "
		"AND NOT " QL_KEY_LEASED " ORDER BY id DESC FOR UPDATE",
		1, {INT8ARRAYOID}
	},
	[QL_KEY_DROP] = {
		"UPDATE %1$s.qlater_job SET key = NULL WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
		1, {INT8ARRAYOID}
	},
	[QL_KEY_REPLACE] = {
		"UPDATE %1$s.qlater_job j SET args = u.a, run_at = $3, priority = $4 "
		"FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u (id, a) "
		"WHERE j.id OPERATOR(pg_catalog.=) u.id",
		4, {INT8ARRAYOID, JSONBARRAYOID, TIMESTAMPTZOID, INT4OID}
	},
	[QL_KEY_SETTLE] = {
		"UPDATE %1$s.qlater_job j SET key = NULL WHERE j.id OPERATOR(pg_catalog.=) $1 "
		"AND EXISTS (SELECT FROM %1$s.qlater_job o "
		"WHERE o.queue OPERATOR(pg_catalog.=) j.queue AND o.role OPERATOR(pg_catalog.=) j.role "
		"AND o.key OPERATOR(pg_catalog.=) j.key AND NOT o.dead "
		"AND o.id OPERATOR(pg_catalog.<>) j.id)",
		1, {INT8OID}
	},

	/*
	 * qlater_retry_dead: the dead jobs of queue $1 (NULL: any) that died at
	 * $2 or before, of role $3 (NULL: any role's)
	 */
#define QL_RETRY_DEAD_WHERE(j) \
	j ".dead AND ($1 IS NULL OR " j ".queue OPERATOR(pg_catalog.=) $1) " \
	"AND " j ".run_at OPERATOR(pg_catalog.<=) $2 " \
	"AND ($3 IS NULL OR " j ".role OPERATOR(pg_catalog.=) $3)"
	[QL_KEY_RETRY_GROUPS] = {
		"SELECT DISTINCT j.queue, j.role FROM %1$s.qlater_job j "
		"WHERE " QL_RETRY_DEAD_WHERE("j") " AND j.key IS NOT NULL",
		3, {TEXTOID, TIMESTAMPTZOID, NAMEOID}
	},

	/*
	 * Those jobs back to waiting, as qlater_retry puts one back.  A job
	 * keeps its key only if its (queue, role) is among the groups locked
	 * ($4, $5, g), no other job of the key is alive, and it is the newest
	 * of those retried here with the key; the others give it up.  Decided
	 * by one sort of the retried jobs and the live keyed jobs of those
	 * groups (k: the first of each key, live ones first, then the newest),
	 * whatever the plan: never a lookup per job.  The keyed ones are locked
	 * first (ck), so that one a concurrent purge or cancel took away is not
	 * chosen to keep its key.  By queue and kind: how many, and the first
	 * ids.
	 */
	[QL_KEY_RETRY_DEAD] = {
		"WITH c AS MATERIALIZED (SELECT j.id, j.queue, j.role, j.key "
		"FROM %1$s.qlater_job j WHERE " QL_RETRY_DEAD_WHERE("j") "), "
		"ck AS MATERIALIZED (SELECT j.id, j.queue, j.role, j.key "
		"FROM %1$s.qlater_job j WHERE " QL_RETRY_DEAD_WHERE("j") " AND j.key IS NOT NULL "
		"FOR UPDATE OF j), "
		"g AS MATERIALIZED (SELECT * FROM ROWS FROM (pg_catalog.unnest($4), "
		"pg_catalog.unnest($5)) AS g (queue, role)), "
		"k AS (SELECT f.id FROM (SELECT DISTINCT ON (u.queue COLLATE pg_catalog.\"C\", u.role, "
		"u.key COLLATE pg_catalog.\"C\") u.id, u.retried "
		"FROM (SELECT ck.id, ck.queue, ck.role, ck.key, true AS retried FROM ck JOIN g "
		"ON g.queue OPERATOR(pg_catalog.=) ck.queue AND g.role OPERATOR(pg_catalog.=) ck.role "
		"UNION ALL SELECT o.id, o.queue, o.role, o.key, false FROM g JOIN %1$s.qlater_job o "
		"ON o.queue OPERATOR(pg_catalog.=) g.queue AND o.role OPERATOR(pg_catalog.=) g.role "
		"WHERE o.key IS NOT NULL AND NOT o.dead) u "
		"ORDER BY u.queue COLLATE pg_catalog.\"C\", u.role, u.key COLLATE pg_catalog.\"C\", "
		"u.retried, u.id DESC) f "
		"WHERE f.retried), "
		"r AS (UPDATE %1$s.qlater_job j SET dead = false, attempts = 0, crashes = 0, "
		"run_at = pg_catalog.now(), key = CASE WHEN k.id IS NOT NULL THEN j.key END "
		"FROM c LEFT JOIN k ON k.id OPERATOR(pg_catalog.=) c.id "
		"WHERE j.id OPERATOR(pg_catalog.=) c.id AND j.dead "
		"RETURNING j.id, j.queue, j.external) "
		"SELECT r.queue, r.external, pg_catalog.count(*), "
		"(pg_catalog.array_agg(r.id ORDER BY r.id))[1:" CppAsString2(QL_MAX_NOTIFY_PER_CALL) "] "
		"FROM r GROUP BY r.queue, r.external",
		5, {TEXTOID, TIMESTAMPTZOID, NAMEOID, TEXTARRAYOID, NAMEARRAYOID}
	},
};

static QlStmtSet key_stmts = {key_stmt_defs, QL_KEY_NUM_STMTS, NULL, 0};

/*
 * ql_key_exec: run statement s of keys under the latest snapshot: the
 * jobs committed since the transaction's snapshot (in repeatable read or
 * serializable) are seen, and those the transaction wrote.  nulls as
 * SPI takes them, or NULL.  Caller is connected to SPI, acts as the
 * tables' owner or a worker.
 */
static int
ql_key_exec(const QlCatalog *c, QlKeyStmt s, Datum *values, const char *nulls)
{
	/* read-write: the command counter moves on, our own writes are seen */
	return SPI_execute_snapshot(ql_stmt_plan(&key_stmts, c, s), values, nulls,
								GetLatestSnapshot(), InvalidSnapshot, false, true, 0);
}

/*
 * ql_check_key: raise an error for a key that is empty, too long or holds
 * control characters.
 */
static void
ql_check_key(const char *key)
{
	size_t		len = strlen(key);
	const char *p;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("job key must not be empty"),
				 errhint("Pass NULL for a job without a key.")));
	if (len > QL_MAX_KEY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("job key is too long"),
				 errdetail("The key has %zu bytes; at most %d are allowed.", len, QL_MAX_KEY),
				 errhint("Use a shorter name for the work, or a hash of it.")));
	for (p = key; *p; p++)
	{
		if (ql_control_char(p))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("job key contains a control character"),
					 errdetail("Byte %d of the key is 0x%02x.", (int) (p - key) + 1,
							   (unsigned char) *p),
					 errhint("A key is printable text, such as \"export:tenant-a\".")));
	}
}

/* ql_key_hash: the hash of a key of a queue and role, for its lock */
static uint64
ql_key_hash(const char *queue, const char *role, const char *key)
{
	/*
	 * Seeded by a secret drawn at server start: the locks show in pg_locks,
	 * and with a seed every role knows (hashtextextended computes the same)
	 * any role could tell whether another enqueues a key it guesses.
	 */
	uint64		h = ql_shared != NULL ? ql_shared->key_seed : QL_KEY_HASH_SEED;

	h = hash_bytes_extended((const unsigned char *) queue, strlen(queue), h);
	h = hash_bytes_extended((const unsigned char *) role, strlen(role), h);
	return hash_bytes_extended((const unsigned char *) key, strlen(key), h);
}

/* ql_set_key_locktag: the advisory lock tag of a key's hash */
static void
ql_set_key_locktag(LOCKTAG *tag, uint64 hash)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (hash >> 32), (uint32) hash,
						 QLATER_KEY_SPACE);
}

/*
 * ql_set_key_group_locktag: the advisory lock tag of the keys of a queue
 * and role as a whole (QLATER_KEY_GROUP_SPACE), on a hash of the two
 * seeded as the keys' are
 */
static void
ql_set_key_group_locktag(LOCKTAG *tag, const char *queue, const char *role)
{
	uint64		h = ql_shared != NULL ? ql_shared->key_seed : QL_KEY_HASH_SEED;

	h = hash_bytes_extended((const unsigned char *) queue, strlen(queue), h);
	h = hash_bytes_extended((const unsigned char *) role, strlen(role), h);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 QLATER_KEY_GROUP_SPACE);
}

/*
 * The jobs whose claim this transaction took at a keyed enqueue (the jobs
 * it returned), by the subtransaction that took it.  A later keyed enqueue
 * of the transaction that finds such a claim held by this session tells
 * them from the jobs this session runs or has claimed as a consumer: those
 * run, these wait.
 *
 * Such a claim is a session lock, released by the transaction's callbacks
 * when it ends (or when the subtransaction that took it is rolled back):
 * before its transaction locks, the key's among them.  The next enqueue of
 * the key, which waits for that lock, must find the claim free: released
 * with the other transaction locks, in no set order, it could still be
 * held, and the job be taken for a running one.  The table lives in
 * TopTransactionContext.
 */
typedef struct QlHeldJob
{
	int64		id;				/* hash key */
	SubTransactionId subid;
} QlHeldJob;

static HTAB *held_jobs = NULL;
static bool held_callbacks = false;

/*
 * ql_release_held: release the claim an enqueue took of a job (not the
 * session's record of a consumer's claim: ql_release_claim)
 */
static void
ql_release_held(int64 job_id)
{
	ql_release_job_lock(job_id);
}

/*
 * ql_held_xact_callback: when the transaction ends, release the claims
 * its enqueues took; the table goes with the transaction.  PREPARE
 * TRANSACTION is refused while it holds any: the claim must last until the
 * enqueuer's writes are visible, and a prepared transaction has no
 * session to hold it.
 */
static void
ql_held_xact_callback(XactEvent event, void *arg)
{
	HASH_SEQ_STATUS seq;
	QlHeldJob  *h;

	if (held_jobs == NULL)
		return;
	if (event == XACT_EVENT_PRE_PREPARE && hash_get_num_entries(held_jobs) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that has enqueued or changed qlater jobs, queues or schedules"),
				 errdetail("A keyed enqueue holds the job it returned until its transaction ends, which a prepared transaction cannot do.")));
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_PARALLEL_COMMIT &&
		event != XACT_EVENT_ABORT && event != XACT_EVENT_PARALLEL_ABORT &&
		event != XACT_EVENT_PREPARE)
		return;
	hash_seq_init(&seq, held_jobs);
	while ((h = hash_seq_search(&seq)) != NULL)
		ql_release_held(h->id);
	held_jobs = NULL;
}

/*
 * ql_held_subxact_callback: a subtransaction rolled back releases the
 * claims it took; one committed hands them to its parent.
 */
static void
ql_held_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS seq;
	QlHeldJob  *h;

	if (held_jobs == NULL ||
		(event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB))
		return;
	hash_seq_init(&seq, held_jobs);
	while ((h = hash_seq_search(&seq)) != NULL)
	{
		if (h->subid != mySubid)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
			h->subid = parentSubid;
		else
		{
			ql_release_held(h->id);
			(void) hash_search(held_jobs, &h->id, HASH_REMOVE, NULL);
		}
	}
}

/*
 * ql_try_hold: take the claim of a job without waiting, for this
 * (sub)transaction's enqueue; false if another session holds it.  Caller
 * has checked that this session does not.
 */
static bool
ql_try_hold(int64 job_id)
{
	QlHeldJob  *h;

	if (!held_callbacks)
	{
		RegisterXactCallback(ql_held_xact_callback, NULL);
		RegisterSubXactCallback(ql_held_subxact_callback, NULL);
		held_callbacks = true;
	}
	if (held_jobs == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(QlHeldJob);
		ctl.hcxt = TopTransactionContext;
		held_jobs = hash_create("qlater jobs held by enqueues", 16, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	/* room first: once the claim is taken, only the entry releases it */
	h = hash_search(held_jobs, &job_id, HASH_ENTER, NULL);
	if (!ql_try_claim(job_id, true))
	{
		(void) hash_search(held_jobs, &job_id, HASH_REMOVE, NULL);
		return false;
	}
	h->subid = GetCurrentSubTransactionId();
	/* a record of an old claim of ours on it, given up since, is no claim */
	ql_claims_forget(job_id);
	return true;
}

/*
 * ql_enqueue_holds: whether this transaction holds the job's claim because
 * a keyed enqueue returned the job (it waits), rather than because this
 * session runs it.
 */
bool
ql_enqueue_holds(int64 job_id)
{
	return held_jobs != NULL &&
		hash_search(held_jobs, &job_id, HASH_FIND, NULL) != NULL;
}

/* the elements of an enqueue that have one key, and its job */
typedef struct QlKeyGroup
{
	const char *key;
	uint64		hash;
	int			first;			/* its first and last element */
	int			last;
	int64		id;				/* its job: the one kept, or the new one */
	bool		kept;			/* a waiting job was kept */
	int32		priority;		/* the kept job's, once replaced */
	TimestampTz run_at;
	bool		external;
} QlKeyGroup;

/* the keys of an enqueue, for the sort of its elements */
typedef struct QlKeySort
{
	char	  **keys;
	uint64	   *hashes;
} QlKeySort;

/* ql_keys_cmp: order of keys: by hash (the order of their locks), then text */
static int
ql_keys_cmp(uint64 ha, const char *a, uint64 hb, const char *b)
{
	if (ha != hb)
		return ha < hb ? -1 : 1;
	return strcmp(a, b);
}

/* ql_key_elem_cmp: qsort_arg order of elements: by key, then position */
static int
ql_key_elem_cmp(const void *a, const void *b, void *arg)
{
	QlKeySort  *ks = (QlKeySort *) arg;
	int			x = *(const int *) a;
	int			y = *(const int *) b;
	int			r = ql_keys_cmp(ks->hashes[x], ks->keys[x], ks->hashes[y], ks->keys[y]);

	if (r != 0)
		return r;
	return x < y ? -1 : x > y ? 1 : 0;
}

/* ql_key_group: the group of a key (groups sorted by ql_keys_cmp), or NULL */
static QlKeyGroup *
ql_key_group(QlKeyGroup *groups, int ngroups, uint64 hash, const char *key)
{
	int			lo = 0;
	int			hi = ngroups - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			r = ql_keys_cmp(hash, key, groups[mid].hash, groups[mid].key);

		if (r == 0)
			return &groups[mid];
		if (r < 0)
			hi = mid - 1;
		else
			lo = mid + 1;
	}
	return NULL;
}

/*
 * ql_claim_being_checked: whether the claim of a job is held by a worker
 * of this database that runs no job: one that has just claimed it, and
 * reads its row to check that it is still the version its look saw.  That
 * check fails for a job just replaced or rescheduled, and the worker gives
 * the claim back; else the worker starts the job at once.
 */
static bool
ql_claim_being_checked(const LOCKTAG *tag)
{
	VirtualTransactionId *holders;
	bool		checking = false;
	int			i;
	int			j;

	/* (no worker runs on a standby, where the array is not ours to free) */
	if (ql_shared == NULL || RecoveryInProgress())
		return false;
	holders = GetLockConflicts(tag, ExclusiveLock, NULL);
	for (i = 0; !checking && VirtualTransactionIdIsValid(holders[i]); i++)
	{
		PGPROC	   *proc = BackendIdGetProc(holders[i].backendId);

		if (proc == NULL)
			continue;
		for (j = 0; j < ql_shared->nslots; j++)
		{
			QlWorkerSlot *slot = &ql_shared->slots[j];

			if (slot->pid == proc->pid && slot->dboid == MyDatabaseId &&
				pg_atomic_read_u64(&slot->job_id) == 0)
				checking = true;
		}
	}
	pfree(holders);
	return checking;
}

/*
 * ql_job_waits: whether a job of a key found by the lookup waits (its
 * claim is then held by this transaction until it ends) rather than runs.
 * A claim this session holds is its own to run the job, unless a keyed
 * enqueue of this transaction took it.  A claim another session holds
 * means the job runs, but for a worker that is still checking the row it
 * claimed: which way that goes is waited for (microseconds, at most
 * QL_CLAIM_CHECK_WAIT_MS), else a job just replaced, which a worker
 * claimed from an older look and gives back, would be taken for a running
 * one, and a second job of its key made.
 */
static bool
ql_job_waits(int64 id)
{
	LOCKTAG		tag;
	TimestampTz until;

	ql_set_job_locktag(&tag, id);
	if (LockHeldByMe(&tag, ExclusiveLock))
		return ql_enqueue_holds(id);
	if (ql_try_hold(id))
		return true;
	until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), QL_CLAIM_CHECK_WAIT_MS);
	while (ql_claim_being_checked(&tag) && GetCurrentTimestamp() < until)
	{
		pg_usleep(100L);
		CHECK_FOR_INTERRUPTS();
		if (ql_try_hold(id))
			return true;
	}
	return false;
}

/*
 * ql_enqueue_keyed: enqueue n jobs (n >= 1) alike but for their args and
 * keys (NULL: none), at most one waiting job per key (see above); ids[i]
 * is the job of element i.  Elements with one key share one job: a new
 * job takes the first one's args, or with replace the last one's, and
 * so does a waiting job kept with replace.  The caller has checked
 * everything.
 */
static void
ql_enqueue_keyed(const QlCatalog *c, const QlJobSpec *spec, Jsonb **args,
				 char **keys, int n, bool replace, int64 *ids)
{
	char	   *role = GetUserNameFromId(GetUserId(), false);
	uint64	   *hashes = palloc(sizeof(uint64) * n);
	int		   *order = palloc(sizeof(int) * n);
	int		   *group_of = palloc(sizeof(int) * n);
	QlKeySort	ks = {keys, hashes};
	QlKeyGroup *groups;
	int			ngroups = 0;
	int			nkeyed = 0;
	Datum	   *claimed;
	int			nclaimed = 0;
	int			nkept = 0;
	Jsonb	  **rows_args;
	char	  **rows_keys;
	int		   *rows_elem;
	int64	   *row_ids;
	int			nrows = 0;
	QlUserSave	save;
	Datum		values[4];
	bool		isnull;
	uint64		r;
	int			i;
	int			j;

	/* the keys, grouped and sorted in the order of their locks */
	for (i = 0; i < n; i++)
	{
		group_of[i] = -1;
		if (keys[i] != NULL)
		{
			hashes[i] = ql_key_hash(spec->queue, role, keys[i]);
			order[nkeyed++] = i;
		}
	}
	qsort_arg(order, nkeyed, sizeof(int), ql_key_elem_cmp, &ks);
	groups = palloc(sizeof(QlKeyGroup) * Max(nkeyed, 1));
	for (j = 0; j < nkeyed; j++)
	{
		QlKeyGroup *g;

		i = order[j];
		if (ngroups == 0 ||
			ql_keys_cmp(groups[ngroups - 1].hash, groups[ngroups - 1].key,
					   hashes[i], keys[i]) != 0)
		{
			g = &groups[ngroups++];
			memset(g, 0, sizeof(*g));
			g->key = keys[i];
			g->hash = hashes[i];
			g->first = i;
		}
		g = &groups[ngroups - 1];
		g->last = i;
		group_of[i] = ngroups - 1;
	}

	/*
	 * wait for a qlater_retry_dead that settles keys of the queue and role
	 * (it never waits itself), then for the other enqueues of these keys:
	 * in one order, no deadlock
	 */
	if (ngroups > 0)
	{
		LOCKTAG		tag;

		ql_set_key_group_locktag(&tag, spec->queue, role);
		(void) LockAcquire(&tag, ShareLock, false, false);
	}
	for (j = 0; j < ngroups; j++)
	{
		LOCKTAG		tag;

		if (j > 0 && groups[j].hash == groups[j - 1].hash)
			continue;
		ql_set_key_locktag(&tag, groups[j].hash);
		(void) LockAcquire(&tag, ExclusiveLock, false, false);
	}

	ql_lock_job_role();
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* the jobs of the keys: claim those that wait */
	{
		char	  **gkeys = palloc(sizeof(char *) * ngroups);

		for (j = 0; j < ngroups; j++)
			gkeys[j] = (char *) groups[j].key;
		values[0] = CStringGetTextDatum(spec->queue);
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(role));
		values[2] = ngroups == 1 ? CStringGetTextDatum(gkeys[0]) :
			PointerGetDatum(ql_text_array(gkeys, ngroups));
	}
	if (ql_key_exec(c, ngroups == 1 ? QL_KEY_LOOKUP_ONE : QL_KEY_LOOKUP, values, NULL) != SPI_OK_SELECT)
		elog(ERROR, "could not look for the jobs of keys");
	claimed = palloc(sizeof(Datum) * Max(SPI_processed, 1));
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		int64		id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		bool		leased = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));

		if (!leased && ql_job_waits(id))
			claimed[nclaimed++] = Int64GetDatum(id);
	}

	/*
	 * Read them again under a fresh snapshot: a claim may follow a session
	 * that finished the job since the lookup.  The rows are locked: a
	 * consumer's completion made under a lease that has run out since, not
	 * yet committed, holds no claim but the row, and is waited for (its job
	 * is then gone, and a new one is made).  The newest that still waits
	 * keeps its key; others lose it (they went back to waiting without a
	 * write: see above).
	 */
	if (nclaimed > 0)
	{
		Datum	   *extra = palloc(sizeof(Datum) * nclaimed);
		int			nextra = 0;

		values[0] = PointerGetDatum(construct_array(claimed, nclaimed, INT8OID,
													sizeof(int64), FLOAT8PASSBYVAL,
													TYPALIGN_DOUBLE));
		if (ql_key_exec(c, QL_KEY_REREAD, values, NULL) != SPI_OK_SELECT)
			elog(ERROR, "could not read the jobs of keys");
		for (r = 0; r < SPI_processed; r++)
		{
			HeapTuple	row = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			int64		id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
			char	   *key = SPI_getvalue(row, desc, 2);
			char	   *handler = SPI_getvalue(row, desc, 3);
			QlKeyGroup *g = ql_key_group(groups, ngroups,
										 ql_key_hash(spec->queue, role, key), key);

			if (g == NULL)
				elog(ERROR, "job %lld has a key the enqueue did not ask for", (long long) id);
			if (g->kept)
			{
				extra[nextra++] = Int64GetDatum(id);
				continue;
			}
			if (strcmp(handler, spec->handler) != 0)
				ereport(ERROR,
						(errcode(ERRCODE_UNIQUE_VIOLATION),
						 errmsg("key \"%s\" of queue \"%s\" belongs to a job of another handler",
								g->key, spec->queue),
						 errdetail("Job %lld of handler %s waits with this key.",
								   (long long) id, handler),
						 errhint("A key names one waiting job of a queue and role, whatever its handler: "
								 "give each handler's keys a prefix of their own.")));
			g->kept = true;
			g->id = id;
			g->priority = DatumGetInt32(SPI_getbinval(row, desc, 4, &isnull));
			g->run_at = DatumGetTimestampTz(SPI_getbinval(row, desc, 5, &isnull));
			g->external = DatumGetBool(SPI_getbinval(row, desc, 6, &isnull));
			nkept++;
		}
		if (nextra > 0)
		{
			values[0] = PointerGetDatum(construct_array(extra, nextra, INT8OID,
														sizeof(int64), FLOAT8PASSBYVAL,
														TYPALIGN_DOUBLE));
			if (ql_key_exec(c, QL_KEY_DROP, values, NULL) != SPI_OK_UPDATE)
				elog(ERROR, "could not drop the keys of jobs");
		}
	}

	/* with replace, the jobs kept take the (last) new args, run_at and priority */
	if (replace && nkept > 0)
	{
		Datum	   *kids = palloc(sizeof(Datum) * nkept);
		Datum	   *kargs = palloc(sizeof(Datum) * nkept);
		int			k = 0;

		for (j = 0; j < ngroups; j++)
		{
			if (!groups[j].kept)
				continue;
			kids[k] = Int64GetDatum(groups[j].id);
			kargs[k] = JsonbPGetDatum(args[groups[j].last]);
			groups[j].priority = spec->priority;
			groups[j].run_at = spec->run_at;
			k++;
		}
		values[0] = PointerGetDatum(construct_array(kids, nkept, INT8OID, sizeof(int64),
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[1] = PointerGetDatum(construct_array(kargs, nkept, JSONBOID, -1, false,
													TYPALIGN_INT));
		values[2] = TimestampTzGetDatum(spec->run_at);
		values[3] = Int32GetDatum(spec->priority);
		if (ql_key_exec(c, QL_KEY_REPLACE, values, NULL) != SPI_OK_UPDATE ||
			SPI_processed != (uint64) nkept)
			elog(ERROR, "could not replace the jobs of keys");
	}

	/* new jobs: for elements without a key, and keys without a waiting job */
	rows_args = palloc(sizeof(Jsonb *) * n);
	rows_keys = palloc(sizeof(char *) * n);
	rows_elem = palloc(sizeof(int) * n);
	for (i = 0; i < n; i++)
	{
		QlKeyGroup *g = group_of[i] >= 0 ? &groups[group_of[i]] : NULL;

		if (g != NULL && (g->kept || g->first != i))
			continue;
		rows_args[nrows] = g != NULL && replace ? args[g->last] : args[i];
		rows_keys[nrows] = keys[i];
		rows_elem[nrows] = i;
		nrows++;
	}
	row_ids = palloc(sizeof(int64) * Max(nrows, 1));
	if (nrows > 0)
		ql_insert_exec(c, spec, role, rows_args, rows_keys, nrows, row_ids);
	SPI_finish();
	ql_restore_user(&save);
	if (nrows > 0)
		ql_inserted(spec, nrows, row_ids);
	for (j = 0; j < nrows; j++)
	{
		i = rows_elem[j];
		if (group_of[i] >= 0)
			groups[group_of[i]].id = row_ids[j];
		else
			ids[i] = row_ids[j];
	}
	for (i = 0; i < n; i++)
	{
		if (group_of[i] >= 0)
			ids[i] = groups[group_of[i]].id;
	}

	/*
	 * The jobs kept, as an enqueue's: workers (or consumers) that found
	 * their claims held by this transaction look again when it commits.
	 */
	if (nkept > 0)
	{
		int			notified = 0;

		for (j = 0; j < ngroups; j++)
		{
			QlKeyGroup *g = &groups[j];

			if (!g->kept)
				continue;
			if (g->external)
			{
				if (notified++ < QL_MAX_NOTIFY_PER_CALL)
					ql_notify_listener(spec->queue, g->id);
			}
			else
			{
				QlClaimKey	key = {g->priority, g->run_at, g->id};

				ql_check_launcher();
				ql_lower_frontier_at_commit(&key);
				ql_wake_workers_at_commit(1, g->run_at);
			}
		}
	}
}

/*
 * ql_key_settle: a job of a queue and role with a key has just been put
 * back to waiting, in the caller's transaction (a failed attempt
 * rescheduled, a crash or timeout counted, a dead job retried): it keeps
 * its key only if no other job of the key is alive, so that at most one
 * waiting job holds it.  That is decided under the key's lock (and its
 * group's, in share mode), if they can be had at once; else an enqueue of
 * the key, or a qlater_retry_dead of its queue and role, is under way, and
 * the job drops its key (the recorder of a failure, a worker perhaps, must not wait
 * for a user's transaction).  A caller holding the job's session claim
 * releases it at commit (ql_release_claim_at_commit).  Caller is
 * connected to SPI, acts as the tables' owner or a worker.
 */
void
ql_key_settle(const QlCatalog *c, int64 id, const char *queue,
			  const char *role, const char *key)
{
	LOCKTAG		group;
	LOCKTAG		tag;
	Datum		value;

	ql_set_key_group_locktag(&group, queue, role);
	ql_set_key_locktag(&tag, ql_key_hash(queue, role, key));
	if (LockAcquire(&group, ShareLock, false, true) != LOCKACQUIRE_NOT_AVAIL &&
		LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL)
	{
		value = Int64GetDatum(id);
		if (ql_key_exec(c, QL_KEY_SETTLE, &value, NULL) != SPI_OK_UPDATE)
			elog(ERROR, "could not settle the key of job %lld", (long long) id);
	}
	else
	{
		Datum		one = Int64GetDatum(id);

		value = PointerGetDatum(construct_array(&one, 1, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		if (ql_key_exec(c, QL_KEY_DROP, &value, NULL) != SPI_OK_UPDATE)
			elog(ERROR, "could not drop the key of job %lld", (long long) id);
	}
}

/*
 * ql_key_settle_returned: the statement just run put job id back to
 * waiting and returned its queue, role and key as the first three columns
 * of its row (no row: the job was not there): if it has a key, settle it
 * (ql_key_settle).  Caller as for ql_key_settle.
 */
void
ql_key_settle_returned(const QlCatalog *c, int64 id)
{
	HeapTuple	row;
	TupleDesc	desc;
	char	   *key;

	if (SPI_processed == 0)
		return;
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	key = SPI_getvalue(row, desc, 3);
	if (key != NULL)
		ql_key_settle(c, id, SPI_getvalue(row, desc, 1),
					  SPI_getvalue(row, desc, 2), key);
}

/* ql_check_replace: replace needs a key to replace the job of */
static void
ql_check_replace(bool replace, bool keyed, const char *keys)
{
	if (replace && !keyed)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("replace needs %s", keys),
				 errhint("With replace, an enqueue updates the waiting job of its key instead of returning it.")));
}

/*
 * qlater_enqueue(handler text, args jsonb, run_at timestamptz, queue text,
 *				  priority int, max_attempts int, key text, replace boolean)
 *		returns bigint
 *
 * Writes the job in the caller's transaction.  With a key, returns the
 * job of the key that waits, updated with replace, if there is one
 * (ql_enqueue_keyed).  Without one, nothing but the job's row is written.
 */
Datum
qlater_enqueue(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	QlJobSpec	spec;
	Jsonb	   *args;
	char	   *key = NULL;
	bool		replace;
	int64		id;

	/* arguments are read only now: a database at 0.1 got an error */
	ql_arg_not_null(fcinfo, 1, "args");
	ql_arg_not_null(fcinfo, 7, "replace");
	if (!PG_ARGISNULL(6))
	{
		key = text_to_cstring(PG_GETARG_TEXT_PP(6));
		ql_check_key(key);
	}
	replace = PG_GETARG_BOOL(7);
	ql_check_replace(replace, key != NULL, "a key");
	ql_job_spec(fcinfo, c, &spec);
	args = ql_job_args(&spec, PG_GETARG_JSONB_P(1));
	if (key == NULL)
		ql_insert_rows(c, &spec, &args, 1, &id);
	else
		ql_enqueue_keyed(c, &spec, &args, &key, 1, replace, &id);
	PG_RETURN_INT64(id);
}

/* error context of qlater_enqueue_many: which element failed */
static void
ql_many_context(void *arg)
{
	errcontext("element %d of args_list", *(int *) arg + 1);
}

/* error context of qlater_enqueue_many: which key failed */
static void
ql_many_key_context(void *arg)
{
	errcontext("element %d of keys", *(int *) arg + 1);
}

/*
 * ql_many_keys: the keys of qlater_enqueue_many (argument 6), checked: n
 * of them, NULL for an element without a key; NULL if none was given.
 */
static char **
ql_many_keys(FunctionCallInfo fcinfo, int n)
{
	ArrayType  *array;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	char	  **keys;
	int			i;
	ErrorContextCallback errcb;

	if (PG_ARGISNULL(6))
		return NULL;
	array = PG_GETARG_ARRAYTYPE_P(6);
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("keys must be a one-dimensional array")));
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	if (nelems != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keys must have as many elements as args_list"),
				 errdetail("args_list has %d elements, keys %d.", n, nelems),
				 errhint("Element i of keys is the key of the job of element i of args_list; NULL for none.")));
	keys = palloc(sizeof(char *) * Max(n, 1));
	errcb.callback = ql_many_key_context;
	errcb.arg = &i;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	for (i = 0; i < n; i++)
	{
		keys[i] = nulls[i] ? NULL : TextDatumGetCString(elems[i]);
		if (keys[i] != NULL)
			ql_check_key(keys[i]);
	}
	error_context_stack = errcb.previous;
	return keys;
}

/*
 * qlater_enqueue_many(handler text, args_list jsonb, run_at timestamptz,
 *					   queue text, priority int, max_attempts int,
 *					   keys text[], replace boolean)
 *		returns setof bigint
 *
 * One job per element of the JSON array args_list, alike but for their
 * args (and keys), written by one statement; returns their ids in the
 * order of args_list.  All or none: a bad element fails the call.
 * Elements with a key are enqueued as qlater_enqueue does with the key;
 * elements with one key make one job (ql_enqueue_keyed), whose id each of
 * them returns.
 */
Datum
qlater_enqueue_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const QlCatalog *c = ql_catalog(false);
	QlJobSpec	spec;
	Jsonb	   *list;
	int			n;
	int			i;
	Jsonb	  **args;
	char	  **keys;
	bool		keyed = false;
	bool		replace;
	int64	   *ids;
	MemoryContext elem_cxt;
	MemoryContext old;
	ErrorContextCallback errcb;

	/* arguments are read only now: a database at 0.1 got an error */
	ql_arg_not_null(fcinfo, 1, "args_list");
	ql_arg_not_null(fcinfo, 7, "replace");
	list = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_ARRAY(list) || JB_ROOT_IS_SCALAR(list))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("args_list must be a JSON array"),
				 errhint("Each element of args_list is the args of one job, e.g. '[[1], [2], {\"x\": 3}]'.")));
	n = JB_ROOT_COUNT(list);
	if ((Size) n > MaxAllocSize / sizeof(Datum))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("args_list has too many elements")));
	keys = ql_many_keys(fcinfo, n);
	replace = PG_GETARG_BOOL(7);
	ql_check_replace(replace, keys != NULL, "keys");
	for (i = 0; keys != NULL && i < n; i++)
		keyed |= (keys[i] != NULL);
	ql_job_spec(fcinfo, c, &spec);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	if (n == 0)
		return (Datum) 0;
	args = palloc(sizeof(Jsonb *) * n);
	ids = palloc(sizeof(int64) * n);

	/* each element's checks leave garbage: keep only its result */
	elem_cxt = AllocSetContextCreate(CurrentMemoryContext, "qlater_enqueue_many",
									 ALLOCSET_DEFAULT_SIZES);
	errcb.callback = ql_many_context;
	errcb.arg = &i;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	for (i = 0; i < n; i++)
	{
		JsonbValue *v = getIthJsonbValueFromContainer(&list->root, i);
		Jsonb	   *a;

		if (v->type != jbvBinary)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("job arguments must be a JSON array or object"),
				 errhint("Each element of args_list is the args of one job: '[[1], [2]]' makes two jobs.")));
		old = MemoryContextSwitchTo(elem_cxt);
		a = ql_job_args(&spec, JsonbValueToJsonb(v));
		MemoryContextSwitchTo(old);
		args[i] = palloc(VARSIZE(a));
		memcpy(args[i], a, VARSIZE(a));
		MemoryContextReset(elem_cxt);
	}
	error_context_stack = errcb.previous;
	MemoryContextDelete(elem_cxt);

	if (keyed)
		ql_enqueue_keyed(c, &spec, args, keys, n, replace, ids);
	else
		ql_insert_rows(c, &spec, args, n, ids);
	for (i = 0; i < n; i++)
	{
		Datum		value = Int64GetDatum(ids[i]);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
	}
	return (Datum) 0;
}

/* the statements of qlater_retry and qlater_cancel, prepared on first use */
typedef enum QlJobStmt
{
	QL_JOB_LOCK,				/* a job's row, locked */
	QL_JOB_RETRY,				/* a dead job back to waiting */
	QL_JOB_CANCEL,				/* a job removed */
	QL_JOB_NUM_STMTS
} QlJobStmt;

static const QlStmtDef job_stmt_defs[QL_JOB_NUM_STMTS] = {
	[QL_JOB_LOCK] = {
		"SELECT role, dead, external FROM %1$s.qlater_job "
		"WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
		1, {INT8OID}
	},
	[QL_JOB_RETRY] = {
		"UPDATE %1$s.qlater_job SET dead = false, attempts = 0, crashes = 0, "
		"run_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1 "
		"RETURNING queue, role, key",
		1, {INT8OID}
	},
	[QL_JOB_CANCEL] = {
		"DELETE FROM %1$s.qlater_job WHERE id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	},
};

static QlStmtSet job_stmts = {job_stmt_defs, QL_JOB_NUM_STMTS, NULL, 0};

/*
 * ql_lock_job_row: lock a job's row and return its dead and external
 * flags.  Returns false if there is no such job.  Raises an error if the
 * job is another role's and the caller is no admin.  Caller is connected
 * to SPI and acts as the owner.
 */
static bool
ql_lock_job_row(const QlCatalog *c, int64 id, const QlUserSave *caller, bool *dead,
				bool *external)
{
	Datum		values[1];
	bool		isnull;
	char	   *role;

	values[0] = Int64GetDatum(id);
	if (ql_stmt_exec(&job_stmts, c, QL_JOB_LOCK, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read job");
	if (SPI_processed == 0)
		return false;
	role = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	*dead = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	*external = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));

	/* the check is about the caller, not the owner we act as */
	if (strcmp(role, GetUserNameFromId(caller->userid, false)) != 0)
	{
		Oid			admin = get_role_oid("qlater_admin", true);

		if (!superuser_arg(caller->userid) &&
			!(OidIsValid(admin) && is_member_of_role(caller->userid, admin)))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for job %lld", (long long) id),
					 errhint("Only the job's role, superusers and members of qlater_admin may change it.")));
	}
	return true;
}

/* qlater_retry(id bigint) returns boolean: put a dead job back as pending */
Datum
qlater_retry(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = PG_GETARG_INT64(0);
	QlUserSave	save;
	bool		dead;
	bool		external;
	bool		found;
	Datum		values[1];

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	found = ql_lock_job_row(c, id, &save, &dead, &external);
	if (found)
	{
		char	   *queue;

		if (!dead)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %lld is not dead", (long long) id),
					 errhint("Only dead jobs can be retried.")));

		values[0] = Int64GetDatum(id);
		if (ql_stmt_exec(&job_stmts, c, QL_JOB_RETRY, values, NULL, false, 0) !=
			SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not retry job");
		queue = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		/* back to waiting: its key, if another job has it now, is that one's */
		ql_key_settle_returned(c, id);
		/* a job of an external queue wakes a listener, as an enqueue does */
		if (external)
			ql_notify_listener(queue, id);
		ql_lower_frontier_at_commit(&ql_key_min);
		ql_wake_workers_at_commit(1, GetCurrentTransactionStartTimestamp());
	}
	SPI_finish();
	ql_restore_user(&save);
	PG_RETURN_BOOL(found);
}

/*
 * ql_older_than_cutoff: the time before which a job died longer than the
 * interval argument argno (older_than) ago, at now: an error for a NULL or
 * negative interval; -infinity for one too long to go back by (no job
 * died before 3000 BC).
 */
TimestampTz
ql_older_than_cutoff(FunctionCallInfo fcinfo, int argno, TimestampTz now)
{
	Interval   *older_than;
	Interval	longest;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("older_than must not be null"),
				 errhint("'0' takes every dead job.")));
	older_than = PG_GETARG_INTERVAL_P(argno);
	if (older_than->time < 0 || older_than->day < 0 || older_than->month < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("older_than must not be negative")));
	memset(&longest, 0, sizeof(longest));
	longest.month = 5000 * MONTHS_PER_YEAR;
	if (DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(older_than),
										  IntervalPGetDatum(&longest))) >= 0)
		return DT_NOBEGIN;
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
												   TimestampTzGetDatum(now),
												   IntervalPGetDatum(older_than)));
}

/* the most (queue, role)s whose keys a qlater_retry_dead settles */
#define QL_RETRY_KEY_GROUPS		64

/*
 * qlater_retry_dead(queue text, older_than interval) returns bigint: put
 * back as pending, due now, every dead job of queue (NULL: of every queue)
 * that died older_than ago or more, the caller's own (an admin's: every
 * role's), as qlater_retry puts back one: attempts and crashes reset,
 * last_error kept; workers woken, or listeners of an external queue.  One
 * statement, and no lock per job: a dead job holds no claim or slot.
 *
 * Keys are settled as qlater_retry settles one (ql_key_settle), but under
 * one lock per (queue, role) instead of one per key: the group lock, taken
 * without waiting in exclusive mode, which every taker of a key's lock
 * holds in share mode.  Under it no enqueue of these keys is under way, and
 * none begins before this transaction ends: a retried job keeps its key if
 * no other job of the key is alive (of several retried, the newest).  A
 * group whose lock cannot be had at once (an enqueue of one of its keys is
 * under way), or past the first QL_RETRY_KEY_GROUPS, gives its keys up, as
 * a job does whose key's lock is busy.
 */
Datum
qlater_retry_dead(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	TimestampTz cutoff = ql_older_than_cutoff(fcinfo, 1, GetCurrentTimestamp());
	QlUserSave	save;
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	Datum	   *gqueues;
	Datum	   *groles;
	int			ngroups = 0;
	int64		total = 0;
	int64		inserver = 0;
	int			notified = 0;
	uint64		r;

	values[0] = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	nulls[0] = PG_ARGISNULL(0) ? 'n' : ' ';
	values[1] = TimestampTzGetDatum(cutoff);
	/* the caller's own, unless an admin (the owner we act as is not the caller) */
	if (ql_is_admin())
		nulls[2] = 'n';
	else
		values[2] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetUserId(), false)));

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* the groups of the keyed ones: lock those we can, without waiting */
	/* under the latest snapshot, as the retry itself (a repeatable read) */
	if (ql_key_exec(c, QL_KEY_RETRY_GROUPS, values, nulls) != SPI_OK_SELECT)
		elog(ERROR, "could not read dead jobs");
	gqueues = palloc(sizeof(Datum) * Max(Min(SPI_processed, QL_RETRY_KEY_GROUPS), 1));
	groles = palloc(sizeof(Datum) * Max(Min(SPI_processed, QL_RETRY_KEY_GROUPS), 1));
	for (r = 0; r < SPI_processed && r < QL_RETRY_KEY_GROUPS; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *queue = SPI_getvalue(row, desc, 1);
		char	   *role = SPI_getvalue(row, desc, 2);
		LOCKTAG		tag;

		ql_set_key_group_locktag(&tag, queue, role);
		if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
			continue;
		gqueues[ngroups] = CStringGetTextDatum(queue);
		groles[ngroups] = DirectFunctionCall1(namein, CStringGetDatum(role));
		ngroups++;
	}
	values[3] = PointerGetDatum(construct_array(gqueues, ngroups, TEXTOID, -1, false,
												TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(groles, ngroups, NAMEOID, NAMEDATALEN,
												false, TYPALIGN_CHAR));

	/* under the latest snapshot: the jobs enqueued until the locks were had */
	if (ql_key_exec(c, QL_KEY_RETRY_DEAD, values, nulls) != SPI_OK_SELECT)
		elog(ERROR, "could not retry dead jobs");
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *queue = SPI_getvalue(row, desc, 1);
		bool		external = DatumGetBool(SPI_getbinval(row, desc, 2, &isnull));
		int64		n = DatumGetInt64(SPI_getbinval(row, desc, 3, &isnull));

		total += n;
		if (external)
		{
			ArrayType  *ids = DatumGetArrayTypeP(SPI_getbinval(row, desc, 4, &isnull));
			Datum	   *elems;
			int			nelems;
			int			i;

			/* wake listeners: one per job, a few at most */
			deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
							  TYPALIGN_DOUBLE, &elems, NULL, &nelems);
			for (i = 0; i < nelems && notified < QL_MAX_NOTIFY_PER_CALL; i++, notified++)
				ql_notify_listener(queue, DatumGetInt64(elems[i]));
		}
		else
			inserver += n;
	}
	SPI_finish();
	ql_restore_user(&save);
	if (inserver > 0)
	{
		ql_check_launcher();
		ql_lower_frontier_at_commit(&ql_key_min);
		ql_wake_workers_at_commit((int) Min(inserver, PG_INT32_MAX),
								  GetCurrentTransactionStartTimestamp());
	}
	PG_RETURN_INT64(total);
}

/*
 * qlater_cancel(id bigint) returns boolean: remove a job.  If a session
 * holds its claim (a worker running it), that attempt is interrupted when
 * this transaction commits; the worker then finds the job gone and rolls
 * its work back.
 *
 * The claim of a job that does not run is taken to exclude a claim until
 * this transaction ends, but only where the row's lock does not: a dead
 * job is claimed by nobody (workers, consumers and keyed enqueues pass
 * over dead rows), and a worker passes over a row that a transaction
 * still running changes (ql_row_being_changed), so the claim of an
 * in-server job is given back at once, once the row is deleted.  Only the
 * job of an external queue keeps it until the transaction ends: a
 * consumer's session claim reads the row, not its lock.  So a transaction
 * that cancels 100,000 in-server or dead jobs holds no lock per job
 * (the lock table would run out).
 */
Datum
qlater_cancel(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = PG_GETARG_INT64(0);
	QlUserSave	save;
	bool		dead;
	bool		external;
	bool		found;
	Datum		values[1];

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	found = ql_lock_job_row(c, id, &save, &dead, &external);
	if (found)
	{
		LOCKTAG		tag;
		bool		claimed = true;

		/* a job this session runs or holds: it ends, it is not cancelled */
		ql_set_job_locktag(&tag, id);
		if (LockHeldByMe(&tag, ExclusiveLock) && !ql_enqueue_holds(id))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %lld is held by this session", (long long) id),
					 errhint("A job cannot cancel itself: return from its handler to finish it, "
							 "or raise an error to fail it; a consumer finishes it with qlater_complete or qlater_fail.")));
		/*
		 * A claim we cannot take means the job is running (one a keyed
		 * enqueue of this transaction took is no run: the job waits).
		 */
		if (dead)
			claimed = false;
		else if (!ql_try_claim(id, false))
		{
			ql_cancel_running_at_commit(id);
			claimed = false;
		}
		else
		{
			/* a record of an old claim of ours on it, given up since, is no claim */
			ql_claims_forget(id);
		}
		ql_history_record(c, id, QL_OUTCOME_CANCELLED, 0, 0, 0);
		values[0] = Int64GetDatum(id);
		if (ql_stmt_exec(&job_stmts, c, QL_JOB_CANCEL, values, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not cancel job");
		/* the row's lock keeps the workers off it now (see above) */
		if (claimed && !external)
			LockRelease(&tag, ExclusiveLock, false);
		/* the job is gone: its slot of a limited queue (a lease's) too */
		ql_slot_release_at_commit(id);
	}
	SPI_finish();
	ql_restore_user(&save);
	PG_RETURN_BOOL(found);
}

/*
 * ql_lock_job_role: lock the current user's role against DROP ROLE and
 * ALTER ROLE ... RENAME TO until this transaction ends, as PostgreSQL locks
 * a role it records a dependency on: they wait for it, and then see its
 * jobs or schedules (ql_check_role_drop).
 */
void
ql_lock_job_role(void)
{
	ql_lock_role(GetUserId());
}

/*
 * ql_lock_role: the same for a role that a queue, or a grant on one, is
 * made for: DROP ROLE waits, and then sees it.
 */
void
ql_lock_role(Oid roleid)
{
	LockSharedObject(AuthIdRelationId, roleid, 0, AccessShareLock);
}

/*
 * ql_check_role_drop: refuse DROP ROLE, or ALTER ROLE ... RENAME TO
 * newname (NULL: a drop), of a role that has jobs or schedules in this
 * database.  They belong to their role by name: left behind, they would run
 * as a role created later under the same name.  Its outcomes in the
 * history are removed with it, or take the new name.
 * Called from the object access hook, in the dropping transaction; other
 * databases are not seen (README, Who may do what).
 */
void
ql_check_role_drop(Oid roleid, const char *newname)
{
	bool		rename = newname != NULL;
	const QlCatalog *c;
	char	   *name = GetUserNameFromId(roleid, true);
	QlUserSave	save;
	Oid			types[1] = {NAMEOID};
	Datum		values[1];
	int64		njobs;
	int64		nschedules;
	bool		isnull;

	if (name == NULL || !IsTransactionState() || (c = ql_catalog(true)) == NULL)
		return;
	/* wait for transactions that enqueue as the role; DROP ROLE takes it next */
	LockSharedObject(AuthIdRelationId, roleid, 0, AccessExclusiveLock);
	values[0] = DirectFunctionCall1(namein, CStringGetDatum(name));
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(psprintf("SELECT (SELECT count(*) FROM %1$s.qlater_job WHERE role = $1), "
									   "(SELECT count(*) FROM %1$s.qlater_schedule WHERE owner = $1) "
									   "+ (SELECT count(*) FROM %1$s.qlater_queue WHERE owner = $1) "
									   "+ (SELECT count(*) FROM %1$s.%2$s = $1)",
									   c->schema_quoted,
									   /* a database still at 0.1 has its consumers' table */
									   c->current ? "qlater_queue_grant WHERE grantee" :
									   "qlater_queue_consumer WHERE consumer"),
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the jobs of role \"%s\"", name);
	njobs = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	nschedules = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_finish();
	ql_restore_user(&save);
	if (njobs > 0 || nschedules > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 rename ?
				 errmsg("role \"%s\" cannot be renamed because it has qlater jobs, schedules or queues", name) :
				 errmsg("role \"%s\" cannot be dropped because it has qlater jobs, schedules or queues", name),
				 errdetail("%lld jobs and %lld schedules, queues or queue grants of database \"%s\" belong to the role.",
						   (long long) njobs, (long long) nschedules,
						   get_database_name(MyDatabaseId)),
				 errhint("Remove them first (qlater_cancel, qlater_unschedule, qlater_revoke_queue, or give the queues to another role): "
						 "they would pass to a role created later under the same name.")));

	/*
	 * Its outcomes in the history go with it, or take its new name: else a
	 * role created later under the name would see them
	 */
	if (c->current)
	{
		Datum		args[2];
		Oid			argtypes[2] = {NAMEOID, NAMEOID};

		args[0] = values[0];
		args[1] = rename ? DirectFunctionCall1(namein, CStringGetDatum(newname)) : (Datum) 0;
		ql_become_owner(c, &save);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args(rename ?
								  psprintf("UPDATE %s.qlater_outcome SET role = $2 "
										   "WHERE role OPERATOR(pg_catalog.=) $1", c->schema_quoted) :
								  psprintf("DELETE FROM %s.qlater_outcome "
										   "WHERE role OPERATOR(pg_catalog.=) $1", c->schema_quoted),
								  rename ? 2 : 1, argtypes, args, NULL, false, 0) < 0)
			elog(ERROR, "could not move the history of role \"%s\"", name);
		SPI_finish();
		ql_restore_user(&save);
	}
}

/*
 * qlater_workers(): one row per worker slot in use: its pid (NULL while
 * it starts), its database by name, its state, the job it runs and when
 * that attempt began, and since when it runs jobs without a pause.
 * States: 'starting' (the launcher started it, it is not yet at work),
 * 'idle' (waiting for jobs, or looking for them), 'running' (running jobs:
 * job_id is the one running now, NULL for a moment between the jobs of a
 * batch), 'stopping' (asked to leave its database once its job is done).
 */
Datum
qlater_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	typedef struct
	{
		pid_t		pid;
		Oid			dboid;
		bool		stopping;
		bool		idle;
		uint64		job;
		uint64		started;
		uint64		busy;
	}			QlWorkerRow;
	QlWorkerRow *rows;
	int			n = 0;
	int			i;

	ql_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	rows = palloc(sizeof(QlWorkerRow) * Max(ql_shared->nslots, 1));
	LWLockAcquire(ql_shared->lock, LW_SHARED);
	for (i = 0; i < ql_shared->nslots; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];
		QlWorkerRow *r = &rows[n];

		if (!OidIsValid(slot->dboid))
			continue;
		r->pid = slot->pid;
		r->dboid = slot->dboid;
		r->stopping = slot->stop_requested;
		r->idle = pg_atomic_read_u32(&slot->idle) != 0;
		r->job = pg_atomic_read_u64(&slot->job_id);
		pg_read_barrier();
		r->started = pg_atomic_read_u64(&slot->job_started);
		pg_read_barrier();
		if (pg_atomic_read_u64(&slot->job_id) != r->job)
			r->job = 0;
		r->busy = pg_atomic_read_u64(&slot->busy_since);
		n++;
	}
	LWLockRelease(ql_shared->lock);

	for (i = 0; i < n; i++)
	{
		QlWorkerRow *r = &rows[i];
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};
		char	   *datname = get_database_name(r->dboid);
		const char *state;

		if (r->pid == 0)
			state = "starting";
		else if (r->stopping)
			state = "stopping";
		else if (r->idle && r->job == 0)
			state = "idle";
		else
			state = "running";
		values[0] = Int32GetDatum(r->pid);
		nulls[0] = (r->pid == 0);
		if (datname != NULL)
			values[1] = DirectFunctionCall1(namein, CStringGetDatum(datname));
		nulls[1] = (datname == NULL);
		values[2] = CStringGetTextDatum(state);
		values[3] = Int64GetDatum((int64) r->job);
		nulls[3] = (r->job == 0 || r->pid == 0);
		values[4] = TimestampTzGetDatum((TimestampTz) r->started);
		nulls[4] = nulls[3];
		values[5] = TimestampTzGetDatum((TimestampTz) r->busy);
		nulls[5] = (r->busy == 0 || r->pid == 0 || state[0] == 'i');
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * qlater_wake_launcher(): called by the install script, so that workers
 * start in this database once CREATE EXTENSION commits.
 */
Datum
qlater_wake_launcher(PG_FUNCTION_ARGS)
{
	if (ql_shared == NULL)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("qlater is not loaded via \"shared_preload_libraries\""),
				 errhint("Add qlater to shared_preload_libraries and restart the server; "
						 "until then no job runs.")));
	else
		ql_wake_launcher_at_commit();
	PG_RETURN_VOID();
}
