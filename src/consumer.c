/*-------------------------------------------------------------------------
 *
 * consumer.c
 *		The claim protocol external consumers follow over SQL, and their
 *		wake-up (queues themselves and their grants: queue.c).
 *
 * Two ways to claim.  Session mode, Que's way: a session-level advisory
 * lock in qlater's key space, the same one the in-server workers use; it
 * vanishes with the session, and is released only when the transaction
 * that completed or failed the job commits.  Lease mode, for connection
 * poolers that break session state: the claim is a token and a lease time
 * recorded on the job; any session presenting the token may finish it
 * while the lease holds.  A lease that runs out counts as a failed attempt
 * of the job, recorded by the next claim that meets it (ql_lease_lapsed):
 * the token is voided with it, so that at no time can two consumers finish
 * the same job, and a job that always outlasts its lease ends dead after
 * max_attempts, as one that always fails does.
 *
 * Wake-up: a session calls qlater_listen(queue) to LISTEN on a channel of
 * its own ("qlater_<pid>_<random>") and to be recorded in shared memory as a
 * listener of that queue, both when its transaction commits; an enqueue
 * into the queue NOTIFYs one listener (round robin), at commit, and only if
 * someone listens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
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
#include "history.h"
#include "job.h"
#include "limits.h"
#include "qlater.h"
#include "queue.h"
#include "running.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(qlater_lock);
PG_FUNCTION_INFO_V1(qlater_complete);
PG_FUNCTION_INFO_V1(qlater_fail);
PG_FUNCTION_INFO_V1(qlater_unlock);
PG_FUNCTION_INFO_V1(qlater_extend);
PG_FUNCTION_INFO_V1(qlater_listen);
PG_FUNCTION_INFO_V1(qlater_complete_many);
PG_FUNCTION_INFO_V1(qlater_unlock_many);

#define QL_MAX_LOCK_JOBS	1000

/*
 * Lapsed leases one qlater_lock counts at most: each holds its claim, a
 * lock, to the end of the transaction; the next call counts more.
 */
#define QL_MAX_LAPSES_PER_CALL	64

/*
 * The provisional end of a slot left to a lease's holder that has the
 * job's row locked (ql_slot_leave_to_holder): its commit settles it.
 */
#define QL_HOLDER_SLOT_MARGIN	(60 * USECS_PER_SEC)
/* at most this many jobs finished by one qlater_complete_many or _unlock_many */
#define QL_MAX_MANY_JOBS	QL_MAX_LOCK_JOBS

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
	QL_STMT_CANDIDATES,			/* QL_ACCESS, and ready jobs in claim order */
	QL_STMT_CLAIM,				/* re-read jobs just claimed */
	QL_STMT_LAPSE,				/* count the lapsed lease of a job just claimed */
	QL_STMT_LEASE,				/* lease jobs just claimed */
	QL_STMT_FINISH,				/* lock a job's row: QL_FINISH_ROW */
	QL_STMT_COMPLETE,			/* delete a job's row: QL_FINISH_ROW */
	QL_STMT_FAIL,
	QL_STMT_UNLEASE,
	QL_STMT_EXTEND,
	QL_STMT_PEEK_MANY,			/* read jobs' rows: QL_FINISH_ROW, id */
	QL_STMT_FINISH_MANY,		/* lock jobs' rows: QL_FINISH_ROW, id */
	QL_STMT_COMPLETE_MANY,		/* delete jobs' rows: QL_FINISH_ROW, id */
	QL_STMT_UNLEASE_MANY,
	QL_NUM_STMTS
} QlConsumerStmt;

/*
 * Whether role $2 may consume the queue of row q of qlater_queue ($3: the
 * role is an admin): QL_NOT_EXTERNAL, QL_DENIED or QL_ALLOWED (a queue
 * that does not exist gives no row: not external either).  Read with the
 * claim or the finish itself, under its snapshot: a revoke is seen at
 * once.
 */
#define QL_NOT_EXTERNAL	0
#define QL_DENIED		1
#define QL_ALLOWED		2
#define QL_ACCESS \
	"CASE WHEN NOT q.external THEN 0 " \
	"WHEN $3 OR q.owner OPERATOR(pg_catalog.=) $2 " \
	"OR EXISTS (SELECT FROM %1$s.qlater_queue_grant g " \
	"WHERE g.queue OPERATOR(pg_catalog.=) q.name " \
	"AND g.grantee OPERATOR(pg_catalog.=) $2 " \
	"AND g.privilege OPERATOR(pg_catalog.=) 'consume') THEN 2 ELSE 1 END"

/*
 * What ql_finish_check checks of job j: its claim token, attempts,
 * max_attempts, queue and the end of its lease; and column 5, its run_at
 * (the history's).  (The right to consume the queue is checked on the
 * queue cache, under the latest snapshot, by ql_check_finish_right.)  The
 * statements on several jobs add the id (column QL_FINISH_ROW_ID).
 */
#define QL_FINISH_ROW \
	"j.claim_token, j.attempts, j.max_attempts, j.queue, " \
	"j.run_at, j.lease_until"
#define QL_FINISH_ROW_ID	7

/* a job that may be claimed now */
#define QL_CLAIMABLE \
	"external AND NOT dead AND run_at OPERATOR(pg_catalog.<=) pg_catalog.now() " \
	"AND (lease_until IS NULL OR lease_until OPERATOR(pg_catalog.<) pg_catalog.now())"

/*
 * A job just claimed, as the row qlater_jobs shows it to the claimer:
 * 'running', and held by this session (a lease's claim holds a transaction
 * lock until the claiming transaction ends).  Columns 1, 5 and 6 are id,
 * priority and run_at, 7 and 8 attempts and max_attempts, 16 the claim
 * token.
 */
#define QL_CLAIMED_ROW \
	"id, queue, handler, args, priority, run_at, attempts, max_attempts, " \
	"last_error, 'running'::pg_catalog.text, role, timeout, crashes, " \
	"enqueued_at, pg_catalog.pg_backend_pid(), claim_token, lease_until, key"

static const QlStmtDef stmt_defs[QL_NUM_STMTS] = {
	/* a paused queue has no candidates, from the pause's commit on */
	[QL_STMT_CANDIDATES] = {
		"SELECT (SELECT " QL_ACCESS " FROM %1$s.qlater_queue q "
		"WHERE q.name OPERATOR(pg_catalog.=) $1), "
		"ARRAY(SELECT id FROM %1$s.qlater_job WHERE queue OPERATOR(pg_catalog.=) $1 "
		"AND " QL_CLAIMABLE " AND NOT EXISTS (SELECT FROM %1$s.qlater_queue p "
		"WHERE p.name OPERATOR(pg_catalog.=) $1 AND p.paused) "
		"ORDER BY priority, run_at, id LIMIT $4)",
		4, {TEXTOID, NAMEOID, BOOLOID, INT4OID}
	},
	[QL_STMT_CLAIM] = {
		"SELECT " QL_CLAIMED_ROW " FROM %1$s.qlater_job "
		"WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND " QL_CLAIMABLE,
		1, {INT8ARRAYOID}
	},
	/*
	 * A failed attempt, as QL_STMT_FAIL records it, of the job as it was
	 * read: still with the lapsed token $6 and attempts $7.  The row is
	 * locked first without waiting: a row locked by the holder of the
	 * lapsed lease, finishing it, is that holder's still.
	 */
	[QL_STMT_LAPSE] = {
		"UPDATE %1$s.qlater_job SET attempts = $2, last_error = $3, run_at = $4, "
		"dead = $5, claim_token = NULL, lease_until = NULL, claimed_at = NULL "
		"WHERE id OPERATOR(pg_catalog.=) $1 AND " QL_CLAIMABLE
		" AND claim_token OPERATOR(pg_catalog.=) $6 "
		"AND attempts OPERATOR(pg_catalog.=) $7 "
		"AND EXISTS (SELECT FROM %1$s.qlater_job l "
		"WHERE l.id OPERATOR(pg_catalog.=) $1 FOR UPDATE SKIP LOCKED) "
		"RETURNING queue, role, key, (SELECT o.claimed_at FROM %1$s.qlater_job o "
		"WHERE o.id OPERATOR(pg_catalog.=) $1)",
		7, {INT8OID, INT4OID, JSONBOID, TIMESTAMPTZOID, BOOLOID, UUIDOID, INT4OID}
	},
	/*
	 * A job whose lease lapsed is not leased: its lapse is counted first.
	 * $3: the claim's time (qlater_running, the history).
	 */
	[QL_STMT_LEASE] = {
		"UPDATE %1$s.qlater_job SET claim_token = pg_catalog.gen_random_uuid(), "
		"lease_until = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $2, claimed_at = $3 "
		"WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND " QL_CLAIMABLE
		" AND claim_token IS NULL RETURNING " QL_CLAIMED_ROW,
		3, {INT8ARRAYOID, INTERVALOID, TIMESTAMPTZOID}
	},
	/* column 7: when its lease was taken */
	[QL_STMT_FINISH] = {
		"SELECT " QL_FINISH_ROW ", j.claimed_at FROM %1$s.qlater_job j "
		"WHERE j.id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
		3, {INT8OID, NAMEOID, BOOLOID}
	},
	/*
	 * Column 7 as QL_STMT_FINISH's, then what its outcome records
	 * (ql_complete_record)
	 */
	[QL_STMT_COMPLETE] = {
		"DELETE FROM %1$s.qlater_job j WHERE j.id OPERATOR(pg_catalog.=) $1 "
		"RETURNING " QL_FINISH_ROW ", j.claimed_at, j.id, j.handler, j.role, j.args, "
		"j.enqueued_at, j.external",
		3, {INT8OID, NAMEOID, BOOLOID}
	},
	[QL_STMT_FAIL] = {
		"UPDATE %1$s.qlater_job SET attempts = $2, last_error = $3, run_at = $4, "
		"dead = $5, claim_token = NULL, lease_until = NULL, claimed_at = NULL "
		"WHERE id OPERATOR(pg_catalog.=) $1 RETURNING queue, role, key",
		5, {INT8OID, INT4OID, JSONBOID, TIMESTAMPTZOID, BOOLOID}
	},
	[QL_STMT_UNLEASE] = {
		"UPDATE %1$s.qlater_job SET claim_token = NULL, lease_until = NULL, "
		"claimed_at = NULL WHERE id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	},
	[QL_STMT_EXTEND] = {
		"UPDATE %1$s.qlater_job "
		"SET lease_until = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1 RETURNING lease_until",
		2, {INT8OID, INTERVALOID}
	},
	[QL_STMT_PEEK_MANY] = {
		"SELECT " QL_FINISH_ROW ", j.id FROM %1$s.qlater_job j "
		"WHERE j.id OPERATOR(pg_catalog.=) ANY ($1)",
		3, {INT8ARRAYOID, NAMEOID, BOOLOID}
	},
	/* the rows are locked in the order of the index (ids ascending) */
	[QL_STMT_FINISH_MANY] = {
		"SELECT " QL_FINISH_ROW ", j.id FROM %1$s.qlater_job j "
		"WHERE j.id OPERATOR(pg_catalog.=) ANY ($1) FOR UPDATE",
		3, {INT8ARRAYOID, NAMEOID, BOOLOID}
	},
	[QL_STMT_COMPLETE_MANY] = {
		"DELETE FROM %1$s.qlater_job j WHERE j.id OPERATOR(pg_catalog.=) ANY ($1) "
		"RETURNING " QL_FINISH_ROW ", j.id",
		3, {INT8ARRAYOID, NAMEOID, BOOLOID}
	},
	[QL_STMT_UNLEASE_MANY] = {
		"UPDATE %1$s.qlater_job SET claim_token = NULL, lease_until = NULL, "
		"claimed_at = NULL WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
		1, {INT8ARRAYOID}
	},
};

static QlStmtSet stmts = {stmt_defs, QL_NUM_STMTS, NULL, 0};

/* a job claimed by qlater_lock, kept until the rows are sorted */
typedef struct QlClaimed
{
	int32		priority;
	TimestampTz run_at;
	int64		id;
	HeapTuple	row;			/* as qlater_jobs shows it */
} QlClaimed;

/*
 * The claims one qlater_lock took, in session mode, and what became of
 * each (QL_CS_*): if the call fails, the claims it still holds and their
 * slots are given back (ql_claims_undo); a transaction lock (lease mode)
 * and a lease's slot go with the abort by themselves.
 */
#define QL_CS_HELD		0		/* taken, not read yet, or claimed */
#define QL_CS_GONE		1		/* given back, with its slot */
#define QL_CS_LAPSE		2		/* a lapse being counted: the claim goes at
								 * the transaction's end, the slot is ours */

typedef struct QlClaimCall
{
	int64	   *ids;
	int8	   *state;
	int			n;
	int			cap;
} QlClaimCall;

/* what ql_finish_begin found out about the job to finish */
typedef struct QlFinish
{
	int64		id;
	pg_uuid_t  *token;			/* NULL in session mode */
	QlUserSave	save;
	int32		attempts;
	int32		max_attempts;
	TimestampTz run_at;
	char		queue[NAMEDATALEN];
	HeapTuple	row;			/* as the statement returned it (until
								 * ql_finish_leave) */
	TupleDesc	desc;
	TimestampTz claimed_at;		/* when it was claimed (the session's record,
								 * or the lease's on the row); 0 if unknown */
	TimestampTz finished_at;	/* when the statement began */
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
	Oid			roleid;			/* the role that asked, whose share it takes */
	int			nest_level;		/* of the (sub)transaction that asked */
} QlPendingListen;

static List *pending_listens = NIL; /* in TopTransactionContext */
static int	added_listeners[QL_MAX_LISTENERS];	/* entries added at
												 * pre-commit */
static int	nadded_listeners = 0;
static bool listen_callbacks_registered = false;
static bool listener_exit_registered = false;

/*
 * The random part of this session's channel, qlater_<pid>_<nonce>: LISTEN
 * needs no privilege, so a channel another role could name would let it
 * read (or fake) the wake-ups of queues it may not consume.
 */
static uint64 channel_nonce = 0;

/* ql_channel: the channel of the session of pid, with its nonce */
static void
ql_channel(char *channel, pid_t pid, uint64 nonce)
{
	snprintf(channel, NAMEDATALEN, "qlater_%d_%016llx", (int) pid,
			 (unsigned long long) nonce);
}

/* ql_spi_connect: connect to SPI or fail */
static void
ql_spi_connect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/* ql_exec: run statement s (caller is connected to SPI) */
static int
ql_exec(const QlCatalog *c, QlConsumerStmt s, Datum *values, bool read_only,
		long count)
{
	return ql_stmt_exec(&stmts, c, s, values, NULL, read_only, count);
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
 * ql_access_error: raise the error for a queue one may not consume, given
 * QL_ACCESS of it (NULL for a queue never declared); return if allowed.
 */
static void
ql_access_error(const char *queue, Datum access, bool isnull)
{
	if (isnull || DatumGetInt32(access) == QL_NOT_EXTERNAL)
		ql_queue_not_external_error(queue);
	if (DatumGetInt32(access) != QL_ALLOWED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for queue \"%s\"", queue),
				 errhint("The queue's owner may grant it: qlater_grant_queue('%s', role, 'consume').", queue)));
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
 * ql_lease_lapsed: the job id, just claimed, is claimable but still has
 * the token of a lease (row, of QL_CLAIMED_ROW): that lease ran out before
 * its holder finished the job.  Count it as a failed attempt, as
 * qlater_fail does: attempts + 1, last_error, the backoff or dead after
 * max_attempts, the token voided, the key settled.  Nothing is written if
 * the holder has locked the row (it is finishing the job: its finish
 * decides) or the row changed since it was read.  The claim is released
 * when this transaction ends (at commit before the key's lock, so that an
 * enqueue of the key never takes the job for a running one; at an abort,
 * which undoes the count, too); the caller holds it as a session lock.
 * Returns whether the lapse was written.  Caller is connected to SPI and
 * acts as the owner.
 */
static bool
ql_lease_lapsed(const QlCatalog *c, int64 id, HeapTuple row, TupleDesc desc)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	pg_uuid_t	token;
	int32		attempts;
	int32		max_attempts;
	bool		dead;
	bool		isnull;
	Datum		values[7];
	TimestampTz started_at;

	attempts = DatumGetInt32(SPI_getbinval(row, desc, 7, &isnull));
	max_attempts = DatumGetInt32(SPI_getbinval(row, desc, 8, &isnull));
	memcpy(&token, DatumGetUUIDP(SPI_getbinval(row, desc, 16, &isnull)),
		   sizeof(pg_uuid_t));
	dead = attempts + 1 >= max_attempts;
	values[0] = Int64GetDatum(id);
	values[1] = Int32GetDatum(attempts + 1);
	values[2] = JsonbPGetDatum(ql_error_json_fields(NULL,
													psprintf("lease of job %lld ran out before its consumer finished it",
															 (long long) id),
													NULL,
													"Renew long leases with qlater_extend() before they run out.",
													NULL, attempts + 1, now));
	values[3] = TimestampTzGetDatum(dead ? now : ql_retry_time(attempts + 1, now));
	values[4] = BoolGetDatum(dead);
	values[5] = UUIDPGetDatum(&token);
	values[6] = Int32GetDatum(attempts);
	ql_release_claim_at_end(id);
	if (ql_exec(c, QL_STMT_LAPSE, values, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not record the lapsed lease of job %lld", (long long) id);
	if (SPI_processed == 0)
		return false;
	/* the lapsed lease's claim time: when its attempt began */
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4,
									  &isnull);

		started_at = isnull ? 0 : DatumGetTimestampTz(d);
	}
	/* waiting again: its key, if another job has it now, is that one's */
	if (!dead)
		ql_key_settle_returned(c, id);
	ql_history_record(c, id, QL_OUTCOME_TIMEOUT, started_at, 0,
					  DatumGetTimestampTz(SPI_getbinval(row, desc, 6, &isnull)));
	return true;
}

/*
 * ql_claim_take: take the claim of job id for an external consumer, without
 * waiting: in session mode a session lock, in lease mode a transaction lock
 * that guards the row while its lease is written.  A job of a queue with a
 * limit (max_running not -1) takes a slot too; without one (*slot says why)
 * the claim is given back.  The job's row is read afterwards, for several
 * jobs at once (ql_claim_read).
 */
static bool
ql_claim_take(int64 id, Interval *lease, const char *queue, int32 max_running,
			  QlSlotResult *slot)
{
	LOCKTAG		tag;

	ql_set_job_locktag(&tag, id);
	if (LockHeldByMe(&tag, ExclusiveLock))
		return false;			/* ours already */
	if (!ql_try_claim(id, lease == NULL))
		return false;

	/* at most max_running jobs of the queue at once: limits.c */
	if (max_running >= 0)
	{
		TimestampTz until = 0;

		if (lease != NULL)
			until = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
															IntervalPGetDatum(lease)));
		*slot = ql_slot_take(queue, max_running, id, until);
		if (*slot != QL_SLOT_TAKEN)
		{
			LockRelease(&tag, ExclusiveLock, lease == NULL);
			/* leased by another consumer since it was read: the next */
			if (*slot == QL_SLOT_BUSY)
				*slot = QL_SLOT_TAKEN;
			return false;
		}
	}
	return true;
}

/* ql_claim_give_back: undo ql_claim_take */
static void
ql_claim_give_back(int64 id, bool session, int32 max_running)
{
	LOCKTAG		tag;

	if (max_running >= 0)
		ql_slot_release(id);
	ql_set_job_locktag(&tag, id);
	LockRelease(&tag, ExclusiveLock, session);
}

/*
 * ql_claim_rows: run statement s (QL_STMT_CLAIM or QL_STMT_LEASE) on the n
 * jobs ids, and set rows[i] to a copy of the row of ids[i] it returned
 * (NULL if none), in the caller's memory; *desc to their descriptor.
 */
static void
ql_claim_rows(const QlCatalog *c, QlConsumerStmt s, const int64 *ids, int n,
			  Interval *lease, TimestampTz claimed_at, HeapTuple *rows,
			  TupleDesc *desc)
{
	Datum		values[3];
	Datum	   *elems = palloc(sizeof(Datum) * n);
	uint64		r;
	int			i;

	for (i = 0; i < n; i++)
	{
		elems[i] = Int64GetDatum(ids[i]);
		rows[i] = NULL;
	}
	values[0] = PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = lease != NULL ? IntervalPGetDatum(lease) : (Datum) 0;
	values[2] = TimestampTzGetDatum(claimed_at);

	/*
	 * The read sees what committed until now, whatever the isolation level:
	 * in a repeatable read transaction, a job leased or finished by another
	 * consumer since the snapshot must not be handed out.  (A lease is
	 * written under the transaction's snapshot: a row changed since fails
	 * it with a serialization error, as any UPDATE.)
	 */
	if ((s == QL_STMT_LEASE ? ql_exec(c, s, values, false, 0) :
		 ql_stmt_exec_latest(&stmts, c, s, values, NULL, 0)) !=
		(s == QL_STMT_LEASE ? SPI_OK_UPDATE_RETURNING : SPI_OK_SELECT))
		elog(ERROR, "could not claim jobs");
	if (*desc == NULL)
		*desc = CreateTupleDescCopy(SPI_tuptable->tupdesc);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(row, SPI_tuptable->tupdesc, 1, &isnull));

		/* few ids: the claims of one qlater_lock */
		for (i = 0; i < n; i++)
			if (ids[i] == id)
				rows[i] = SPI_copytuple(row);
	}
	SPI_freetuptable(SPI_tuptable);
	pfree(elems);
}

/*
 * ql_claim_read: read (or, in lease mode, lease) the n jobs ids whose
 * claims ql_claim_take took, all at once, under a snapshot taken after the
 * last claim: a job may have been finished by the session whose claim we
 * just followed.  Each claimed job fills out[] (its row copied into the
 * caller's memory); each other gives its claim back.  A job whose lease
 * lapsed is not claimed: its lapse is counted (ql_lease_lapsed, at most
 * *lapses_left), its slot given back at once.  A lease records its claim
 * time, claimed_at.  state[i] follows what
 * becomes of ids[i] (QL_CS_*).  Caller is connected to SPI and acts as the
 * owner; result is the row type of qlater_lock.  Returns the number of
 * jobs claimed.
 */
static int
ql_claim_read(const QlCatalog *c, const int64 *ids, int8 *state, int n,
			  Interval *lease, TimestampTz claimed_at, TupleDesc result,
			  int32 max_running, int *lapses_left, QlClaimed *out)
{
	HeapTuple  *leased = palloc(sizeof(HeapTuple) * n);
	HeapTuple  *reread = palloc(sizeof(HeapTuple) * n);
	int64	   *unleased = palloc(sizeof(int64) * n);
	TupleDesc	desc = NULL;
	int			nunleased = 0;
	int			nclaimed = 0;
	int			i;
	int			u = 0;

	/* lease mode: lease them; those not leased are read, as in session mode */
	if (lease != NULL)
	{
		ql_claim_rows(c, QL_STMT_LEASE, ids, n, lease, claimed_at, leased, &desc);
		for (i = 0; i < n; i++)
			if (leased[i] == NULL)
				unleased[nunleased++] = ids[i];
	}
	else
	{
		for (i = 0; i < n; i++)
			leased[i] = NULL;
		memcpy(unleased, ids, sizeof(int64) * n);
		nunleased = n;
	}
	if (nunleased > 0)
		ql_claim_rows(c, QL_STMT_CLAIM, unleased, nunleased, NULL, 0, reread, &desc);
	if (desc != NULL)
		ql_check_row_type(desc, result);

	for (i = 0; i < n; i++)
	{
		int64		id = ids[i];
		HeapTuple	row = leased[i];
		HeapTuple	r;
		bool		isnull;

		if (row == NULL)
		{
			/* read, in the order of ids: session mode, or a lease not written */
			r = reread[u++];
			if (r != NULL)
			{
				(void) SPI_getbinval(r, desc, 16, &isnull);
				if (!isnull && *lapses_left <= 0)
				{
					/*
					 * Enough lapses counted by this call (each holds its
					 * claim to the transaction's end): this one waits for
					 * the next
					 */
					ql_claim_give_back(id, lease == NULL, max_running);
					state[i] = QL_CS_GONE;
					continue;
				}
				if (!isnull)
				{
					/*
					 * A claimable job that still has a token had a lease
					 * that ran out: counted, not claimed.  The claim is
					 * held, as a session lock, until this transaction ends.
					 * If the holder has the row locked, finishing or
					 * renewing, nothing is counted and the slot is the
					 * holder's.
					 */
					if (lease != NULL)
					{
						LOCKTAG		tag;

						(void) ql_try_claim(id, true);
						ql_set_job_locktag(&tag, id);
						LockRelease(&tag, ExclusiveLock, false);
					}
					(*lapses_left)--;
					state[i] = QL_CS_LAPSE;
					if (ql_lease_lapsed(c, id, r, desc))
					{
						if (max_running >= 0)
							ql_slot_release(id);
					}
					else if (max_running >= 0)
						ql_slot_leave_to_holder(id, GetCurrentTimestamp() +
												QL_HOLDER_SLOT_MARGIN);
					state[i] = QL_CS_GONE;
					continue;
				}
				if (lease == NULL)
					row = r;
			}
		}
		if (row == NULL)
		{
			/* gone, or claimed by a lease since the candidates were read */
			ql_claim_give_back(id, lease == NULL, max_running);
			state[i] = QL_CS_GONE;
			continue;
		}
		out[nclaimed].id = id;
		out[nclaimed].priority = DatumGetInt32(heap_getattr(row, 5, desc, &isnull));
		out[nclaimed].run_at = DatumGetTimestampTz(heap_getattr(row, 6, desc, &isnull));
		out[nclaimed].row = row;
		nclaimed++;
	}
	return nclaimed;
}

/* ql_claims_add: a claim the call took (QL_CS_HELD) */
static void
ql_claims_add(QlClaimCall *call, int64 id)
{
	if (call->n == call->cap)
	{
		call->cap = Max(call->cap * 2, 64);
		call->ids = call->ids == NULL ? palloc(sizeof(int64) * call->cap) :
			repalloc(call->ids, sizeof(int64) * call->cap);
		call->state = call->state == NULL ? palloc(sizeof(int8) * call->cap) :
			repalloc(call->state, sizeof(int8) * call->cap);
	}
	call->ids[call->n] = id;
	call->state[call->n++] = QL_CS_HELD;
}

/*
 * ql_claims_undo: a session-mode qlater_lock failed: give back the claims
 * it still holds, those it had claimed too (its caller gets none), and
 * their slots; the slot of a lapse it was counting (its claim goes with
 * the transaction's end).  Lock and slot releases only: safe while the
 * error is on its way.
 */
static void
ql_claims_undo(QlClaimCall *call, int32 max_running)
{
	int			i;

	for (i = 0; i < call->n; i++)
	{
		if (call->state[i] == QL_CS_HELD)
			ql_claim_give_back(call->ids[i], true, max_running);
		else if (call->state[i] == QL_CS_LAPSE && max_running >= 0)
			ql_slot_release(call->ids[i]);
		call->state[i] = QL_CS_GONE;
	}
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
	QlClaimCall *call;
	int			nclaimed = 0;
	int			limit;
	int			round;
	int			i;
	const QlQueue *q;
	int32		max_running;
	QlSlotResult slot = QL_SLOT_TAKEN;
	int			lapses_left = QL_MAX_LAPSES_PER_CALL;
	TimestampTz claimed_at = GetCurrentTimestamp();

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
	/* the caller's right, under the latest snapshot (also checked below) */
	ql_queue_check_consume(c, queue);
	/*
	 * A pause holds from its commit on, whatever this transaction's
	 * snapshot (the candidates' read checks it under that snapshot too)
	 */
	{
		const QlQueue *q = ql_queue_get(c, queue);

		if (q != NULL && q->paused)
			return (Datum) 0;
	}

	claimed = palloc(sizeof(QlClaimed) * max_jobs);
	call = palloc0(sizeof(QlClaimCall));
	limit = max_jobs * 2 + 16;
	/* the queue's limit, as cached (a paused queue has no candidates) */
	q = ql_queue_get(c, queue);
	max_running = q != NULL ? q->max_running : -1;
	ql_become_owner(c, &save);
	ql_spi_connect();
	PG_TRY();
	{
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
			k = 0;
			while (k < n && nclaimed < max_jobs && slot == QL_SLOT_TAKEN)
			{
				int			first = call->n;
				int			got;

				/* claims first, then one read of their rows */
				while (k < n && nclaimed + call->n - first < max_jobs)
				{
					if (ql_claim_take(DatumGetInt64(cand[k]), lease, queue,
									  max_running, &slot))
						ql_claims_add(call, DatumGetInt64(cand[k]));
					else if (slot != QL_SLOT_TAKEN)
						break;
					k++;
				}
				if (call->n == first)
					break;
				got = ql_claim_read(c, &call->ids[first], &call->state[first],
									call->n - first, lease, claimed_at, rsinfo->setDesc,
									max_running, &lapses_left, &claimed[nclaimed]);
				nclaimed += got;
				/* jobs gone or lapsed gave their slots back: candidate k again */
				if (got < call->n - first)
					slot = QL_SLOT_TAKEN;
			}
			/* no slot left: fewer jobs, or an error if none was claimed */
			if (slot == QL_SLOT_NO_ROOM && nclaimed == 0)
				ql_slot_no_room_error();
			if (n < limit || slot != QL_SLOT_TAKEN)
				break;
			/* every candidate was claimed by others: look further */
			limit *= 8;
		}
	}
	PG_CATCH();
	{
		if (lease == NULL)
			ql_claims_undo(call, max_running);
		PG_RE_THROW();
	}
	PG_END_TRY();
	SPI_finish();
	ql_restore_user(&save);

	/* a later round may have found jobs that come first */
	qsort(claimed, nclaimed, sizeof(QlClaimed), ql_claimed_cmp);
	/* the queue's row again (the reads since may have freed the cache's) */
	if (nclaimed > 0)
		q = ql_queue_get(c, queue);
	for (i = 0; i < nclaimed; i++)
	{
		/* the claim and its time, for qlater_running (running.c) */
		if (lease == NULL)
			ql_claims_record(claimed[i].id, NULL, claimed_at, 0);
		else
		{
			bool		isnull;
			Datum		token = heap_getattr(claimed[i].row, 16, rsinfo->setDesc, &isnull);
			Datum		until = heap_getattr(claimed[i].row, 17, rsinfo->setDesc, &isnull);

			ql_claims_record(claimed[i].id, DatumGetUUIDP(token), claimed_at,
							 DatumGetTimestampTz(until));
		}
		tuplestore_puttuple(rsinfo->setResult, claimed[i].row);
		/* its attempt begins (at its claim): how long it waited */
		ql_stats_note_queue(queue, q, QL_OUTCOME_NONE, 0, claimed[i].run_at, claimed_at, 0);
	}
	return (Datum) 0;
}

/*
 * ql_check_finish_right: raise an error unless a role may finish a job of
 * this queue: it consumes the queue (read under the latest snapshot, so
 * that a revoke takes effect at once even in a repeatable read
 * transaction).  The error names the job only: the job's queue is not the
 * business of a role that may not consume it.
 */
static void
ql_check_finish_right(const QlCatalog *c, int64 id, const char *queue, Oid roleid)
{
	const QlQueue *q = ql_queue_get(c, queue);

	if (q != NULL && q->external &&
		ql_queue_privilege(c, q, roleid, QL_PRIV_CONSUME))
		return;
	if (q != NULL && !q->external && ql_role_is_admin(roleid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld is not in an external queue", (long long) id),
				 errhint("Jobs of in-server queues are run and finished by the workers.")));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for job %lld", (long long) id),
			 errhint("Consumers of a job's queue finish it; the queue's owner grants 'consume'.")));
}

/*
 * ql_job_missing_error: raise the error for a job to finish that is not
 * there
 */
static void
ql_job_missing_error(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("job %lld does not exist", (long long) id),
			 errhint("It may have been completed or cancelled already.")));
}

/*
 * ql_finish_check: raise an error unless role roleid may finish job id,
 * whose row (QL_FINISH_ROW, as a statement locked or deleted it) is row:
 * it consumes the job's queue, and holds the session claim (token NULL)
 * or presents the token of a lease that has not run out.  Sets *attempts
 * and *max_attempts from the row.  Caller is connected to SPI; an error
 * undoes what the statement did, with the (sub)transaction.
 */
static void
ql_finish_check(const QlCatalog *c, int64 id, const pg_uuid_t *token,
				Oid roleid, HeapTuple row, TupleDesc desc, int32 *attempts,
				int32 *max_attempts)
{
	Datum		d;
	Datum		until;
	bool		token_null;
	bool		until_null;
	bool		isnull;

	d = SPI_getbinval(row, desc, 1, &token_null);
	*attempts = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
	*max_attempts = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
	until = SPI_getbinval(row, desc, 6, &until_null);
	ql_check_finish_right(c, id, SPI_getvalue(row, desc, 4), roleid);

	if (token == NULL)
	{
		LOCKTAG		tag;

		/*
		 * A session claim leaves no token on the row.  A lease does, and its
		 * claiming transaction holds the job's lock too (for the
		 * transaction only): that is no session claim; nor is the hold of
		 * a keyed enqueue of this transaction on the job it returned.
		 */
		ql_set_job_locktag(&tag, id);
		if (!token_null || !LockHeldByMe(&tag, ExclusiveLock) ||
			ql_claim_held_to_end(id) || ql_enqueue_holds(id))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job %lld is not claimed by this session", (long long) id),
					 token_null ?
					 errhint("Claim jobs with qlater_lock(); in lease mode, pass the claim token.") :
					 errhint("It is claimed with a lease: pass its claim token.")));
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

/*
 * ql_finish_begin: the start of complete, fail, unlock and extend: act as
 * the owner, connect to SPI, run statement s on the job's row (it locks or
 * deletes the row and returns QL_FINISH_ROW) and check it (ql_finish_check).
 * An error here undoes what s did, with the (sub)transaction.  Fills *f;
 * undo with ql_finish_leave.
 */
static void
ql_finish_begin(QlFinish *f, const QlCatalog *c, int64 id, pg_uuid_t *token,
				QlConsumerStmt s, int expected)
{
	char	   *me = ql_current_user_name();
	bool		admin = ql_is_admin();
	Datum		values[3];
	bool		isnull;
	Datum		d;

	f->id = id;
	f->token = token;
	/* the session's record of its claim; a lease's is on the row */
	f->claimed_at = token == NULL ? ql_claims_time(id) : 0;
	f->finished_at = GetCurrentTimestamp();
	ql_become_owner(c, &f->save);
	ql_spi_connect();

	values[0] = Int64GetDatum(id);
	values[1] = ql_name_datum(me);
	values[2] = BoolGetDatum(admin);
	if (ql_stmt_exec(&stmts, c, s, values, NULL, false, 1) != expected)
		elog(ERROR, "could not read job");
	if (SPI_processed == 0)
		ql_job_missing_error(id);
	f->row = SPI_tuptable->vals[0];
	f->desc = SPI_tuptable->tupdesc;
	ql_finish_check(c, id, token, f->save.userid, f->row, f->desc,
					&f->attempts, &f->max_attempts);
	f->run_at = DatumGetTimestampTz(SPI_getbinval(f->row, f->desc, 5, &isnull));
	strlcpy(f->queue, SPI_getvalue(f->row, f->desc, 4), NAMEDATALEN);

	/* column 7: when its lease was taken, if the session has no record */
	d = SPI_getbinval(f->row, f->desc, 7, &isnull);
	if (!isnull && f->claimed_at == 0)
		f->claimed_at = DatumGetTimestampTz(d);
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
	else
		ql_claims_lease_finished(f->id);
	/* its slot, if its queue has a limit: with the claim, or the lease */
	ql_slot_release_at_commit(f->id);
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

/*
 * ql_complete_record: the outcome of job f, just removed by
 * QL_STMT_COMPLETE (the row it returned), unless its queue q (NULL: gone)
 * keeps no history; and its counters.  Caller acts as the owner, in SPI.
 */
static void
ql_complete_record(const QlCatalog *c, QlFinish *f, const QlQueue *q)
{
	/* read now: the queue cache may be read again below (the slot) */
	int64		keep = q != NULL ? q->keep_history : USECS_PER_DAY;
	bool		with_args = q == NULL || q->history_args;
	QlOutcomeRow r;
	bool		isnull;
	int			slot;

	/* its wait was counted at the claim: how long it ran */
	ql_stats_note_queue(f->queue, q, QL_OUTCOME_DONE, 1, 0, f->claimed_at,
						f->finished_at);
	if (keep <= 0)
		return;
	memset(&r, 0, sizeof(r));
	r.id = DatumGetInt64(SPI_getbinval(f->row, f->desc, 8, &isnull));
	r.queue = f->queue;
	r.handler = SPI_getvalue(f->row, f->desc, 9);
	r.role = SPI_getvalue(f->row, f->desc, 10);
	if (with_args)
		r.args = SPI_getbinval(f->row, f->desc, 11, &isnull);
	r.enqueued_at = DatumGetTimestampTz(SPI_getbinval(f->row, f->desc, 12, &isnull));
	r.run_at = f->run_at;
	r.started_at = f->claimed_at;
	r.finished_at = f->finished_at;
	r.attempt = f->attempts + 1;
	r.outcome = QL_OUTCOME_DONE;
	r.expires_at = f->finished_at + keep;
	r.external = DatumGetBool(SPI_getbinval(f->row, f->desc, 13, &isnull));
	slot = ql_history_slot_now(c, f->finished_at);
	ql_history_write(c, slot, &r, 1);
	ql_history_note(slot, r.expires_at);
}

/* qlater_complete(id bigint, token uuid) returns void */
Datum
qlater_complete(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	int64		id = ql_id_arg(fcinfo);
	pg_uuid_t  *token = ql_token_arg(fcinfo, 1);
	QlFinish	f;

	/*
	 * The row is checked as it is deleted, its outcome written in the same
	 * subtransaction: an error undoes both
	 */
	ql_finish_begin(&f, c, id, token, QL_STMT_COMPLETE, SPI_OK_DELETE_RETURNING);
	ql_complete_record(c, &f, ql_queue_get(c, f.queue));
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
	const char *error;
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
	if (!PG_ARGISNULL(2) && TIMESTAMP_NOT_FINITE(PG_GETARG_TIMESTAMPTZ(2)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retry_at must be finite")));
	/* kept as a handler's error is: at most 8 kB */
	error = ql_clip(text_to_cstring(PG_GETARG_TEXT_PP(1)));

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
	if (ql_exec(c, QL_STMT_FAIL, values, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not record the failure of job %lld", (long long) id);
	/* waiting again: its key, if another job has it now, is that one's */
	if (!dead)
		ql_key_settle_returned(c, id);
	/* the attempt began with the claim: the session's, or the lease's */
	ql_history_record(c, id, dead ? QL_OUTCOME_DEAD : QL_OUTCOME_FAILED,
					  f.claimed_at, 0, f.run_at);
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
	{
		ql_release_claim(id);
		ql_slot_release(id);
	}
	else
	{
		ql_slot_release_at_commit(id);
		ql_claims_lease_finished(id);
	}
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
	ql_slot_extend(id, until);
	ql_claims_lease_extended(id, token, until);
	PG_RETURN_TIMESTAMPTZ(until);
}

/*
 * The jobs of qlater_complete_many and qlater_unlock_many: ids, and their
 * tokens (NULL in session mode); byid, the indexes of ids in ascending id
 * order.
 */
typedef struct QlMany
{
	int			n;
	ArrayType  *idarray;
	int64	   *ids;
	pg_uuid_t **tokens;
	int		   *byid;
} QlMany;

/* a row the statement returned: its job's id, and where it is */
typedef struct QlManyRow
{
	int64		id;
	int			row;
} QlManyRow;

static int
ql_many_row_cmp(const void *a, const void *b)
{
	int64		x = ((const QlManyRow *) a)->id;
	int64		y = ((const QlManyRow *) b)->id;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* ql_many_too_many: raise the error for an array of too many jobs */
static void
ql_many_too_many(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("too many jobs in %s", what),
			 errdetail("At most %d jobs are finished or given back in one call.",
					   QL_MAX_MANY_JOBS),
			 errhint("Split the jobs over several calls.")));
}

/*
 * ql_many_array: argument n of the call, an array of at most
 * QL_MAX_MANY_JOBS elements of type elemtype (its size elemlen), one
 * dimension, no nulls; its elements in *elems, their number returned.  A
 * larger array is refused before it is detoasted.
 */
static int
ql_many_array(FunctionCallInfo fcinfo, int n, const char *what, Oid elemtype,
			  int elemlen, char elemalign, ArrayType **array, Datum **elems)
{
	ArrayType  *a;
	bool	   *nulls;
	int			nelems;
	int			i;

	if (toast_raw_datum_size(PG_GETARG_DATUM(n)) >
		ARR_OVERHEAD_WITHNULLS(1, QL_MAX_MANY_JOBS) + (Size) QL_MAX_MANY_JOBS * elemlen)
		ql_many_too_many(what);
	a = PG_GETARG_ARRAYTYPE_P(n);
	if (ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", what)));
	if (ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a)) > QL_MAX_MANY_JOBS)
		ql_many_too_many(what);
	deconstruct_array(a, elemtype, elemlen, elemtype == INT8OID ? FLOAT8PASSBYVAL : false,
					  elemalign, elems, &nulls, &nelems);
	for (i = 0; i < nelems; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain nulls", what)));
	}
	*array = a;
	return nelems;
}

/*
 * ql_many_args: the arguments (ids bigint[], tokens uuid[]) of
 * qlater_complete_many and qlater_unlock_many, checked: ids not null, each
 * job once, tokens NULL or one for each id.
 */
static void
ql_many_args(FunctionCallInfo fcinfo, QlMany *m)
{
	Datum	   *ids;
	int			i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("ids must not be null")));
	m->n = ql_many_array(fcinfo, 0, "ids", INT8OID, sizeof(int64),
						 TYPALIGN_DOUBLE, &m->idarray, &ids);
	m->ids = palloc(sizeof(int64) * Max(m->n, 1));
	for (i = 0; i < m->n; i++)
		m->ids[i] = DatumGetInt64(ids[i]);
	m->tokens = NULL;
	if (!PG_ARGISNULL(1))
	{
		ArrayType  *a;
		Datum	   *tokens;
		int			ntokens;

		ntokens = ql_many_array(fcinfo, 1, "tokens", UUIDOID, UUID_LEN,
								TYPALIGN_CHAR, &a, &tokens);
		if (ntokens != m->n)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("ids and tokens must have the same number of elements"),
					 errdetail("There are %d ids and %d tokens.", m->n, ntokens),
					 errhint("Pass the lease token of each job at its index, or no tokens for session claims.")));
		m->tokens = palloc(sizeof(pg_uuid_t *) * Max(m->n, 1));
		for (i = 0; i < m->n; i++)
			m->tokens[i] = DatumGetUUIDP(tokens[i]);
	}

	/* each job once: sorted by id, neighbours differ */
	{
		QlManyRow  *sorted = palloc(sizeof(QlManyRow) * Max(m->n, 1));

		for (i = 0; i < m->n; i++)
		{
			sorted[i].id = m->ids[i];
			sorted[i].row = i;
		}
		qsort(sorted, m->n, sizeof(QlManyRow), ql_many_row_cmp);
		for (i = 1; i < m->n; i++)
		{
			if (sorted[i].id == sorted[i - 1].id)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("job %lld appears more than once in ids",
								(long long) sorted[i].id)));
		}
		pfree(sorted);
	}
}

/*
 * ql_many_run_check: run statement s on the rows of all the jobs of m at
 * once (it reads, locks or deletes them and returns QL_FINISH_ROW and the
 * id) and check each job as ql_finish_begin does, in the order of ids: the
 * first job that may not be finished, or that is not there, raises the
 * error of qlater_complete for it.  Caller is connected to SPI and acts as
 * the owner (save: the caller's identity).
 */
static void
ql_many_run_check(const QlMany *m, const QlCatalog *c, QlConsumerStmt s,
				  int expected, const QlUserSave *save, const char *me, bool admin)
{
	Datum		values[3];
	QlManyRow  *rows;
	int			nrows;
	int			i;
	int32		attempts;
	int32		max_attempts;
	TupleDesc	desc;

	values[0] = PointerGetDatum(m->idarray);
	values[1] = ql_name_datum(me);
	values[2] = BoolGetDatum(admin);
	if (ql_exec(c, s, values, false, 0) != expected)
		elog(ERROR, "could not read jobs");
	if (SPI_processed > (uint64) m->n)
		elog(ERROR, "read %llu jobs for %d ids",
			 (unsigned long long) SPI_processed, m->n);
	nrows = (int) SPI_processed;
	desc = SPI_tuptable->tupdesc;
	rows = palloc(sizeof(QlManyRow) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
	{
		bool		isnull;

		rows[i].id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], desc,
												 QL_FINISH_ROW_ID, &isnull));
		rows[i].row = i;
	}
	qsort(rows, nrows, sizeof(QlManyRow), ql_many_row_cmp);
	for (i = 0; i < m->n; i++)
	{
		QlManyRow	key;
		QlManyRow  *found;

		key.id = m->ids[i];
		found = bsearch(&key, rows, nrows, sizeof(QlManyRow), ql_many_row_cmp);
		if (found == NULL)
			ql_job_missing_error(m->ids[i]);
		ql_finish_check(c, m->ids[i], m->tokens ? m->tokens[i] : NULL,
						save->userid, SPI_tuptable->vals[found->row], desc,
						&attempts, &max_attempts);
	}
	pfree(rows);
	SPI_freetuptable(SPI_tuptable);
}

/*
 * ql_many_begin: the start of qlater_complete_many and
 * qlater_unlock_many: act as the owner, connect to SPI, check every job
 * on its row as it is now, without a lock (QL_STMT_PEEK_MANY), then run
 * statement s, which locks or deletes the rows, and check them again as
 * they are then.  Checking first matters: s waits for rows that other
 * sessions lock, and must not hold rows of jobs the caller may not finish
 * (another role's) while it waits, which would stall them for as long as
 * the caller likes.  An error undoes what s did, with the
 * (sub)transaction.  Undo with SPI_finish and ql_restore_user.
 */
static void
ql_many_begin(const QlMany *m, const QlCatalog *c, QlConsumerStmt s,
			  int expected, QlUserSave *save)
{
	char	   *me = ql_current_user_name();
	bool		admin = ql_is_admin();

	ql_become_owner(c, save);
	ql_spi_connect();
	ql_many_run_check(m, c, QL_STMT_PEEK_MANY, SPI_OK_SELECT, save, me, admin);
	ql_many_run_check(m, c, s, expected, save, me, admin);
}

/*
 * qlater_complete_many(ids bigint[], tokens uuid[]) returns integer
 *
 * Completes several claimed jobs in one statement, all or none: session
 * claims when tokens is NULL, else tokens[i] is the lease token of
 * ids[i].  Each job is checked as qlater_complete checks it, and the
 * claims and slots are released when the transaction commits, as
 * qlater_complete does.  Returns the number of jobs completed.
 */
Datum
qlater_complete_many(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	QlMany		m;
	QlUserSave	save;
	int			i;

	ql_many_args(fcinfo, &m);
	if (m.n == 0)
		PG_RETURN_INT32(0);
	/*
	 * The outcomes are recorded from the rows, then the rows are checked as
	 * they are deleted: an error undoes both
	 */
	ql_history_record_many(c, PG_GETARG_DATUM(0), QL_OUTCOME_DONE, 0,
						   m.tokens == NULL ? ql_claims_times(m.ids, m.n) : (Datum) 0, 1);
	ql_many_begin(&m, c, QL_STMT_COMPLETE_MANY, SPI_OK_DELETE_RETURNING, &save);
	SPI_finish();
	ql_restore_user(&save);
	for (i = 0; i < m.n; i++)
	{
		if (m.tokens == NULL)
			ql_release_claim_at_commit(m.ids[i]);
		else
			ql_claims_lease_finished(m.ids[i]);
		ql_slot_release_at_commit(m.ids[i]);
	}
	PG_RETURN_INT32(m.n);
}

/*
 * qlater_unlock_many(ids bigint[], tokens uuid[]) returns integer
 *
 * Gives back several claims at once, all or none, as qlater_unlock gives
 * back one: session claims now, leases (and their slots) when the
 * transaction commits.  Returns the number of claims given back.
 */
Datum
qlater_unlock_many(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	QlMany		m;
	QlUserSave	save;
	int			i;

	ql_many_args(fcinfo, &m);
	if (m.n == 0)
		PG_RETURN_INT32(0);
	ql_many_begin(&m, c, QL_STMT_FINISH_MANY, SPI_OK_SELECT, &save);
	if (m.tokens != NULL)
	{
		Datum		values[1];

		values[0] = PointerGetDatum(m.idarray);
		if (ql_exec(c, QL_STMT_UNLEASE_MANY, values, false, 0) != SPI_OK_UPDATE ||
			SPI_processed != (uint64) m.n)
			elog(ERROR, "could not unlock %d jobs", m.n);
	}
	SPI_finish();
	ql_restore_user(&save);
	for (i = 0; i < m.n; i++)
	{
		if (m.tokens == NULL)
		{
			ql_release_claim(m.ids[i]);
			ql_slot_release(m.ids[i]);
		}
		else
		{
			ql_slot_release_at_commit(m.ids[i]);
			ql_claims_lease_finished(m.ids[i]);
		}
	}
	PG_RETURN_INT32(m.n);
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

/*
 * ql_listener_room: raise an error unless `more` entries more may be
 * taken now by a role in this database: free entries in the
 * cluster, and the database's and the role's share.  Caller holds
 * ql_shared->lock.
 */
static void
ql_listener_room(int more, Oid role)
{
	int			nfree = 0;
	int			ndb = 0;
	int			nrole = 0;
	int			nrole_all = 0;
	int			i;

	for (i = 0; i < QL_MAX_LISTENERS; i++)
	{
		QlListener *l = &ql_shared->listeners[i];

		if (!OidIsValid(l->dboid))
			nfree++;
		else
		{
			if (l->roleid == role)
				nrole_all++;
			if (l->dboid == MyDatabaseId)
			{
				ndb++;
				if (l->roleid == role)
					nrole++;
			}
		}
	}
	if (nrole + more > QL_MAX_LISTENERS_PER_ROLE ||
		nrole_all + more > QL_MAX_LISTENERS_PER_ROLE_CLUSTER)
	{
		LWLockRelease(ql_shared->lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("role \"%s\" listens for too many qlater queues",
						GetUserNameFromId(role, false)),
				 errdetail("A role's sessions listen to at most %d queues at once in a database, and %d in the cluster, a session counting once for each queue.",
						   QL_MAX_LISTENERS_PER_ROLE, QL_MAX_LISTENERS_PER_ROLE_CLUSTER),
				 errhint("Listen with fewer sessions or queues; consumers can poll qlater_lock() instead.")));
	}
	if (ndb + more > QL_MAX_LISTENERS_PER_DATABASE || nfree < more)
	{
		LWLockRelease(ql_shared->lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many sessions listen for qlater jobs"),
				 errdetail("At most %d listeners are recorded in a database and %d in the cluster, a session counting once for each queue it listens to.",
						   QL_MAX_LISTENERS_PER_DATABASE, QL_MAX_LISTENERS),
				 errhint("Consumers can poll qlater_lock() instead.")));
	}
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
		ql_listener_room(1, p->roleid);
		for (i = 0; i < QL_MAX_LISTENERS; i++)
		{
			if (!OidIsValid(ql_shared->listeners[i].dboid))
				break;
		}
		ql_shared->listeners[i].dboid = MyDatabaseId;
		ql_shared->listeners[i].roleid = p->roleid;
		ql_shared->listeners[i].nonce = channel_nonce;
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
	char		channel[NAMEDATALEN];
	ListCell   *lc;
	bool		found = false;

	ql_require_preload();
	/* the caller's own right, checked as the caller */
	ql_queue_check_consume(c, queue);
	while (channel_nonce == 0)
	{
		if (!pg_strong_random(&channel_nonce, sizeof(channel_nonce)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random channel name")));
	}
	ql_channel(channel, MyProcPid, channel_nonce);

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
		LWLockAcquire(ql_shared->lock, LW_SHARED);
		found = ql_listener_index(queue) >= 0;
		/* every pending listen needs an entry of its own at commit */
		if (!found)
			ql_listener_room(list_length(pending_listens) + 1, GetUserId());
		LWLockRelease(ql_shared->lock);
	}
	if (!found)
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
		QlPendingListen *p = palloc(sizeof(QlPendingListen));

		strlcpy(p->queue, queue, NAMEDATALEN);
		p->roleid = GetUserId();
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
	QlListener	matches[QL_MAX_LISTENERS];
	int			n = 0;
	int			i;
	uint32		first;
	char		channel[NAMEDATALEN];
	StringInfoData payload;
	const QlCatalog *c;

	if (ql_shared == NULL)
		return;
	LWLockAcquire(ql_shared->lock, LW_SHARED);
	for (i = 0; i < QL_MAX_LISTENERS; i++)
	{
		QlListener *l = &ql_shared->listeners[i];

		if (l->dboid == MyDatabaseId && strcmp(l->queue, queue) == 0)
			matches[n++] = *l;
	}
	LWLockRelease(ql_shared->lock);
	if (n == 0)
		return;

	/*
	 * One listener, round robin, among those whose role may still consume
	 * the queue: a revoke, a drop or a hand-over since its qlater_listen
	 * stops its wake-ups (its entry stays until its session ends).
	 */
	c = ql_catalog(false);
	first = pg_atomic_fetch_add_u32(&ql_shared->notify_next, 1);
	for (i = 0; i < n; i++)
	{
		QlListener *l = &matches[(first + i) % n];
		const QlQueue *q = ql_queue_get(c, queue);

		if (q != NULL && q->external &&
			ql_queue_privilege(c, q, l->roleid, QL_PRIV_CONSUME))
		{
			ql_channel(channel, l->pid, l->nonce);
			initStringInfo(&payload);
			appendStringInfoString(&payload, "{\"queue\": ");
			escape_json(&payload, queue);
			appendStringInfo(&payload, ", \"id\": %lld}", (long long) job_id);
			Async_Notify(channel, payload.data);
			return;
		}
	}
}
