/*-------------------------------------------------------------------------
 *
 * batch.c
 *		Batches: several ready jobs of a queue run in one transaction, each
 *		in a subtransaction of its own, and commit together.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "api.h"
#include "history.h"
#include "job.h"
#include "shmem.h"
#include "xact.h"

/*
 * ql_batchable: whether jobs may run in batches: only if the workers'
 * transactions see each statement's own snapshot (under REPEATABLE READ or
 * SERIALIZABLE a batch's jobs would share one, and serialization failures
 * would strike the whole batch).
 */
bool
ql_batchable(void)
{
	return !IsolationUsesXactSnapshot();
}

/*
 * ql_claim_more: claim the next ready job for the batch of a queue, after
 * its last job, into *job.  Returns false if there is none that can join
 * the batch.  Called in the batch's transaction, without SPI connection or
 * active snapshot.
 */
static bool
ql_claim_more(QlWorker *w, const char *queue, int size, QlJob *job)
{
	bool		found;

	PushActiveSnapshot(GetTransactionSnapshot());
	ql_reset_session();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	found = ql_claim(w, job, queue, size);
	SPI_finish();
	PopActiveSnapshot();
	return found;
}

/*
 * ql_rerun: run a job of a batch that failed to commit, alone, in a
 * transaction of its own.  Its claim is still held.
 */
static void
ql_rerun(QlWorker *w, int64 id)
{
	QlJob		job;
	bool		found;

	MemoryContextReset(w->job_cxt);
	ql_xact_begin();
	found = ql_fetch(w, id, &job);
	if (found)
	{
		SPI_finish();
		PopActiveSnapshot();
		ql_run_one(w, &job, false);
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
void
ql_run_batch(QlWorker *w, QlJob *first)
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
		ql_run_one(w, job, true);
		if (n == 1)
			first_done = GetCurrentTimestamp();
		if (n >= size || GetCurrentTimestamp() - first_done >= delay)
		{
			w->batch_expect = n;
			break;
		}
		if (!ql_claim_more(w, queue, size, &next))
			break;
		job = &next;
	}

	PG_TRY();
	{
		/* the outcomes of the jobs done, in one statement */
		ql_history_flush();
		ql_xact_commit();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		MemoryContext ecxt = MemoryContextSwitchTo(w->job_cxt);

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
			ql_rerun(w, ids[i]);
	}
}
