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
 * recorded on the job; any session presenting the token may finish it
 * while the lease holds, and a lease that runs out makes the job claimable
 * again.  Whoever claims it then voids the old token (a session-mode claim
 * clears it from the row, a lease writes a new one): at no time can two
 * consumers finish the same job.
 *
 * Wake-up: a session calls qlater_listen(queue) to LISTEN on a channel of
 * its own ("qlater_<pid>") and to be recorded in shared memory as a
 * listener of that queue, both when its transaction commits; an enqueue
 * into the queue NOTIFYs one listener (round robin), at commit, and only if
 * someone listens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/json.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
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

/*
 * The statements of this module.  Each is prepared on its first use in a
 * backend, planned once (a generic plan: they look rows up by key, and the
 * claim order is an index's order) and kept, until the catalog is loaded
 * again (the extension was dropped and created again, or its tables
 * changed: catalog.c), when they are prepared anew.
 *
 * They run as the owner of the tables but under the caller's search_path,
 * so every name in them is schema-qualified, operators, functions and
 * types included: a schema of the caller's listed before pg_catalog must
 * not slip its own "=" or now() into them.  %1$s is qlater's schema.
 */
typedef enum QlConsumerStmt
{
	QL_STMT_QUEUE,				/* a queue's owner and kind */
	QL_STMT_QUEUE_LOCK,			/* the same, locking the queue's row */
	QL_STMT_CONSUMER,			/* may role $2 consume queue $1 (QL_ACCESS) */
	QL_STMT_OTHERS_JOBS,		/* has queue $1 jobs of roles other than $2 */
	QL_STMT_DECLARE,			/* create or change a queue */
	QL_STMT_MOVE_JOBS,			/* a queue's jobs change hands */
	QL_STMT_GRANT,
	QL_STMT_REVOKE,
	QL_STMT_CANDIDATES,			/* QL_ACCESS, and ready jobs in claim order */
	QL_STMT_CLAIM,				/* re-read a job just claimed */
	QL_STMT_TAKE_OVER,			/* void the lapsed lease of a job just claimed */
	QL_STMT_LEASE,				/* lease a job just claimed */
	QL_STMT_FINISH,				/* lock a job's row: QL_FINISH_ROW */
	QL_STMT_COMPLETE,			/* delete a job's row: QL_FINISH_ROW */
	QL_STMT_FAIL,
	QL_STMT_UNLEASE,
	QL_STMT_EXTEND,
	QL_NUM_STMTS
} QlConsumerStmt;

typedef struct QlStmtDef
{
	const char *sql;
	int			nargs;
	Oid			types[5];
} QlStmtDef;

/*
 * Whether role $2 may consume the queue of row q of qlater_queue ($3: the
 * role is an admin): QL_NOT_EXTERNAL, QL_DENIED or QL_ALLOWED (an
 * undeclared queue gives no row: not external either).
 */
#define QL_NOT_EXTERNAL	0
#define QL_DENIED		1
#define QL_ALLOWED		2
#define QL_ACCESS \
	"CASE WHEN NOT q.external THEN 0 " \
	"WHEN $3 OR q.owner OPERATOR(pg_catalog.=) $2 " \
	"OR EXISTS (SELECT FROM %1$s.qlater_queue_consumer c " \
	"WHERE c.queue OPERATOR(pg_catalog.=) q.name " \
	"AND c.consumer OPERATOR(pg_catalog.=) $2) THEN 2 ELSE 1 END"

/*
 * What ql_finish_begin checks of job j: its claim token, attempts,
 * max_attempts, queue, whether role $2 may consume that queue, and the end
 * of its lease.
 */
#define QL_FINISH_ROW \
	"j.claim_token, j.attempts, j.max_attempts, j.queue, " \
	"(SELECT " QL_ACCESS " FROM %1$s.qlater_queue q " \
	"WHERE q.name OPERATOR(pg_catalog.=) j.queue), j.lease_until"

/* a job that may be claimed now */
#define QL_CLAIMABLE \
	"external AND NOT dead AND run_at OPERATOR(pg_catalog.<=) pg_catalog.now() " \
	"AND (lease_until IS NULL OR lease_until OPERATOR(pg_catalog.<) pg_catalog.now())"

/*
 * A job just claimed, as the row qlater_jobs shows it to the claimer:
 * 'running', and held by this session (a lease's claim holds a transaction
 * lock until the claiming transaction ends).  Columns 1, 5 and 6 are id,
 * priority and run_at, 16 the claim token.
 */
#define QL_CLAIMED_ROW \
	"id, queue, handler, args, priority, run_at, attempts, max_attempts, " \
	"last_error, 'running'::pg_catalog.text, role, timeout, crashes, " \
	"enqueued_at, pg_catalog.pg_backend_pid(), claim_token, lease_until"

static const QlStmtDef stmt_defs[QL_NUM_STMTS] = {
	[QL_STMT_QUEUE] = {
		"SELECT owner, external FROM %1$s.qlater_queue "
		"WHERE name OPERATOR(pg_catalog.=) $1",
		1, {TEXTOID}
	},
	[QL_STMT_QUEUE_LOCK] = {
		"SELECT owner, external FROM %1$s.qlater_queue "
		"WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
		1, {TEXTOID}
	},
	[QL_STMT_CONSUMER] = {
		"SELECT " QL_ACCESS " FROM %1$s.qlater_queue q "
		"WHERE q.name OPERATOR(pg_catalog.=) $1",
		3, {TEXTOID, NAMEOID, BOOLOID}
	},
	[QL_STMT_OTHERS_JOBS] = {
		"SELECT FROM %1$s.qlater_job WHERE queue OPERATOR(pg_catalog.=) $1 "
		"AND role OPERATOR(pg_catalog.<>) $2 LIMIT 1",
		2, {TEXTOID, NAMEOID}
	},
	[QL_STMT_DECLARE] = {
		"INSERT INTO %1$s.qlater_queue AS q (name, external, owner, batch_size, batch_delay) "
		"VALUES ($1, $2, $3, coalesce($4, 1), coalesce($5, '20 ms')) "
		"ON CONFLICT (name) DO UPDATE SET external = excluded.external, "
		/* an external queue has no batches */
		"batch_size = CASE WHEN excluded.external THEN 1 ELSE coalesce($4, q.batch_size) END, "
		"batch_delay = coalesce($5, q.batch_delay)",
		5, {TEXTOID, BOOLOID, NAMEOID, INT4OID, INTERVALOID}
	},
	[QL_STMT_MOVE_JOBS] = {
		"UPDATE %1$s.qlater_job SET external = $2 "
		"WHERE queue OPERATOR(pg_catalog.=) $1 AND external OPERATOR(pg_catalog.<>) $2",
		2, {TEXTOID, BOOLOID}
	},
	[QL_STMT_GRANT] = {
		"INSERT INTO %1$s.qlater_queue_consumer (queue, consumer) VALUES ($1, $2) "
		"ON CONFLICT DO NOTHING",
		2, {TEXTOID, NAMEOID}
	},
	[QL_STMT_REVOKE] = {
		"DELETE FROM %1$s.qlater_queue_consumer "
		"WHERE queue OPERATOR(pg_catalog.=) $1 AND consumer OPERATOR(pg_catalog.=) $2",
		2, {TEXTOID, NAMEOID}
	},
	[QL_STMT_CANDIDATES] = {
		"SELECT (SELECT " QL_ACCESS " FROM %1$s.qlater_queue q "
		"WHERE q.name OPERATOR(pg_catalog.=) $1), "
		"ARRAY(SELECT id FROM %1$s.qlater_job WHERE queue OPERATOR(pg_catalog.=) $1 "
		"AND " QL_CLAIMABLE " ORDER BY priority, run_at, id LIMIT $4)",
		4, {TEXTOID, NAMEOID, BOOLOID, INT4OID}
	},
	[QL_STMT_CLAIM] = {
		"SELECT " QL_CLAIMED_ROW " FROM %1$s.qlater_job "
		"WHERE id OPERATOR(pg_catalog.=) $1 AND " QL_CLAIMABLE,
		1, {INT8OID}
	},
	/*
	 * The row is locked first without waiting: a row locked by the holder
	 * of the lapsed lease, finishing it, is that holder's still.
	 */
	[QL_STMT_TAKE_OVER] = {
		"UPDATE %1$s.qlater_job SET claim_token = NULL, lease_until = NULL "
		"WHERE id OPERATOR(pg_catalog.=) $1 AND " QL_CLAIMABLE
		" AND EXISTS (SELECT FROM %1$s.qlater_job l "
		"WHERE l.id OPERATOR(pg_catalog.=) $1 FOR UPDATE SKIP LOCKED) "
		"RETURNING " QL_CLAIMED_ROW,
		1, {INT8OID}
	},
	[QL_STMT_LEASE] = {
		"UPDATE %1$s.qlater_job SET claim_token = pg_catalog.gen_random_uuid(), "
		"lease_until = pg_catalog.now() OPERATOR(pg_catalog.+) $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1 AND " QL_CLAIMABLE
		" RETURNING " QL_CLAIMED_ROW,
		2, {INT8OID, INTERVALOID}
	},
	[QL_STMT_FINISH] = {
		"SELECT " QL_FINISH_ROW " FROM %1$s.qlater_job j "
		"WHERE j.id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
		3, {INT8OID, NAMEOID, BOOLOID}
	},
	[QL_STMT_COMPLETE] = {
		"DELETE FROM %1$s.qlater_job j WHERE j.id OPERATOR(pg_catalog.=) $1 "
		"RETURNING " QL_FINISH_ROW,
		3, {INT8OID, NAMEOID, BOOLOID}
	},
	[QL_STMT_FAIL] = {
		"UPDATE %1$s.qlater_job SET attempts = $2, last_error = $3, run_at = $4, "
		"dead = $5, claim_token = NULL, lease_until = NULL "
		"WHERE id OPERATOR(pg_catalog.=) $1",
		5, {INT8OID, INT4OID, JSONBOID, TIMESTAMPTZOID, BOOLOID}
	},
	[QL_STMT_UNLEASE] = {
		"UPDATE %1$s.qlater_job SET claim_token = NULL, lease_until = NULL "
		"WHERE id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	},
	[QL_STMT_EXTEND] = {
		"UPDATE %1$s.qlater_job "
		"SET lease_until = pg_catalog.now() OPERATOR(pg_catalog.+) $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1 RETURNING lease_until",
		2, {INT8OID, INTERVALOID}
	},
};

/* the prepared statements, and the catalog generation they were made for */
static SPIPlanPtr stmt_plans[QL_NUM_STMTS];
static uint32 stmt_generation = 0;

/* a job claimed by qlater_lock, kept until the rows are sorted */
typedef struct QlClaimed
{
	int32		priority;
	TimestampTz run_at;
	int64		id;
	HeapTuple	row;			/* as qlater_jobs shows it */
} QlClaimed;

/* what ql_finish_begin found out about the job to finish */
typedef struct QlFinish
{
	int64		id;
	pg_uuid_t  *token;			/* NULL in session mode */
	QlUserSave	save;
	int32		attempts;
	int32		max_attempts;
} QlFinish;

/*
 * Listening takes effect at commit, as LISTEN does.  qlater_listen records
 * the queue here; the transaction's pre-commit adds the session's entries
 * in shared memory (earlier, a notifier could pick a session that does not
 * listen yet, or never will, and wake nobody) and remembers where, so that
 * an abort after all takes them back.  A subtransaction rolled back takes
 * its requests with it.
 */
typedef struct QlPendingListen
{
	char		queue[NAMEDATALEN];
	int			nest_level;		/* of the (sub)transaction that asked */
} QlPendingListen;

static List *pending_listens = NIL; /* in TopTransactionContext */
static int	added_listeners[QL_MAX_LISTENERS];	/* entries added at
												 * pre-commit */
static int	nadded_listeners = 0;
static bool listen_callbacks_registered = false;
static bool listener_exit_registered = false;

/* ql_spi_connect: connect to SPI or fail */
static void
ql_spi_connect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/*
 * ql_exec_nulls: run statement s of catalog c (preparing it on first use)
 * with the given parameters (nulls as SPI takes them); returns SPI's result
 * code.  Caller is connected to SPI.
 */
static int
ql_exec_nulls(const QlCatalog *c, QlConsumerStmt s, Datum *values,
			  const char *nulls, bool read_only, long count)
{
	if (stmt_generation != c->generation)
	{
		int			i;

		for (i = 0; i < QL_NUM_STMTS; i++)
		{
			if (stmt_plans[i] != NULL)
				SPI_freeplan(stmt_plans[i]);
			stmt_plans[i] = NULL;
		}
		stmt_generation = c->generation;
	}
	if (stmt_plans[s] == NULL)
	{
		const QlStmtDef *d = &stmt_defs[s];

		stmt_plans[s] = ql_prepare_kept(psprintf(d->sql, c->schema_quoted),
										d->nargs, (Oid *) d->types,
										CURSOR_OPT_GENERIC_PLAN);
	}
	return SPI_execute_plan(stmt_plans[s], values, nulls, read_only, count);
}

/* ql_exec: ql_exec_nulls without null values */
static int
ql_exec(const QlCatalog *c, QlConsumerStmt s, Datum *values, bool read_only,
		long count)
{
	return ql_exec_nulls(c, s, values, NULL, read_only, count);
}

/* ql_name_datum: a name value of a C string */
static Datum
ql_name_datum(const char *s)
{
	return DirectFunctionCall1(namein, CStringGetDatum(s));
}

/* ql_current_user_name: name of the current user */
static char *
ql_current_user_name(void)
{
	return GetUserNameFromId(GetUserId(), false);
}

/*
 * ql_queue_info: whether a queue is declared, and its owner and kind;
 * for_update locks its row.  Caller is connected to SPI and acts as the
 * owner of the tables.
 */
static bool
ql_queue_info(const QlCatalog *c, const char *queue, bool for_update,
			  char **owner, bool *external)
{
	Datum		values[1];
	bool		isnull;

	values[0] = CStringGetTextDatum(queue);
	if (ql_exec(c, for_update ? QL_STMT_QUEUE_LOCK : QL_STMT_QUEUE, values,
				!for_update, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read queue");
	if (SPI_processed == 0)
		return false;
	*owner = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	*external = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/*
 * Whether queues are external, cached per backend (every enqueue asks):
 * dropped when qlater_queue's cache is invalidated, which
 * qlater_create_queue does for the rows it writes.
 */
typedef struct QlExternalEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	bool		external;
} QlExternalEntry;

static HTAB *external_cache = NULL;
static Oid	external_cache_relid = InvalidOid;
static uint32 external_cache_generation = 0;
static bool external_cache_valid = false;

static void
ql_external_cache_inval(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == external_cache_relid)
		external_cache_valid = false;
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
	QlExternalEntry *entry;
	bool		found;

	if (!external_cache_valid || external_cache_generation != c->generation)
	{
		HASHCTL		ctl;

		if (external_cache == NULL)
			CacheRegisterRelcacheCallback(ql_external_cache_inval, (Datum) 0);
		else
			hash_destroy(external_cache);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(QlExternalEntry);
		external_cache = hash_create("qlater external queues", 16, &ctl,
									 HASH_ELEM | HASH_STRINGS);
		external_cache_relid = get_relname_relid("qlater_queue", c->schema_oid);
		external_cache_generation = c->generation;
		/* valid from before the read: an invalidation meanwhile is kept */
		external_cache_valid = true;
	}
	if (strlen(queue) >= NAMEDATALEN)
		return false;			/* no such queue: names are checked */
	entry = hash_search(external_cache, queue, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->external;

	ql_become_owner(c, &save);
	ql_spi_connect();
	if (!ql_queue_info(c, queue, false, &owner, &external))
		external = false;
	SPI_finish();
	ql_restore_user(&save);
	entry = hash_search(external_cache, queue, HASH_ENTER, &found);
	entry->external = external;
	return external;
}

/*
 * ql_access_error: raise the error for a queue one may not consume, given
 * QL_ACCESS of it (NULL for a queue never declared); return if allowed.
 */
static void
ql_access_error(const char *queue, Datum access, bool isnull)
{
	if (isnull || DatumGetInt32(access) == QL_NOT_EXTERNAL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("queue \"%s\" is not an external queue", queue),
				 errhint("Declare it with qlater_create_queue('%s', external => true).", queue)));
	if (DatumGetInt32(access) != QL_ALLOWED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for queue \"%s\"", queue),
				 errhint("The queue's owner grants consumers with qlater_grant_queue().")));
}

/*
 * ql_check_consumer: raise an error unless queue is an external queue the
 * role named me may consume: its owner, a granted consumer, or an admin
 * (admin: the role is a superuser or a member of qlater_admin).  Caller is
 * connected to SPI and acts as the owner of the tables.
 */
static void
ql_check_consumer(const QlCatalog *c, const char *queue, const char *me,
				  bool admin)
{
	Datum		values[3];
	Datum		access = (Datum) 0;
	bool		isnull = true;

	values[0] = CStringGetTextDatum(queue);
	values[1] = ql_name_datum(me);
	values[2] = BoolGetDatum(admin);
	if (ql_exec(c, QL_STMT_CONSUMER, values, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read queue consumers");
	if (SPI_processed > 0)
		access = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	ql_access_error(queue, access, isnull);
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
	uint64		moved;
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
	/* either way, a queue holding other roles' jobs changes hands by an admin */
	if (!admin && (external ? !(exists && was_external) : (exists && was_external)))
	{
		bool		others;

		values[0] = CStringGetTextDatum(queue);
		values[1] = ql_name_datum(me);
		if (ql_exec(c, QL_STMT_OTHERS_JOBS, values, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read jobs");
		others = SPI_processed > 0;
		if (others || (external && strcmp(queue, "default") == 0))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 external ?
					 errmsg("cannot make queue \"%s\" external", queue) :
					 errmsg("cannot make queue \"%s\" in-server", queue),
					 external ?
					 errdetail("The queue holds or takes jobs of other roles, which would leave the in-server workers.") :
					 errdetail("The queue holds jobs of other roles, which the in-server workers would run as those roles."),
					 errhint("Use a queue of your own, or ask a member of qlater_admin.")));
	}

	values[0] = CStringGetTextDatum(queue);
	values[1] = BoolGetDatum(external);
	values[2] = ql_name_datum(me);
	values[3] = PG_GETARG_DATUM(2);
	nulls[3] = PG_ARGISNULL(2) ? 'n' : ' ';
	values[4] = PG_GETARG_DATUM(3);
	nulls[4] = PG_ARGISNULL(3) ? 'n' : ' ';
	if (ql_exec_nulls(c, QL_STMT_DECLARE, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not declare queue");
	/* every backend reads the queue's settings again */
	CacheInvalidateRelcacheByRelid(get_relname_relid("qlater_queue", c->schema_oid));
	/* the queue's jobs change hands */
	if (ql_exec(c, QL_STMT_MOVE_JOBS, values, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not move the jobs of queue \"%s\"", queue);
	moved = SPI_processed;
	SPI_finish();
	ql_restore_user(&save);
	if (exists && was_external && !external && moved > 0)
		ereport(NOTICE,
				(errmsg("%llu jobs of queue \"%s\" are the in-server workers' now",
						(unsigned long long) moved, queue),
				 errdetail("A job runs only if its handler is the signature of a registered handler; "
						   "the others end dead, and qlater_retry runs them once the queue is external again.")));

	/* jobs of a queue turned internal are now the workers' */
	ql_lower_frontier_at_commit(&ql_key_min);
	ql_wake_workers_at_commit(1, GetCurrentTransactionStartTimestamp());
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
	if (ql_exec(c, grant ? QL_STMT_GRANT : QL_STMT_REVOKE, values, false, 0) < 0)
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

/* ql_check_lease: raise an error unless a lease interval is positive */
static void
ql_check_lease(const Interval *lease)
{
	if (lease->month < 0 || lease->day < 0 || lease->time < 0 ||
		(lease->month == 0 && lease->day == 0 && lease->time == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be positive")));
}

/*
 * ql_check_row_type: the rows of QL_CLAIMED_ROW must be rows of
 * qlater_jobs, the result type of qlater_lock.
 */
static void
ql_check_row_type(TupleDesc row, TupleDesc result)
{
	int			i;

	if (row->natts != result->natts)
		elog(ERROR, "claimed job has %d columns, qlater_jobs %d",
			 row->natts, result->natts);
	for (i = 0; i < row->natts; i++)
	{
		if (TupleDescAttr(row, i)->atttypid != TupleDescAttr(result, i)->atttypid)
			elog(ERROR, "column %d of a claimed job does not match qlater_jobs", i + 1);
	}
}

/*
 * ql_claim_external: try to claim one job for an external consumer; on
 * success fill *out, its row copied into the caller's memory.  In session
 * mode the claim is a session lock; in lease mode a transaction lock guards
 * the row while its lease is written.  Caller is connected to SPI and acts
 * as the owner; result is the row type of qlater_lock.
 */
static bool
ql_claim_external(const QlCatalog *c, int64 id, Interval *lease,
				  TupleDesc result, QlClaimed *out)
{
	LOCKTAG		tag;
	Datum		values[2];
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	bool		ok;

	ql_set_job_locktag(&tag, id);
	if (LockHeldByMe(&tag, ExclusiveLock))
		return false;			/* ours already */
	if (!ql_try_claim(id, lease == NULL))
		return false;

	/*
	 * Read the job again, or lease it, under a fresh snapshot: it may have
	 * been finished by the session whose claim we just followed.
	 */
	values[0] = Int64GetDatum(id);
	if (lease == NULL)
	{
		ok = ql_exec(c, QL_STMT_CLAIM, values, false, 1) == SPI_OK_SELECT;

		/*
		 * A claimable job that still has a token had a lease that ran out.
		 * Void the token, so that its holder can no longer finish the job
		 * this session now holds.  Only then does a session-mode claim
		 * write to the job.
		 */
		if (ok && SPI_processed > 0)
		{
			(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								 16, &isnull);
			if (!isnull)
				ok = ql_exec(c, QL_STMT_TAKE_OVER, values, false, 0) ==
					SPI_OK_UPDATE_RETURNING;
		}
	}
	else
	{
		values[1] = IntervalPGetDatum(lease);
		ok = ql_exec(c, QL_STMT_LEASE, values, false, 0) == SPI_OK_UPDATE_RETURNING;
	}
	if (!ok)
		elog(ERROR, "could not claim job %lld", (long long) id);
	if (SPI_processed == 0)
	{
		LockRelease(&tag, ExclusiveLock, lease == NULL);
		return false;
	}
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	ql_check_row_type(desc, result);
	out->id = id;
	out->priority = DatumGetInt32(SPI_getbinval(row, desc, 5, &isnull));
	out->run_at = DatumGetTimestampTz(SPI_getbinval(row, desc, 6, &isnull));
	out->row = SPI_copytuple(row);
	return true;
}

/* ql_claimed_cmp: qsort order of claimed jobs: (priority, run_at, id) */
static int
ql_claimed_cmp(const void *a, const void *b)
{
	const QlClaimed *x = (const QlClaimed *) a;
	const QlClaimed *y = (const QlClaimed *) b;

	if (x->priority != y->priority)
		return x->priority < y->priority ? -1 : 1;
	if (x->run_at != y->run_at)
		return x->run_at < y->run_at ? -1 : 1;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return 0;
}

/*
 * qlater_lock(queue text, max_jobs int, lease interval)
 *		returns setof qlater_jobs
 *
 * Claims up to max_jobs ready jobs of an external queue in (priority,
 * run_at, id) order, never waiting on other consumers' claims, and returns
 * them in that order.
 */
Datum
qlater_lock(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const QlCatalog *c = ql_catalog(false);
	char	   *queue;
	int32		max_jobs;
	Interval   *lease = NULL;
	char	   *me = ql_current_user_name();
	bool		admin = ql_is_admin();
	QlUserSave	save;
	QlClaimed  *claimed;
	int			nclaimed = 0;
	int			limit;
	int			round;
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
		ql_check_lease(lease);
	}
	InitMaterializedSRF(fcinfo, 0);

	claimed = palloc(sizeof(QlClaimed) * max_jobs);
	limit = max_jobs * 2 + 16;
	ql_become_owner(c, &save);
	ql_spi_connect();
	for (round = 0; round < 3 && nclaimed < max_jobs; round++)
	{
		Datum		values[4];
		Datum		access;
		bool		isnull;
		ArrayType  *ids;
		Datum	   *cand;
		int			n;
		int			k;

		/* whether the caller may consume the queue comes with the candidates */
		values[0] = CStringGetTextDatum(queue);
		values[1] = ql_name_datum(me);
		values[2] = BoolGetDatum(admin);
		values[3] = Int32GetDatum(limit);
		if (ql_exec(c, QL_STMT_CANDIDATES, values, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not look for jobs");
		access = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		ql_access_error(queue, access, isnull);
		ids = DatumGetArrayTypePCopy(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 2, &isnull));
		SPI_freetuptable(SPI_tuptable);
		deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
						  TYPALIGN_DOUBLE, &cand, NULL, &n);
		for (k = 0; k < n && nclaimed < max_jobs; k++)
		{
			if (ql_claim_external(c, DatumGetInt64(cand[k]), lease,
								  rsinfo->setDesc, &claimed[nclaimed]))
				nclaimed++;
		}
		if (n < limit)
			break;
		/* every candidate was claimed by others: look further */
		limit *= 8;
	}
	SPI_finish();
	ql_restore_user(&save);

	/* a later round may have found jobs that come first */
	qsort(claimed, nclaimed, sizeof(QlClaimed), ql_claimed_cmp);
	for (i = 0; i < nclaimed; i++)
		tuplestore_puttuple(rsinfo->setResult, claimed[i].row);
	return (Datum) 0;
}

/*
 * ql_finish_begin: the start of complete, fail, unlock and extend: act as
 * the owner, connect to SPI, run statement s on the job's row (it locks or
 * deletes the row and returns QL_FINISH_ROW) and check that the caller may
 * finish the job: it consumes the job's queue, and holds the session claim
 * or presents the lease's token.  An error here undoes what s did, with the
 * (sub)transaction.  Fills *f; undo with ql_finish_leave.
 */
static void
ql_finish_begin(QlFinish *f, const QlCatalog *c, int64 id, pg_uuid_t *token,
				QlConsumerStmt s, int expected)
{
	char	   *me = ql_current_user_name();
	bool		admin = ql_is_admin();
	Datum		values[3];
	HeapTuple	row;
	TupleDesc	desc;
	Datum		d;
	Datum		access;
	Datum		until;
	bool		token_null;
	bool		until_null;
	bool		isnull;

	f->id = id;
	f->token = token;
	ql_become_owner(c, &f->save);
	ql_spi_connect();

	values[0] = Int64GetDatum(id);
	values[1] = ql_name_datum(me);
	values[2] = BoolGetDatum(admin);
	if (ql_exec(c, s, values, false, 1) != expected)
		elog(ERROR, "could not read job");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job %lld does not exist", (long long) id),
				 errhint("It may have been completed or cancelled already.")));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	d = SPI_getbinval(row, desc, 1, &token_null);
	f->attempts = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
	f->max_attempts = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
	access = SPI_getbinval(row, desc, 5, &isnull);
	ql_access_error(SPI_getvalue(row, desc, 4), access, isnull);
	until = SPI_getbinval(row, desc, 6, &until_null);

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

	/*
	 * A lease that ran out is no claim any more, even if no one has claimed
	 * the job since: someone may do so at any moment, unseen by the row
	 * this transaction locked or deleted.  The clock, not the transaction's
	 * start, decides: the finishing transaction may have begun long ago.
	 */
	else if (until_null || DatumGetTimestampTz(until) < GetCurrentTimestamp())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lease of job %lld has run out", (long long) id),
				 errhint("Renew long leases with qlater_extend() before they run out; "
						 "the job may be claimed again.")));
}

/* ql_finish_leave: undo ql_finish_begin: leave SPI and the owner's identity */
static void
ql_finish_leave(QlFinish *f)
{
	SPI_finish();
	ql_restore_user(&f->save);
}

/*
 * ql_finish_job: the end of complete and fail, once the job is removed or
 * rescheduled: ql_finish_leave, and in session mode release the claim when
 * this transaction commits (a rollback keeps it).
 */
static void
ql_finish_job(QlFinish *f)
{
	ql_finish_leave(f);
	if (f->token == NULL)
		ql_release_claim_at_commit(f->id);
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
	QlFinish	f;

	/* the row is checked as it is deleted: an error undoes the delete */
	ql_finish_begin(&f, c, id, token, QL_STMT_COMPLETE, SPI_OK_DELETE_RETURNING);
	ql_finish_job(&f);
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
	QlFinish	f;
	int32		attempts;
	bool		dead;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	Datum		values[5];

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("error must not be null")));
	error = text_to_cstring(PG_GETARG_TEXT_PP(1));

	ql_finish_begin(&f, c, id, token, QL_STMT_FINISH, SPI_OK_SELECT);
	attempts = f.attempts + 1;
	dead = attempts >= f.max_attempts;
	values[0] = Int64GetDatum(id);
	values[1] = Int32GetDatum(attempts);
	values[2] = JsonbPGetDatum(ql_error_json_fields(NULL, error, NULL, NULL, NULL, attempts, now));
	values[3] = TimestampTzGetDatum(dead ? now :
									PG_ARGISNULL(2) ? ql_retry_time(attempts, now) :
									PG_GETARG_TIMESTAMPTZ(2));
	values[4] = BoolGetDatum(dead);
	if (ql_exec(c, QL_STMT_FAIL, values, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the failure of job %lld", (long long) id);
	ql_finish_job(&f);
	PG_RETURN_VOID();
}

/* qlater_unlock(id bigint, token uuid) returns void: give a claim back */
Datum
qlater_unlock(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = ql_id_arg(fcinfo);
	pg_uuid_t  *token = ql_token_arg(fcinfo, 1);
	QlFinish	f;
	Datum		values[1];

	ql_finish_begin(&f, c, id, token, QL_STMT_FINISH, SPI_OK_SELECT);
	if (token != NULL)
	{
		values[0] = Int64GetDatum(id);
		if (ql_exec(c, QL_STMT_UNLEASE, values, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not unlock job %lld", (long long) id);
	}
	ql_finish_leave(&f);
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
	QlFinish	f;
	Datum		values[2];
	bool		isnull;
	TimestampTz until;

	ql_check_lease(lease);
	ql_finish_begin(&f, c, id, token, QL_STMT_FINISH, SPI_OK_SELECT);
	values[0] = Int64GetDatum(id);
	values[1] = IntervalPGetDatum(lease);
	if (ql_exec(c, QL_STMT_EXTEND, values, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not extend the lease of job %lld", (long long) id);
	until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	ql_finish_leave(&f);
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
 * ql_listener_index: the entry of this session for a queue, or -1.  Caller
 * holds ql_shared->lock.
 */
static int
ql_listener_index(const char *queue)
{
	int			i;

	for (i = 0; i < QL_MAX_LISTENERS; i++)
	{
		QlListener *l = &ql_shared->listeners[i];

		if (l->pid == MyProcPid && l->dboid == MyDatabaseId &&
			strcmp(l->queue, queue) == 0)
			return i;
	}
	return -1;
}

/* ql_too_many_listeners: the error when every listener entry is taken */
static void
ql_too_many_listeners(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("too many sessions listen for qlater jobs"),
			 errdetail("At most %d listeners are recorded at once, a session counting once for each queue it listens to.",
					   QL_MAX_LISTENERS),
			 errhint("Consumers can poll qlater_lock() instead.")));
}

/*
 * ql_listen_add_pending: at pre-commit, record the session's new listener
 * entries in shared memory.  An error here aborts the transaction, and the
 * abort takes back the entries added so far.
 */
static void
ql_listen_add_pending(void)
{
	ListCell   *lc;

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	foreach(lc, pending_listens)
	{
		QlPendingListen *p = (QlPendingListen *) lfirst(lc);
		int			i;

		if (ql_listener_index(p->queue) >= 0)
			continue;
		for (i = 0; i < QL_MAX_LISTENERS; i++)
		{
			if (!OidIsValid(ql_shared->listeners[i].dboid))
				break;
		}
		if (i == QL_MAX_LISTENERS)
		{
			LWLockRelease(ql_shared->lock);
			ql_too_many_listeners();
		}
		ql_shared->listeners[i].dboid = MyDatabaseId;
		ql_shared->listeners[i].pid = MyProcPid;
		strlcpy(ql_shared->listeners[i].queue, p->queue, NAMEDATALEN);
		added_listeners[nadded_listeners++] = i;
	}
	LWLockRelease(ql_shared->lock);
}

/* ql_listen_remove_added: take back the entries added at pre-commit */
static void
ql_listen_remove_added(void)
{
	int			i;

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < nadded_listeners; i++)
	{
		QlListener *l = &ql_shared->listeners[added_listeners[i]];

		if (l->pid == MyProcPid)
			l->dboid = InvalidOid;
	}
	LWLockRelease(ql_shared->lock);
}

/* ql_listen_xact_callback: carry out or forget the pending listens */
static void
ql_listen_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (pending_listens != NIL)
				ql_listen_add_pending();
			pending_listens = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			if (nadded_listeners > 0)
				ql_listen_remove_added();
			/* FALLTHROUGH */
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PREPARE:
			/* a PREPARE after a LISTEN is refused by PostgreSQL anyway */
			pending_listens = NIL;
			nadded_listeners = 0;
			break;
		default:
			break;
	}
}

/*
 * ql_listen_subxact_callback: a subtransaction rolled back drops its
 * pending listens; one committed hands them to its parent.
 */
static void
ql_listen_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, pending_listens)
		{
			QlPendingListen *p = (QlPendingListen *) lfirst(lc);

			if (p->nest_level >= level)
				pending_listens = foreach_delete_current(pending_listens, lc);
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending_listens)
		{
			QlPendingListen *p = (QlPendingListen *) lfirst(lc);

			if (p->nest_level >= level)
				p->nest_level = level - 1;
		}
	}
}

/*
 * qlater_listen(queue text) returns text: LISTEN for jobs of an external
 * queue on this session's own channel, which is returned.  Both the LISTEN
 * and the session's record as a listener of the queue take effect when the
 * transaction commits.  The room for the record is checked now, for a
 * clear error at the call; it is taken at commit.
 */
Datum
qlater_listen(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	QlUserSave	save;
	char		channel[NAMEDATALEN];
	ListCell   *lc;
	bool		found = false;

	ql_require_preload();
	ql_become_owner(c, &save);
	ql_spi_connect();
	ql_check_consumer(c, queue, ql_current_user_name(), ql_is_admin());
	SPI_finish();
	ql_restore_user(&save);
	snprintf(channel, sizeof(channel), "qlater_%d", MyProcPid);

	if (!listener_exit_registered)
	{
		before_shmem_exit(ql_listener_exit, (Datum) 0);
		listener_exit_registered = true;
	}
	if (!listen_callbacks_registered)
	{
		RegisterXactCallback(ql_listen_xact_callback, NULL);
		RegisterSubXactCallback(ql_listen_subxact_callback, NULL);
		listen_callbacks_registered = true;
	}

	foreach(lc, pending_listens)
	{
		if (strcmp(((QlPendingListen *) lfirst(lc))->queue, queue) == 0)
			found = true;
	}
	if (!found)
	{
		int			nfree = 0;
		int			i;

		LWLockAcquire(ql_shared->lock, LW_SHARED);
		found = ql_listener_index(queue) >= 0;
		for (i = 0; i < QL_MAX_LISTENERS; i++)
		{
			if (!OidIsValid(ql_shared->listeners[i].dboid))
				nfree++;
		}
		LWLockRelease(ql_shared->lock);
		/* every pending listen needs an entry of its own at commit */
		if (!found && nfree <= list_length(pending_listens))
			ql_too_many_listeners();
	}
	if (!found)
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
		QlPendingListen *p = palloc(sizeof(QlPendingListen));

		strlcpy(p->queue, queue, NAMEDATALEN);
		p->nest_level = GetCurrentTransactionNestLevel();
		pending_listens = lappend(pending_listens, p);
		MemoryContextSwitchTo(old);
	}

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
