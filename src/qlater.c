/*-------------------------------------------------------------------------
 *
 * qlater.c
 *		Module entry point: settings, the launcher's registration, and the
 *		work done at commit of a transaction that enqueued, retried or
 *		cancelled jobs.
 *
 * What a backend asks for at commit is kept in backend-local variables
 * reset at the end of every transaction; shared state is in shmem.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "commands/user.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "utils/syscache.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "api.h"
#include "launcher.h"
#include "limits.h"
#include "schedule.h"
#include "qlater.h"
#include "shmem.h"

PG_MODULE_MAGIC;

int			ql_max_workers = 4;
int			ql_poll_interval = 5000;
int			ql_max_crashes = 3;
int			ql_max_limited_jobs = 1024;
int			ql_revisit_interval = 5 * 60 * 1000;

/* backend-local requests carried out at commit */
static int	pending_wakeups = 0;
static TimestampTz pending_future = 0;	/* earliest run_at of future jobs */
static bool pending_lower = false;
static QlClaimKey pending_first;
static bool pending_launcher_wake = false;
/*
 * ALTER EXTENSION qlater: wake the launcher as pending_launcher_wake does
 * if the transaction commits (prepared, the launcher's revisit finds it)
 */
static bool pending_update_wake = false;
static bool pending_extension_change = false;
static bool pending_queues_changed = false;
static List *pending_cancels = NIL;	/* job ids, in TopMemoryContext */
static List *pending_releases = NIL;	/* QlPendingRelease, in
										 * TopMemoryContext */

/*
 * A claim to release at commit, asked by a (sub)transaction of nest_level:
 * a subtransaction rolled back takes its releases with it, as it takes the
 * finish that asked for them (and as limits.c takes the slots' releases),
 * so that a job whose completion was rolled back to a savepoint stays
 * claimed, with its slot.  A claim taken only to write to its job
 * (ql_release_claim_at_end) is released by an abort too, a
 * subtransaction's included.
 */
typedef struct QlPendingRelease
{
	int64		job_id;
	int			nest_level;
	bool		at_abort;		/* released at an abort too
								 * (ql_release_claim_at_end) */
} QlPendingRelease;

static object_access_hook_type prev_object_access_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility_hook = NULL;

void		_PG_init(void);
static void ql_xact_callback(XactEvent event, void *arg);
static void ql_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								SubTransactionId parentSubid, void *arg);
static void ql_process_utility(PlannedStmt *pstmt, const char *queryString,
							   bool readOnlyTree, ProcessUtilityContext context,
							   ParamListInfo params, QueryEnvironment *queryEnv,
							   DestReceiver *dest, QueryCompletion *qc);
static void ql_object_access(ObjectAccessType access, Oid classId,
							 Oid objectId, int subId, void *arg);
static bool ql_database_is_template(Oid dboid);
static Oid	ql_database_needed_alone(Node *parsetree);
static void ql_database_make_room(Oid dboid);

/*
 * _PG_init: define the settings; when preloaded, set up shared memory and
 * register the launcher.
 *
 * Loaded any other way (CREATE EXTENSION or a restore on a server that does
 * not preload qlater, LOAD), only the settings that can change at a reload
 * are defined: a PGC_POSTMASTER setting cannot be defined after start-up
 * (the attempt is FATAL, as autoprewarm.c notes), and would mean nothing
 * without the workers anyway.  A qlater.max_workers in the configuration
 * file then stays a placeholder, and the prefix is not reserved, which
 * would remove it with a warning.  The install script warns that no job
 * runs (qlater_wake_launcher).
 */
void
_PG_init(void)
{
	BackgroundWorker worker;

	DefineCustomIntVariable("qlater.poll_interval",
							"Longest time an idle worker sleeps before it looks for due jobs.",
							"Workers are woken at once by commits that enqueue jobs, and at the "
							"run_at of the next future job; this is only a safety net.",
							&ql_poll_interval,
							5000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("qlater.revisit_interval",
							"Time without a worker after which a database is looked at for jobs.",
							"The launcher then sends it a free or idle worker, in case jobs reached "
							"it without a commit that qlater saw (a restore, a plain INSERT into qlater_job).",
							&ql_revisit_interval,
							5 * 60 * 1000, 1000, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("qlater.max_crashes",
							"Number of server crashes during a job after which the job is dead.",
							NULL,
							&ql_max_crashes,
							3, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	RegisterXactCallback(ql_xact_callback, NULL);
	RegisterSubXactCallback(ql_subxact_callback, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("qlater.max_workers",
							"Maximum number of jobs qlater runs at once, over all databases.",
							"Each worker is a background worker process: "
							"max_worker_processes must leave room for them and the launcher.",
							&ql_max_workers,
							4, 1, 1024,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("qlater.max_limited_jobs",
							"Maximum number of jobs of queues with a max_running that run or are claimed at once, over all databases.",
							"Each takes a slot in shared memory while it runs; a claim beyond them waits (workers) "
							"or fails (consumers).",
							&ql_max_limited_jobs,
							1024, 1, 1000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("qlater");

	ql_shmem_init();
	prev_ProcessUtility_hook = ProcessUtility_hook;
	ProcessUtility_hook = ql_process_utility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = ql_object_access;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "qlater");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "qlater_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "qlater launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "qlater launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * ql_process_utility: ALTER ROLE ... RENAME TO of a role with jobs or
 * schedules in this database is refused, as DROP ROLE is (ql_object_access):
 * the jobs would run as a role created later under the old name.
 */
static void
ql_process_utility(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, RenameStmt) &&
		((RenameStmt *) parsetree)->renameType == OBJECT_ROLE)
	{
		Oid			roleid = get_role_oid(((RenameStmt *) parsetree)->subname, true);

		/* only for whoever may rename roles: it locks the role, and tells */
		if (OidIsValid(roleid) && has_createrole_privilege(GetUserId()))
			ql_check_role_drop(roleid, ((RenameStmt *) parsetree)->newname);	/* locks the role first */
	}
	if (ql_shared != NULL)
	{
		Oid			dboid = ql_database_needed_alone(parsetree);

		if (OidIsValid(dboid))
			ql_database_make_room(dboid);
	}
	if (prev_ProcessUtility_hook)
		prev_ProcessUtility_hook(pstmt, queryString, readOnlyTree, context,
								 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* ql_option: the option of a statement's list with that name, or NULL */
static DefElem *
ql_option(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = (DefElem *) lfirst(lc);

		if (strcmp(opt->defname, name) == 0)
			return opt;
	}
	return NULL;
}

/*
 * ql_role_may_createdb: whether the current role has CREATEDB (superusers
 * do), read from pg_authid as CREATE DATABASE reads it.  PostgreSQL's own
 * have_createdb_privilege() is exported only from 15.20 on.
 */
static bool
ql_role_may_createdb(void)
{
	HeapTuple	tup;
	bool		may;

	if (superuser())
		return true;
	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(GetUserId()));
	if (!HeapTupleIsValid(tup))
		return false;
	may = ((Form_pg_authid) GETSTRUCT(tup))->rolcreatedb;
	ReleaseSysCache(tup);
	return may;
}

/*
 * ql_database_needed_alone: the database that a utility statement needs
 * without other sessions, as DROP DATABASE does (ALTER DATABASE ... RENAME,
 * ALTER DATABASE ... SET TABLESPACE, CREATE DATABASE ... TEMPLATE), if the
 * current role may run it (the command checks that again); else InvalidOid.
 */
static Oid
ql_database_needed_alone(Node *parsetree)
{
	Oid			dboid = InvalidOid;

	if (IsA(parsetree, RenameStmt) &&
		((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
		dboid = get_database_oid(((RenameStmt *) parsetree)->subname, true);
	else if (IsA(parsetree, AlterDatabaseStmt) &&
			 ql_option(((AlterDatabaseStmt *) parsetree)->options, "tablespace") != NULL)
		dboid = get_database_oid(((AlterDatabaseStmt *) parsetree)->dbname, true);
	else if (IsA(parsetree, CreatedbStmt))
	{
		DefElem    *template = ql_option(((CreatedbStmt *) parsetree)->options, "template");

		if (template != NULL && template->arg != NULL)
			dboid = get_database_oid(defGetString(template), true);
		/* copying a database takes CREATEDB and its ownership or a template */
		if (OidIsValid(dboid) &&
			(!ql_role_may_createdb() ||
			 (!pg_database_ownercheck(dboid, GetUserId()) && !ql_database_is_template(dboid))))
			return InvalidOid;
		return dboid;
	}
	/* renaming or moving a database takes its ownership */
	if (OidIsValid(dboid) && !pg_database_ownercheck(dboid, GetUserId()))
		return InvalidOid;
	return dboid;
}

/* ql_database_is_template: whether a database is marked as a template */
static bool
ql_database_is_template(Oid dboid)
{
	HeapTuple	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));
	bool		result = false;

	if (HeapTupleIsValid(tup))
	{
		result = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
		ReleaseSysCache(tup);
	}
	return result;
}

/*
 * ql_database_make_room: a command needs a database without other sessions
 * (DROP DATABASE, ALTER DATABASE ... RENAME, CREATE DATABASE ... TEMPLATE),
 * and waits a little for them to leave: make qlater's workers there leave
 * now (a running job is rolled back, as at shutdown).  The launcher starts
 * no worker there for a while; if the database is still there, it is
 * probed again later (launcher.c).
 */
static void
ql_database_make_room(Oid dboid)
{
	QlDatabase *db;
	int			i;

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	db = ql_find_database(dboid, false);
	if (db != NULL)
	{
		db->state = QL_DB_ABSENT;
		db->dropping_since = GetCurrentTimestamp();
	}
	for (i = 0; i < ql_shared->nslots; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];

		if (slot->dboid == dboid && slot->pid != 0)
			kill(slot->pid, SIGTERM);
	}
	LWLockRelease(ql_shared->lock);
}

/*
 * ql_object_access: when DROP DATABASE begins, before it looks for other
 * sessions in the database, make qlater's workers there leave (a running
 * job is rolled back, as at shutdown), so that a plain DROP DATABASE works.
 * The launcher starts no worker there for a while; if the drop failed, the
 * database is probed again later (launcher.c).
 */
static void
ql_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				 int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (access == OAT_DROP && classId == AuthIdRelationId)
		ql_check_role_drop(objectId, NULL);

	/*
	 * DROP EXTENSION qlater: its workers here leave once it commits; ALTER
	 * EXTENSION qlater UPDATE: workers waiting for it (worker.c) go on, and
	 * the launcher looks at the database as at a CREATE EXTENSION: its
	 * jobs may be waiting with no worker here, and none of them told it
	 * (a worker that waited for the update may have been taken elsewhere,
	 * and jobs written before the update woke nobody)
	 */
	if ((access == OAT_DROP || access == OAT_POST_ALTER) &&
		classId == ExtensionRelationId && ql_shared != NULL)
	{
		char	   *name = get_extension_name(objectId);

		if (name != NULL && strcmp(name, "qlater") == 0)
		{
			pending_extension_change = true;
			if (access == OAT_POST_ALTER)
				pending_update_wake = true;
		}
	}

	if (access == OAT_DROP && classId == DatabaseRelationId && ql_shared != NULL)
		ql_database_make_room(objectId);
}

/*
 * ql_require_preload: raise an error unless qlater was loaded through
 * shared_preload_libraries (its shared memory exists).
 */
void
ql_require_preload(void)
{
	if (ql_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("qlater must be loaded via \"shared_preload_libraries\"")));
}

/*
 * ql_wake_workers_at_commit: at commit, wake up to njobs idle workers for
 * jobs due at run_at: now, or for a future run_at, one idle worker whose
 * next look on its own would come later than that.
 */
void
ql_wake_workers_at_commit(int njobs, TimestampTz run_at)
{
	if (run_at <= GetCurrentTimestamp())
		pending_wakeups += njobs;
	else if (pending_future == 0 || run_at < pending_future)
		pending_future = run_at;
}

/*
 * ql_lower_frontier_at_commit: this transaction writes a job of the
 * in-server workers at key (ql_key_min if unknown); at commit, move the
 * claim frontier back to it if needed.
 */
void
ql_lower_frontier_at_commit(const QlClaimKey *key)
{
	if (!pending_lower || ql_key_cmp(key, &pending_first) < 0)
		pending_first = *key;
	pending_lower = true;
}

/* ql_lower_frontier: move this database's claim frontier back to a key */
static void
ql_lower_frontier(const QlClaimKey *key)
{
	QlDatabase *db = ql_my_database();

	if (db != NULL)
		ql_frontier_lower(db, key);
}

/* ql_wake_launcher_at_commit: tell the launcher about this database */
void
ql_wake_launcher_at_commit(void)
{
	pending_launcher_wake = true;
}

/*
 * ql_queues_changed_at_commit: this transaction changed queues or their
 * grants: at commit, every backend of the database reads them again.
 */
void
ql_queues_changed_at_commit(void)
{
	pending_queues_changed = true;
}

/* ql_remember_job: add a job id to one of the lists carried to commit */
static List *
ql_remember_job(List *list, int64 job_id)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	int64	   *p = palloc_object(int64);

	*p = job_id;
	list = lappend(list, p);
	MemoryContextSwitchTo(old);
	return list;
}

/* ql_cancel_running_at_commit: stop a running attempt of a job at commit */
void
ql_cancel_running_at_commit(int64 job_id)
{
	pending_cancels = ql_remember_job(pending_cancels, job_id);
}

/* ql_remember_release: a claim to release at commit (and at abort) */
static void
ql_remember_release(int64 job_id, bool at_abort)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	QlPendingRelease *r = palloc_object(QlPendingRelease);

	r->job_id = job_id;
	r->nest_level = GetCurrentTransactionNestLevel();
	r->at_abort = at_abort;
	pending_releases = lappend(pending_releases, r);
	MemoryContextSwitchTo(old);
}

/*
 * ql_release_claim_at_commit: release this session's claim of a job once
 * the transaction that finished it has committed; an abort keeps it.
 */
void
ql_release_claim_at_commit(int64 job_id)
{
	ListCell   *lc;

	/*
	 * Asked already (a job failed, then completed, in one transaction): once
	 * is enough, and the request made at the outer level stands
	 */
	foreach(lc, pending_releases)
	{
		if (((QlPendingRelease *) lfirst(lc))->job_id == job_id)
			return;
	}
	ql_remember_release(job_id, false);
}

/*
 * ql_release_claim_at_end: release this session's claim of a job when the
 * transaction ends, whether it commits (then as ql_release_claim_at_commit
 * does: before the transaction's locks, a key's among them) or aborts; a
 * subtransaction rolled back releases it then.  For a claim taken only to
 * write to the job, never handed out: a consumer that rolls back must not
 * keep it.
 */
void
ql_release_claim_at_end(int64 job_id)
{
	ql_remember_release(job_id, true);
}

/*
 * ql_claim_held_to_end: is this session's claim of the job one taken only
 * to write to it (ql_release_claim_at_end), never handed out?  Such a claim
 * is no consumer's: it must not finish the job.
 */
bool
ql_claim_held_to_end(int64 job_id)
{
	ListCell   *lc;

	foreach(lc, pending_releases)
	{
		QlPendingRelease *r = (QlPendingRelease *) lfirst(lc);

		if (r->job_id == job_id && r->at_abort)
			return true;
	}
	return false;
}

/*
 * ql_subxact_callback: a subtransaction rolled back forgets the claims it
 * asked to release at commit, and releases those it asked to release at
 * its end; one committed hands them to its parent.
 */
static void
ql_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (pending_releases == NIL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, pending_releases)
		{
			QlPendingRelease *r = (QlPendingRelease *) lfirst(lc);

			if (r->nest_level >= level)
			{
				if (r->at_abort)
					ql_release_claim(r->job_id);
				pending_releases = foreach_delete_current(pending_releases, lc);
				pfree(r);
			}
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending_releases)
		{
			QlPendingRelease *r = (QlPendingRelease *) lfirst(lc);

			if (r->nest_level >= level)
				r->nest_level = level - 1;
		}
	}
}

/*
 * ql_wake_idle_workers: set the latches of up to n idle workers of this
 * database; for jobs due later (due not 0), of one, unless an idle worker
 * will look by then on its own (one in the middle of a look, wake_at 0,
 * may have missed them).  Each woken worker's idle flag is cleared here,
 * so that the next committer wakes another one rather than the same.
 * What no idle worker of the database takes is the launcher's: jobs ready
 * now make the database wanted, a later due time lowers its next_due
 * (launcher.c).  Needs no lock.
 */
static void
ql_wake_idle_workers(int n, TimestampTz due)
{
	int			i;

	if (due != 0)
	{
		pg_memory_barrier();
		for (i = 0; i < ql_shared->nslots; i++)
		{
			QlWorkerSlot *slot = &ql_shared->slots[i];
			uint64		wake_at;

			if (slot->dboid != MyDatabaseId || pg_atomic_read_u32(&slot->idle) == 0)
				continue;
			wake_at = pg_atomic_read_u64(&slot->wake_at);
			if (wake_at != 0 && (TimestampTz) wake_at <= due)
				return;
		}
	}
	for (i = 0; i < ql_shared->nslots && n > 0; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];
		Latch	   *latch = slot->latch;

		if (slot->dboid != MyDatabaseId || latch == NULL)
			continue;
		if (pg_atomic_read_u32(&slot->idle) == 0)
			continue;
		if (pg_atomic_exchange_u32(&slot->idle, 0) == 1)
		{
			SetLatch(latch);
			n--;
		}
	}
	if (n > 0)
	{
		if (due != 0)
			ql_database_due(ql_my_database(), due);
		else
			ql_database_want(ql_my_database());
	}
}

/*
 * ql_wake_another_worker: a worker's look saw more ready jobs than the one
 * it claimed: wake one idle worker of this database for them, which does
 * the same in turn.  Jobs that come due together, and a backlog, so get
 * every idle worker at once, not one worker until the others look on
 * their own.
 */
void
ql_wake_another_worker(void)
{
	ql_wake_idle_workers(1, 0);
}

/*
 * ql_wake_all_workers: set the latch of every worker of this database, so
 * that each looks again (and finds the extension gone)
 */
static void
ql_wake_all_workers(void)
{
	int			i;

	for (i = 0; i < ql_shared->nslots; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];
		Latch	   *latch = slot->latch;

		if (slot->dboid == MyDatabaseId && latch != NULL)
			SetLatch(latch);
	}
}

/*
 * ql_mark_database_active: record that this database has qlater and wake
 * the launcher, which starts its workers.
 */
static void
ql_mark_database_active(void)
{
	QlDatabase *db;

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	db = ql_add_database(MyDatabaseId);
	if (db != NULL)
		db->state = QL_DB_UNKNOWN;
	else
		ereport(WARNING,
				(errmsg("qlater serves at most %d databases with the extension; this one gets no worker",
						QL_MAX_DATABASES)));
	LWLockRelease(ql_shared->lock);
	if (ql_shared->launcher_latch)
		SetLatch(ql_shared->launcher_latch);
}

/*
 * ql_signal_cancels: interrupt the workers running the given jobs.  The
 * worker sees cancel_job equal to its job, rolls the attempt back and
 * removes the job.
 */
static void
ql_signal_cancels(List *job_ids)
{
	ListCell   *lc;

	foreach(lc, job_ids)
	{
		int64		job_id = *(int64 *) lfirst(lc);
		int			i;

		for (i = 0; i < ql_shared->nslots; i++)
		{
			QlWorkerSlot *slot = &ql_shared->slots[i];
			pid_t		pid = slot->pid;

			if (slot->dboid != MyDatabaseId || pid == 0)
				continue;
			if (pg_atomic_read_u64(&slot->job_id) != (uint64) job_id)
				continue;
			pg_atomic_write_u64(&slot->cancel_job, (uint64) job_id);
			kill(pid, SIGINT);
		}
	}
}

/*
 * ql_xact_callback: after commit, carry out what the transaction asked for;
 * after abort, forget it.  XACT_EVENT_COMMIT comes after the commit is
 * visible to other sessions, so a woken worker sees the new jobs.
 *
 * A transaction that asked for anything is refused PREPARE TRANSACTION, as
 * PostgreSQL refuses it after NOTIFY (AtPrepare_Notify): COMMIT PREPARED,
 * perhaps in another session or after a restart, runs no callback of ours,
 * so its jobs would wait for the poll, the claim frontier would stay past
 * them until a worker looks from the start, and a consumer's claim would
 * outlive the job it finished.  (The request is kept even if the savepoint
 * that made it was rolled back: such a PREPARE is refused too; but for
 * the releases of claims, which follow their subtransaction.)
 */
static void
ql_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (pending_wakeups > 0 || pending_future != 0 || pending_lower ||
				pending_cancels != NIL || pending_releases != NIL ||
				pending_queues_changed ||
				ql_schedule_wake_pending())
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has enqueued or changed qlater jobs, queues or schedules"),
						 errdetail("qlater wakes its workers and releases or cancels claims when such a transaction commits, which COMMIT PREPARED cannot do.")));
			if (pending_launcher_wake)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has created extension \"qlater\""),
						 errdetail("qlater starts its workers in the database when such a transaction commits, which COMMIT PREPARED cannot do.")));
			break;
		case XACT_EVENT_COMMIT:
			{
				ListCell   *lc;

				foreach(lc, pending_releases)
					ql_release_claim(((QlPendingRelease *) lfirst(lc))->job_id);
			}
			if (ql_shared != NULL)
			{
				/* first: what a change of a queue unblocks sees the change */
				if (pending_queues_changed && ql_my_database() != NULL)
					pg_atomic_fetch_add_u64(&ql_my_database()->queues_gen, 1);
				/* before the wake-up: a woken worker looks from the frontier */
				if (pending_lower)
					ql_lower_frontier(&pending_first);
				if (pending_wakeups > 0)
					ql_wake_idle_workers(pending_wakeups, 0);
				else if (pending_future != 0)
					ql_wake_idle_workers(1, pending_future);
				if (pending_launcher_wake || pending_update_wake)
					ql_mark_database_active();
				if (pending_extension_change)
					ql_wake_all_workers();
				if (pending_cancels != NIL)
					ql_signal_cancels(pending_cancels);
			}
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			if (event != XACT_EVENT_COMMIT)
			{
				ListCell   *lc;

				foreach(lc, pending_releases)
				{
					QlPendingRelease *r = (QlPendingRelease *) lfirst(lc);

					if (r->at_abort)
						ql_release_claim(r->job_id);
				}
			}
			pending_wakeups = 0;
			pending_future = 0;
			pending_lower = false;
			pending_launcher_wake = false;
			pending_update_wake = false;
			pending_extension_change = false;
			pending_queues_changed = false;
			if (pending_cancels != NIL)
			{
				list_free_deep(pending_cancels);
				pending_cancels = NIL;
			}
			if (pending_releases != NIL)
			{
				list_free_deep(pending_releases);
				pending_releases = NIL;
			}
			break;
		default:
			break;
	}
}
