/*-------------------------------------------------------------------------
 *
 * worker.c
 *		A qlater worker: a background worker connected to one database that
 *		runs that database's jobs one after another.
 *
 * An idle worker sleeps on its latch.  A backend that commits new jobs
 * wakes an idle worker of its database at once (qlater.c); a worker also
 * wakes when the next future job is due, and every qlater.poll_interval as
 * a safety net.  The idle flag is set before each look for jobs, so a
 * commit that lands between the look and the sleep still wakes it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "history.h"
#include "inflight.h"
#include "job.h"
#include "launcher.h"
#include "limits.h"
#include "qlater.h"
#include "schedule.h"
#include "shmem.h"
#include "stats.h"
#include "xact.h"

static QlWorkerSlot *my_slot = NULL;

/* the run path's state (job.h) */
static QlWorker worker;

/* the job whose end this worker is recording (ql_settle_list), 0 if none */
static int64 settling_job = 0;

/*
 * ql_worker_quit: SIGQUIT handler.  The postmaster sends SIGQUIT when
 * another process crashed or for an immediate shutdown: the job in flight
 * is not to blame.  Only async-signal-safe work here.
 */
static void
ql_worker_quit(SIGNAL_ARGS)
{
	ql_inflight_mark_victim();
	SignalHandlerForCrashExit(postgres_signal_arg);
}

/*
 * ql_worker_cancel: SIGINT handler.  A cancel (a committed qlater_cancel of
 * the running job, or pg_cancel_backend) interrupts what runs now; if it
 * was meant for the running job, the launcher ends the worker should the
 * handler go on past the grace.  An idle worker ignores it (worker loop).
 */
static void
ql_worker_cancel(SIGNAL_ARGS)
{
	int			save_errno = errno;
	uint64		job;

	StatementCancelHandler(postgres_signal_arg);
	job = pg_atomic_read_u64(&my_slot->job_id);
	if (job != 0 && pg_atomic_read_u64(&my_slot->cancel_job) == job)
		ql_mark_overrun(my_slot, QL_END_CANCEL);
	errno = save_errno;
}

/* ql_worker_detach: leave the slot (before_shmem_exit) */
static void
ql_worker_detach(int code, Datum arg)
{
	ql_inflight_clear();
	if (my_slot == NULL)
		return;
	pg_atomic_write_u32(&my_slot->idle, 0);
	pg_atomic_write_u64(&my_slot->job_id, 0);
	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	my_slot->latch = NULL;
	my_slot->pid = 0;
	LWLockRelease(ql_shared->lock);
}

/*
 * ql_worker_ended: before_shmem_exit callback registered after connecting,
 * so that it runs before the job's claim is released with the session's
 * locks.  If the launcher ended this worker because its job overran its
 * timeout or a cancel, list the job so that a worker of the database
 * records the failed attempt, and no worker claims it before that.  A
 * job that stopped at a crash entry that was being recorded is given back.
 */
static void
ql_worker_ended(int code, Datum arg)
{
	uint64		job = pg_atomic_read_u64(&my_slot->job_id);
	int			i;

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	for (i = 0; settling_job != 0 && i < ql_shared->ncrashed; i++)
	{
		if (ql_shared->crashed[i].dboid == MyDatabaseId &&
			ql_shared->crashed[i].job_id == settling_job)
			ql_shared->crashed[i].counting = false;
	}
	if (job != 0 && pg_atomic_read_u64(&my_slot->ending_job) == job)
	{
		QlEndKind	kind = (QlEndKind) pg_atomic_read_u32(&my_slot->overrun_kind);

		if (ql_shared->ncrashed < QL_MAX_CRASHED)
		{
			QlCrashedJob *cj = &ql_shared->crashed[ql_shared->ncrashed++];

			cj->dboid = MyDatabaseId;
			cj->job_id = (int64) job;
			cj->kind = kind;
			cj->counting = false;
		}
		ereport(LOG,
				(errmsg("qlater worker ended: job %lld went on for %d seconds after its %s",
						(long long) job, QL_OVERRUN_GRACE_MS / 1000,
						kind == QL_END_TIMEOUT ? "timeout" : "cancel"),
				 kind == QL_END_TIMEOUT ?
				 errdetail("Its work is rolled back; the attempt counts as failed.") :
				 errdetail("Its work is rolled back; the job is cancelled.")));
	}
	LWLockRelease(ql_shared->lock);
}

/*
 * ql_set_database_state: record what this worker found about its database
 * and wake the launcher.
 */
static void
ql_set_database_state(QlDbState state)
{
	QlDatabase *db;

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	db = ql_find_database(MyDatabaseId, false);
	if (db != NULL)
		db->state = state;
	LWLockRelease(ql_shared->lock);
	if (ql_shared->launcher_latch)
		SetLatch(ql_shared->launcher_latch);
}

/*
 * ql_settle_list: record the end of each listed attempt of this database
 * (a crash of the server while it ran, or a worker ended for a timeout or
 * cancel it ignored).  An entry stays in the list until its record has
 * committed, and no worker claims a job that is listed
 * (ql_job_crash_pending), so the job cannot run again before then.  An
 * error while recording gives the entry back (ql_worker_ended, or the
 * worker's error recovery).
 */
static void
ql_settle_list(void)
{
	while (ql_shared->ncrashed > 0)
	{
		int64		job_id = 0;
		QlEndKind	kind = QL_END_CRASH;
		int			i;

		LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
		for (i = 0; i < ql_shared->ncrashed; i++)
		{
			QlCrashedJob *cj = &ql_shared->crashed[i];

			if (cj->dboid == MyDatabaseId && !cj->counting)
			{
				job_id = cj->job_id;
				kind = cj->kind;
				cj->counting = true;
				break;
			}
		}
		LWLockRelease(ql_shared->lock);
		if (job_id == 0)
			break;
		settling_job = job_id;
		if (kind == QL_END_CRASH)
			ereport(LOG,
					(errmsg("counting a server crash against qlater job %lld",
							(long long) job_id)));
		ql_settle_ended(&worker, job_id, kind);

		LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
		for (i = 0; i < ql_shared->ncrashed; i++)
		{
			if (ql_shared->crashed[i].dboid == MyDatabaseId &&
				ql_shared->crashed[i].job_id == job_id)
			{
				ql_shared->crashed[i] = ql_shared->crashed[--ql_shared->ncrashed];
				break;
			}
		}
		LWLockRelease(ql_shared->lock);
		settling_job = 0;
	}
}

/*
 * ql_outdated_logged_once: whether the wait for an update of this
 * database's extension is logged already (once per database); marks it so.
 */
static bool
ql_outdated_logged_once(void)
{
	QlDatabase *db = ql_my_database();

	if (db == NULL || db->outdated_logged)
		return true;
	db->outdated_logged = true;
	return false;
}

/*
 * ql_extension_state: whether qlater is installed here (QL_JOB_NONE), not
 * (QL_JOB_NO_EXTENSION), or at an older version (QL_JOB_OUTDATED)
 */
static QlJobResult
ql_extension_state(void)
{
	const QlCatalog *c;
	QlJobResult result;

	ql_xact_begin();
	c = ql_catalog(true);
	result = c == NULL ? QL_JOB_NO_EXTENSION : c->current ? QL_JOB_NONE : QL_JOB_OUTDATED;
	if (result == QL_JOB_OUTDATED && !ql_outdated_logged_once())
		ereport(LOG,
				(errmsg("qlater waits in database \"%s\" until its extension is updated",
						get_database_name(MyDatabaseId)),
				 errdetail("The qlater library installed serves version %s of the extension.",
						   QLATER_SQL_VERSION),
				 errhint("Run ALTER EXTENSION qlater UPDATE in that database; no job runs there until then.")));
	ql_xact_commit();
	return result;
}

/*
 * ql_wait_update: the database's extension is of an older version than
 * this library serves (the library was installed, ALTER EXTENSION qlater
 * UPDATE not yet run): its tables and functions are not what the worker
 * reads and runs, so it waits, idle (the launcher may take it elsewhere),
 * until the update commits (which wakes it: qlater.c) or the extension is
 * dropped.  Logged once per database.  Returns the new state: QL_JOB_NONE
 * once updated, QL_JOB_NO_EXTENSION, or QL_JOB_OUTDATED if asked to leave.
 */
static QlJobResult
ql_wait_update(void)
{
	QlJobResult state = QL_JOB_OUTDATED;

	while (state == QL_JOB_OUTDATED && !my_slot->stop_requested)
	{
		pg_atomic_write_u32(&my_slot->idle, 1);
		pg_memory_barrier();
		if (pg_atomic_read_u32(&ql_shared->unserved) != 0 &&
			ql_shared->launcher_latch != NULL)
			SetLatch(ql_shared->launcher_latch);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ql_poll_interval, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		state = ql_extension_state();
	}
	if (state == QL_JOB_NONE && ql_my_database() != NULL)
		ql_my_database()->outdated_logged = false;
	return state;
}

/*
 * ql_worker_recover: after an error outside a handler (which ql_execute
 * catches itself), as PostgresMain and the autovacuum launcher recover:
 * report it, abort the transaction, release the claims, give back a crash
 * entry being recorded, and go on in the loop.
 */
static void
ql_worker_recover(void)
{
	int			i;

	HOLD_INTERRUPTS();
	ql_xact_recover();
	QueryCancelHoldoffCount = 1;	/* cancels reach job code only (run.c) */

	/* claims of jobs that did not end: another worker may take them */
	LockReleaseSession(USER_LOCKMETHOD);
	ql_limits_release_mine(true);
	ql_inflight_clear();
	pg_atomic_write_u64(&my_slot->job_id, 0);
	pg_atomic_write_u64(&my_slot->overrun_job, 0);
	if (settling_job != 0)
	{
		LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
		for (i = 0; i < ql_shared->ncrashed; i++)
		{
			if (ql_shared->crashed[i].dboid == MyDatabaseId &&
				ql_shared->crashed[i].job_id == settling_job)
				ql_shared->crashed[i].counting = false;
		}
		LWLockRelease(ql_shared->lock);
		settling_job = 0;
	}
	pgstat_report_activity(STATE_IDLE, "");
	RESUME_INTERRUPTS();
}

/*
 * ql_worker_leave: the launcher asked this worker to make room for another
 * database.  Tell it what this database still needs, since no worker may
 * be left here to see it: from now on no committer counts on this worker
 * (its idle flag is cleared first), so a last look, under a snapshot taken
 * after that, sees every job that a committer left to it.  Ready jobs make
 * the database wanted; else the first due job or schedule tick is its
 * next due time.
 */
static void
ql_worker_leave(void)
{
	const QlCatalog *c;
	TimestampTz due = DT_NOEND;
	long		ignore = 0;

	pg_atomic_write_u32(&my_slot->idle, 0);
	pg_memory_barrier();

	ql_xact_begin();
	c = ql_catalog(true);
	if (c != NULL && !c->current)
		c = NULL;				/* waits for ALTER EXTENSION UPDATE */
	if (c != NULL)
	{
		ql_prepare_plans(&worker, c);
		due = ql_first_due(&worker);
	}
	ql_xact_commit();
	if (c != NULL)
	{
		/* reads the schedules again if one changed */
		ql_schedule_fire_due(&ignore);
		due = Min(due, ql_schedule_next_tick());
	}
	if (due != DT_NOEND)
		ql_database_due(worker.database, due);
}

/* ql_worker_exit: leave the slot on purpose (launcher.c) and exit */
static void
ql_worker_exit(void)
{
	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	my_slot->left = true;
	LWLockRelease(ql_shared->lock);
	proc_exit(0);
}

/*
 * qlater_worker_main: entry point of a worker; main_arg is its slot.
 */
void
qlater_worker_main(Datum main_arg)
{
	int			slotno = DatumGetInt32(main_arg);
	Oid			dboid;
	QlJobResult state;
	sigjmp_buf	local_sigjmp_buf;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	pqsignal(SIGQUIT, ql_worker_quit);
	pqsignal(SIGINT, ql_worker_cancel);
	my_slot = &ql_shared->slots[slotno];
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	dboid = my_slot->dboid;
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	LWLockRelease(ql_shared->lock);
	pg_atomic_write_u64(&my_slot->ending_job, 0);
	pg_atomic_write_u64(&my_slot->overrun_job, 0);
	before_shmem_exit(ql_worker_detach, (Datum) 0);
	if (!OidIsValid(dboid))
		proc_exit(0);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	before_shmem_exit(ql_worker_ended, (Datum) 0);
	pgstat_report_appname("qlater worker");
	ql_inflight_attach(slotno);
	ql_xact_init();

	state = ql_extension_state();
	if (state == QL_JOB_NO_EXTENSION)
	{
		ql_set_database_state(QL_DB_ABSENT);
		ql_worker_exit();
	}
	ql_set_database_state(QL_DB_ACTIVE);
	ql_job_init(&worker, my_slot);

	/*
	 * A cancel interrupts only a job's own code (job.c lets it through
	 * there): the worker's claims, the records of failures and its
	 * bookkeeping are never cut short by a stray pg_cancel_backend or a
	 * qlater_cancel that arrives late.
	 */
	HOLD_CANCEL_INTERRUPTS();

	/*
	 * An error outside a handler comes back here: recover, wait a second
	 * (a persistent error is a slow, logged loop, never a busy one), and
	 * go on.
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		ql_worker_recover();
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
	}
	PG_exception_stack = &local_sigjmp_buf;

	if (state == QL_JOB_OUTDATED)
		state = ql_wait_update();
	if (state == QL_JOB_NO_EXTENSION)
		ql_set_database_state(QL_DB_ABSENT);
	if (state != QL_JOB_NONE)
		ql_worker_exit();

	for (;;)
	{
		long		sleep_ms = ql_poll_interval;
		QlJobResult result;

		MemoryContextSwitchTo(ql_loop_context());
		MemoryContextReset(ql_loop_context());
		CHECK_FOR_INTERRUPTS();
		if (my_slot->stop_requested)
		{
			ql_worker_leave();
			break;
		}

		/* idle before the look, so that a commit during it wakes us */
		pg_atomic_write_u64(&my_slot->wake_at, 0);
		pg_atomic_write_u32(&my_slot->idle, 1);
		pg_memory_barrier();
		ResetLatch(MyLatch);
		/* a cancel while no job runs has nothing to stop */
		QueryCancelPending = false;
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* attempts that ended without their process recording it */
		if (ql_shared->ncrashed > 0)
			ql_settle_list();

		result = ql_run_next_job(&worker, &sleep_ms);
		if (result == QL_JOB_OUTDATED)
		{
			result = ql_wait_update();
			if (result == QL_JOB_OUTDATED)
				continue;		/* asked to leave: at the top */
		}
		if (result == QL_JOB_NO_EXTENSION)
		{
			ql_set_database_state(QL_DB_ABSENT);
			break;
		}
		if (result == QL_JOB_NONE)
		{
			/* nothing ready is left without a worker here */
			if (pg_atomic_read_u32(&worker.database->wanted) != 0)
				pg_atomic_write_u32(&worker.database->wanted, 0);
			if (pg_atomic_read_u64(&my_slot->busy_since) != 0)
				pg_atomic_write_u64(&my_slot->busy_since, 0);
		}
		/* enqueue due ticks of schedules; a clock read unless one is due */
		ql_schedule_fire_due(&sleep_ms);
		/* empty the history's expired slots, once a second */
		ql_history_expire_due();
		/* count the depth of queues, for their readers, when due */
		ql_stats_depth_refresh_due();
		if (result == QL_JOB_RAN)
			continue;
		if (sleep_ms > 0 && !my_slot->stop_requested)
		{
			/* going idle: what the jobs did reaches the statistics now */
			pgstat_report_stat(true);
			/* a job due before then wakes us (qlater.c) */
			pg_atomic_write_u64(&my_slot->wake_at,
								(uint64) TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																	 sleep_ms));
			/* a database waits for a worker: this one, idle now, may be it */
			pg_memory_barrier();
			if (pg_atomic_read_u32(&ql_shared->unserved) != 0 &&
				ql_shared->launcher_latch != NULL)
				SetLatch(ql_shared->launcher_latch);
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 sleep_ms, PG_WAIT_EXTENSION);
		}
	}
	ql_worker_exit();
}
