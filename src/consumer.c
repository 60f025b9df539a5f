/*-------------------------------------------------------------------------
 *
 * consumer.c
 *		Queues served by applications: declaring them, granting consumers,
 *		and the claim protocol external consumers follow over SQL.
 *
 * Two ways to claim.  Session mode, Que's way: a session-level advisory
 * lock in qlater's key space, the same one the in-server workers use; it
 * vanishes with the session, and is released only when the transaction
 * that completed or failed the job commits.  Lease mode, for connection
 * poolers that break session state: the claim is a token and a lease time
 * recorded on the job; any session presenting the token may finish it, and
 * a lease that runs out makes the job claimable again.
 *
 * Wake-up: a session calls qlater_listen(queue) to LISTEN on a channel of
 * its own ("qlater_<pid>") and to be recorded in shared memory as a
 * listener of that queue; an enqueue into the queue NOTIFYs one listener
 * (round robin), at commit, and only if someone listens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "api.h"
#include "catalog.h"
#include "consumer.h"
#include "job.h"
#include "qlater.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(qlater_create_queue);
PG_FUNCTION_INFO_V1(qlater_grant_queue);
PG_FUNCTION_INFO_V1(qlater_revoke_queue);
PG_FUNCTION_INFO_V1(qlater_lock);
PG_FUNCTION_INFO_V1(qlater_complete);
PG_FUNCTION_INFO_V1(qlater_fail);
PG_FUNCTION_INFO_V1(qlater_unlock);
PG_FUNCTION_INFO_V1(qlater_extend);
PG_FUNCTION_INFO_V1(qlater_listen);

#define QL_MAX_LOCK_JOBS	1000

static bool listener_exit_registered = false;

/* ql_spi_connect: connect to SPI or fail */
static void
ql_spi_connect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/* ql_current_user_name: name of the current user */
static char *
ql_current_user_name(void)
{
	return GetUserNameFromId(GetUserId(), false);
}

/*
 * ql_queue_info: whether a queue is declared, and its owner and kind.
 * Caller is connected to SPI and acts as the owner of the tables.
 */
static bool
ql_queue_info(const QlCatalog *c, const char *queue, bool for_update,
			  char **owner, bool *external)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;

	values[0] = CStringGetTextDatum(queue);
	if (SPI_execute_with_args(psprintf("SELECT owner, external FROM %s.qlater_queue "
									   "WHERE name = $1%s", c->schema_quoted,
									   for_update ? " FOR UPDATE" : ""),
							  1, types, values, NULL, !for_update, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read queue");
	if (SPI_processed == 0)
		return false;
	*owner = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	*external = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/*
 * ql_queue_is_external: whether jobs of this queue are served by
 * applications.
 */
bool
ql_queue_is_external(const QlCatalog *c, const char *queue)
{
	QlUserSave	save;
	char	   *owner;
	bool		external = false;

	ql_become_owner(c, &save);
	ql_spi_connect();
	if (!ql_queue_info(c, queue, false, &owner, &external))
		external = false;
	SPI_finish();
	ql_restore_user(&save);
	return external;
}

/*
 * ql_consumer_allowed: whether role me may consume the queue, and whether
 * the queue is external at all.  Caller is connected to SPI and acts as the
 * owner of the tables.
 */
static bool
ql_consumer_allowed(const QlCatalog *c, const char *queue, const char *me,
					bool admin, bool *external)
{
	char	   *owner;
	Datum		values[2];

	if (!ql_queue_info(c, queue, false, &owner, external) || !*external)
	{
		*external = false;
		return false;
	}
	if (admin || strcmp(owner, me) == 0)
		return true;
	values[0] = CStringGetTextDatum(queue);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(me));
	if (SPI_execute_with_args(psprintf("SELECT FROM %s.qlater_queue_consumer "
									   "WHERE queue = $1 AND consumer = $2",
									   c->schema_quoted),
							  2, (Oid[]) {TEXTOID, NAMEOID}, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read queue consumers");
	return SPI_processed > 0;
}

/* ql_consumer_error: raise the error for a queue one may not consume */
static void
ql_consumer_error(const char *queue, bool external)
{
	if (!external)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("queue \"%s\" is not an external queue", queue),
				 errhint("Declare it with qlater_create_queue('%s', external => true).", queue)));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for queue \"%s\"", queue),
			 errhint("The queue's owner grants consumers with qlater_grant_queue().")));
}

/*
 * ql_check_consumer: raise an error unless queue is an external queue the
 * current user may consume: its owner, a granted consumer, or an admin.
 */
static void
ql_check_consumer(const QlCatalog *c, const char *queue)
{
	QlUserSave	save;
	char	   *me = ql_current_user_name();
	bool		admin = ql_is_admin();
	bool		external;
	bool		allowed;

	ql_become_owner(c, &save);
	ql_spi_connect();
	allowed = ql_consumer_allowed(c, queue, me, admin, &external);
	SPI_finish();
	ql_restore_user(&save);
	if (!allowed)
		ql_consumer_error(queue, external);
}

/*
 * ql_check_batch: raise an error for batch options out of range, or given
 * for an external queue.
 */
static void
ql_check_batch(FunctionCallInfo fcinfo, bool external)
{
	if (!PG_ARGISNULL(2))
	{
		int32		size = PG_GETARG_INT32(2);

		if (size < 1 || size > QL_MAX_BATCH)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batch_size %d is out of range", size),
					 errhint("A batch has 1 to %d jobs, each in a subtransaction; "
							 "1 commits every job alone.", QL_MAX_BATCH)));
		if (external && size > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("an external queue cannot have batches"),
					 errhint("Batches are for queues served by the in-server workers; "
							 "applications commit their jobs themselves.")));
	}
	if (!PG_ARGISNULL(3))
	{
		Interval   *d = PG_GETARG_INTERVAL_P(3);

		if (d->month != 0 || d->day != 0 || d->time <= 0 ||
			d->time > QL_MAX_BATCH_DELAY_MS * INT64CONST(1000))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batch_delay must be more than 0 and at most %d ms",
							QL_MAX_BATCH_DELAY_MS)));
	}
}

/*
 * qlater_create_queue(name text, external boolean, batch_size int,
 *					   batch_delay interval) returns void
 *
 * Declares a queue, or changes it: whether it is external, and how the
 * workers batch its jobs (NULL keeps the current setting; a new queue
 * starts with batch_size 1 and batch_delay 20 ms).  The creating role
 * owns it; only its owner or an admin may change it.  A queue that holds
 * other roles' jobs ('default' always counts as such) can be turned
 * external only by an admin, since its jobs would leave the workers.
 */
Datum
qlater_create_queue(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue;
	bool		external;
	char	   *me = ql_current_user_name();
	bool		admin = ql_is_admin();
	QlUserSave	save;
	char	   *owner;
	bool		was_external;
	bool		exists;
	Oid			types[5] = {TEXTOID, BOOLOID, NAMEOID, INT4OID, INTERVALOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue name and external must not be null")));
	queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	external = PG_GETARG_BOOL(1);
	ql_check_queue_name(queue);
	ql_check_batch(fcinfo, external);

	ql_become_owner(c, &save);
	ql_spi_connect();
	exists = ql_queue_info(c, queue, true, &owner, &was_external);
	if (exists && strcmp(owner, me) != 0 && !admin)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of queue \"%s\"", queue)));
	if (external && !(exists && was_external) && !admin)
	{
		bool		others;

		values[0] = CStringGetTextDatum(queue);
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(me));
		if (SPI_execute_with_args(psprintf("SELECT FROM %s.qlater_job "
										   "WHERE queue = $1 AND role <> $2 LIMIT 1",
										   c->schema_quoted),
								  2, (Oid[]) {TEXTOID, NAMEOID}, values, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read jobs");
		others = SPI_processed > 0;
		if (others || strcmp(queue, "default") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("cannot make queue \"%s\" external", queue),
					 errdetail("The queue holds or takes jobs of other roles, which would leave the in-server workers."),
					 errhint("Use a queue of your own, or ask a member of qlater_admin.")));
	}

	values[0] = CStringGetTextDatum(queue);
	values[1] = BoolGetDatum(external);
	values[2] = DirectFunctionCall1(namein, CStringGetDatum(me));
	values[3] = PG_GETARG_DATUM(2);
	nulls[3] = PG_ARGISNULL(2) ? 'n' : ' ';
	values[4] = PG_GETARG_DATUM(3);
	nulls[4] = PG_ARGISNULL(3) ? 'n' : ' ';
	/* an external queue has no batches */
	if (SPI_execute_with_args(psprintf("INSERT INTO %s.qlater_queue AS q "
									   "(name, external, owner, batch_size, batch_delay) "
									   "VALUES ($1, $2, $3, coalesce($4, 1), coalesce($5, '20 ms')) "
									   "ON CONFLICT (name) DO UPDATE SET external = excluded.external, "
									   "batch_size = CASE WHEN excluded.external THEN 1 "
									   "ELSE coalesce($4, q.batch_size) END, "
									   "batch_delay = coalesce($5, q.batch_delay)",
									   c->schema_quoted),
							  5, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not declare queue");
	/* the queue's jobs change hands */
	if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_job SET external = $2 "
									   "WHERE queue = $1 AND external <> $2",
									   c->schema_quoted),
							  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not move the jobs of queue \"%s\"", queue);
	SPI_finish();
	ql_restore_user(&save);

	/* jobs of a queue turned internal are now the workers' */
	ql_lower_frontier_at_commit(&ql_key_min);
	ql_wake_workers_at_commit(1);
	PG_RETURN_VOID();
}

/*
 * ql_change_consumer: grant or revoke; returns whether a row changed.
 */
static bool
ql_change_consumer(FunctionCallInfo fcinfo, bool grant)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Name		consumer = PG_GETARG_NAME(1);
	QlUserSave	save;
	char	   *owner;
	bool		external;
	bool		changed;
	Datum		values[2];
	char	   *me = ql_current_user_name();
	bool		admin = ql_is_admin();

	if (grant)
		(void) get_role_oid(NameStr(*consumer), false);

	ql_become_owner(c, &save);
	ql_spi_connect();
	if (!ql_queue_info(c, queue, true, &owner, &external))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("queue \"%s\" does not exist", queue),
				 errhint("Declare it with qlater_create_queue('%s', external => true).", queue)));
	if (strcmp(owner, me) != 0 && !admin)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of queue \"%s\"", queue)));
	values[0] = CStringGetTextDatum(queue);
	values[1] = NameGetDatum(consumer);
	if (SPI_execute_with_args(grant ?
							  psprintf("INSERT INTO %s.qlater_queue_consumer VALUES ($1, $2) "
									   "ON CONFLICT DO NOTHING", c->schema_quoted) :
							  psprintf("DELETE FROM %s.qlater_queue_consumer "
									   "WHERE queue = $1 AND consumer = $2", c->schema_quoted),
							  2, (Oid[]) {TEXTOID, NAMEOID}, values, NULL, false, 0) < 0)
		elog(ERROR, "could not change queue consumers");
	changed = SPI_processed > 0;
	SPI_finish();
	ql_restore_user(&save);
	return changed;
}

/* qlater_grant_queue(queue text, consumer name) returns void */
Datum
qlater_grant_queue(PG_FUNCTION_ARGS)
{
	(void) ql_change_consumer(fcinfo, true);
	PG_RETURN_VOID();
}

/* qlater_revoke_queue(queue text, consumer name) returns boolean */
Datum
qlater_revoke_queue(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(ql_change_consumer(fcinfo, false));
}

/*
 * ql_claim_external: try to claim one job for an external consumer.  In
 * session mode the claim is a session lock; in lease mode a transaction
 * lock guards the row while its lease is written.  Caller is connected to
 * SPI and acts as the owner.
 */
static bool
ql_claim_external(const QlCatalog *c, int64 id, const Interval *lease)
{
	LOCKTAG		tag;
	Datum		values[2];

	ql_set_job_locktag(&tag, id);
	if (LockHeldByMe(&tag, ExclusiveLock))
		return false;			/* ours already */
	if (!ql_try_claim(id, lease == NULL))
		return false;

	/* re-read under a fresh snapshot: it may be done, or leased */
	values[0] = Int64GetDatum(id);
	if (SPI_execute_with_args(psprintf("SELECT FROM %s.qlater_job WHERE id = $1 "
									   "AND external AND NOT dead AND run_at <= now() "
									   "AND (lease_until IS NULL OR lease_until < now())",
									   c->schema_quoted),
							  1, (Oid[]) {INT8OID}, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read job");
	if (SPI_processed == 0)
	{
		LockRelease(&tag, ExclusiveLock, lease == NULL);
		return false;
	}
	if (lease != NULL)
	{
		values[1] = IntervalPGetDatum(lease);
		if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_job SET claim_token = gen_random_uuid(), "
										   "lease_until = now() + $2 WHERE id = $1",
										   c->schema_quoted),
								  2, (Oid[]) {INT8OID, INTERVALOID}, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not lease job");
	}
	return true;
}

/*
 * qlater_lock(queue text, max_jobs int, lease interval)
 *		returns setof qlater_jobs
 *
 * Claims up to max_jobs ready jobs of an external queue in (priority,
 * run_at, id) order, never waiting on other consumers' claims.
 */
Datum
qlater_lock(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const QlCatalog *c = ql_catalog(false);
	char	   *queue;
	int32		max_jobs;
	Interval   *lease = NULL;
	QlUserSave	save;
	int64	   *claimed;
	int			nclaimed = 0;
	int			limit;
	int			round;
	Datum	   *ids;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue and max_jobs must not be null")));
	queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	max_jobs = PG_GETARG_INT32(1);
	if (max_jobs < 1 || max_jobs > QL_MAX_LOCK_JOBS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_jobs must be between 1 and %d", QL_MAX_LOCK_JOBS)));
	if (!PG_ARGISNULL(2))
	{
		lease = PG_GETARG_INTERVAL_P(2);
		if (lease->month < 0 || lease->day < 0 || lease->time < 0 ||
			(lease->month == 0 && lease->day == 0 && lease->time == 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("lease must be positive")));
	}
	ql_check_consumer(c, queue);
	InitMaterializedSRF(fcinfo, 0);

	claimed = palloc(sizeof(int64) * max_jobs);
	limit = max_jobs * 2 + 16;
	ql_become_owner(c, &save);
	ql_spi_connect();
	for (round = 0; round < 3 && nclaimed < max_jobs; round++)
	{
		Datum		values[2];
		uint64		n;
		uint64		k;
		int64	   *cand;

		values[0] = CStringGetTextDatum(queue);
		values[1] = Int32GetDatum(limit);
		if (SPI_execute_with_args(psprintf("SELECT id FROM %s.qlater_job "
										   "WHERE queue = $1 AND external AND NOT dead AND run_at <= now() "
										   "AND (lease_until IS NULL OR lease_until < now()) "
										   "ORDER BY priority, run_at, id LIMIT $2",
										   c->schema_quoted),
								  2, (Oid[]) {TEXTOID, INT4OID}, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look for jobs");
		n = SPI_processed;
		cand = palloc(sizeof(int64) * (n + 1));
		for (k = 0; k < n; k++)
		{
			bool		isnull;

			cand[k] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k],
												  SPI_tuptable->tupdesc, 1, &isnull));
		}
		for (k = 0; k < n && nclaimed < max_jobs; k++)
		{
			if (ql_claim_external(c, cand[k], lease))
				claimed[nclaimed++] = cand[k];
		}
		if (n < (uint64) limit)
			break;
		limit *= 8;
	}
	SPI_finish();
	ql_restore_user(&save);

	if (nclaimed == 0)
		return (Datum) 0;

	/* the rows, as the caller sees them */
	ids = palloc(sizeof(Datum) * nclaimed);
	for (i = 0; i < nclaimed; i++)
		ids[i] = Int64GetDatum(claimed[i]);
	ql_spi_connect();
	{
		Datum		values[1];
		uint64		k;

		values[0] = PointerGetDatum(construct_array(ids, nclaimed, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		if (SPI_execute_with_args(psprintf("SELECT * FROM %s.qlater_jobs WHERE id = ANY ($1) "
										   "ORDER BY priority, run_at, id", c->schema_quoted),
								  1, (Oid[]) {INT8ARRAYOID}, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read claimed jobs");
		for (k = 0; k < SPI_processed; k++)
		{
			Datum	   *vals = palloc(sizeof(Datum) * rsinfo->setDesc->natts);
			bool	   *nulls = palloc(sizeof(bool) * rsinfo->setDesc->natts);

			heap_deform_tuple(SPI_tuptable->vals[k], SPI_tuptable->tupdesc, vals, nulls);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, vals, nulls);
		}
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * ql_finish_check: lock a claimed job's row and check that the caller may
 * finish it: it consumes the queue, and holds the session claim or
 * presents the lease's token.  Returns attempts and max_attempts.  Caller
 * is connected to SPI and acts as the owner; me and admin describe the
 * caller.
 */
static void
ql_finish_check(const QlCatalog *c, int64 id, pg_uuid_t *token,
				const char *me, bool admin, int32 *attempts, int32 *max_attempts)
{
	Datum		values[1];
	bool		isnull;
	char	   *queue;
	Datum		d;
	bool		token_null;
	bool		external;

	values[0] = Int64GetDatum(id);
	if (SPI_execute_with_args(psprintf("SELECT queue, claim_token, attempts, max_attempts "
									   "FROM %s.qlater_job WHERE id = $1 FOR UPDATE",
									   c->schema_quoted),
							  1, (Oid[]) {INT8OID}, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read job");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job %lld does not exist", (long long) id),
				 errhint("It may have been completed or cancelled already.")));
	queue = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &token_null);
	*attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	*max_attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));

	if (!ql_consumer_allowed(c, queue, me, admin, &external))
		ql_consumer_error(queue, external);

	if (token == NULL)
	{
		LOCKTAG		tag;

		ql_set_job_locktag(&tag, id);
		if (!LockHeldByMe(&tag, ExclusiveLock))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %lld is not claimed by this session", (long long) id),
					 errhint("Claim jobs with qlater_lock(); in lease mode, pass the claim token.")));
	}
	else if (token_null || memcmp(DatumGetUUIDP(d), token, sizeof(pg_uuid_t)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("claim token does not match job %lld", (long long) id),
				 errhint("The lease may have run out and the job been claimed again.")));
}

/*
 * ql_finish_begin: the start of complete, fail, unlock and extend: act as
 * the owner, connect to SPI, lock the job's row and check the caller may
 * finish it (ql_finish_check).  Undo with SPI_finish and ql_restore_user.
 */
static void
ql_finish_begin(const QlCatalog *c, int64 id, pg_uuid_t *token, QlUserSave *save,
				int32 *attempts, int32 *max_attempts)
{
	char	   *me = ql_current_user_name();
	bool		admin = ql_is_admin();

	ql_become_owner(c, save);
	ql_spi_connect();
	ql_finish_check(c, id, token, me, admin, attempts, max_attempts);
}

/* ql_token_arg: the optional token argument n, or NULL */
static pg_uuid_t *
ql_token_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : PG_GETARG_UUID_P(n);
}

/* ql_id_arg: the job id argument, never null */
static int64
ql_id_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job id must not be null")));
	return PG_GETARG_INT64(0);
}

/* qlater_complete(id bigint, token uuid) returns void */
Datum
qlater_complete(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = ql_id_arg(fcinfo);
	pg_uuid_t  *token = ql_token_arg(fcinfo, 1);
	QlUserSave	save;
	int32		attempts;
	int32		max_attempts;
	Datum		values[1];

	ql_finish_begin(c, id, token, &save, &attempts, &max_attempts);
	values[0] = Int64GetDatum(id);
	if (SPI_execute_with_args(psprintf("DELETE FROM %s.qlater_job WHERE id = $1", c->schema_quoted),
							  1, (Oid[]) {INT8OID}, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not complete job");
	SPI_finish();
	ql_restore_user(&save);
	if (token == NULL)
		ql_release_claim_at_commit(id);
	PG_RETURN_VOID();
}

/*
 * qlater_fail(id bigint, error text, retry_at timestamptz, token uuid)
 *		returns void
 */
Datum
qlater_fail(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = ql_id_arg(fcinfo);
	char	   *error;
	pg_uuid_t  *token = ql_token_arg(fcinfo, 3);
	QlUserSave	save;
	int32		attempts;
	int32		max_attempts;
	bool		dead;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	Datum		values[5];

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("error must not be null")));
	error = text_to_cstring(PG_GETARG_TEXT_PP(1));

	ql_finish_begin(c, id, token, &save, &attempts, &max_attempts);
	attempts++;
	dead = attempts >= max_attempts;
	values[0] = Int64GetDatum(id);
	values[1] = Int32GetDatum(attempts);
	values[2] = JsonbPGetDatum(ql_error_json_fields(NULL, error, NULL, NULL, NULL, attempts, now));
	values[3] = TimestampTzGetDatum(dead ? now :
									PG_ARGISNULL(2) ? ql_retry_time(attempts, now) :
									PG_GETARG_TIMESTAMPTZ(2));
	values[4] = BoolGetDatum(dead);
	if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_job SET attempts = $2, last_error = $3, "
									   "run_at = $4, dead = $5, claim_token = NULL, "
									   "lease_until = NULL WHERE id = $1", c->schema_quoted),
							  5, (Oid[]) {INT8OID, INT4OID, JSONBOID, TIMESTAMPTZOID, BOOLOID},
							  values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the failure of job %lld", (long long) id);
	SPI_finish();
	ql_restore_user(&save);
	if (token == NULL)
		ql_release_claim_at_commit(id);
	PG_RETURN_VOID();
}

/* qlater_unlock(id bigint, token uuid) returns void: give a claim back */
Datum
qlater_unlock(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = ql_id_arg(fcinfo);
	pg_uuid_t  *token = ql_token_arg(fcinfo, 1);
	QlUserSave	save;
	int32		attempts;
	int32		max_attempts;
	Datum		values[1];

	ql_finish_begin(c, id, token, &save, &attempts, &max_attempts);
	if (token != NULL)
	{
		values[0] = Int64GetDatum(id);
		if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_job SET claim_token = NULL, "
										   "lease_until = NULL WHERE id = $1", c->schema_quoted),
								  1, (Oid[]) {INT8OID}, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not unlock job");
	}
	SPI_finish();
	ql_restore_user(&save);
	if (token == NULL)
		ql_release_claim(id);
	PG_RETURN_VOID();
}

/* qlater_extend(id bigint, token uuid, lease interval) returns timestamptz */
Datum
qlater_extend(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = PG_GETARG_INT64(0);
	pg_uuid_t  *token = PG_GETARG_UUID_P(1);
	Interval   *lease = PG_GETARG_INTERVAL_P(2);
	QlUserSave	save;
	int32		attempts;
	int32		max_attempts;
	Datum		values[2];
	bool		isnull;
	TimestampTz until;

	if (lease->month < 0 || lease->day < 0 || lease->time < 0 ||
		(lease->month == 0 && lease->day == 0 && lease->time == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be positive")));
	ql_finish_begin(c, id, token, &save, &attempts, &max_attempts);
	values[0] = Int64GetDatum(id);
	values[1] = IntervalPGetDatum(lease);
	if (SPI_execute_with_args(psprintf("UPDATE %s.qlater_job SET lease_until = now() + $2 "
									   "WHERE id = $1 RETURNING lease_until", c->schema_quoted),
							  2, (Oid[]) {INT8OID, INTERVALOID}, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not extend lease");
	until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	ql_restore_user(&save);
	PG_RETURN_TIMESTAMPTZ(until);
}

/* ql_listener_exit: forget this session's listener entries */
static void
ql_listener_exit(int code, Datum arg)
{
	int			i;

	if (ql_shared == NULL)
		return;
	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < QL_MAX_LISTENERS; i++)
	{
		if (ql_shared->listeners[i].pid == MyProcPid)
			ql_shared->listeners[i].dboid = InvalidOid;
	}
	LWLockRelease(ql_shared->lock);
}

/*
 * qlater_listen(queue text) returns text: LISTEN for jobs of an external
 * queue on this session's own channel (from commit on), which is returned.
 */
Datum
qlater_listen(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char		channel[NAMEDATALEN];
	int			i;
	int			free_slot = -1;
	bool		found = false;

	ql_require_preload();
	ql_check_consumer(c, queue);
	snprintf(channel, sizeof(channel), "qlater_%d", MyProcPid);

	if (!listener_exit_registered)
	{
		before_shmem_exit(ql_listener_exit, (Datum) 0);
		listener_exit_registered = true;
	}
	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < QL_MAX_LISTENERS; i++)
	{
		QlListener *l = &ql_shared->listeners[i];

		if (!OidIsValid(l->dboid))
		{
			if (free_slot < 0)
				free_slot = i;
		}
		else if (l->pid == MyProcPid && l->dboid == MyDatabaseId &&
				 strcmp(l->queue, queue) == 0)
			found = true;
	}
	if (!found && free_slot >= 0)
	{
		QlListener *l = &ql_shared->listeners[free_slot];

		l->dboid = MyDatabaseId;
		l->pid = MyProcPid;
		strlcpy(l->queue, queue, NAMEDATALEN);
	}
	LWLockRelease(ql_shared->lock);
	if (!found && free_slot < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many sessions listen for qlater jobs"),
				 errdetail("At most %d sessions listen at once.", QL_MAX_LISTENERS),
				 errhint("Consumers can poll qlater_lock() instead.")));

	Async_Listen(channel);
	PG_RETURN_TEXT_P(cstring_to_text(channel));
}

/*
 * ql_notify_listener: at commit of the current transaction, wake one
 * session listening for jobs of this queue, if any listens.
 */
void
ql_notify_listener(const char *queue, int64 job_id)
{
	int			matches[QL_MAX_LISTENERS];
	int			n = 0;
	int			i;
	char		channel[NAMEDATALEN];
	pid_t		pid;
	StringInfoData payload;

	if (ql_shared == NULL)
		return;
	LWLockAcquire(ql_shared->lock, LW_SHARED);
	for (i = 0; i < QL_MAX_LISTENERS; i++)
	{
		QlListener *l = &ql_shared->listeners[i];

		if (l->dboid == MyDatabaseId && strcmp(l->queue, queue) == 0)
			matches[n++] = i;
	}
	if (n == 0)
	{
		LWLockRelease(ql_shared->lock);
		return;
	}
	pid = ql_shared->listeners[matches[pg_atomic_fetch_add_u32(&ql_shared->notify_next, 1) % n]].pid;
	LWLockRelease(ql_shared->lock);

	snprintf(channel, sizeof(channel), "qlater_%d", (int) pid);
	initStringInfo(&payload);
	appendStringInfoString(&payload, "{\"queue\": ");
	escape_json(&payload, queue);
	appendStringInfo(&payload, ", \"id\": %lld}", (long long) job_id);
	Async_Notify(channel, payload.data);
}
