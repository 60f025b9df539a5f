/*-------------------------------------------------------------------------
 *
 * run.c
 *		Running a claimed job in a worker.
 *
 * The job runs in its own transaction (or a subtransaction of a batch's:
 * batch.c) as the role that enqueued it, with a local user-ID change as
 * PostgreSQL's security-restricted operations make (so SET ROLE, RESET ROLE
 * and SET SESSION AUTHORIZATION are refused inside it), and in a GUC nest
 * level that drops whatever the handler SET.  Its row is deleted in the
 * same transaction.  If the handler fails, the transaction is rolled back
 * and the failure is recorded in a new one (failure.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/prepare.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/analyze.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "args.h"
#include "catalog.h"
#include "handlers.h"
#include "history.h"
#include "inflight.h"
#include "job.h"
#include "limits.h"
#include "qlater.h"
#include "shmem.h"
#include "xact.h"

/*
 * Handler call plans, by the handler's OID, the job's role (a plan may
 * inline a SQL function the planning role may execute) and the shape of
 * the call: the notation and which parameters are given (the others take
 * their defaults).  The statement's text and parameter types are kept and
 * compared too: a plan is used only for the very call it was made for.
 */
typedef struct QlCallKey
{
	Oid			proc;
	Oid			role;
	bool		named;
	bits8		given[QL_CALL_GIVEN_BYTES];
} QlCallKey;

typedef struct QlCallPlan
{
	QlCallKey	key;			/* hash key */
	char	   *query;			/* in TopMemoryContext */
	int			nparams;
	Oid			types[FUNC_MAX_ARGS];
	SPIPlanPtr	plan;
} QlCallPlan;

#define QL_MAX_CALL_PLANS	1000

/* the longest a finished job's removal waits for another transaction */
#define QL_REMOVE_LOCK_TIMEOUT	"5s"

/* set by the timeout handler: the running job's timeout ran out */
static volatile sig_atomic_t job_timed_out = false;

/* the slot of this worker while it runs a job, for the timeout handler */
static QlWorkerSlot *volatile running_slot = NULL;

/*
 * ql_job_timeout_handler: the job's timeout ran out: cancel what it is
 * doing, and remember it, so that a handler that catches the cancel still
 * fails.
 */
void
ql_job_timeout_handler(void)
{
	job_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
	if (running_slot != NULL)
		ql_mark_overrun(running_slot, QL_END_TIMEOUT);
}

/*
 * The call being prepared or run, checked by ql_check_call_analysis.  A
 * call's text names its handler (schema.name(...)), and PostgreSQL
 * resolves a name again whenever it plans the statement anew: after a
 * rename, or once another function of that name matches the call better
 * (an overload without the defaults the call relies on), the text would
 * call another function, perhaps another role's.  So every analysis of the
 * text, the first and any after an invalidation, must find the job's
 * handler, or the call fails.
 */
static Oid	call_proc = InvalidOid;
static const char *call_query = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze_hook = NULL;

/* ql_called_function: the function a SELECT f(...) or CALL p(...) calls */
static Oid
ql_called_function(Query *query)
{
	if (query->commandType == CMD_UTILITY && query->utilityStmt != NULL &&
		IsA(query->utilityStmt, CallStmt))
	{
		CallStmt   *stmt = (CallStmt *) query->utilityStmt;

		return stmt->funcexpr ? stmt->funcexpr->funcid : InvalidOid;
	}
	if (query->commandType == CMD_SELECT && list_length(query->targetList) == 1)
	{
		TargetEntry *tle = linitial_node(TargetEntry, query->targetList);

		if (tle->expr && IsA(tle->expr, FuncExpr))
			return ((FuncExpr *) tle->expr)->funcid;
	}
	return InvalidOid;
}

/* ql_check_call_analysis: post_parse_analyze_hook, see above */
static void
ql_check_call_analysis(ParseState *pstate, Query *query, JumbleState *jstate)
{
	if (prev_post_parse_analyze_hook)
		prev_post_parse_analyze_hook(pstate, query, jstate);
	if (OidIsValid(call_proc) && pstate->p_sourcetext != NULL &&
		strcmp(pstate->p_sourcetext, call_query) == 0 &&
		ql_called_function(query) != call_proc)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("the call of job handler %s names another function now",
						format_procedure(call_proc)),
				 errdetail("The handler was renamed, or a function of its name that matches the call better was created.")));
}

/* ql_call_init: install the check of calls; once per worker */
void
ql_call_init(void)
{
	prev_post_parse_analyze_hook = post_parse_analyze_hook;
	post_parse_analyze_hook = ql_check_call_analysis;
}

/*
 * ql_call_plan: the prepared plan of the call of handler proc by the job's
 * role.  Caller is connected to SPI, as the role (planning inserts the
 * defaults of parameters not given, and may run their functions), with
 * call_proc and call_query set.
 */
static SPIPlanPtr
ql_call_plan(QlWorker *w, Oid proc, Oid role, QlCall *call)
{
	QlCallKey	key;
	QlCallPlan *entry;
	bool		found;

	if (w->call_plans == NULL || hash_get_num_entries(w->call_plans) >= QL_MAX_CALL_PLANS)
	{
		HASHCTL		ctl;

		if (w->call_plans != NULL)
		{
			HASH_SEQ_STATUS seq;

			hash_seq_init(&seq, w->call_plans);
			while ((entry = hash_seq_search(&seq)) != NULL)
			{
				if (entry->plan != NULL)
					SPI_freeplan(entry->plan);
				if (entry->query != NULL)
					pfree(entry->query);
			}
			hash_destroy(w->call_plans);
		}
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(QlCallKey);
		ctl.entrysize = sizeof(QlCallPlan);
		w->call_plans = hash_create("qlater call plans", 64, &ctl,
									HASH_ELEM | HASH_BLOBS);
	}

	memset(&key, 0, sizeof(key));
	key.proc = proc;
	key.role = role;
	key.named = call->named;
	memcpy(key.given, call->given, sizeof(key.given));
	entry = hash_search(w->call_plans, &key, HASH_ENTER, &found);
	if (!found)
	{
		entry->plan = NULL;
		entry->query = NULL;
	}
	if (entry->plan != NULL && entry->nparams == call->nparams &&
		memcmp(entry->types, call->types, sizeof(Oid) * call->nparams) == 0 &&
		strcmp(entry->query, call->query) == 0)
		return entry->plan;
	if (entry->plan != NULL)
		SPI_freeplan(entry->plan);
	if (entry->query != NULL)
		pfree(entry->query);
	/* no plan until one is made: an error on the way leaves none */
	entry->plan = NULL;
	entry->query = MemoryContextStrdup(TopMemoryContext, call->query);
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
void
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
ql_call_handler(QlWorker *w, QlJob *job, Oid roleid, volatile bool *permanent)
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
	/* is_superuser tells the job's role, as SET ROLE would make it */
	(void) set_config_option("is_superuser", superuser_arg(roleid) ? "on" : "off",
							 PGC_INTERNAL, PGC_S_DYNAMIC_DEFAULT, GUC_ACTION_SAVE,
							 true, 0, false);
	SetUserIdAndSecContext(roleid, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	/* the job's code may be cancelled; the worker's own work is not */
	RESUME_CANCEL_INTERRUPTS();

	/* conversion and planning may run the role's queries: a snapshot */
	PushActiveSnapshot(GetTransactionSnapshot());
	pi = ql_procinfo(job->proc);
	old = MemoryContextSwitchTo(w->job_cxt);
	ql_args_to_call(pi, job->args, &call);
	MemoryContextSwitchTo(old);
	/* arguments that fit: from here on a failure is the handler's, retried */
	*permanent = false;
	call_proc = job->proc;
	call_query = call.query;
	plan = ql_call_plan(w, job->proc, roleid, &call);
	PopActiveSnapshot();

	PushActiveSnapshot(GetTransactionSnapshot());
	rc = SPI_execute_plan(plan, call.values, call.nulls, false, 0);
	PopActiveSnapshot();
	call_proc = InvalidOid;
	if (rc < 0)
		elog(ERROR, "could not run handler: %s", SPI_result_code_string(rc));
	ql_fire_commit_actions();

	HOLD_CANCEL_INTERRUPTS();
	SetUserIdAndSecContext(save_userid, save_sec_context);
	AtEOXact_GUC(false, save_nestlevel);
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
ql_remove(QlWorker *w, QlJob *job)
{
	Relation	rel = table_open(w->plans.job_relid, RowExclusiveLock);
	TM_Result	result = TM_Updated;
	TM_FailureData tmfd;
	Datum		id;
	int			nestlevel;
	bool		removed;

	if (rel->trigdesc == NULL)
		result = table_tuple_delete(rel, &job->tid, GetCurrentCommandId(true),
									GetActiveSnapshot(), InvalidSnapshot, false,
									&tmfd, false);
	if (result == TM_Ok)
	{
		table_close(rel, NoLock);
		CommandCounterIncrement();
		return true;
	}
	if (result == TM_Deleted)
	{
		table_close(rel, NoLock);
		return false;
	}

	/*
	 * Another transaction changes the row (a qlater_cancel that has not
	 * ended), or the row changed since the claim, or the table has
	 * triggers: wait as a DELETE would, but at most QL_REMOVE_LOCK_TIMEOUT
	 * and cancellably, so that a transaction left open cannot hold the
	 * worker (ql_execute then rolls the job back, uncounted).
	 */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("lock_timeout", QL_REMOVE_LOCK_TIMEOUT, PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	RESUME_CANCEL_INTERRUPTS();
	if (result == TM_BeingModified)
		result = table_tuple_delete(rel, &job->tid, GetCurrentCommandId(true),
									GetActiveSnapshot(), InvalidSnapshot, true,
									&tmfd, false);
	table_close(rel, NoLock);
	if (result == TM_Ok)
	{
		CommandCounterIncrement();
		removed = true;
	}
	else if (result == TM_Deleted)
		removed = false;
	else
	{
		id = Int64GetDatum(job->id);
		if (SPI_execute_plan(w->plans.delete, &id, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not remove job");
		removed = SPI_processed > 0;
	}
	HOLD_CANCEL_INTERRUPTS();
	AtEOXact_GUC(true, nestlevel);
	return removed;
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
ql_execute(QlWorker *w, QlJob *job, bool in_batch)
{
	volatile bool permanent = true;
	volatile bool cancelled = false;
	volatile bool removing = false;
	bool		removed;
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
		if (job->has_timeout)
		{
			int64		ms = job->timeout.time / 1000 +
				((int64) job->timeout.month * DAYS_PER_MONTH + job->timeout.day) *
				SECS_PER_DAY * 1000;

			enable_timeout_after(w->timeout_id, (int) Min(Max(ms, 1), INT_MAX));
		}
		ql_call_handler(w, job, roleid, &permanent);
		if (job->has_timeout)
			disable_timeout(w->timeout_id, false);

		if (job_timed_out)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg_internal("%s", ql_timeout_message(job)),
					 errdetail("The handler went on after its cancel; its work is rolled back.")));
		if (pg_atomic_read_u64(&w->slot->cancel_job) == (uint64) job->id)
		{
			cancelled = true;
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("job was cancelled")));
		}

		/* the job's removal commits with the handler's work, and its outcome */
		PushActiveSnapshot(GetTransactionSnapshot());
		removing = true;
		removed = ql_remove(w, job);
		removing = false;
		if (!removed)
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
		{
			ql_history_done(job);
			ql_history_flush();
			ql_xact_commit();
		}
	}
	PG_CATCH();
	{
		MemoryContext ecxt;

		/* an error of the job's code: cancels are held again */
		call_proc = InvalidOid;
		if (QueryCancelHoldoffCount == 0)
			HOLD_CANCEL_INTERRUPTS();
		disable_timeout(w->timeout_id, false);
		ecxt = MemoryContextSwitchTo(w->job_cxt);
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
		/*
		 * Done: its outcome is written with the batch's others before the
		 * batch commits (outside the job's error handling: an error here is
		 * the batch's, whose transaction is current)
		 */
		if (edata == NULL)
			ql_history_done(job);
	}

	/* a cancel interrupted the handler */
	if (edata != NULL && pg_atomic_read_u64(&w->slot->cancel_job) == (uint64) job->id)
		cancelled = true;
	/*
	 * The removal waited too long for a transaction changing the job (a
	 * qlater_cancel left open), or was cancelled: the job's work is rolled
	 * back, and it runs again unless that cancel commits; not an attempt
	 * of the handler's.
	 */
	if (edata != NULL && removing && !cancelled)
	{
		ereport(LOG,
				(errmsg("qlater job %lld rolled back: %s", (long long) job->id, edata->message),
				 errdetail("A transaction that changes the job (a qlater_cancel) did not end; the job runs again unless it removes the job.")));
		cancelled = true;
	}

	if (edata != NULL && !cancelled)
	{
		if (job_timed_out && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			edata->message = MemoryContextStrdup(w->job_cxt, ql_timeout_message(job));
		ql_record_failure(w, job, edata, job_timed_out, permanent, in_batch);
	}
}

/*
 * ql_run_one: run a claimed job, alone or as one of a batch, and show it
 * in the worker's slot, in the crash accounting and in pg_stat_activity
 * meanwhile.
 */
void
ql_run_one(QlWorker *w, QlJob *job, bool in_batch)
{
	pg_atomic_write_u32(&w->slot->idle, 0);
	pg_atomic_write_u64(&w->slot->overrun_job, 0);
	job->started_at = GetCurrentTimestamp();
	/* since when, then which: a reader of both checks job_id again */
	pg_atomic_write_u64(&w->slot->job_started, (uint64) job->started_at);
	pg_write_barrier();
	pg_atomic_write_u64(&w->slot->job_id, (uint64) job->id);
	running_slot = w->slot;
	ql_inflight_set(MyDatabaseId, job->id);
	pgstat_report_activity(STATE_RUNNING,
						   psprintf("qlater job %lld: %s", (long long) job->id, job->handler));

	ql_execute(w, job, in_batch);

	running_slot = NULL;
	pg_atomic_write_u64(&w->slot->overrun_job, 0);
	ql_inflight_clear();
	pg_atomic_write_u64(&w->slot->job_id, 0);
	if (pg_atomic_read_u64(&w->slot->cancel_job) == (uint64) job->id)
		pg_atomic_write_u64(&w->slot->cancel_job, 0);
}

/*
 * ql_run_next_job: claim the first ready job and run it, alone or in a
 * batch with more jobs of its queue.  Returns QL_JOB_RAN after a job;
 * QL_JOB_NONE if none was ready, with the time an idle worker may sleep
 * in *sleep_ms; QL_JOB_NO_EXTENSION if qlater is no longer installed in
 * this database.
 */
QlJobResult
ql_run_next_job(QlWorker *w, long *sleep_ms)
{
	const QlCatalog *c;
	QlJob		job;
	bool		claimed;

	MemoryContextReset(w->job_cxt);

	/* the claim frontier, before the transaction's snapshot (claim.c) */
	ql_claim_begin(w);
	ql_xact_begin();
	ql_reset_session();
	c = ql_catalog(true);
	if (c == NULL || !c->current)
	{
		ql_xact_commit();
		return c == NULL ? QL_JOB_NO_EXTENSION : QL_JOB_OUTDATED;
	}
	ql_prepare_plans(w, c);

	claimed = ql_claim(w, &job, NULL, 0);
	if (!claimed)
	{
		*sleep_ms = ql_next_wakeup_ms(w);
		ql_xact_commit();
		return QL_JOB_NONE;
	}
	/*
	 * Busy from now on, so not woken itself; if the look saw more ready
	 * jobs than this one, another idle worker takes them meanwhile.
	 */
	pg_atomic_write_u32(&w->slot->idle, 0);
	if (pg_atomic_read_u64(&w->slot->busy_since) == 0)
		pg_atomic_write_u64(&w->slot->busy_since, (uint64) GetCurrentTimestamp());
	if (w->cands.next < w->cands.n)
		ql_wake_another_worker();
	ql_queue_settings(w, &job);
	/* a batch takes the candidates after it: the others look past them */
	if (job.batch_size > 1 && ql_batchable())
		ql_reserve(w, w->batch_expect > 0 ?
				   Min(w->batch_expect, job.batch_size) : job.batch_size);
	SPI_finish();
	PopActiveSnapshot();

	if (job.batch_size > 1 && ql_batchable())
		ql_run_batch(w, &job);
	else
		ql_run_one(w, &job, false);

	/*
	 * Release the claims, now that the jobs' transaction has ended, and any
	 * session-level advisory lock a handler left behind; then the slots of
	 * jobs of limited queues (this worker looks again next itself).
	 */
	LockReleaseSession(USER_LOCKMETHOD);
	ql_limits_release_mine(false);
	/* idle: pg_stat_activity shows no job (NULL would keep the last one) */
	pgstat_report_activity(STATE_IDLE, "");
	return QL_JOB_RAN;
}
