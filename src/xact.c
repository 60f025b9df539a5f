/*-------------------------------------------------------------------------
 *
 * xact.c
 *		The one way a qlater process (worker, scheduler, launcher) opens and
 *		ends a transaction of its own.
 *
 * On the way in: the statement timestamp, the transaction, a snapshot and
 * an SPI connection.  On the way out: SPI finished, commit or abort, the
 * statistics of the transaction reported (pgstat_report_stat, as
 * PostgresMain does when it goes idle: autovacuum sees the tables that only
 * jobs write), and a return to the process's loop memory context.  After a
 * top-level commit or abort the transaction's memory context and resource
 * owner are gone: nothing may switch back to them, and CurrentResourceOwner
 * is NULL until the next transaction, as between a client's queries.
 *
 * A job's own work is the one place that ends a transaction differently:
 * a procedure handler's COMMITs (job.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "xact.h"

/* the process's loop context: reset at the top of each round of its loop */
static MemoryContext loop_cxt = NULL;

/* ql_xact_init: create the loop context; call once at process start */
void
ql_xact_init(void)
{
	if (loop_cxt == NULL)
		loop_cxt = AllocSetContextCreate(TopMemoryContext, "qlater loop",
										 ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(loop_cxt);
}

/* ql_loop_context: the loop context, valid between transactions */
MemoryContext
ql_loop_context(void)
{
	return loop_cxt;
}

/*
 * ql_xact_begin: start a transaction with a snapshot and an SPI
 * connection.
 */
void
ql_xact_begin(void)
{
	ql_xact_begin_at(-1);
}

/*
 * ql_xact_begin_at: the same, at an isolation level of its own (-1: the
 * database's default).  A transaction of the worker's own bookkeeping
 * that must see rows committed since its start reads committed, whatever
 * the database's default: set before its first snapshot.
 */
void
ql_xact_begin_at(int isolation)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (isolation >= 0)
		XactIsoLevel = isolation;
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/*
 * ql_xact_commit: commit the current transaction.  An SPI connection or
 * an active snapshot still open is closed first.
 */
void
ql_xact_commit(void)
{
	(void) SPI_finish();		/* SPI_ERROR_UNCONNECTED if not connected */
	while (ActiveSnapshotSet())
		PopActiveSnapshot();
	CommitTransactionCommand();
	ql_xact_after();
}

/*
 * ql_xact_abort: abort the current transaction (and its subtransactions);
 * the abort closes SPI and snapshots.
 */
void
ql_xact_abort(void)
{
	AbortOutOfAnyTransaction();
	ql_xact_after();
}

/*
 * ql_xact_after: what follows the end of any top-level transaction of a
 * qlater process: its statistics reported, and the loop context current.
 */
void
ql_xact_after(void)
{
	Assert(!IsTransactionState());
	pgstat_report_stat(false);
	MemoryContextSwitchTo(loop_cxt);
}

/*
 * ql_xact_recover: recover from an error caught at the top of a qlater
 * process's loop, as PostgresMain and the autovacuum launcher do: report
 * it, abort the transaction, release what an abort outside a transaction
 * leaves (lightweight locks, a wait event), and return to the loop context
 * with the error state cleared.  Caller holds off interrupts.
 */
void
ql_xact_recover(void)
{
	/* since not using PG_TRY, reset the error stack by hand */
	error_context_stack = NULL;
	disable_all_timeouts(false);
	QueryCancelPending = false;
	EmitErrorReport();
	AbortOutOfAnyTransaction();
	LWLockReleaseAll();
	ConditionVariableCancelSleep();
	pgstat_report_wait_end();
	FlushErrorState();
	ql_xact_after();
	MemoryContextReset(loop_cxt);
}
