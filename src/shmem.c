/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory of qlater: the launcher's list of databases and one
 *		slot per worker (see shmem.h for which lock protects what).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "limits.h"
#include "qlater.h"
#include "running.h"
#include "shmem.h"
#include "stats.h"

QlShared   *ql_shared = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static QlDatabase *ql_find_database_ext(Oid dboid, bool create, bool evict_absent);

static Size
ql_shmem_size(void)
{
	return add_size(offsetof(QlShared, slots),
					mul_size(ql_max_workers, sizeof(QlWorkerSlot)));
}

static void
ql_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(ql_shmem_size());
	RequestNamedLWLockTranche("qlater", 1);
	ql_limits_shmem_request();
	ql_stats_shmem_request();
	RequestAddinShmemSpace(ql_running_shmem_size());
	RequestNamedLWLockTranche("qlater claims", 1);
}

/*
 * ql_shmem_startup: create or attach to the shared state.  Runs in the
 * postmaster at start and after every crash-restart, which resets it.
 */
static void
ql_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ql_shared = ShmemInitStruct("qlater", ql_shmem_size(), &found);
	if (!found)
	{
		int			i;
		int			j;

		memset(ql_shared, 0, ql_shmem_size());
		ql_shared->lock = &(GetNamedLWLockTranche("qlater"))->lock;
		ql_shared->nslots = ql_max_workers;
		if (!pg_strong_random(&ql_shared->key_seed, sizeof(ql_shared->key_seed)))
			elog(FATAL, "could not generate a random seed for qlater");
		pg_atomic_init_u32(&ql_shared->notify_next, 0);
		pg_atomic_init_u32(&ql_shared->unserved, 0);
		for (i = 0; i < QL_MAX_DATABASES; i++)
		{
			SpinLockInit(&ql_shared->dbs[i].frontier_mutex);
			ql_shared->dbs[i].frontier = ql_key_min;
			pg_atomic_init_u32(&ql_shared->dbs[i].wanted, 0);
			pg_atomic_init_u64(&ql_shared->dbs[i].next_due, 0);
			pg_atomic_init_u64(&ql_shared->dbs[i].queues_gen, 0);
			pg_atomic_init_u64(&ql_shared->dbs[i].looked_from_start, 0);
			for (j = 0; j < lengthof(ql_shared->dbs[i].history_expires_by); j++)
				pg_atomic_init_u64(&ql_shared->dbs[i].history_expires_by[j], 0);
			pg_atomic_init_u64(&ql_shared->dbs[i].history_expire_at, 0);
			pg_atomic_init_u64(&ql_shared->dbs[i].depth_read_at, 0);
			pg_atomic_init_u64(&ql_shared->dbs[i].depth_next_at, 0);
			pg_atomic_init_u64(&ql_shared->dbs[i].depth_counted_at, 0);
		}
		for (i = 0; i < ql_max_workers; i++)
		{
			pg_atomic_init_u32(&ql_shared->slots[i].idle, 0);
			pg_atomic_init_u64(&ql_shared->slots[i].job_id, 0);
			pg_atomic_init_u64(&ql_shared->slots[i].cancel_job, 0);
			pg_atomic_init_u64(&ql_shared->slots[i].wake_at, 0);
			pg_atomic_init_u64(&ql_shared->slots[i].busy_since, 0);
			pg_atomic_init_u64(&ql_shared->slots[i].job_started, 0);
			pg_atomic_init_u64(&ql_shared->slots[i].overrun_job, 0);
			pg_atomic_init_u64(&ql_shared->slots[i].overrun_at, 0);
			pg_atomic_init_u32(&ql_shared->slots[i].overrun_kind, 0);
			pg_atomic_init_u64(&ql_shared->slots[i].ending_job, 0);
		}
	}
	/* the running jobs of queues with a limit (limits.c) */
	ql_limits_shmem_startup();
	/* the counters of queues (stats.c) */
	ql_stats_shmem_startup();
	/* the claims of consumers, with their times (running.c) */
	ql_running_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * ql_shmem_init: install the hooks; called from _PG_init while
 * shared_preload_libraries is processed.
 */
void
ql_shmem_init(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ql_shmem_request;
#else
	ql_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ql_shmem_startup;
}

/*
 * ql_find_database: the entry of a database, or NULL.  With create, a free
 * entry is taken (state QL_DB_UNKNOWN) when there is none yet; NULL if the
 * table is full.  Caller holds ql_shared->lock exclusively (shared is enough
 * without create).
 */
QlDatabase *
ql_find_database(Oid dboid, bool create)
{
	return ql_find_database_ext(dboid, create, false);
}

/*
 * ql_add_database: the entry of a database that has qlater, made if needed,
 * even in a full table (taking the entry of a database without qlater); NULL
 * if every entry is of a database with qlater.  Caller holds
 * ql_shared->lock exclusively.
 */
QlDatabase *
ql_add_database(Oid dboid)
{
	return ql_find_database_ext(dboid, true, true);
}

static QlDatabase *
ql_find_database_ext(Oid dboid, bool create, bool evict_absent)
{
	QlDatabase *free_entry = NULL;
	int			i;

	for (i = 0; i < QL_MAX_DATABASES; i++)
	{
		QlDatabase *db = &ql_shared->dbs[i];

		if (db->state == QL_DB_FREE)
		{
			if (free_entry == NULL)
				free_entry = db;
		}
		else if (db->dboid == dboid)
			return db;
	}
	/*
	 * A full table: a database that CREATE EXTENSION announces takes the
	 * entry of one known to have no qlater (probed again if it gets it).
	 */
	if (create && free_entry == NULL && evict_absent)
	{
		for (i = 0; i < QL_MAX_DATABASES && free_entry == NULL; i++)
		{
			QlDatabase *db = &ql_shared->dbs[i];

			if (db->state == QL_DB_ABSENT && db->dropping_since == 0)
				free_entry = db;
		}
	}
	if (create && free_entry != NULL)
	{
		free_entry->dboid = dboid;
		free_entry->state = QL_DB_UNKNOWN;
		free_entry->dropping_since = 0;
		free_entry->waiting_since = 0;
		free_entry->last_served = 0;
		free_entry->starved_logged = false;
		pg_atomic_write_u32(&free_entry->wanted, 0);
		pg_atomic_write_u64(&free_entry->next_due, 0);
		pg_atomic_write_u64(&free_entry->looked_from_start, 0);
		/* what another database's history held says nothing of this one's */
		for (int j = 0; j < lengthof(free_entry->history_expires_by); j++)
			pg_atomic_write_u64(&free_entry->history_expires_by[j], 0);
		pg_atomic_write_u64(&free_entry->history_expire_at, 0);
		ql_frontier_lower(free_entry, &ql_key_min);
		SpinLockAcquire(&free_entry->frontier_mutex);
		free_entry->frontier_relid = InvalidOid;
		SpinLockRelease(&free_entry->frontier_mutex);
		return free_entry;
	}
	return NULL;
}

/*
 * ql_my_database: this backend's database's entry, or NULL if the launcher
 * does not know it (yet).  Kept once found: an entry is freed only when its
 * database is gone, and checked against MyDatabaseId each time.
 */
QlDatabase *
ql_my_database(void)
{
	static QlDatabase *mine = NULL;

	if (mine != NULL && mine->dboid == MyDatabaseId && mine->state != QL_DB_FREE)
		return mine;
	LWLockAcquire(ql_shared->lock, LW_SHARED);
	mine = ql_find_database(MyDatabaseId, false);
	LWLockRelease(ql_shared->lock);
	return mine;
}

/*
 * ql_database_want: ready jobs of a database found no idle worker there:
 * tell the launcher, once until a worker finds nothing left.  Needs no
 * lock.
 */
void
ql_database_want(QlDatabase *db)
{
	Latch	   *launcher = ql_shared->launcher_latch;

	if (db == NULL || pg_atomic_read_u32(&db->wanted) != 0)
		return;
	if (pg_atomic_exchange_u32(&db->wanted, 1) == 0 && launcher != NULL)
		SetLatch(launcher);
}

/*
 * ql_database_due: work becomes due in a database at a time that no worker
 * there is known to look by: lower its next_due to that time, and wake the
 * launcher to take it into account.  Needs no lock.
 */
void
ql_database_due(QlDatabase *db, TimestampTz due)
{
	Latch	   *launcher = ql_shared->launcher_latch;
	uint64		old;

	if (db == NULL)
		return;
	old = pg_atomic_read_u64(&db->next_due);
	while (old == 0 || (TimestampTz) old > due)
	{
		if (pg_atomic_compare_exchange_u64(&db->next_due, &old, (uint64) due))
		{
			if (launcher != NULL)
				SetLatch(launcher);
			break;
		}
	}
}

/*
 * ql_job_crash_pending: whether a job of this database crashed the server
 * and its crash is not counted yet; such a job must not be claimed.
 */
bool
ql_job_crash_pending(int64 job_id)
{
	bool		pending = false;
	int			i;

	/* the list is empty but right after a crash-restart */
	if (ql_shared->ncrashed == 0)
		return false;
	LWLockAcquire(ql_shared->lock, LW_SHARED);
	for (i = 0; i < ql_shared->ncrashed && !pending; i++)
		pending = (ql_shared->crashed[i].dboid == MyDatabaseId &&
				   ql_shared->crashed[i].job_id == job_id);
	LWLockRelease(ql_shared->lock);
	return pending;
}

/* the first place in the claim order */
const QlClaimKey ql_key_min = {PG_INT32_MIN, DT_NOBEGIN, PG_INT64_MIN};

/* ql_key_cmp: compare two places in the claim order, as btree does */
int
ql_key_cmp(const QlClaimKey *a, const QlClaimKey *b)
{
	if (a->priority != b->priority)
		return a->priority < b->priority ? -1 : 1;
	if (a->run_at != b->run_at)
		return a->run_at < b->run_at ? -1 : 1;
	if (a->id != b->id)
		return a->id < b->id ? -1 : 1;
	return 0;
}

/* ql_frontier_get: a database's claim frontier and its generation */
void
ql_frontier_get(QlDatabase *db, QlClaimKey *key, uint64 *gen)
{
	SpinLockAcquire(&db->frontier_mutex);
	*key = db->frontier;
	*gen = db->frontier_gen;
	SpinLockRelease(&db->frontier_mutex);
}

/*
 * ql_frontier_advance: move the frontier forward to key, unless a commit
 * that wrote jobs came since the frontier was read at generation gen: the
 * reader's snapshot may have missed its jobs.
 */
void
ql_frontier_advance(QlDatabase *db, const QlClaimKey *key, uint64 gen)
{
	SpinLockAcquire(&db->frontier_mutex);
	if (db->frontier_gen == gen && ql_key_cmp(key, &db->frontier) > 0)
		db->frontier = *key;
	SpinLockRelease(&db->frontier_mutex);
}

/*
 * ql_frontier_lower: a commit wrote jobs, the first of them at key: move
 * the frontier back to it if needed, and make every advance based on an
 * older snapshot fail.
 */
void
ql_frontier_lower(QlDatabase *db, const QlClaimKey *key)
{
	SpinLockAcquire(&db->frontier_mutex);
	if (ql_key_cmp(key, &db->frontier) < 0)
		db->frontier = *key;
	db->frontier_gen++;
	SpinLockRelease(&db->frontier_mutex);
}

/*
 * ql_frontier_table: the claim frontier is a place in the job table relid:
 * if it was one in another table (the extension dropped and created
 * again), or in none yet, it goes back to the start.  A worker's statements
 * prepared anew on the same table (after any change of its relcache entry,
 * a VACUUM or ANALYZE included) leave it where it is.
 */
void
ql_frontier_table(QlDatabase *db, Oid relid)
{
	SpinLockAcquire(&db->frontier_mutex);
	if (db->frontier_relid != relid)
	{
		db->frontier = ql_key_min;
		db->frontier_gen++;
		db->frontier_relid = relid;
	}
	SpinLockRelease(&db->frontier_mutex);
}

/*
 * ql_mark_overrun: the job that a worker runs was interrupted by its
 * timeout or by a committed qlater_cancel: note when, and wake the
 * launcher, which ends the worker if the handler goes on past the grace.
 * Safe in a signal handler: atomics and SetLatch only.
 */
void
ql_mark_overrun(QlWorkerSlot *slot, QlEndKind kind)
{
	uint64		job = pg_atomic_read_u64(&slot->job_id);
	Latch	   *launcher = ql_shared->launcher_latch;

	if (job == 0 || pg_atomic_read_u64(&slot->overrun_job) == job)
		return;
	pg_atomic_write_u64(&slot->overrun_at, (uint64) GetCurrentTimestamp());
	pg_atomic_write_u32(&slot->overrun_kind, (uint32) kind);
	pg_write_barrier();
	pg_atomic_write_u64(&slot->overrun_job, job);
	if (launcher != NULL)
		SetLatch(launcher);
}
