/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The qlater launcher: one background worker per cluster, connected to
 *		no database, that starts and stops the per-database workers.
 *
 * At start the launcher reads qlater.inflight (see inflight.c) and lists
 * the databases of pg_database that accept connections; it does not know
 * which of them have qlater, so it starts a worker in each one as a probe.
 * A worker that finds no extension marks its database absent and leaves.
 * CREATE EXTENSION qlater marks its database at commit and wakes the
 * launcher, so a database that gets qlater later gets workers at once.
 *
 * qlater.max_workers slots are shared out evenly among the databases with
 * qlater (the first ones get the remainder), so a busy database cannot
 * starve another.  A worker asked to make room leaves after its current
 * job.  The launcher's handles are local: when it exits it terminates
 * every worker, and a new launcher starts them again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "inflight.h"
#include "launcher.h"
#include "qlater.h"
#include "shmem.h"
#include "xact.h"

/* minimum time between two starts of a worker in the same slot */
#define QL_RESTART_DELAY_MS	1000

/* how often the launcher looks at pg_database for dropped databases */
#define QL_RESCAN_MS		10000

/* launcher-local state of each slot */
typedef struct QlLauncherSlot
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
} QlLauncherSlot;

static QlLauncherSlot *lslots = NULL;
static bool registration_failure_logged = false;

/*
 * ql_launcher_exit: terminate the workers this launcher started.  Runs at
 * launcher exit (before_shmem_exit).
 */
static void
ql_launcher_exit(int code, Datum arg)
{
	int			i;

	for (i = 0; lslots != NULL && i < ql_shared->nslots; i++)
	{
		if (lslots[i].handle != NULL)
			TerminateBackgroundWorker(lslots[i].handle);
	}
	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	ql_shared->launcher_pid = 0;
	ql_shared->launcher_latch = NULL;
	for (i = 0; i < ql_shared->nslots; i++)
		ql_shared->slots[i].dboid = InvalidOid;
	LWLockRelease(ql_shared->lock);
}

/*
 * ql_scan_databases: bring the database table in line with pg_database.
 * Databases that are gone are forgotten; with add_unknown, the others are
 * added as QL_DB_UNKNOWN, to be probed.
 */
static void
ql_scan_databases(bool add_unknown)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	Oid			present[QL_MAX_DATABASES * 4];
	int			npresent = 0;
	int			i;
	int			j;

	ql_xact_begin();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datistemplate || !db->datallowconn)
			continue;
		if (npresent < lengthof(present))
			present[npresent++] = db->oid;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	ql_xact_commit();

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < QL_MAX_DATABASES; i++)
	{
		QlDatabase *db = &ql_shared->dbs[i];
		bool		found = false;

		if (db->state == QL_DB_FREE)
			continue;
		for (j = 0; j < npresent && !found; j++)
			found = (present[j] == db->dboid);
		if (!found)
		{
			db->state = QL_DB_FREE;
			db->dropping_since = 0;
		}
		else if (db->dropping_since != 0 &&
				 TimestampDifferenceExceeds(db->dropping_since, GetCurrentTimestamp(),
											QL_RESCAN_MS))
		{
			/* a DROP DATABASE that failed: look again */
			db->state = QL_DB_UNKNOWN;
			db->dropping_since = 0;
		}
	}
	if (add_unknown)
	{
		for (j = 0; j < npresent; j++)
		{
			if (ql_find_database(present[j], true) == NULL)
				ereport(LOG,
						(errmsg("qlater serves at most %d databases; database %u is ignored",
								QL_MAX_DATABASES, present[j])));
		}
	}
	LWLockRelease(ql_shared->lock);
}

/*
 * ql_start_worker: start a worker for a database in a free slot.  Caller
 * holds ql_shared->lock exclusively.
 */
static void
ql_start_worker(int slotno, Oid dboid)
{
	BackgroundWorker worker;
	QlWorkerSlot *slot = &ql_shared->slots[slotno];

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "qlater");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "qlater_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "qlater worker %d", slotno);
	snprintf(worker.bgw_type, BGW_MAXLEN, "qlater worker");
	worker.bgw_main_arg = Int32GetDatum(slotno);
	worker.bgw_notify_pid = MyProcPid;

	slot->dboid = dboid;
	slot->stop_requested = false;
	slot->pid = 0;
	slot->latch = NULL;
	lslots[slotno].started_at = GetCurrentTimestamp();
	if (!RegisterDynamicBackgroundWorker(&worker, &lslots[slotno].handle))
	{
		slot->dboid = InvalidOid;
		lslots[slotno].handle = NULL;
		if (!registration_failure_logged)
			ereport(LOG,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start a qlater worker"),
					 errhint("Raise \"max_worker_processes\"; it must leave room for "
							 "qlater.max_workers plus the launcher.")));
		registration_failure_logged = true;
	}
	else
		registration_failure_logged = false;
}

/*
 * ql_balance: free the slots of workers that stopped, then start and stop
 * workers so that each database with qlater has its share of the slots.
 * Returns the time in ms after which it should run again (a slot waiting
 * for its restart delay), or -1.
 */
static long
ql_balance(void)
{
	int			nslots = ql_shared->nslots;
	int			nactive = 0;
	int			share_index = 0;
	int			i;
	int			j;
	long		retry_ms = -1;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);

	/* free slots whose worker has stopped */
	for (i = 0; i < nslots; i++)
	{
		pid_t		pid;

		if (lslots[i].handle == NULL)
			continue;
		if (GetBackgroundWorkerPid(lslots[i].handle, &pid) == BGWH_STOPPED)
		{
			pfree(lslots[i].handle);
			lslots[i].handle = NULL;
			ql_shared->slots[i].dboid = InvalidOid;
		}
	}

	for (i = 0; i < QL_MAX_DATABASES; i++)
	{
		QlDbState	st = ql_shared->dbs[i].state;

		if (st == QL_DB_UNKNOWN || st == QL_DB_ACTIVE)
			nactive++;
	}

	/* slots of databases that no longer want workers */
	for (j = 0; j < nslots; j++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[j];
		QlDatabase *db;

		if (lslots[j].handle == NULL)
			continue;
		db = ql_find_database(slot->dboid, false);
		if (db == NULL || (db->state != QL_DB_UNKNOWN && db->state != QL_DB_ACTIVE))
		{
			slot->stop_requested = true;
			if (slot->latch)
				SetLatch(slot->latch);
		}
	}

	for (i = 0; i < QL_MAX_DATABASES; i++)
	{
		QlDatabase *db = &ql_shared->dbs[i];
		int			share;
		int			have = 0;

		if (db->state != QL_DB_UNKNOWN && db->state != QL_DB_ACTIVE)
			continue;
		share = nslots / nactive + (share_index < nslots % nactive ? 1 : 0);
		share_index++;

		for (j = 0; j < nslots; j++)
		{
			QlWorkerSlot *slot = &ql_shared->slots[j];

			if (lslots[j].handle == NULL || slot->dboid != db->dboid ||
				slot->stop_requested)
				continue;
			if (have >= share)
			{
				slot->stop_requested = true;
				if (slot->latch)
					SetLatch(slot->latch);
			}
			else
				have++;
		}
		for (j = 0; j < nslots && have < share; j++)
		{
			long		since;

			if (lslots[j].handle != NULL)
				continue;
			since = TimestampDifferenceMilliseconds(lslots[j].started_at, now);
			if (lslots[j].started_at != 0 && since < QL_RESTART_DELAY_MS)
			{
				long		wait = QL_RESTART_DELAY_MS - since;

				if (retry_ms < 0 || wait < retry_ms)
					retry_ms = wait;
				continue;
			}
			ql_start_worker(j, db->dboid);
			if (lslots[j].handle != NULL)
				have++;
		}
	}
	LWLockRelease(ql_shared->lock);
	return retry_ms;
}

/*
 * ql_end_overruns: end the workers whose handler went on for
 * QL_OVERRUN_GRACE_MS after its timeout or a committed cancel interrupted
 * it (it caught the cancel): a handler cannot catch the termination.  The
 * worker lists its job on the way out (worker.c), and a worker of its
 * database records the failed attempt.  Returns the time in ms until the
 * next such end is due, or -1.
 */
static long
ql_end_overruns(void)
{
	TimestampTz now = GetCurrentTimestamp();
	long		next = -1;
	int			i;

	for (i = 0; i < ql_shared->nslots; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];
		uint64		job = pg_atomic_read_u64(&slot->overrun_job);
		TimestampTz due;
		pid_t		pid = slot->pid;

		if (job == 0 || pid == 0 || pg_atomic_read_u64(&slot->ending_job) == job)
			continue;
		pg_read_barrier();
		due = TimestampTzPlusMilliseconds((TimestampTz) pg_atomic_read_u64(&slot->overrun_at),
										  QL_OVERRUN_GRACE_MS);
		if (due > now)
		{
			long		wait = TimestampDifferenceMilliseconds(now, due) + 1;

			if (next < 0 || wait < next)
				next = wait;
			continue;
		}
		/* still the same job? */
		if (pg_atomic_read_u64(&slot->job_id) != job)
			continue;
		pg_atomic_write_u64(&slot->ending_job, job);
		pg_memory_barrier();
		if (pg_atomic_read_u64(&slot->job_id) == job)
			kill(pid, SIGTERM);
	}
	return next;
}

/*
 * qlater_launcher_main: entry point of the launcher.
 */
void
qlater_launcher_main(Datum main_arg)
{
	TimestampTz last_scan;
	sigjmp_buf	local_sigjmp_buf;
	volatile bool scanned = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: only shared catalogs such as pg_database */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("qlater launcher");
	ql_xact_init();

	lslots = MemoryContextAllocZero(TopMemoryContext,
									sizeof(QlLauncherSlot) * ql_shared->nslots);
	before_shmem_exit(ql_launcher_exit, (Datum) 0);

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	ql_shared->launcher_pid = MyProcPid;
	ql_shared->launcher_latch = MyLatch;
	LWLockRelease(ql_shared->lock);

	if (!ql_shared->inflight_collected)
	{
		ql_inflight_collect(ql_shared->nslots);
		ql_shared->inflight_collected = true;
	}

	/*
	 * An error comes back here: recover, wait a second, and go on (exiting
	 * would end every worker with the launcher).
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		HOLD_INTERRUPTS();
		ql_xact_recover();
		RESUME_INTERRUPTS();
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
	}
	PG_exception_stack = &local_sigjmp_buf;

	if (!scanned)
	{
		ql_scan_databases(true);
		scanned = true;
	}
	last_scan = GetCurrentTimestamp();

	for (;;)
	{
		long		timeout = QL_RESCAN_MS;
		long		retry;

		MemoryContextReset(ql_loop_context());
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (TimestampDifferenceExceeds(last_scan, GetCurrentTimestamp(), QL_RESCAN_MS))
		{
			ql_scan_databases(false);
			last_scan = GetCurrentTimestamp();
		}

		retry = ql_balance();
		if (retry >= 0 && retry < timeout)
			timeout = retry;
		retry = ql_end_overruns();
		if (retry >= 0 && retry < timeout)
			timeout = retry;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
