/*-------------------------------------------------------------------------
 *
 * job.c
 *		Claiming and running one job in a worker.
 *
 * A job is claimed with a session-level advisory lock in qlater's key space
 * (qlater.c), as Que does: claiming writes nothing, never waits, and a
 * claim vanishes with the session that held it.  The classic race: a lock
 * granted just after another worker finished and deleted the same job, as
 * seen in an older snapshot.  So once the lock is held the row is read
 * again under a fresh snapshot, and the lock is released only after the
 * transaction that finished the job has committed.
 *
 * The job runs in its own transaction as the role that enqueued it, with a
 * local user-ID change as PostgreSQL's security-restricted operations make
 * (so SET ROLE, RESET ROLE and SET SESSION AUTHORIZATION are refused inside
 * it), and in a GUC nest level that drops whatever the handler SET.  Its
 * row is deleted in the same transaction.  If the handler fails, the
 * transaction is rolled back and the failure is recorded in a new one:
 * attempts + 1, last_error, and a retry after attempts^4 + 3 seconds, or
 * 'dead' once max_attempts is reached.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/prepare.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/portal.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "api.h"
#include "args.h"
#include "handlers.h"
#include "catalog.h"
#include "inflight.h"
#include "job.h"
#include "qlater.h"
#include "shmem.h"
#include "xact.h"

/* a claimed job, copied into job_cxt */
typedef struct QlJob
{
	int64		id;
	char	   *handler;
	Oid			proc;			/* InvalidOid if the handler is gone */
	Jsonb	   *args;
	char	   *role;
	bool		has_timeout;
	Interval	timeout;
	int32		attempts;
	int32		max_attempts;
	char	   *queue;
	int32		batch_size;		/* of its queue: 1 without batches */
	int64		batch_delay;	/* of its queue, in microseconds */
	int32		priority;		/* with run_at and id: its place in the */
	TimestampTz run_at;			/* claim order */
	ItemPointerData tid;		/* the row version the claim read */
} QlJob;

/* the columns of qlater_job a claim reads */
typedef enum QlJobAtt
{
	QL_ATT_ID,
	QL_ATT_HANDLER,
	QL_ATT_ARGS,
	QL_ATT_ROLE,
	QL_ATT_TIMEOUT,
	QL_ATT_ATTEMPTS,
	QL_ATT_MAX_ATTEMPTS,
	QL_ATT_QUEUE,
	QL_NJOBATTS
} QlJobAtt;

static const char *const job_att_names[QL_NJOBATTS] = {
	"id", "handler", "args", "role", "timeout", "attempts", "max_attempts", "queue"
};

/* statements on the job table, prepared once per catalog generation */
typedef struct QlPlans
{
	uint32		generation;
	Oid			job_relid;
	AttrNumber	att[QL_NJOBATTS];	/* qlater_job's columns, by QlJobAtt */
	SPIPlanPtr	candidates;
	SPIPlanPtr	future_before;
	SPIPlanPtr	fetch;
	SPIPlanPtr	queue;
	SPIPlanPtr	delete;
	SPIPlanPtr	fail;
	SPIPlanPtr	next;
	SPIPlanPtr	settle_read;
	SPIPlanPtr	settle;
} QlPlans;

/*
 * Handler call plans, by the handler's OID and the shape of the call: the
 * notation and which parameters are given (the others take their
 * defaults).  The parameter types are kept and compared too: a plan is
 * never run with values of other types.
 */
typedef struct QlCallKey
{
	Oid			proc;
	bool		named;
	bits8		given[QL_CALL_GIVEN_BYTES];
} QlCallKey;

typedef struct QlCallPlan
{
	QlCallKey	key;			/* hash key */
	int			nparams;
	Oid			types[FUNC_MAX_ARGS];
	SPIPlanPtr	plan;
} QlCallPlan;

#define QL_MAX_CALL_PLANS	1000

/*
 * What a look reads of a job row (QL_ROW_COLUMNS, in this order): its place
 * in the claim order and its row version.  A claim reads the rest from the
 * version itself.
 */
#define QL_ROW_COLUMNS "id, priority, run_at, ctid, xmin"
#define QL_ROW_ID		1
#define QL_ROW_PRIORITY 2
#define QL_ROW_RUN_AT	3
#define QL_ROW_CTID		4
#define QL_ROW_XMIN		5

/*
 * The ready jobs read by the last look, in claim order, copied out of SPI:
 * the claims that follow take them in turn, and a batch looks again only
 * when they run out.  A row read by a look is claimed only while its
 * version is still the current one.  Valid in the transaction of the look
 * only (the table's lock keeps its row versions in place).
 */
typedef struct QlCandidates
{
	MemoryContext cxt;
	TupleDesc	desc;
	HeapTuple  *rows;
	int			n;
	int			next;			/* the first not tried yet */
	bool		cut;			/* the look stopped at its limit */
	QlClaimKey	resume;			/* where a look for more starts */
} QlCandidates;

typedef enum QlCandidateResult
{
	QL_CANDIDATE_CLAIMED,
	QL_CANDIDATE_NONE_LEFT,		/* every candidate tried */
	QL_CANDIDATE_OTHER_BATCH	/* the next one cannot join the batch */
} QlCandidateResult;

static QlPlans plans;
static QlCandidates cands;
static HTAB *call_plans = NULL;
static MemoryContext job_cxt = NULL;
static TimeoutId job_timeout_id;
static volatile sig_atomic_t job_timed_out = false;

/* the slot of this worker while it runs a job, for the timeout handler */
static QlWorkerSlot *volatile running_slot = NULL;

/* this database's shared entry, and when a look last started at the start */
static QlDatabase *my_database;
static TimestampTz last_look_from_start = 0;

/*
 * ql_job_timeout_handler: the job's timeout ran out: cancel what it is
 * doing, and remember it, so that a handler that catches the cancel still
 * fails.
 */
static void
ql_job_timeout_handler(void)
{
	job_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
	if (running_slot != NULL)
		ql_mark_overrun(running_slot, QL_END_TIMEOUT);
}

/* settings of the worker's own statements; handlers run with the database's */
static const char *const worker_settings[][2] = {
	/*
	 * They run as a superuser: the database's search_path (ALTER DATABASE
	 * ... SET) could hold an operator or function of the same name as one
	 * they use.
	 */
	{"search_path", "pg_catalog, pg_temp"},

	/*
	 * Their plans are kept, and a plan made while the statistics said the
	 * job table was empty (after a VACUUM of an empty queue) would scan and
	 * sort every ready job at each claim: the claim-order index it is.
	 */
	{"enable_seqscan", "off"},
	{"enable_bitmapscan", "off"},
	{"enable_sort", "off"},
};

/* ql_worker_settings: the worker's own settings, for the session */
static void
ql_worker_settings(void)
{
	int			i;

	for (i = 0; i < lengthof(worker_settings); i++)
		SetConfigOption(worker_settings[i][0], worker_settings[i][1],
						PGC_SUSET, PGC_S_SESSION);
}

/*
 * ql_handler_settings: the database's settings in place of the worker's
 * own, in the current GUC nest level.
 */
static void
ql_handler_settings(void)
{
	int			i;

	for (i = 0; i < lengthof(worker_settings); i++)
		(void) set_config_option(worker_settings[i][0],
								 GetConfigOptionResetString(worker_settings[i][0]),
								 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/* ql_job_init: per-process set-up; call once after connecting */
void
ql_job_init(void)
{
	ql_worker_settings();
	job_cxt = AllocSetContextCreate(TopMemoryContext, "qlater job",
									ALLOCSET_DEFAULT_SIZES);
	cands.cxt = AllocSetContextCreate(TopMemoryContext, "qlater candidates",
									  ALLOCSET_DEFAULT_SIZES);
	job_timeout_id = RegisterTimeout(USER_TIMEOUT, ql_job_timeout_handler);
	memset(&plans, 0, sizeof(plans));
	LWLockAcquire(ql_shared->lock, LW_SHARED);
	my_database = ql_find_database(MyDatabaseId, false);
	LWLockRelease(ql_shared->lock);
	if (my_database == NULL)
		elog(ERROR, "database %u is not served by qlater", MyDatabaseId);
}

/*
 * ql_prepare: prepare and keep a statement, with a generic plan: the
 * planner would otherwise plan every execution anew for a parameter such
 * as a LIMIT, whose generic estimate looks worse than the custom one.
 * Caller is connected to SPI.
 */
static SPIPlanPtr
ql_prepare(const char *query, int nargs, Oid *types)
{
	return ql_prepare_kept(query, nargs, types, CURSOR_OPT_GENERIC_PLAN);
}

/* ql_prepare_plans: (re)prepare the job-table statements if needed */
static void
ql_prepare_plans(const QlCatalog *c)
{
	const char *s = c->schema_quoted;
	Oid			t_from[4] = {INT4OID, INT4OID, TIMESTAMPTZOID, INT8OID};
	Oid			t_prio[2] = {INT4OID, INT4OID};
	Oid			t_id[1] = {INT8OID};
	Oid			t_text[1] = {TEXTOID};
	Oid			t_fail[5] = {INT8OID, INT4OID, JSONBOID, TIMESTAMPTZOID, BOOLOID};
	Oid			t_settle[6] = {INT8OID, INT4OID, INT4OID, JSONBOID, TIMESTAMPTZOID, BOOLOID};
	int			i;

	if (plans.candidates != NULL && plans.generation == c->generation)
		return;
	if (plans.candidates != NULL)
	{
		SPI_freeplan(plans.candidates);
		SPI_freeplan(plans.future_before);
		SPI_freeplan(plans.fetch);
		SPI_freeplan(plans.queue);
		SPI_freeplan(plans.delete);
		SPI_freeplan(plans.fail);
		SPI_freeplan(plans.next);
		SPI_freeplan(plans.settle_read);
		SPI_freeplan(plans.settle);
	}
	plans.candidates = ql_prepare(psprintf("SELECT " QL_ROW_COLUMNS " FROM %s.qlater_job "
										   "WHERE NOT dead AND run_at <= now() AND NOT external "
										   "AND (priority, run_at, id) >= ($2, $3, $4) "
										   "ORDER BY priority, run_at, id LIMIT $1", s),
								  4, t_from);
	plans.future_before = ql_prepare(psprintf("SELECT FROM %s.qlater_job "
											  "WHERE NOT dead AND NOT external AND run_at > now() "
											  "AND priority >= $1 AND priority < $2 LIMIT 1", s),
									 2, t_prio);
	/* the job by id alone: no plan may read another of its indexes */
	plans.fetch = ql_prepare(psprintf("SELECT " QL_ROW_COLUMNS " FROM %s.qlater_job "
									  "WHERE id = $1 AND NOT dead AND NOT external "
									  "AND run_at <= now()", s),
							 1, t_id);
	plans.queue = ql_prepare(psprintf("SELECT batch_size, "
									  "(extract(epoch FROM batch_delay) * 1000000)::int8 "
									  "FROM %s.qlater_queue WHERE name = $1", s),
							 1, t_text);
	plans.delete = ql_prepare(psprintf("DELETE FROM %s.qlater_job WHERE id = $1", s),
							  1, t_id);
	plans.fail = ql_prepare(psprintf("UPDATE %s.qlater_job SET attempts = $2, last_error = $3, "
									 "run_at = $4, dead = $5 WHERE id = $1", s),
							5, t_fail);
	plans.next = ql_prepare(psprintf("SELECT min(run_at) FROM %s.qlater_job "
									 "WHERE NOT dead AND NOT external AND run_at > now()", s),
							0, NULL);
	plans.settle_read = ql_prepare(psprintf("SELECT attempts, max_attempts, crashes, timeout "
											"FROM %s.qlater_job WHERE id = $1 AND NOT dead "
											"FOR UPDATE", s),
								   1, t_id);
	plans.settle = ql_prepare(psprintf("UPDATE %s.qlater_job SET attempts = $2, crashes = $3, "
									   "last_error = $4, run_at = $5, dead = $6 WHERE id = $1", s),
							  6, t_settle);
	plans.job_relid = c->job_relid;
	for (i = 0; i < QL_NJOBATTS; i++)
	{
		plans.att[i] = get_attnum(c->job_relid, job_att_names[i]);
		if (plans.att[i] == InvalidAttrNumber)
			elog(ERROR, "column %s.qlater_job.%s does not exist", s, job_att_names[i]);
	}
	plans.generation = c->generation;
	/* a new job table: the frontier means nothing in it */
	ql_frontier_lower(my_database, &ql_key_min);
}

/*
 * ql_error_json_fields: the last_error value of a failed attempt: a jsonb
 * object with the keys sqlstate, message, detail, hint, context (each may
 * be NULL), attempt and at.
 */
Jsonb *
ql_error_json_fields(const char *sqlstate, const char *message,
					 const char *detail, const char *hint,
					 const char *context, int attempt, TimestampTz at)
{
	StringInfoData buf;
	const char *keys[5] = {"sqlstate", "message", "detail", "hint", "context"};
	const char *vals[5];
	int			i;

	vals[0] = sqlstate;
	vals[1] = message;
	vals[2] = detail;
	vals[3] = hint;
	vals[4] = context;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (i = 0; i < 5; i++)
	{
		escape_json(&buf, keys[i]);
		appendStringInfoString(&buf, ": ");
		if (vals[i])
			escape_json(&buf, vals[i]);
		else
			appendStringInfoString(&buf, "null");
		appendStringInfoString(&buf, ", ");
	}
	appendStringInfo(&buf, "\"attempt\": %d, \"at\": ", attempt);
	escape_json(&buf, timestamptz_to_str(at));
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* ql_error_json: the last_error value of an attempt that raised edata */
static Jsonb *
ql_error_json(ErrorData *edata, int attempt, TimestampTz at)
{
	return ql_error_json_fields(unpack_sql_state(edata->sqlerrcode),
								edata->message, edata->detail, edata->hint,
								edata->context, attempt, at);
}

/*
 * ql_retry_time: when a job that has failed attempts times runs again:
 * attempts^4 + 3 seconds after now, at most a year.
 */
TimestampTz
ql_retry_time(int32 attempts, TimestampTz now)
{
	double		backoff = (double) attempts * attempts * attempts * attempts + 3.0;

	if (backoff > 365.0 * SECS_PER_DAY)
		backoff = 365.0 * SECS_PER_DAY;
	return now + (TimestampTz) (backoff * USECS_PER_SEC);
}

/* ql_row_key: the place in the claim order of a row a look read */
static void
ql_row_key(HeapTuple row, TupleDesc desc, QlClaimKey *key)
{
	bool		isnull;

	key->id = DatumGetInt64(heap_getattr(row, QL_ROW_ID, desc, &isnull));
	key->priority = DatumGetInt32(heap_getattr(row, QL_ROW_PRIORITY, desc, &isnull));
	key->run_at = DatumGetTimestampTz(heap_getattr(row, QL_ROW_RUN_AT, desc, &isnull));
}

/* ql_att: a column of the job row in slot (QlJobAtt) */
static Datum
ql_att(TupleTableSlot *slot, QlJobAtt att, bool *isnull)
{
	return slot_getattr(slot, plans.att[att], isnull);
}

/*
 * ql_read_row: read the job whose row version a look read (QL_ROW_COLUMNS)
 * into *job, in job_cxt, if that version is still the job's current one
 * under a fresh snapshot: not deleted or updated by a transaction that has
 * committed since.  Returns false if it is not.  The same xmin and id at
 * the same place is the same version: a place is reused only once the
 * version there is dead to everyone, and by a later transaction.  Caller
 * is in the look's transaction (its lock keeps the table's pages), with an
 * active snapshot.  The job's batch settings are its queue's (ql_queue_settings).
 */
static bool
ql_read_row(HeapTuple row, TupleDesc desc, QlJob *job)
{
	bool		isnull;
	ItemPointer tid = (ItemPointer) DatumGetPointer(heap_getattr(row, QL_ROW_CTID, desc, &isnull));
	TransactionId xmin = DatumGetTransactionId(heap_getattr(row, QL_ROW_XMIN, desc, &isnull));
	QlClaimKey	key;
	Relation	rel;
	TupleTableSlot *slot;
	bool		current;

	ql_row_key(row, desc, &key);
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(plans.job_relid, NoLock);
	slot = table_slot_create(rel, NULL);
	current = table_tuple_fetch_row_version(rel, tid, GetActiveSnapshot(), slot) &&
		TransactionIdEquals(DatumGetTransactionId(slot_getsysattr(slot, MinTransactionIdAttributeNumber, &isnull)), xmin) &&
		DatumGetInt64(ql_att(slot, QL_ATT_ID, &isnull)) == key.id;
	if (current)
	{
		MemoryContext old = MemoryContextSwitchTo(job_cxt);
		Datum		d;

		job->id = key.id;
		job->priority = key.priority;
		job->run_at = key.run_at;
		job->tid = *tid;
		job->handler = TextDatumGetCString(ql_att(slot, QL_ATT_HANDLER, &isnull));
		job->args = DatumGetJsonbPCopy(ql_att(slot, QL_ATT_ARGS, &isnull));
		job->role = pstrdup(NameStr(*DatumGetName(ql_att(slot, QL_ATT_ROLE, &isnull))));
		d = ql_att(slot, QL_ATT_TIMEOUT, &isnull);
		job->has_timeout = !isnull;
		if (!isnull)
			job->timeout = *DatumGetIntervalP(d);
		job->attempts = DatumGetInt32(ql_att(slot, QL_ATT_ATTEMPTS, &isnull));
		job->max_attempts = DatumGetInt32(ql_att(slot, QL_ATT_MAX_ATTEMPTS, &isnull));
		job->queue = TextDatumGetCString(ql_att(slot, QL_ATT_QUEUE, &isnull));
		job->batch_size = 1;
		job->batch_delay = 0;
		/* InvalidOid for text that names no function: ql_check_runnable */
		job->proc = ql_signature_oid(job->handler);
		MemoryContextSwitchTo(old);
	}
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, NoLock);
	return current;
}

/*
 * ql_fetch: read a claimed job under a fresh snapshot, into job_cxt.
 * Returns false if it is no longer ready (done, cancelled, rescheduled).
 * Caller is connected to SPI, in a transaction with an active snapshot.
 */
static bool
ql_fetch(int64 id, QlJob *job)
{
	Datum		idd = Int64GetDatum(id);

	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute_plan(plans.fetch, &idd, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read job");
	return SPI_processed > 0 &&
		ql_read_row(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, job);
}

/*
 * ql_queue_settings: the batch settings of the job's queue, into *job.
 * Caller is connected to SPI, in a transaction with an active snapshot.
 */
static void
ql_queue_settings(QlJob *job)
{
	Datum		name = CStringGetTextDatum(job->queue);
	bool		isnull;

	if (SPI_execute_plan(plans.queue, &name, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the settings of queue \"%s\"", job->queue);
	if (SPI_processed == 0)
		return;					/* never declared: no batches */
	job->batch_size = Min(DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1, &isnull)),
						  QL_MAX_BATCH);
	job->batch_delay = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 2, &isnull));
}

/*
 * ql_next_frontier: where the claim frontier may move after a look from
 * it, at from, found first the ready job at first (NULL if none).
 *
 * No ready job lies before from.  Every index entry between from and
 * first with the same priority is of a job not visible to the look's
 * snapshot: done (deleted) or not yet committed, and a commit that writes
 * jobs lowers the frontier again (qlater.c).  Entries of jobs not due yet
 * may lie before first only at a lower priority: the frontier crosses into
 * first's priority only if there are none.  Without a ready job, it moves
 * past the entries due by now at its priority.  Caller is connected to SPI.
 */
static void
ql_next_frontier(const QlClaimKey *from, const QlClaimKey *first,
				 QlClaimKey *next)
{
	if (first != NULL && first->priority == from->priority)
	{
		*next = *first;
		return;
	}
	if (first != NULL)
	{
		Datum		params[2];

		params[0] = Int32GetDatum(from->priority);
		params[1] = Int32GetDatum(first->priority);
		if (SPI_execute_plan(plans.future_before, params, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not look for future jobs");
		if (SPI_processed == 0)
		{
			*next = *first;
			return;
		}
	}
	next->priority = from->priority;
	next->run_at = GetCurrentTransactionStartTimestamp();	/* now() */
	next->id = PG_INT64_MAX;
}

/*
 * ql_batchable: whether jobs may run in batches: only if the workers'
 * transactions see each statement's own snapshot (under REPEATABLE READ or
 * SERIALIZABLE a batch's jobs would share one, and serialization failures
 * would strike the whole batch).
 */
static bool
ql_batchable(void)
{
	return !IsolationUsesXactSnapshot();
}

/*
 * ql_look: read up to limit ready jobs at or after start in the claim
 * order: the candidates of the claims that follow.  Caller is connected to
 * SPI, in a transaction with an active snapshot.
 */
static void
ql_look(const QlClaimKey *start, int limit)
{
	Datum		params[4];
	uint64		i;
	MemoryContext old;

	params[0] = Int32GetDatum(limit);
	params[1] = Int32GetDatum(start->priority);
	params[2] = TimestampTzGetDatum(start->run_at);
	params[3] = Int64GetDatum(start->id);
	if (SPI_execute_plan(plans.candidates, params, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for jobs");

	MemoryContextReset(cands.cxt);
	old = MemoryContextSwitchTo(cands.cxt);
	cands.desc = CreateTupleDescCopy(SPI_tuptable->tupdesc);
	cands.n = (int) SPI_processed;
	cands.rows = palloc(sizeof(HeapTuple) * (cands.n + 1));
	for (i = 0; i < SPI_processed; i++)
		cands.rows[i] = heap_copytuple(SPI_tuptable->vals[i]);
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);

	cands.next = 0;
	cands.cut = (cands.n == limit);
	/* a look for more starts right after the last row */
	cands.resume = *start;
	if (cands.n > 0)
	{
		ql_row_key(cands.rows[cands.n - 1], cands.desc, &cands.resume);
		cands.resume.id++;
	}
}

/*
 * ql_claim_candidate: claim the next candidate of the last look that no
 * other session holds and whose row is still current, into *job.  For a
 * batch (queue not NULL), stop at a job that cannot join it.  Caller is
 * connected to SPI, in the look's transaction, with an active snapshot.
 */
static QlCandidateResult
ql_claim_candidate(QlJob *job, const char *queue)
{
	while (cands.next < cands.n)
	{
		HeapTuple	row = cands.rows[cands.next];
		bool		isnull;
		int64		id = DatumGetInt64(heap_getattr(row, QL_ROW_ID, cands.desc, &isnull));

		if (ql_job_crash_pending(id) || !ql_try_claim(id, true))
		{
			cands.next++;
			continue;
		}
		MemoryContextReset(job_cxt);
		/* done or changed since the look, as a fresh snapshot sees it? */
		if (!ql_read_row(row, cands.desc, job))
		{
			cands.next++;
			ql_release_claim(id);
			continue;
		}
		if (queue != NULL && strcmp(job->queue, queue) != 0)
		{
			/* the next round runs it */
			ql_release_claim(id);
			return QL_CANDIDATE_OTHER_BATCH;
		}
		cands.next++;
		return QL_CANDIDATE_CLAIMED;
	}
	return QL_CANDIDATE_NONE_LEFT;
}

/*
 * ql_claim: claim the first ready job at or after a place in the claim
 * order.  Returns false if there is none, or, for a batch of a queue, if
 * the next one cannot join it.  Caller is connected to SPI, in a
 * transaction with an active snapshot.
 *
 * Without a batch, the look starts at the claim frontier of the database
 * (moving it forward), or every qlater.poll_interval at the start of the
 * order, in case jobs were written other than through qlater's functions.
 * A batch takes the candidates of its last look first, and then looks on
 * from there.  Either way the look skips the index entries of jobs done,
 * which stay until no snapshot can see them: a look from the start would
 * visit each of them again, with every claim, and for as long as any
 * session holds an old snapshot.
 */
static bool
ql_claim(QlJob *job, const char *batch_queue, int batch_size)
{
	int			limit = ql_shared->nslots * 2 + 8;
	int			looks = 0;
	bool		look;
	QlClaimKey	start;
	uint64		gen = 0;

	if (batch_queue == NULL)
	{
		TimestampTz now = GetCurrentTimestamp();

		ql_frontier_get(my_database, &start, &gen);
		if (now - last_look_from_start >= (int64) ql_poll_interval * 1000)
		{
			start = ql_key_min;
			last_look_from_start = now;
		}
	}
	else
		limit += batch_size * 2;

	/* a batch first tries what its last look left */
	for (look = (batch_queue == NULL);; look = true)
	{
		QlCandidateResult result;

		if (look)
		{
			ql_look(&start, limit);
			if (batch_queue == NULL && looks == 0)
			{
				QlClaimKey	first;
				QlClaimKey	next;

				if (cands.n > 0)
					ql_row_key(cands.rows[0], cands.desc, &first);
				ql_next_frontier(&start, cands.n > 0 ? &first : NULL, &next);
				if (ql_key_cmp(&next, &start) > 0)
					ql_frontier_advance(my_database, &next, gen);
			}
			looks++;
		}
		result = ql_claim_candidate(job, batch_queue);
		if (result != QL_CANDIDATE_NONE_LEFT)
			return result == QL_CANDIDATE_CLAIMED;
		if (look && (!cands.cut || looks == 3))
			return false;
		/* every candidate was claimed by others, or tried: look further */
		if (look)
			limit *= 8;
		start = cands.resume;
	}
}

/*
 * ql_next_wakeup_ms: how long an idle worker may sleep: until the next
 * future job is due, at most qlater.poll_interval.  Caller is connected to
 * SPI.
 */
static long
ql_next_wakeup_ms(void)
{
	bool		isnull;
	Datum		d;
	long		ms = ql_poll_interval;

	if (SPI_execute_plan(plans.next, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for future jobs");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
	{
		TimestampTz next = DatumGetTimestampTz(d);
		TimestampTz now = GetCurrentTimestamp();

		if (next <= now)
			ms = 0;
		else
		{
			/* round up: waking early only costs another look */
			int64		wait = (next - now + 999) / 1000;

			if (wait < ms)
				ms = (long) wait;
		}
	}
	return ms;
}

/*
 * ql_call_plan: the prepared plan of a call of handler proc.  Caller is
 * connected to SPI, as the job's role: planning inserts the defaults of
 * parameters not given, and may run their functions.
 */
static SPIPlanPtr
ql_call_plan(Oid proc, QlCall *call)
{
	QlCallKey	key;
	QlCallPlan *entry;
	bool		found;

	if (call_plans == NULL || hash_get_num_entries(call_plans) >= QL_MAX_CALL_PLANS)
	{
		HASHCTL		ctl;

		if (call_plans != NULL)
		{
			HASH_SEQ_STATUS seq;

			hash_seq_init(&seq, call_plans);
			while ((entry = hash_seq_search(&seq)) != NULL)
			{
				if (entry->plan != NULL)
					SPI_freeplan(entry->plan);
			}
			hash_destroy(call_plans);
		}
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(QlCallKey);
		ctl.entrysize = sizeof(QlCallPlan);
		call_plans = hash_create("qlater call plans", 64, &ctl,
								 HASH_ELEM | HASH_BLOBS);
	}

	memset(&key, 0, sizeof(key));
	key.proc = proc;
	key.named = call->named;
	memcpy(key.given, call->given, sizeof(key.given));
	entry = hash_search(call_plans, &key, HASH_ENTER, &found);
	if (found && entry->plan != NULL && entry->nparams == call->nparams &&
		memcmp(entry->types, call->types, sizeof(Oid) * call->nparams) == 0)
		return entry->plan;
	if (found && entry->plan != NULL)
		SPI_freeplan(entry->plan);
	/* no plan until one is made: an error on the way leaves none */
	entry->plan = NULL;
	entry->nparams = call->nparams;
	memcpy(entry->types, call->types, sizeof(Oid) * call->nparams);
	entry->plan = ql_prepare(call->query, call->nparams, call->types);
	return entry->plan;
}

/*
 * ql_fire_commit_actions: run now, as the job's role, the user code that
 * committing would run as the worker's user: deferred triggers, and the
 * queries of cursors WITH HOLD, which are read to their end.  Triggers may
 * open cursors and closing cursors may queue triggers: loop until nothing
 * is left, as CommitTransaction() does.
 */
static void
ql_fire_commit_actions(void)
{
	do
		AfterTriggerFireDeferred();
	while (PreCommit_Portals(false));
}

/*
 * ql_reset_session: drop what an earlier job left in the session: cursors
 * WITH HOLD, prepared statements and temporary tables: the next job may be
 * another role's.  (LISTEN is refused in background workers.)  Called in
 * a transaction, with a snapshot.
 */
static void
ql_reset_session(void)
{
	PortalHashTableDeleteAll();
	DropAllPreparedStatements();
	ResetTempTableNamespace();
}

/*
 * ql_call_handler: convert the job's arguments and run its handler, as the
 * job's role, in a GUC nest level that undoes whatever it SETs, with the
 * database's settings (search_path included) rather than the worker's.
 *
 * The switch to the role comes first: everything after it may run code
 * the role defined (type input functions, domain checks, the functions of
 * parameter defaults, which planning the call may run, and the handler),
 * and the role's rights are all it may have.  What the commit would run of
 * the job's code (deferred triggers, cursors WITH HOLD) runs here too,
 * before the switch back to the worker's user, which is a superuser.  An
 * error leaves the switch to the abort of the (sub)transaction, which
 * restores the user and settings it started with.
 *
 * A procedure is CALLed like a function, in an atomic context: it may not
 * COMMIT or ROLLBACK (2D000, invalid transaction termination).  A handler
 * whose transactions ended inside it would start new ones as the role,
 * which PostgreSQL's own code never does, and its work would no longer
 * commit with the job's removal.  Caller is connected to SPI.
 */
static void
ql_call_handler(QlJob *job, Oid roleid)
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	QlProcInfo *pi;
	QlCall		call;
	SPIPlanPtr	plan;
	MemoryContext old;
	int			rc;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	save_nestlevel = NewGUCNestLevel();
	ql_handler_settings();
	SetUserIdAndSecContext(roleid, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	/* the job's code may be cancelled; the worker's own work is not */
	RESUME_CANCEL_INTERRUPTS();

	pi = ql_procinfo(job->proc);
	old = MemoryContextSwitchTo(job_cxt);
	ql_args_to_call(pi, job->args, &call);
	MemoryContextSwitchTo(old);
	plan = ql_call_plan(job->proc, &call);

	PushActiveSnapshot(GetTransactionSnapshot());
	rc = SPI_execute_plan(plan, call.values, call.nulls, false, 0);
	PopActiveSnapshot();
	if (rc < 0)
		elog(ERROR, "could not run handler: %s", SPI_result_code_string(rc));
	ql_fire_commit_actions();

	HOLD_CANCEL_INTERRUPTS();
	SetUserIdAndSecContext(save_userid, save_sec_context);
	AtEOXact_GUC(false, save_nestlevel);
}

/*
 * ql_record_failure: count the failed attempt and reschedule the job, or
 * make it dead: in a transaction of its own, or, for a job of a batch, in
 * the batch's transaction.
 */
static void
ql_record_failure(QlJob *job, ErrorData *edata, bool permanent, bool in_batch)
{
	int32		attempts = job->attempts + 1;
	bool		dead = permanent || attempts >= job->max_attempts;
	TimestampTz now;
	Datum		values[5];

	if (!in_batch)
		ql_xact_begin();
	else
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
	}
	now = GetCurrentTimestamp();

	values[0] = Int64GetDatum(job->id);
	values[1] = Int32GetDatum(attempts);
	values[2] = JsonbPGetDatum(ql_error_json(edata, attempts, now));
	values[3] = TimestampTzGetDatum(dead ? now : ql_retry_time(attempts, now));
	values[4] = BoolGetDatum(dead);
	if (SPI_execute_plan(plans.fail, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the failure of job %lld", (long long) job->id);
	if (!dead)
	{
		QlClaimKey	key = {job->priority, DatumGetTimestampTz(values[3]), job->id};

		ql_lower_frontier_at_commit(&key);
	}
	if (!in_batch)
		ql_xact_commit();
	else
	{
		SPI_finish();
		PopActiveSnapshot();
	}

	ereport(LOG,
			(errmsg("qlater job %lld (%s) failed%s: %s",
					(long long) job->id, job->handler,
					dead ? ", now dead" : "", edata->message)));
}

/*
 * ql_remove: delete the job's row, in the job's (sub)transaction.  Returns
 * false if it is gone: qlater_cancel removed it meanwhile.  The version the
 * claim read is deleted in place, waiting for a transaction that is
 * changing it, as a DELETE would; the DELETE statement itself removes a
 * row changed since (it finds the current version), or one of a table with
 * triggers.  Caller is connected to SPI, with an active snapshot.
 */
static bool
ql_remove(QlJob *job)
{
	Relation	rel = table_open(plans.job_relid, RowExclusiveLock);
	TM_Result	result = TM_Updated;
	TM_FailureData tmfd;
	Datum		id;

	if (rel->trigdesc == NULL)
		result = table_tuple_delete(rel, &job->tid, GetCurrentCommandId(true),
									GetActiveSnapshot(), InvalidSnapshot, true,
									&tmfd, false);
	table_close(rel, NoLock);
	if (result == TM_Ok)
	{
		CommandCounterIncrement();
		return true;
	}
	if (result == TM_Deleted)
		return false;
	id = Int64GetDatum(job->id);
	if (SPI_execute_plan(plans.delete, &id, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not remove job");
	return SPI_processed > 0;
}

/*
 * ql_check_runnable: raise an error unless the job can run: its handler
 * exists and is a registered handler, and its role exists.  A job written
 * for an external queue that has become an in-server one may name any
 * function, or none: only registered handlers run in the server.
 */
static Oid
ql_check_runnable(const QlJob *job)
{
	Oid			roleid = get_role_oid(job->role, true);

	if (!OidIsValid(job->proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("job handler %s does not exist", job->handler),
				 errdetail("The handler was dropped or renamed after the job was enqueued, "
						   "or the job was written for applications and its queue is now served in the server.")));
	if (ql_handler_lookup(job->proc) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("function %s is not registered as a job handler", job->handler),
				 errdetail("Only registered handlers run in the server: the handler was unregistered, "
						   "or the job was written for applications and its queue is now served in the server.")));
	if (!OidIsValid(roleid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" does not exist", job->role),
				 errdetail("The role that enqueued the job was dropped or renamed.")));
	return roleid;
}

/*
 * ql_timeout_message: the message of an attempt that ran out of time
 */
static char *
ql_timeout_message(const QlJob *job)
{
	return psprintf("job timed out after %s",
					DatumGetCString(DirectFunctionCall1(interval_out,
														IntervalPGetDatum(&job->timeout))));
}

/*
 * ql_execute: run a claimed job to its end.  Alone, in the transaction
 * that claimed it: commit of its work and its removal, or rollback and a
 * recorded failure.  In a batch, in a subtransaction of the batch's
 * transaction, which the failure is recorded in.  Called in the claiming
 * transaction, without SPI connection or active snapshot.  Alone, it
 * returns with the transaction ended, in the loop's memory context.
 */
static void
ql_execute(QlJob *job, QlWorkerSlot *slot, bool in_batch)
{
	volatile bool permanent = true;
	volatile bool cancelled = false;
	ErrorData  *edata = NULL;
	MemoryContext outer_cxt = CurrentMemoryContext;
	ResourceOwner outer_owner = CurrentResourceOwner;

	job_timed_out = false;
	/* a cancel meant for a job that has ended since must not hit this one */
	QueryCancelPending = false;
	if (in_batch)
		BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		Oid			roleid;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		roleid = ql_check_runnable(job);
		PopActiveSnapshot();
		/* from here on a failure is the handler's: retry it */
		permanent = false;
		if (job->has_timeout)
		{
			int64		ms = job->timeout.time / 1000 +
				((int64) job->timeout.month * DAYS_PER_MONTH + job->timeout.day) *
				SECS_PER_DAY * 1000;

			enable_timeout_after(job_timeout_id, (int) Min(Max(ms, 1), INT_MAX));
		}
		ql_call_handler(job, roleid);
		if (job->has_timeout)
			disable_timeout(job_timeout_id, false);

		if (job_timed_out)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg_internal("%s", ql_timeout_message(job)),
					 errdetail("The handler went on after its cancel; its work is rolled back.")));
		if (pg_atomic_read_u64(&slot->cancel_job) == (uint64) job->id)
		{
			cancelled = true;
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("job was cancelled")));
		}

		/* the job's removal commits with the handler's work */
		PushActiveSnapshot(GetTransactionSnapshot());
		if (!ql_remove(job))
		{
			/* qlater_cancel removed it meanwhile: its work must not stay */
			cancelled = true;
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("job was cancelled")));
		}
		PopActiveSnapshot();
		SPI_finish();
		if (in_batch)
			ReleaseCurrentSubTransaction();
		else
			ql_xact_commit();
	}
	PG_CATCH();
	{
		MemoryContext ecxt;

		/* an error of the job's code: cancels are held again */
		if (QueryCancelHoldoffCount == 0)
			HOLD_CANCEL_INTERRUPTS();
		disable_timeout(job_timeout_id, false);
		ecxt = MemoryContextSwitchTo(job_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		MemoryContextSwitchTo(ecxt);
		/* the abort restores the user and settings the (sub)transaction started with */
		if (in_batch)
			RollbackAndReleaseCurrentSubTransaction();
		else
			ql_xact_abort();
	}
	PG_END_TRY();

	/*
	 * After a subtransaction, back to the batch's context and resource
	 * owner; after a top-level commit or abort those are gone, and
	 * ql_xact_commit/abort left the loop's context current.
	 */
	if (in_batch)
	{
		MemoryContextSwitchTo(outer_cxt);
		CurrentResourceOwner = outer_owner;
	}

	/* a cancel interrupted the handler */
	if (edata != NULL && pg_atomic_read_u64(&slot->cancel_job) == (uint64) job->id)
		cancelled = true;

	if (edata != NULL && !cancelled)
	{
		if (job_timed_out && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			edata->message = MemoryContextStrdup(job_cxt, ql_timeout_message(job));
		ql_record_failure(job, edata, permanent, in_batch);
	}
}

/*
 * ql_run_one: run a claimed job, alone or as one of a batch, and show it
 * in the worker's slot, in the crash accounting and in pg_stat_activity
 * meanwhile.
 */
static void
ql_run_one(QlJob *job, QlWorkerSlot *slot, bool in_batch)
{
	pg_atomic_write_u32(&slot->idle, 0);
	pg_atomic_write_u64(&slot->overrun_job, 0);
	pg_atomic_write_u64(&slot->job_id, (uint64) job->id);
	running_slot = slot;
	ql_inflight_set(MyDatabaseId, job->id);
	pgstat_report_activity(STATE_RUNNING,
						   psprintf("qlater job %lld: %s", (long long) job->id, job->handler));

	ql_execute(job, slot, in_batch);

	running_slot = NULL;
	pg_atomic_write_u64(&slot->overrun_job, 0);
	ql_inflight_clear();
	pg_atomic_write_u64(&slot->job_id, 0);
	if (pg_atomic_read_u64(&slot->cancel_job) == (uint64) job->id)
		pg_atomic_write_u64(&slot->cancel_job, 0);
}

/*
 * ql_claim_more: claim the next ready job for the batch of a queue, after
 * its last job, into *job.  Returns false if there is none that can join
 * the batch.  Called in the batch's transaction, without SPI connection or
 * active snapshot.
 */
static bool
ql_claim_more(const char *queue, int size, QlJob *job)
{
	bool		found;

	PushActiveSnapshot(GetTransactionSnapshot());
	ql_reset_session();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	found = ql_claim(job, queue, size);
	SPI_finish();
	PopActiveSnapshot();
	return found;
}

/*
 * ql_rerun: run a job of a batch that failed to commit, alone, in a
 * transaction of its own.  Its claim is still held.
 */
static void
ql_rerun(int64 id, QlWorkerSlot *slot)
{
	QlJob		job;
	bool		found;

	MemoryContextReset(job_cxt);
	ql_xact_begin();
	found = ql_fetch(id, &job);
	if (found)
	{
		SPI_finish();
		PopActiveSnapshot();
		ql_run_one(&job, slot, false);
	}
	else
		ql_xact_commit();
}

/*
 * ql_run_batch: run the claimed job and more ready jobs of its queue in
 * one transaction, each in a subtransaction of its own, and commit them
 * together: one WAL flush for the batch.  The batch ends at the queue's
 * batch_size, once its batch_delay has passed since the first job ended,
 * or when no more ready job can join.  A job's work and its removal still
 * commit or roll back together, and a failure is the failing job's alone.
 * Deferred triggers fire at the end of each job (ql_call_handler).  If
 * the batch fails to commit, its jobs run again one by one.  Called in
 * the claiming transaction, without SPI connection or active snapshot.
 */
static void
ql_run_batch(QlJob *first, QlWorkerSlot *slot)
{
	int64		ids[QL_MAX_BATCH];
	int			n = 0;
	int			size = first->batch_size;
	int64		delay = first->batch_delay;
	char		queue[NAMEDATALEN];
	TimestampTz first_done = 0;
	QlJob		next;
	QlJob	   *job = first;
	volatile bool committed = true;

	strlcpy(queue, first->queue, sizeof(queue));
	for (;;)
	{
		ids[n++] = job->id;
		ql_run_one(job, slot, true);
		if (n == 1)
			first_done = GetCurrentTimestamp();
		if (n >= size || GetCurrentTimestamp() - first_done >= delay ||
			!ql_claim_more(queue, size, &next))
			break;
		job = &next;
	}

	PG_TRY();
	{
		ql_xact_commit();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		MemoryContext ecxt = MemoryContextSwitchTo(job_cxt);

		edata = CopyErrorData();
		FlushErrorState();
		MemoryContextSwitchTo(ecxt);
		ql_xact_abort();
		ereport(LOG,
				(errmsg("a batch of %d qlater jobs failed to commit: %s",
						n, edata->message),
				 errdetail("Its jobs run again one by one.")));
		committed = false;
	}
	PG_END_TRY();

	if (!committed)
	{
		int			i;

		for (i = 0; i < n; i++)
			ql_rerun(ids[i], slot);
	}
}

/*
 * ql_run_next_job: claim the first ready job and run it, alone or in a
 * batch with more jobs of its queue.  Returns QL_JOB_RAN after a job;
 * QL_JOB_NONE if none was ready, with the time an idle worker may sleep
 * in *sleep_ms; QL_JOB_NO_EXTENSION if qlater is no longer installed in
 * this database.
 */
QlJobResult
ql_run_next_job(QlWorkerSlot *slot, long *sleep_ms)
{
	const QlCatalog *c;
	QlJob		job;
	bool		claimed;

	MemoryContextReset(job_cxt);

	ql_xact_begin();
	ql_reset_session();
	c = ql_catalog(true);
	if (c == NULL)
	{
		ql_xact_commit();
		return QL_JOB_NO_EXTENSION;
	}
	ql_prepare_plans(c);

	claimed = ql_claim(&job, NULL, 0);
	if (!claimed)
	{
		*sleep_ms = ql_next_wakeup_ms();
		ql_xact_commit();
		return QL_JOB_NONE;
	}
	/*
	 * Busy from now on, so not woken itself; if the look saw more ready
	 * jobs than this one, another idle worker takes them meanwhile.
	 */
	pg_atomic_write_u32(&slot->idle, 0);
	if (cands.next < cands.n)
		ql_wake_another_worker();
	ql_queue_settings(&job);
	SPI_finish();
	PopActiveSnapshot();

	if (job.batch_size > 1 && ql_batchable())
		ql_run_batch(&job, slot);
	else
		ql_run_one(&job, slot, false);

	/*
	 * Release the claims, now that the jobs' transaction has ended, and any
	 * session-level advisory lock a handler left behind.
	 */
	LockReleaseSession(USER_LOCKMETHOD);
	pgstat_report_activity(STATE_IDLE, NULL);
	return QL_JOB_RAN;
}

/*
 * ql_settle_ended: record the end of an attempt whose process could not
 * record it itself: the server crashed while it ran (QL_END_CRASH), or its
 * worker was ended because the handler went on after a timeout
 * (QL_END_TIMEOUT) or a committed qlater_cancel (QL_END_CANCEL; the cancel
 * removed the job, and nothing is left to record).  The attempt counts as
 * failed, with a last_error that says why, and the job is retried after
 * its backoff or is dead.  Runs its own transaction.
 */
void
ql_settle_ended(int64 job_id, QlEndKind kind)
{
	const QlCatalog *c;
	Datum		id = Int64GetDatum(job_id);

	ql_xact_begin();
	c = ql_catalog(true);
	if (c != NULL)
	{
		ql_prepare_plans(c);
		if (SPI_execute_plan(plans.settle_read, &id, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read job %lld", (long long) job_id);
		if (SPI_processed > 0)
		{
			HeapTuple	row = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int32		attempts = DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull)) + 1;
			int32		max_attempts = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
			int32		crashes = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
			Datum		timeout = SPI_getbinval(row, desc, 4, &isnull);
			TimestampTz now = GetCurrentTimestamp();
			bool		dead;
			Jsonb	   *error;
			Datum		values[6];

			if (kind == QL_END_CRASH)
			{
				crashes++;
				error = ql_error_json_fields("XX000", "the server crashed while the job ran",
											 psprintf("Crash %d of at most %d.", crashes, ql_max_crashes),
											 "A handler that crashes its process restarts the whole server.",
											 NULL, attempts, now);
			}
			else
				error = ql_error_json_fields("57014",
											 kind == QL_END_TIMEOUT && !isnull ?
											 psprintf("job timed out after %s",
													  DatumGetCString(DirectFunctionCall1(interval_out, timeout))) :
											 "job was cancelled",
											 psprintf("The handler went on for %d seconds after its cancel: its worker was ended and its work rolled back.",
													  QL_OVERRUN_GRACE_MS / 1000),
											 "A handler must not catch query_canceled without raising it again.",
											 NULL, attempts, now);
			dead = (attempts >= max_attempts || crashes >= ql_max_crashes);
			values[0] = id;
			values[1] = Int32GetDatum(attempts);
			values[2] = Int32GetDatum(crashes);
			values[3] = JsonbPGetDatum(error);
			values[4] = TimestampTzGetDatum(dead ? now : ql_retry_time(attempts, now));
			values[5] = BoolGetDatum(dead);
			if (SPI_execute_plan(plans.settle, values, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not record the end of job %lld", (long long) job_id);
			ql_lower_frontier_at_commit(&ql_key_min);
		}
	}
	ql_xact_commit();
}
