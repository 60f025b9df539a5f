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
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "inflight.h"
#include "job.h"
#include "launcher.h"
#include "qlater.h"
#include "schedule.h"
#include "shmem.h"

static QlWorkerSlot *my_slot = NULL;

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
 * ql_recover_crashed_jobs: count the crash against each job of this
 * database that was running when the server crashed.  An entry stays in
 * the list until its count has committed, and no worker claims a job that
 * is listed (ql_job_crash_pending), so the job cannot run again before its
 * crash is counted and its backoff set.
 */
static void
ql_recover_crashed_jobs(void)
{
	for (;;)
	{
		int64		job_id = 0;
		int			i;

		LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
		for (i = 0; i < ql_shared->ncrashed; i++)
		{
			QlCrashedJob *cj = &ql_shared->crashed[i];

			if (cj->dboid == MyDatabaseId && !cj->counting)
			{
				job_id = cj->job_id;
				cj->counting = true;
				break;
			}
		}
		LWLockRelease(ql_shared->lock);
		if (job_id == 0)
			break;
		ereport(LOG,
				(errmsg("counting a server crash against qlater job %lld",
						(long long) job_id)));
		ql_count_crash(job_id);

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
	}
}

/* ql_extension_present: whether qlater is installed in this database */
static bool
ql_extension_present(void)
{
	bool		present;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	present = (ql_catalog(true) != NULL);
	CommitTransactionCommand();
	return present;
}

/*
 * qlater_worker_main: entry point of a worker; main_arg is its slot.
 */
void
qlater_worker_main(Datum main_arg)
{
	int			slotno = DatumGetInt32(main_arg);
	Oid			dboid;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	pqsignal(SIGQUIT, ql_worker_quit);
	BackgroundWorkerUnblockSignals();

	my_slot = &ql_shared->slots[slotno];
	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	dboid = my_slot->dboid;
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	LWLockRelease(ql_shared->lock);
	before_shmem_exit(ql_worker_detach, (Datum) 0);
	if (!OidIsValid(dboid))
		proc_exit(0);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("qlater worker");
	ql_inflight_attach(slotno);

	if (!ql_extension_present())
	{
		ql_set_database_state(QL_DB_ABSENT);
		proc_exit(0);
	}
	ql_set_database_state(QL_DB_ACTIVE);

	ql_job_init();
	ql_recover_crashed_jobs();

	for (;;)
	{
		long		sleep_ms = ql_poll_interval;
		QlJobResult result;

		/* idle before the look, so that a commit during it wakes us */
		pg_atomic_write_u64(&my_slot->wake_at, 0);
		pg_atomic_write_u32(&my_slot->idle, 1);
		pg_memory_barrier();
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (my_slot->stop_requested)
			break;

		result = ql_run_next_job(my_slot, &sleep_ms);
		if (result == QL_JOB_NO_EXTENSION)
		{
			ql_set_database_state(QL_DB_ABSENT);
			break;
		}
		/* enqueue due ticks of schedules; a clock read unless one is due */
		ql_schedule_fire_due(&sleep_ms);
		if (result == QL_JOB_RAN)
			continue;
		if (sleep_ms > 0)
		{
			/* a job due before then wakes us (qlater.c) */
			pg_atomic_write_u64(&my_slot->wake_at,
								(uint64) TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																	 sleep_ms));
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 sleep_ms, PG_WAIT_EXTENSION);
		}
	}
	proc_exit(0);
}
