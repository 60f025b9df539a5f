/*-------------------------------------------------------------------------
 *
 * job.h
 *		A worker's run path: its state, the statements on the job table
 *		(plans.c), claims (claim.c), running a job (run.c), batches
 *		(batch.c), and failures and their backoff (failure.c, shared with
 *		the external consumers).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_JOB_H
#define QLATER_JOB_H

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "storage/itemptr.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/timeout.h"

#include "catalog.h"
#include "shmem.h"

typedef enum QlJobResult
{
	QL_JOB_RAN,
	QL_JOB_NONE,
	QL_JOB_NO_EXTENSION,
	QL_JOB_OUTDATED				/* the extension needs ALTER EXTENSION UPDATE */
} QlJobResult;

/* a claimed job, copied into the worker's job_cxt */
typedef struct QlJob
{
	int64		id;
	char	   *handler;
	Oid			proc;			/* InvalidOid if the text names no function */
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
	TimestampTz enqueued_at;
	TimestampTz started_at;		/* when its attempt began */
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
	QL_ATT_ENQUEUED_AT,
	QL_NJOBATTS
} QlJobAtt;

/*
 * What a look reads of a job row (QL_ROW_COLUMNS, in this order): its place
 * in the claim order, its row version, and its queue (a look leaves out
 * the jobs of paused and full queues: limits.c).  A claim reads the rest
 * from the version itself.
 */
#define QL_ROW_COLUMNS "id, priority, run_at, ctid, xmin, queue"
#define QL_ROW_ID		1
#define QL_ROW_PRIORITY 2
#define QL_ROW_RUN_AT	3
#define QL_ROW_CTID		4
#define QL_ROW_XMIN		5
#define QL_ROW_QUEUE	6

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
	SPIPlanPtr	first_due;
	SPIPlanPtr	first_due_but;	/* ... of queues other than $1 */
	SPIPlanPtr	settle_read;
	SPIPlanPtr	settle;
} QlPlans;

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

/* a worker's run path state, made by ql_job_init */
typedef struct QlWorker
{
	QlWorkerSlot *slot;			/* this worker's shared slot */
	QlDatabase *database;		/* this database's shared entry */
	MemoryContext job_cxt;		/* the claimed job; reset at each claim */
	QlPlans		plans;
	QlCandidates cands;
	HTAB	   *call_plans;		/* handler call plans (run.c) */
	TimeoutId	timeout_id;		/* a job's timeout */
	QlClaimKey	look_from;		/* claim.c: the frontier as read before the
								 * transaction of its last look from it */
	uint64		look_gen;		/* and the frontier's generation then */
	int			batch_expect;	/* jobs its last batch that ended at its
								 * batch_size or batch_delay ran: what its
								 * next one reserves (claim.c) */
} QlWorker;

/* plans.c */
extern void ql_job_init(QlWorker *w, QlWorkerSlot *slot);
extern void ql_prepare_plans(QlWorker *w, const QlCatalog *c);
extern SPIPlanPtr ql_prepare(const char *query, int nargs, Oid *types);
extern void ql_worker_settings(void);
extern void ql_handler_settings(void);

/* claim.c */
extern void ql_claim_begin(QlWorker *w);
extern bool ql_claim(QlWorker *w, QlJob *job, const char *batch_queue, int batch_size);
extern bool ql_fetch(QlWorker *w, int64 id, QlJob *job);
extern void ql_queue_settings(QlWorker *w, QlJob *job);
extern long ql_next_wakeup_ms(QlWorker *w);
extern void ql_reserve(QlWorker *w, int njobs);
extern TimestampTz ql_first_due(QlWorker *w);

/* run.c */
extern QlJobResult ql_run_next_job(QlWorker *w, long *sleep_ms);
extern void ql_run_one(QlWorker *w, QlJob *job, bool in_batch);
extern void ql_reset_session(void);
extern void ql_job_timeout_handler(void);
extern void ql_call_init(void);

/* batch.c */
extern bool ql_batchable(void);
extern void ql_run_batch(QlWorker *w, QlJob *first);

/* failure.c */
extern const char *ql_clip(const char *text);
extern Jsonb *ql_error_json_fields(const char *sqlstate, const char *message,
								   const char *detail, const char *hint,
								   const char *context, int attempt,
								   TimestampTz at);
extern TimestampTz ql_retry_time(int32 attempts, TimestampTz now);
extern void ql_record_failure(QlWorker *w, QlJob *job, ErrorData *edata, bool timed_out,
							  bool permanent, bool in_batch);
extern void ql_settle_ended(QlWorker *w, int64 job_id, QlEndKind kind);

#endif							/* QLATER_JOB_H */
