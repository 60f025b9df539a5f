/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The qlater launcher: one background worker per cluster, connected to
 *		no database, that starts and stops the per-database workers.
 *
 * At start (and after a crash-restart, which clears shared memory) the
 * launcher reads qlater.inflight (see inflight.c) and lists the databases
 * of pg_database that accept connections; it does not know which of them
 * have qlater, so each one is probed by a worker in turn.  A worker that
 * finds no extension marks its database absent and leaves.  CREATE
 * EXTENSION qlater marks its database at commit and wakes the launcher.
 *
 * A worker is bound to one database for life, so workers go where the work
 * is by leaving one database and starting in another.  The launcher learns
 * where work is from shared memory (shmem.h): a commit whose ready jobs
 * found no idle worker of their database makes it "wanted"; a job or tick
 * due later in a database that no idle worker will look at by then lowers
 * the database's next_due, which makes it wanted once reached; a worker
 * that leaves says which of the two its database still needs.  Each pass:
 *
 *	1. a wanted database without a worker (or one not yet probed) gets one,
 *	   the longest waiting first: a free slot, else an idle worker of
 *	   another database (the one with the most workers), else a busy worker
 *	   whose time slice (QL_SLICE_MS since it went from idle to busy) is
 *	   over, from the database with the most workers; asked to leave, a
 *	   worker finishes its job (or batch) first.  So with more databases
 *	   than workers, every database with ready jobs is served in turn.
 *	2. a wanted database with workers (a backlog) gets more: free slots,
 *	   idle workers of databases that keep another one, and busy workers
 *	   (slice over) of databases with two more workers than it has.
 *	3. a database without a worker for qlater.revisit_interval is looked
 *	   at when a slot is free or a worker idle, in case jobs reached it
 *	   without a commit qlater saw (a restore, a plain INSERT into
 *	   qlater_job).
 *	4. free slots left wait, idle, in the databases with the fewest.
 *
 * A database that waits QL_STARVED_LOG_MS for a worker (every worker runs
 * long jobs elsewhere) is logged, once per wait.  A worker that did not
 * leave on purpose (it failed or was ended) leaves its database wanted,
 * and its slot unused for QL_RESTART_DELAY_MS.  The launcher's handles are
 * local: when it exits it terminates every worker, and a new launcher
 * starts them again.
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
#include "commands/dbcommands.h"
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

/* a slot whose worker failed is not used again before this */
#define QL_RESTART_DELAY_MS	1000

/* how often the launcher looks at pg_database for dropped databases */
#define QL_RESCAN_MS		10000

/*
 * A busy worker keeps its database at least this long (since it started,
 * or last went from idle to busy) before it leaves for another database
 * that waits: the time slice of the round robin among databases.
 */
#define QL_SLICE_MS			1000

/* a database that waits this long for a worker is logged */
#define QL_STARVED_LOG_MS	30000

/* launcher-local state of each slot */
typedef struct QlLauncherSlot
{
	BackgroundWorkerHandle *handle;
	QlDatabase *db;				/* its database's entry */
	QlDatabase *stop_for;		/* asked to leave to make room for */
	bool		stop_for_none;	/* ... a database that had no worker */
	QlDatabase *handoff;		/* freed: to be given to this database */
	TimestampTz started_at;
	TimestampTz failed_at;		/* its last worker did not leave on purpose */
} QlLauncherSlot;

static QlLauncherSlot *lslots = NULL;

/* ql_balance's view of each database: workers it keeps, a stop made for it */
static int	nworkers[QL_MAX_DATABASES];
static bool pending[QL_MAX_DATABASES];
static bool pending_busy[QL_MAX_DATABASES];	/* the stop waits for a job */
static int	nidle[QL_MAX_DATABASES];	/* of nworkers, asleep with nothing to do */
static TimestampTz stop_asked[QL_MAX_DATABASES];	/* last stop made for it */
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
	{
		QlDatabase *db = lslots != NULL ? lslots[i].db : NULL;

		/* the jobs its workers ran are rolled back: the next launcher serves them */
		if (lslots != NULL && lslots[i].handle != NULL && db != NULL &&
			db->state == QL_DB_ACTIVE && db->dboid == ql_shared->slots[i].dboid)
			pg_atomic_write_u32(&db->wanted, 1);
		ql_shared->slots[i].dboid = InvalidOid;
	}
	LWLockRelease(ql_shared->lock);
}

/*
 * ql_scan_databases: bring the database table in line with pg_database.
 * Databases that are gone are forgotten; new ones (among them copies of a
 * template that has qlater, which no CREATE EXTENSION announces) are added
 * as QL_DB_UNKNOWN, to be probed.
 */
static void
ql_scan_databases(void)
{
	static bool full_logged = false;
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
	for (j = 0; j < npresent; j++)
	{
		if (ql_find_database(present[j], true) == NULL && !full_logged)
		{
			ereport(LOG,
					(errmsg("qlater serves at most %d databases; database %u is ignored",
							QL_MAX_DATABASES, present[j])));
			full_logged = true;
		}
	}
	LWLockRelease(ql_shared->lock);
}

/*
 * ql_start_worker: start a worker for a database in a free slot (one not
 * waiting out a failure).  Returns false if the postmaster could not
 * register it (logged once).  Caller holds ql_shared->lock exclusively.
 */
static bool
ql_start_worker(QlDatabase *db)
{
	BackgroundWorker worker;
	QlWorkerSlot *slot = NULL;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext oldcxt;
	bool		registered;
	int			slotno;

	for (slotno = 0; slotno < ql_shared->nslots; slotno++)
	{
		if (lslots[slotno].handle == NULL &&
			(lslots[slotno].failed_at == 0 ||
			 TimestampDifferenceExceeds(lslots[slotno].failed_at, now, QL_RESTART_DELAY_MS)))
		{
			slot = &ql_shared->slots[slotno];
			break;
		}
	}
	if (slot == NULL)
		return false;

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

	slot->dboid = db->dboid;
	slot->stop_requested = false;
	slot->left = false;
	slot->pid = 0;
	slot->latch = NULL;
	pg_atomic_write_u32(&slot->idle, 0);
	pg_atomic_write_u64(&slot->busy_since, 0);
	lslots[slotno].started_at = now;
	lslots[slotno].failed_at = 0;
	/* the handle outlives the loop's memory (reset every round) */
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&worker, &lslots[slotno].handle);
	MemoryContextSwitchTo(oldcxt);
	if (!registered)
	{
		slot->dboid = InvalidOid;
		lslots[slotno].handle = NULL;
		lslots[slotno].failed_at = now;
		if (!registration_failure_logged)
			ereport(LOG,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start a qlater worker"),
					 errhint("Raise \"max_worker_processes\"; it must leave room for "
							 "qlater.max_workers plus the launcher.")));
		registration_failure_logged = true;
		return false;
	}
	registration_failure_logged = false;
	lslots[slotno].db = db;
	lslots[slotno].stop_for = NULL;
	db->last_served = now;
	db->waiting_since = 0;
	nworkers[db - ql_shared->dbs]++;
	return true;
}

/*
 * ql_slot_idle: whether a worker sleeps with nothing to do (its idle flag
 * is also set while it looks for jobs, when wake_at is 0)
 */
static bool
ql_slot_idle(QlWorkerSlot *slot)
{
	return slot->pid != 0 && pg_atomic_read_u32(&slot->idle) != 0 &&
		pg_atomic_read_u64(&slot->wake_at) != 0;
}

/*
 * ql_pick_victim: a worker to make room for database need, which has
 * have workers: an idle worker, else a busy one whose slice is over; in
 * either case from the database with the most workers, and only from one
 * with at least min_idle (idle) or min_busy (busy, 0: never) workers.
 * Returns the slot number, or -1, with *wait_ms lowered to the time until
 * a busy worker's slice is over.
 */
static int
ql_pick_victim(QlDatabase *need, int min_idle, int min_busy,
			   TimestampTz now, long *wait_ms)
{
	int			best = -1;
	bool		best_idle = false;
	int			best_n = 0;
	TimestampTz best_since = 0;
	int			j;

	for (j = 0; j < ql_shared->nslots; j++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[j];
		QlDatabase *db = lslots[j].db;
		int			n;
		bool		idle;
		TimestampTz since;

		if (lslots[j].handle == NULL || slot->stop_requested || db == NULL || db == need)
			continue;
		n = nworkers[db - ql_shared->dbs];
		idle = ql_slot_idle(slot);
		if (idle)
		{
			if (n < min_idle)
				continue;
			since = lslots[j].started_at;
		}
		else
		{
			TimestampTz busy = (TimestampTz) pg_atomic_read_u64(&slot->busy_since);
			TimestampTz over;

			if (min_busy == 0 || n < min_busy || busy == 0)
				continue;
			since = Max(busy, lslots[j].started_at);
			over = TimestampTzPlusMilliseconds(since, QL_SLICE_MS);
			if (over > now)
			{
				long		wait = TimestampDifferenceMilliseconds(now, over) + 1;

				if (*wait_ms < 0 || wait < *wait_ms)
					*wait_ms = wait;
				continue;
			}
		}
		/* idle first; then the most workers; then the longest in place */
		if (best < 0 || (idle && !best_idle) ||
			(idle == best_idle && (n > best_n || (n == best_n && since < best_since))))
		{
			best = j;
			best_idle = idle;
			best_n = n;
			best_since = since;
		}
	}
	return best;
}

/* ql_stop_worker: ask the worker of a slot to leave, to make room for db */
static void
ql_stop_worker(int slotno, QlDatabase *db)
{
	QlWorkerSlot *slot = &ql_shared->slots[slotno];

	slot->stop_requested = true;
	lslots[slotno].stop_for = db;
	lslots[slotno].stop_for_none = (db != NULL && nworkers[db - ql_shared->dbs] == 0);
	if (db != NULL)
	{
		pending[db - ql_shared->dbs] = true;
		stop_asked[db - ql_shared->dbs] = GetCurrentTimestamp();
	}
	if (lslots[slotno].db != NULL)
		nworkers[lslots[slotno].db - ql_shared->dbs]--;
	if (slot->latch)
		SetLatch(slot->latch);
}

/*
 * ql_unstop: take back the request to leave made to the worker of a slot,
 * if it is still in a job (one that saw its request already leaves: its
 * database is then served again as any other)
 */
static void
ql_unstop(int slotno)
{
	QlWorkerSlot *slot = &ql_shared->slots[slotno];

	if (!slot->stop_requested || pg_atomic_read_u64(&slot->job_id) == 0)
		return;
	slot->stop_requested = false;
	lslots[slotno].stop_for = NULL;
	if (lslots[slotno].db != NULL)
		nworkers[lslots[slotno].db - ql_shared->dbs]++;
}

/* ql_unstop_for: take back the requests to leave made for a database */
static void
ql_unstop_for(QlDatabase *db)
{
	int			j;

	for (j = 0; j < ql_shared->nslots; j++)
	{
		if (lslots[j].handle != NULL && lslots[j].stop_for == db)
			ql_unstop(j);
	}
}

/* ql_fewest_cmp: qsort order of databases: the fewest workers first */
static int
ql_fewest_cmp(const void *a, const void *b)
{
	int			na = nworkers[*(QlDatabase *const *) a - ql_shared->dbs];
	int			nb = nworkers[*(QlDatabase *const *) b - ql_shared->dbs];

	return (na > nb) - (na < nb);
}

/* ql_need_cmp: qsort order of needs: the longest waiting first */
static int
ql_need_cmp(const void *a, const void *b)
{
	const QlDatabase *da = *(QlDatabase *const *) a;
	const QlDatabase *db = *(QlDatabase *const *) b;

	if (da->waiting_since != db->waiting_since)
		return da->waiting_since < db->waiting_since ? -1 : 1;
	return 0;
}

/*
 * ql_balance: free the slots of workers that stopped, then move workers
 * to where the work is (see the file header).  Returns the time in ms
 * after which it should run again (a slice or a restart delay to wait out,
 * a known due time in a database without a worker), or -1.  The
 * databases that waited too long for a worker are returned in *starved
 * (their count in *nstarved), to be logged.
 */
static long
ql_balance(Oid *starved, int *nstarved)
{
	int			nslots = ql_shared->nslots;
	QlDatabase *need1[QL_MAX_DATABASES];
	QlDatabase *need2[QL_MAX_DATABASES];
	QlDatabase *need3[QL_MAX_DATABASES];
	int			n1 = 0;
	int			n2 = 0;
	int			n3 = 0;
	int			nfree = 0;
	int			nactive = 0;
	bool		unserved = false;
	int			i;
	int			j;
	long		retry_ms = -1;
	TimestampTz now = GetCurrentTimestamp();

	*nstarved = 0;
	memset(nworkers, 0, sizeof(nworkers));
	memset(pending, 0, sizeof(pending));
	memset(pending_busy, 0, sizeof(pending_busy));
	memset(nidle, 0, sizeof(nidle));

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);

	/*
	 * Free the slots whose worker has stopped.  One that did not leave on
	 * purpose (it failed, was ended, or crashed at start) may have left
	 * work behind: its database is wanted again, and its slot waits a
	 * little before it is used again, so that a worker that fails at once
	 * does not loop.
	 */
	for (j = 0; j < nslots; j++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[j];
		QlDatabase *db = lslots[j].db;
		pid_t		pid;

		if (lslots[j].handle == NULL ||
			GetBackgroundWorkerPid(lslots[j].handle, &pid) != BGWH_STOPPED)
			continue;
		if (db != NULL && (db->state == QL_DB_FREE || db->dboid != slot->dboid))
			db = NULL;
		if (!slot->left)
		{
			lslots[j].failed_at = now;
			if (db != NULL && db->state == QL_DB_ACTIVE)
				pg_atomic_write_u32(&db->wanted, 1);
		}
		if (db != NULL)
			db->last_served = now;
		/* the slot goes to the database it was freed for */
		if (slot->left && lslots[j].stop_for != NULL &&
			(lslots[j].stop_for->state == QL_DB_UNKNOWN ||
			 lslots[j].stop_for->state == QL_DB_ACTIVE))
			lslots[j].handoff = lslots[j].stop_for;
		pfree(lslots[j].handle);
		lslots[j].handle = NULL;
		lslots[j].db = NULL;
		lslots[j].stop_for = NULL;
		slot->dboid = InvalidOid;
	}

	/* the workers each database keeps, and the stops made for each */
	for (j = 0; j < nslots; j++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[j];
		QlDatabase *db = lslots[j].db;

		if (lslots[j].handle == NULL)
			continue;
		if (db != NULL && (db->state == QL_DB_FREE || db->dboid != slot->dboid))
			lslots[j].db = db = NULL;	/* its database is gone */
		if (!slot->stop_requested &&
			(db == NULL || (db->state != QL_DB_UNKNOWN && db->state != QL_DB_ACTIVE)))
			ql_stop_worker(j, NULL);	/* no longer wanted there */
		else if (!slot->stop_requested)
		{
			nworkers[db - ql_shared->dbs]++;
			if (ql_slot_idle(slot))
				nidle[db - ql_shared->dbs]++;
		}
		else if (slot->stop_requested && lslots[j].stop_for != NULL)
		{
			pending[lslots[j].stop_for - ql_shared->dbs] = true;
			if (pg_atomic_read_u64(&slot->job_id) != 0)
				pending_busy[lslots[j].stop_for - ql_shared->dbs] = true;
		}
	}

	/*
	 * A slot freed for a database goes to it; a stop made for a database
	 * that had no worker and has one now is taken back if its worker is
	 * still in a job.
	 */
	for (j = 0; j < nslots; j++)
	{
		QlDatabase *to = lslots[j].handoff;

		lslots[j].handoff = NULL;
		if (to != NULL)
			(void) ql_start_worker(to);
	}
	for (j = 0; j < nslots; j++)
	{
		QlDatabase *to = lslots[j].stop_for;

		if (lslots[j].handle != NULL && to != NULL && lslots[j].stop_for_none &&
			nworkers[to - ql_shared->dbs] > 0)
			ql_unstop(j);
	}

	/* what each database needs */
	for (i = 0; i < QL_MAX_DATABASES; i++)
	{
		QlDatabase *db = &ql_shared->dbs[i];
		uint64		due;
		TimestampTz revisit_at;

		if (db->state != QL_DB_UNKNOWN && db->state != QL_DB_ACTIVE)
			continue;
		nactive++;

		/*
		 * A known due time: once reached, the database is wanted unless an
		 * idle worker is here (it wakes for it by itself).
		 */
		due = pg_atomic_read_u64(&db->next_due);
		if (due != 0 && (TimestampTz) due <= now)
		{
			if (nidle[i] == 0)
				pg_atomic_write_u32(&db->wanted, 1);
			(void) pg_atomic_compare_exchange_u64(&db->next_due, &due, 0);
		}
		else if (due != 0 && nidle[i] == 0)
		{
			long		wait = TimestampDifferenceMilliseconds(now, (TimestampTz) due) + 1;

			if (retry_ms < 0 || wait < retry_ms)
				retry_ms = wait;
		}

		if (nworkers[i] > 0)
		{
			db->waiting_since = 0;
			db->starved_logged = false;
			if (db->state == QL_DB_ACTIVE && pg_atomic_read_u32(&db->wanted) != 0 &&
				!pending[i])
				need2[n2++] = db;
			continue;
		}
		if (db->state == QL_DB_UNKNOWN || pg_atomic_read_u32(&db->wanted) != 0)
		{
			if (db->waiting_since == 0)
				db->waiting_since = now;
			/* a probe that waits is not logged: there may be no job */
			if (!db->starved_logged && db->state == QL_DB_ACTIVE)
			{
				TimestampTz at = TimestampTzPlusMilliseconds(db->waiting_since,
															 QL_STARVED_LOG_MS);

				if (at <= now)
				{
					db->starved_logged = true;
					starved[(*nstarved)++] = db->dboid;
				}
				else
				{
					long		wait = TimestampDifferenceMilliseconds(now, at) + 1;

					if (retry_ms < 0 || wait < retry_ms)
						retry_ms = wait;
				}
			}
			/* waiting for a worker to leave, unless it is still in a job */
			if (!pending[i] || pending_busy[i])
				need1[n1++] = db;
			continue;
		}
		db->waiting_since = 0;

		/*
		 * qlater.revisit_interval is read at each pass, so that a reload
		 * changes it at once; a look not yet due is a time to run again.
		 */
		revisit_at = TimestampTzPlusMilliseconds(db->last_served, ql_revisit_interval);
		if (revisit_at <= now)
			need3[n3++] = db;
		else
		{
			long		wait = TimestampDifferenceMilliseconds(now, revisit_at) + 1;

			if (retry_ms < 0 || wait < retry_ms)
				retry_ms = wait;
		}
	}

	/* free slots, but those waiting out a failure */
	for (j = 0; j < nslots; j++)
	{
		long		since;

		if (lslots[j].handle != NULL)
			continue;
		since = TimestampDifferenceMilliseconds(lslots[j].failed_at, now);
		if (lslots[j].failed_at != 0 && since < QL_RESTART_DELAY_MS)
		{
			long		wait = QL_RESTART_DELAY_MS - since;

			if (retry_ms < 0 || wait < retry_ms)
				retry_ms = wait;
			continue;
		}
		nfree++;
	}

	/*
	 * A database with work and no worker first, the longest waiting first:
	 * a free slot, else an idle worker, else a worker of the database with
	 * the most workers whose slice is over (it leaves after its job).
	 */
	/*
	 * Until the end of this pass, a worker that goes idle wakes the
	 * launcher: one that went idle after the look at its slot below is
	 * then not missed.
	 */
	if (n1 + n2 > 0)
	{
		pg_atomic_write_u32(&ql_shared->unserved, 1);
		pg_memory_barrier();
	}
	qsort(need1, n1, sizeof(QlDatabase *), ql_need_cmp);
	for (i = 0; i < n1; i++)
	{
		QlDatabase *db = need1[i];
		bool		waits_on_job = pending_busy[db - ql_shared->dbs];
		bool		ask_busy = true;
		int			victim;

		if (nfree > 0 && ql_start_worker(db))
		{
			nfree--;
			/* served: the busy workers asked to leave for it stay */
			if (waits_on_job)
				ql_unstop_for(db);
			continue;
		}

		/*
		 * A database that waits for a busy worker to leave takes an idle
		 * one (and the busy one stays), and every QL_SLICE_MS asks one
		 * more busy worker, as the first may run a long job: the first to
		 * leave serves it, and the requests to the others are taken back.
		 */
		if (waits_on_job)
		{
			TimestampTz again = TimestampTzPlusMilliseconds(stop_asked[db - ql_shared->dbs],
															QL_SLICE_MS);

			ask_busy = (again <= now);
			if (!ask_busy)
			{
				long		wait = TimestampDifferenceMilliseconds(now, again) + 1;

				if (retry_ms < 0 || wait < retry_ms)
					retry_ms = wait;
			}
		}
		victim = ql_pick_victim(db, 1, ask_busy ? 1 : 0, now, &retry_ms);
		if (victim < 0)
		{
			unserved = true;
			continue;
		}
		if (ql_slot_idle(&ql_shared->slots[victim]))
		{
			if (waits_on_job)
				ql_unstop_for(db);
		}
		else if (retry_ms < 0 || retry_ms > QL_SLICE_MS + 1)
			retry_ms = QL_SLICE_MS + 1; /* to ask another, if its job is long */
		ql_stop_worker(victim, db);
	}

	/*
	 * Then more workers for a database whose ready jobs found no idle
	 * worker, the one with the fewest first: a free slot, an idle worker of
	 * another database, or a busy worker of a database with two more
	 * workers than this one whose slice is over.  While there are workers
	 * enough for every database, each keeps one, idle or not, so that its
	 * next job starts at once; with more databases than workers, idle
	 * workers go where the work is.
	 */
	qsort(need2, n2, sizeof(QlDatabase *), ql_fewest_cmp);
	for (i = 0; i < n2; i++)
	{
		int			victim;

		if (nfree > 0 && ql_start_worker(need2[i]))
		{
			nfree--;
			continue;
		}
		victim = ql_pick_victim(need2[i], nactive > nslots ? 1 : 2,
								nworkers[need2[i] - ql_shared->dbs] + 2, now, &retry_ms);
		if (victim >= 0)
			ql_stop_worker(victim, need2[i]);
		else
			unserved = true;
	}

	/*
	 * A database without a worker for qlater.revisit_interval is looked at
	 * again with a free slot or an idle worker, one per pass, in case jobs
	 * reached it without a commit that qlater saw.
	 */
	if (n3 > 0)
	{
		QlDatabase *db = need3[0];

		for (i = 1; i < n3; i++)
			if (need3[i]->last_served < db->last_served)
				db = need3[i];
		if (nfree > 0 && ql_start_worker(db))
			nfree--;
		else
		{
			long		ignore = -1;
			int			victim = ql_pick_victim(db, 1, 0, now, &ignore);

			if (victim >= 0)
			{
				ql_stop_worker(victim, db);
				db->last_served = now;	/* asked once per interval */
			}
		}
	}

	/*
	 * Idle workers even out: the database with the fewest workers takes an
	 * idle one from a database with two more, one per pass.
	 */
	{
		QlDatabase *low = NULL;

		for (i = 0; i < QL_MAX_DATABASES; i++)
		{
			QlDatabase *db = &ql_shared->dbs[i];

			if (db->state == QL_DB_ACTIVE && !pending[i] &&
				(low == NULL || nworkers[i] < nworkers[low - ql_shared->dbs]))
				low = db;
		}
		if (low != NULL && nfree == 0)
		{
			long		ignore = -1;
			int			victim = ql_pick_victim(low, nworkers[low - ql_shared->dbs] + 2,
												0, now, &ignore);

			if (victim >= 0)
				ql_stop_worker(victim, low);
		}
	}

	/*
	 * Slots still free wait in the databases with qlater, the fewest
	 * workers first, so that with no more databases than workers each
	 * keeps its share and new jobs find an idle worker at once.
	 */
	while (nfree > 0)
	{
		QlDatabase *best = NULL;

		for (i = 0; i < QL_MAX_DATABASES; i++)
		{
			QlDatabase *db = &ql_shared->dbs[i];

			if (db->state == QL_DB_ACTIVE &&
				(best == NULL || nworkers[i] < nworkers[best - ql_shared->dbs]))
				best = db;
		}
		if (best == NULL || !ql_start_worker(best))
			break;
		nfree--;
	}
	pg_atomic_write_u32(&ql_shared->unserved, unserved ? 1 : 0);
	LWLockRelease(ql_shared->lock);
	return retry_ms;
}

/*
 * ql_log_starved: log, once per wait, each database that has waited
 * QL_STARVED_LOG_MS for a worker.
 */
static void
ql_log_starved(const Oid *starved, int nstarved)
{
	int			i;

	if (nstarved == 0)
		return;
	ql_xact_begin();
	for (i = 0; i < nstarved; i++)
	{
		char	   *name = get_database_name(starved[i]);

		ereport(LOG,
				(errmsg("jobs of database \"%s\" have waited %d seconds for a worker",
						name ? name : "?", QL_STARVED_LOG_MS / 1000),
				 errdetail("All %d workers (qlater.max_workers) are running jobs in other databases.",
						   ql_shared->nslots),
				 errhint("Raise \"qlater.max_workers\" (and \"max_worker_processes\"), or give long jobs a timeout.")));
	}
	ql_xact_commit();
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
	Oid			starved[QL_MAX_DATABASES];
	int			nstarved;
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
		ql_scan_databases();
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
			ql_scan_databases();
			last_scan = GetCurrentTimestamp();
		}

		retry = ql_balance(starved, &nstarved);
		if (retry >= 0 && retry < timeout)
			timeout = retry;
		ql_log_starved(starved, nstarved);
		retry = ql_end_overruns();
		if (retry >= 0 && retry < timeout)
			timeout = retry;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
