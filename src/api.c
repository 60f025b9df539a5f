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

#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "api.h"
#include "args.h"
#include "catalog.h"
#include "consumer.h"
#include "handlers.h"
#include "qlater.h"
#include "queue.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(qlater_register);
PG_FUNCTION_INFO_V1(qlater_unregister);
PG_FUNCTION_INFO_V1(qlater_enqueue);
PG_FUNCTION_INFO_V1(qlater_enqueue_many);
PG_FUNCTION_INFO_V1(qlater_retry);
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
 * ql_check_queue_name: raise an error for an empty or overlong queue name,
 * or one with control characters (which would reach the server log as they
 * are, in messages that name the queue)
 */
void
ql_check_queue_name(const char *queue)
{
	const char *p;

	if (queue[0] == '\0' || strlen(queue) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid queue name \"%s\"", queue),
				 errhint("A queue name has 1 to %d bytes.", NAMEDATALEN - 1)));
	for (p = queue; *p; p++)
	{
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
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

/* the enqueue statements, prepared once per catalog generation */
typedef struct QlEnqueuePlans
{
	uint32		generation;
	SPIPlanPtr	one;			/* one row: VALUES */
	SPIPlanPtr	many;			/* one row per element of a jsonb[] */
} QlEnqueuePlans;

static QlEnqueuePlans enqueue_plans;

/* ql_prepare_enqueue: (re)prepare the enqueue statements if needed */
static void
ql_prepare_enqueue(const QlCatalog *c)
{
	Oid			types[10] = {TEXTOID, TEXTOID, JSONBOID, INT4OID,
	TIMESTAMPTZOID, INT4OID, INTERVALOID, NAMEOID, BOOLOID, INT8OID};
	const char *columns = "(queue, handler, args, priority, run_at, max_attempts, timeout, role, external, schedule_id)";
	SPIPlanPtr	one;
	SPIPlanPtr	many;

	if (enqueue_plans.one != NULL && enqueue_plans.generation == c->generation)
		return;
	one = ql_prepare_kept(psprintf("INSERT INTO %s.qlater_job %s "
								   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
								   c->schema_quoted, columns),
						  10, types, CURSOR_OPT_GENERIC_PLAN);
	types[2] = JSONBARRAYOID;
	many = ql_prepare_kept(psprintf("INSERT INTO %s.qlater_job %s "
									"SELECT $1, $2, a, $4, $5, $6, $7, $8, $9, $10 "
									"FROM pg_catalog.unnest($3) WITH ORDINALITY AS u (a, n) "
									"ORDER BY n RETURNING id",
									c->schema_quoted, columns),
						   10, types, CURSOR_OPT_GENERIC_PLAN);
	if (enqueue_plans.one != NULL)
	{
		SPI_freeplan(enqueue_plans.one);
		SPI_freeplan(enqueue_plans.many);
	}
	enqueue_plans.one = one;
	enqueue_plans.many = many;
	enqueue_plans.generation = c->generation;
}

/*
 * ql_insert_rows: write n job rows (n >= 1), alike but for their args, as
 * the tables' owner; the new ids go to ids[], in order.  Jobs of an
 * in-server queue wake idle workers at commit.  The caller has checked
 * everything.
 */
static void
ql_insert_rows(const QlCatalog *c, const QlJobSpec *spec, Jsonb **args,
			   int n, int64 *ids)
{
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	QlUserSave	save;
	int			i;
	bool		isnull;

	ql_lock_job_role();
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
	values[7] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	values[8] = BoolGetDatum(spec->external);
	values[9] = Int64GetDatum(spec->schedule_id);
	nulls[9] = spec->schedule_id != 0 ? ' ' : 'n';

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ql_prepare_enqueue(c);
	if (SPI_execute_plan(n == 1 ? enqueue_plans.one : enqueue_plans.many,
						 values, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != (uint64) n)
		elog(ERROR, "could not enqueue jobs");
	for (i = 0; i < n; i++)
		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	ql_restore_user(&save);

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
		Oid			proc = ql_resolve_handler(name, &h);
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
 * qlater_enqueue(handler text, args jsonb, run_at timestamptz, queue text,
 *				  priority int, max_attempts int) returns bigint
 *
 * Writes the job in the caller's transaction.
 */
Datum
qlater_enqueue(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	QlJobSpec	spec;
	Jsonb	   *args;
	int64		id;

	ql_arg_not_null(fcinfo, 1, "args");
	ql_job_spec(fcinfo, c, &spec);
	args = ql_job_args(&spec, PG_GETARG_JSONB_P(1));
	ql_insert_rows(c, &spec, &args, 1, &id);
	PG_RETURN_INT64(id);
}

/* error context of qlater_enqueue_many: which element failed */
static void
ql_many_context(void *arg)
{
	errcontext("element %d of args_list", *(int *) arg + 1);
}

/*
 * qlater_enqueue_many(handler text, args_list jsonb, run_at timestamptz,
 *					   queue text, priority int, max_attempts int)
 *		returns setof bigint
 *
 * One job per element of the JSON array args_list, alike but for their
 * args, written by one statement; returns their ids in the order of
 * args_list.  All or none: a bad element fails the call.
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
	int64	   *ids;
	MemoryContext elem_cxt;
	MemoryContext old;
	ErrorContextCallback errcb;

	ql_arg_not_null(fcinfo, 1, "args_list");
	list = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_ARRAY(list) || JB_ROOT_IS_SCALAR(list))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("args_list must be a JSON array"),
				 errhint("Each element of args_list is the args of one job, e.g. '[[1], [2], {\"x\": 3}]'.")));
	ql_job_spec(fcinfo, c, &spec);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	n = JB_ROOT_COUNT(list);
	if (n == 0)
		return (Datum) 0;
	if ((Size) n > MaxAllocSize / sizeof(Datum))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("args_list has too many elements")));
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

	ql_insert_rows(c, &spec, args, n, ids);
	for (i = 0; i < n; i++)
	{
		Datum		value = Int64GetDatum(ids[i]);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
	}
	return (Datum) 0;
}

/*
 * ql_lock_job_row: lock a job's row and return its role and dead flag.
 * Returns false if there is no such job.  Raises an error if the job is
 * another role's and the caller is no admin.  Caller is connected to SPI
 * and acts as the owner.
 */
static bool
ql_lock_job_row(const QlCatalog *c, int64 id, const QlUserSave *caller, bool *dead)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	bool		isnull;
	char	   *role;

	values[0] = Int64GetDatum(id);
	if (SPI_execute_with_args(psprintf("SELECT role, dead FROM %s.qlater_job "
									   "WHERE id = $1 FOR UPDATE", c->schema_quoted),
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read job");
	if (SPI_processed == 0)
		return false;
	role = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	*dead = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

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
	bool		found;
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	found = ql_lock_job_row(c, id, &save, &dead);
	if (found)
	{
		if (!dead)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %lld is not dead", (long long) id),
					 errhint("Only dead jobs can be retried.")));
		values[0] = Int64GetDatum(id);
		if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_job SET dead = false, "
										   "attempts = 0, crashes = 0, run_at = now() "
										   "WHERE id = $1", c->schema_quoted),
								  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not retry job");
		ql_lower_frontier_at_commit(&ql_key_min);
		ql_wake_workers_at_commit(1, GetCurrentTransactionStartTimestamp());
	}
	SPI_finish();
	ql_restore_user(&save);
	PG_RETURN_BOOL(found);
}

/*
 * qlater_cancel(id bigint) returns boolean: remove a job.  If a session
 * holds its claim (a worker running it), that attempt is interrupted when
 * this transaction commits; the worker then finds the job gone and rolls
 * its work back.
 */
Datum
qlater_cancel(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = PG_GETARG_INT64(0);
	QlUserSave	save;
	bool		dead;
	bool		found;
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	found = ql_lock_job_row(c, id, &save, &dead);
	if (found)
	{
		LOCKTAG		tag;

		/* a job this session runs or holds: it ends, it is not cancelled */
		ql_set_job_locktag(&tag, id);
		if (LockHeldByMe(&tag, ExclusiveLock))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %lld is held by this session", (long long) id),
					 errhint("A job cannot cancel itself: return from its handler to finish it, "
							 "or raise an error to fail it; a consumer finishes it with qlater_complete or qlater_fail.")));
		/* a claim we cannot take means the job is running */
		if (!ql_try_claim(id, false))
			ql_cancel_running_at_commit(id);
		values[0] = Int64GetDatum(id);
		if (SPI_execute_with_args(psprintf("DELETE FROM %s.qlater_job WHERE id = $1",
										   c->schema_quoted),
								  1, types, values, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not cancel job");
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
 * ql_check_role_drop: refuse DROP ROLE, or ALTER ROLE ... RENAME TO, of a
 * role that has jobs or schedules in this database.  They belong to their
 * role by name: left behind, they would run as a role created later under
 * the same name.
 * Called from the object access hook, in the dropping transaction; other
 * databases are not seen (README, Who may do what).
 */
void
ql_check_role_drop(Oid roleid, bool rename)
{
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
}

/* qlater_workers(): one row per running worker */
Datum
qlater_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	ql_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < ql_shared->nslots; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		pid_t		pid = slot->pid;
		uint64		job = pg_atomic_read_u64(&slot->job_id);

		if (pid == 0)
			continue;
		values[0] = Int32GetDatum(pid);
		values[1] = ObjectIdGetDatum(slot->dboid);
		values[2] = Int64GetDatum((int64) job);
		nulls[2] = (job == 0);
		values[3] = BoolGetDatum(pg_atomic_read_u32(&slot->idle) != 0);
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
