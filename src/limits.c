/*-------------------------------------------------------------------------
 *
 * limits.c
 *		Pause and concurrency limits of queues, where jobs are claimed.
 *
 * A paused queue's jobs are not claimed from the pause's commit on; a
 * queue with a max_running runs at most that many jobs at once, over all
 * workers and external consumers.  Both settings are read from the queue
 * rows a backend caches (queue.c, ql_queues_restricted: read again once
 * the database's queue generation has moved, which the commit of a change
 * does right after the commit).
 *
 * Slots.  A claim of a job of a queue with a limit takes a slot in a
 * shared table, under limits->lock, only while fewer than max_running
 * slots of the queue count: so the limit holds exactly, whatever the
 * races.  A slot belongs to a process (a worker; a consumer's session-mode
 * claim), which releases it with the claim, and at the latest when it
 * exits (an on_shmem_exit callback: it runs after the session's
 * transaction was aborted and its locks released, so the job has stopped
 * by then), or to a lease (pid 0), which counts only until its
 * lease_until, and is released when the transaction that completes, fails
 * or unlocks the job commits.  A crash-restart clears shared memory, the
 * slots with it.  The table holds qlater.max_limited_jobs slots: past
 * that, a claim of a limited queue's job is an error for a consumer, and
 * a worker leaves the job where it is (logged once).
 *
 * Looks.  A worker's look (claim.c) leaves out the jobs of blocked queues
 * (paused, max_running 0, or as many jobs running as max_running), and the
 * claim frontier may move past them: so any number of blocked jobs never
 * holds up the looks.  Whatever unblocks them moves the frontier back:
 *	- a resume, or a limit raised or removed (queue.c), to the start, at
 *	  commit, right after the database's queue generation moved;
 *	- a slot released, to the first job of its queue a look left out
 *	  because the queue was full (skipped_from).  The look records it with
 *	  its reading "full", under limits->lock, and the release takes it back
 *	  under the same lock: a release that comes first leaves room the look
 *	  sees; one that comes after moves the frontier back below what the
 *	  look passed, and if the look has not advanced the frontier yet, the
 *	  advance fails (ql_frontier_lower bumps the frontier's generation).
 * A look reads the frontier and its generation before its snapshot and
 * before the restricted queues (claim.c): a resume or a raised limit that
 * the look did not see moves the frontier back after the look read it, so
 * the look's advance fails.  qlater.poll_interval's look from the start
 * is the safety net for what moves nothing back: a lease that ran out.
 *
 * Queues without a pause or a limit pay nothing: while no queue of the
 * database is paused or limited, a look looks up no queue and takes no
 * lock, and a claim of another queue's job is never looked up in shared
 * memory.
 *
 * limits->lock protects both shared hash tables: the slots, by (database,
 * job id), and the queues that have slots, by (database, name), with the
 * number of their slots and where a look passed over their jobs while they
 * were full.  A queue's entry lives while it has slots, so there are never
 * more entries than slots.  limits->nslots, the number of slots taken, is
 * read without the lock: while it is 0, releases have nothing to do.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/acl.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "limits.h"
#include "qlater.h"
#include "queue.h"
#include "shmem.h"

/* a queue that has slots, in the shared table of queues */
typedef struct QlLimitKey
{
	Oid			dboid;
	char		queue[NAMEDATALEN];
} QlLimitKey;

typedef struct QlLimitQueue
{
	QlLimitKey	key;			/* hash key */
	int			nslots;			/* slots taken, leases run out included */
	int			nleases;		/* of which lease slots */
	bool		skipped;		/* a look passed over its jobs while full */
	QlClaimKey	skipped_from;	/* the first of them */
} QlLimitQueue;

/* a running job's slot */
typedef struct QlSlotKey
{
	Oid			dboid;
	int64		job_id;
} QlSlotKey;

typedef struct QlSlot
{
	QlSlotKey	key;			/* hash key */
	QlLimitQueue *queue;
	Oid			roleid;			/* the role the job runs or is claimed as */
	pid_t		pid;			/* the holder; 0 for a lease */
	TimestampTz lease_until;	/* a lease's end; 0 for a holder */
} QlSlot;

typedef struct QlLimitsShared
{
	LWLock	   *lock;
	pg_atomic_uint32 nslots;	/* slots taken */
} QlLimitsShared;

static QlLimitsShared *limits = NULL;
static HTAB *limit_queues = NULL;
static HTAB *limit_slots = NULL;

/*
 * The queues paused or limited, as this backend last read them (by name),
 * with the bookkeeping of one look (ql_limits_filter).
 */
typedef struct QlRestricted
{
	char		name[NAMEDATALEN];	/* hash key */
	bool		paused;
	int32		max_running;	/* -1: no limit */
	uint64		look;			/* the look that last met the queue */
	bool		full;			/* in that look */
	QlClaimKey	first;			/* its first job in that look */
} QlRestricted;

static HTAB *restricted = NULL;
static int	nrestricted = 0;
static uint64 restricted_version = 0;	/* of ql_queues_restricted */
static QlRestricted **look_queues = NULL;	/* nrestricted of them */
static uint64 look_count = 0;

/* the slots this process holds (pid MyProcPid), by job id */
static int64 *my_slots = NULL;
static int	nmy_slots = 0;
static int	my_slots_size = 0;
static bool exit_registered = false;

/*
 * Lease slots taken by this transaction (released if it aborts: the lease
 * was not written), slots to release when it commits, and lease renewals
 * to apply then: QlSlotChange entries, in TopMemoryContext.
 */
static List *xact_leases = NIL;
static List *commit_releases = NIL;
static List *commit_extends = NIL;	/* lease renewals (QlSlotChange) */
static bool xact_callback_registered = false;

/*
 * A worker found the table of slots full: logged once until it has room;
 * it looks again every second meanwhile (ql_limits_room_wanted), since no
 * release wakes it (a slot of any queue of any database makes room).
 */
static bool no_room_logged = false;
static bool no_room_wait = false;

/* how often a worker that found no slot left looks again, in ms */
#define QL_NO_ROOM_RETRY_MS	1000

/* ql_limits_shmem_size: the shared memory of the limits */
Size
ql_limits_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(QlLimitsShared));

	size = add_size(size, hash_estimate_size(ql_max_limited_jobs, sizeof(QlLimitQueue)));
	size = add_size(size, hash_estimate_size(ql_max_limited_jobs, sizeof(QlSlot)));
	return size;
}

/* ql_limits_shmem_request: from the shared memory request hook */
void
ql_limits_shmem_request(void)
{
	RequestAddinShmemSpace(ql_limits_shmem_size());
	RequestNamedLWLockTranche("qlater limits", 1);
}

/*
 * ql_limits_shmem_startup: create or attach to the limits' shared memory;
 * from the shared memory startup hook, which holds AddinShmemInitLock.
 * Both tables are of fixed size: every entry is allocated now.
 */
void
ql_limits_shmem_startup(void)
{
	HASHCTL		info;
	bool		found;

	limits = ShmemInitStruct("qlater limits", sizeof(QlLimitsShared), &found);
	if (!found)
	{
		limits->lock = &(GetNamedLWLockTranche("qlater limits"))->lock;
		pg_atomic_init_u32(&limits->nslots, 0);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(QlLimitKey);
	info.entrysize = sizeof(QlLimitQueue);
	limit_queues = ShmemInitHash("qlater limited queues",
								 ql_max_limited_jobs, ql_max_limited_jobs, &info,
								 HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	info.keysize = sizeof(QlSlotKey);
	info.entrysize = sizeof(QlSlot);
	limit_slots = ShmemInitHash("qlater running slots",
								ql_max_limited_jobs, ql_max_limited_jobs, &info,
								HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
}

/* ql_slot_key, ql_limit_key: hash keys, padding zeroed (HASH_BLOBS) */
static void
ql_slot_key(QlSlotKey *key, int64 job_id)
{
	memset(key, 0, sizeof(*key));
	key->dboid = MyDatabaseId;
	key->job_id = job_id;
}

static void
ql_limit_key(QlLimitKey *key, const char *queue)
{
	memset(key, 0, sizeof(*key));
	key->dboid = MyDatabaseId;
	strlcpy(key->queue, queue, NAMEDATALEN);
}

/*
 * ql_remove_slot: free a slot, and its queue's entry with its last slot.
 * If a look passed over jobs of the queue while it was full, the claim
 * frontier goes back to the first of them (db: this database's entry, if
 * any); returns whether it did.  Caller holds limits->lock exclusively.
 */
static bool
ql_remove_slot(QlSlot *s, QlDatabase *db)
{
	QlLimitQueue *lq = s->queue;
	QlSlotKey	key = s->key;
	bool		lowered = false;

	lq->nslots--;
	if (s->pid == 0)
		lq->nleases--;
	(void) hash_search(limit_slots, &key, HASH_REMOVE, NULL);
	pg_atomic_fetch_sub_u32(&limits->nslots, 1);
	if (lq->skipped)
	{
		if (db != NULL)
			ql_frontier_lower(db, &lq->skipped_from);
		lq->skipped = false;
		lowered = true;
	}
	if (lq->nslots == 0)
	{
		QlLimitKey	qkey = lq->key;

		(void) hash_search(limit_queues, &qkey, HASH_REMOVE, NULL);
	}
	return lowered;
}

/*
 * ql_live_slots: how many slots of a queue count against max_running:
 * all but leases that have run out, which are removed on the way when the
 * queue looks full (the queue's entry too if none is left: do not use lq
 * after a result below max_running).  Caller holds limits->lock
 * exclusively.
 */
static int
ql_live_slots(QlLimitQueue *lq, int32 max_running, QlDatabase *db,
			  bool *lowered)
{
	HASH_SEQ_STATUS seq;
	QlSlot	   *s;
	TimestampTz now;
	int			live;

	if (lq->nslots < max_running || lq->nleases == 0)
		return lq->nslots;
	now = GetCurrentTimestamp();
	live = lq->nslots;
	hash_seq_init(&seq, limit_slots);
	while ((s = hash_seq_search(&seq)) != NULL)
	{
		/* removing the entry just returned is allowed during the scan */
		if (s->queue == lq && s->pid == 0 && s->lease_until <= now)
		{
			live--;
			if (ql_remove_slot(s, db))
				*lowered = true;
		}
	}
	return live;
}

/*
 * ql_sweep_lapsed: remove every lease slot that has run out, of every
 * queue (a queue that never looks full never sweeps its own), so that
 * they take no room in the table.  Caller holds limits->lock exclusively.
 */
static void
ql_sweep_lapsed(QlDatabase *db, bool *lowered)
{
	HASH_SEQ_STATUS seq;
	QlSlot	   *s;
	TimestampTz now = GetCurrentTimestamp();

	hash_seq_init(&seq, limit_slots);
	while ((s = hash_seq_search(&seq)) != NULL)
	{
		/* the slot's queue may be another database's: no frontier then */
		if (s->pid == 0 && s->lease_until <= now &&
			ql_remove_slot(s, s->key.dboid == MyDatabaseId ? db : NULL))
			*lowered = true;
	}
}

/*
 * ql_role_slots: how many slots a role holds, over every database (leases
 * run out left out).  Caller holds limits->lock.
 */
static int
ql_role_slots(Oid roleid)
{
	HASH_SEQ_STATUS seq;
	QlSlot	   *s;
	TimestampTz now = GetCurrentTimestamp();
	int			n = 0;

	hash_seq_init(&seq, limit_slots);
	while ((s = hash_seq_search(&seq)) != NULL)
	{
		if (s->roleid == roleid && (s->pid != 0 || s->lease_until > now))
			n++;
	}
	return n;
}

/*
 * ql_take: take a slot for a job of a queue that runs at most max_running
 * jobs at once, held by pid (0: by a lease until lease_until), for a job
 * of roleid.  The job's own earlier slot (a lease that ran out, the job
 * claimed again) is freed first; a live lease's is left alone
 * (QL_SLOT_BUSY): a claim may follow a candidate that another consumer has
 * leased since it was read (a lease holds no lock once its transaction
 * ended), and finds the job leased only when it reads it.  A role holds at most half the table
 * (QL_SLOT_NO_ROOM past it), so that no tenant's leases take every slot of
 * the cluster; roleid InvalidOid: no bound (admins).  Sets *lowered if the claim frontier moved back on the way.
 */
static QlSlotResult
ql_take(const char *queue, int32 max_running, int64 job_id, pid_t pid,
		TimestampTz lease_until, Oid roleid, QlDatabase *db, bool *lowered)
{
	QlSlotKey	skey;
	QlLimitKey	qkey;
	QlSlot	   *s;
	QlLimitQueue *lq;
	bool		found;

	ql_slot_key(&skey, job_id);
	ql_limit_key(&qkey, queue);
	LWLockAcquire(limits->lock, LW_EXCLUSIVE);
	s = hash_search(limit_slots, &skey, HASH_FIND, NULL);
	if (s != NULL && s->pid == 0 && s->lease_until > GetCurrentTimestamp())
	{
		LWLockRelease(limits->lock);
		return QL_SLOT_BUSY;
	}
	if (s != NULL && ql_remove_slot(s, db))
		*lowered = true;
	if (max_running <= 0)
	{
		LWLockRelease(limits->lock);
		return QL_SLOT_FULL;
	}
	lq = hash_search(limit_queues, &qkey, HASH_FIND, NULL);
	if (lq != NULL && ql_live_slots(lq, max_running, db, lowered) >= max_running)
	{
		LWLockRelease(limits->lock);
		return QL_SLOT_FULL;
	}
	if (hash_get_num_entries(limit_slots) >= ql_max_limited_jobs)
		ql_sweep_lapsed(db, lowered);
	if (hash_get_num_entries(limit_slots) >= ql_max_limited_jobs ||
		(OidIsValid(roleid) &&
		 ql_role_slots(roleid) >= Max(ql_max_limited_jobs / 2, 1)))
	{
		LWLockRelease(limits->lock);
		return QL_SLOT_NO_ROOM;
	}
	lq = hash_search(limit_queues, &qkey, HASH_ENTER_NULL, &found);
	if (lq == NULL)
	{
		LWLockRelease(limits->lock);
		return QL_SLOT_NO_ROOM;
	}
	if (!found)
	{
		lq->nslots = 0;
		lq->nleases = 0;
		lq->skipped = false;
	}
	s = hash_search(limit_slots, &skey, HASH_ENTER_NULL, &found);
	if (s == NULL)
	{
		if (lq->nslots == 0)
			(void) hash_search(limit_queues, &qkey, HASH_REMOVE, NULL);
		LWLockRelease(limits->lock);
		return QL_SLOT_NO_ROOM;
	}
	s->queue = lq;
	s->roleid = roleid;
	s->pid = pid;
	s->lease_until = lease_until;
	lq->nslots++;
	if (pid == 0)
		lq->nleases++;
	pg_atomic_fetch_add_u32(&limits->nslots, 1);
	LWLockRelease(limits->lock);
	return QL_SLOT_TAKEN;
}

/*
 * ql_release: free the slot of a job of this database, if it has one.
 * Returns whether the claim frontier moved back.
 */
static bool
ql_release(int64 job_id, QlDatabase *db)
{
	QlSlotKey	key;
	QlSlot	   *s;
	bool		lowered = false;

	ql_slot_key(&key, job_id);
	LWLockAcquire(limits->lock, LW_EXCLUSIVE);
	s = hash_search(limit_slots, &key, HASH_FIND, NULL);
	if (s != NULL)
		lowered = ql_remove_slot(s, db);
	LWLockRelease(limits->lock);
	return lowered;
}

/* ql_database: this database's entry, for the frontier (NULL if none) */
static QlDatabase *
ql_database(void)
{
	return ql_shared != NULL ? ql_my_database() : NULL;
}

/*
 * ql_after_lowered: a released slot moved the frontier back: the jobs a
 * look passed over may run now.  Wake an idle worker of the database for
 * them, which wakes another if it sees more.
 */
static void
ql_after_lowered(void)
{
	ql_wake_another_worker();
}

/* ql_forget_mine: drop a job from the slots this process holds */
static void
ql_forget_mine(int64 job_id)
{
	int			i;

	for (i = 0; i < nmy_slots; i++)
	{
		if (my_slots[i] == job_id)
		{
			my_slots[i] = my_slots[--nmy_slots];
			return;
		}
	}
}

/*
 * ql_limits_release_mine: free every slot this process holds: a worker's
 * once the transaction that ran its jobs has ended and their claims were
 * released, or after an error; any process's when it exits.  With wake,
 * an idle worker is woken for the jobs the release unblocked (a worker
 * going on with its loop looks again itself).  Costs nothing without
 * slots.
 */
void
ql_limits_release_mine(bool wake)
{
	QlDatabase *db;
	bool		lowered = false;
	int			i;

	if (nmy_slots == 0)
		return;
	db = ql_database();
	LWLockAcquire(limits->lock, LW_EXCLUSIVE);
	for (i = 0; i < nmy_slots; i++)
	{
		QlSlotKey	key;
		QlSlot	   *s;

		ql_slot_key(&key, my_slots[i]);
		s = hash_search(limit_slots, &key, HASH_FIND, NULL);
		if (s != NULL && s->pid == MyProcPid && ql_remove_slot(s, db))
			lowered = true;
	}
	nmy_slots = 0;
	LWLockRelease(limits->lock);
	if (lowered && wake)
		ql_after_lowered();
}

/*
 * ql_limits_exit: on_shmem_exit callback of a process that took slots.
 * It runs after the before_shmem_exit callbacks, so after the session's
 * transaction was aborted and its claims released: the job has stopped
 * when its slot is freed.
 */
static void
ql_limits_exit(int code, Datum arg)
{
	if (limits != NULL)
		ql_limits_release_mine(true);
}

/*
 * ql_my_slots_reserve: room for one more slot held by this process, and
 * its release at exit, before the slot is taken (an error here leaves no
 * slot behind).
 */
static void
ql_my_slots_reserve(void)
{
	if (!exit_registered)
	{
		on_shmem_exit(ql_limits_exit, (Datum) 0);
		exit_registered = true;
	}
	if (nmy_slots >= my_slots_size)
	{
		int			size = Max(my_slots_size * 2, 16);

		if (my_slots == NULL)
			my_slots = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * size);
		else
			my_slots = repalloc(my_slots, sizeof(int64) * size);
		my_slots_size = size;
	}
}

/*
 * ql_restricted_load: the backend's set of paused and limited queues, read
 * again if it may be stale (queue.c).  Returns whether there is any.
 */
static bool
ql_restricted_load(const QlCatalog *c)
{
	int			n;
	uint64		version;
	const QlQueue *qs = ql_queues_restricted(c, &n, &version);
	int			i;

	if (version == restricted_version)
		return nrestricted > 0;

	if (restricted != NULL)
		hash_destroy(restricted);
	restricted = NULL;
	if (look_queues != NULL)
		pfree(look_queues);
	look_queues = NULL;
	nrestricted = 0;
	restricted_version = version;
	if (n > 0)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(QlRestricted);
		restricted = hash_create("qlater restricted queues", n, &ctl,
								 HASH_ELEM | HASH_STRINGS);
		look_queues = MemoryContextAlloc(TopMemoryContext, sizeof(QlRestricted *) * n);
		for (i = 0; i < n; i++)
		{
			QlRestricted *r = hash_search(restricted, qs[i].name, HASH_ENTER, NULL);

			r->paused = qs[i].paused;
			r->max_running = qs[i].max_running;
			r->look = 0;
		}
		nrestricted = n;
	}
	return nrestricted > 0;
}

/* ql_restricted_find: a queue's restricted entry, or NULL */
static QlRestricted *
ql_restricted_find(const char *queue)
{
	if (nrestricted == 0 || queue[0] == '\0' || strlen(queue) >= NAMEDATALEN)
		return NULL;
	return hash_search(restricted, queue, HASH_FIND, NULL);
}

/*
 * ql_limits_look_begin: a worker's look begins: whether any queue of the
 * database is paused or limited (its rows must go through
 * ql_limits_filter), reading them again if they may be stale.  The caller
 * has read the claim frontier already (see the file's header).  Caller is
 * in a transaction.
 */
bool
ql_limits_look_begin(const QlCatalog *c)
{
	return ql_restricted_load(c);
}

/*
 * ql_limits_filter: set blocked on the rows of a look (in claim order) of
 * queues that are paused, limited to 0, or full.  For a full queue, the
 * first of its rows is recorded as where its jobs were passed over, under
 * the same lock as the reading "full": its next released slot moves the
 * claim frontier back there.  Takes no lock unless a row is of a queue
 * with a limit above 0.
 */
void
ql_limits_filter(QlLookRow *rows, int n)
{
	int			nlimited = 0;
	bool		lowered = false;
	int			i;

	look_count++;
	for (i = 0; i < n; i++)
	{
		QlRestricted *r = ql_restricted_find(rows[i].queue);

		rows[i].blocked = false;
		rows[i].entry = NULL;
		if (r == NULL)
			continue;
		if (r->paused || r->max_running == 0)
		{
			rows[i].blocked = true;
			continue;
		}
		if (r->max_running < 0)
			continue;
		if (r->look != look_count)
		{
			r->look = look_count;
			r->full = false;
			r->first = rows[i].key;
			look_queues[nlimited++] = r;
		}
		rows[i].entry = r;
	}
	if (nlimited == 0)
		return;

	{
		QlDatabase *db = ql_database();

		LWLockAcquire(limits->lock, LW_EXCLUSIVE);
		for (i = 0; i < nlimited; i++)
		{
			QlRestricted *r = look_queues[i];
			QlLimitKey	qkey;
			QlLimitQueue *lq;

			ql_limit_key(&qkey, r->name);
			lq = hash_search(limit_queues, &qkey, HASH_FIND, NULL);
			if (lq == NULL || ql_live_slots(lq, r->max_running, db, &lowered) < r->max_running)
				continue;
			r->full = true;
			if (!lq->skipped || ql_key_cmp(&r->first, &lq->skipped_from) < 0)
				lq->skipped_from = r->first;
			lq->skipped = true;
		}
		LWLockRelease(limits->lock);
	}
	for (i = 0; i < n; i++)
	{
		if (rows[i].entry != NULL && ((QlRestricted *) rows[i].entry)->full)
			rows[i].blocked = true;
	}
	if (lowered)
		ql_after_lowered();
}

/*
 * ql_limits_admit: whether a worker may run a job it has just claimed
 * (the claim's lock held, its row read again): not if its queue is paused
 * (as read again if a change committed since), nor if its queue has a
 * limit and no slot is left, or the table of slots is full (logged once).
 * A slot taken is the worker's until ql_limits_release_mine.  Returns at
 * once for a queue neither paused nor limited.  Caller is in a
 * transaction.
 */
QlAdmit
ql_limits_admit(const QlCatalog *c, const char *queue, const char *role,
				int64 job_id)
{
	Oid			roleid;
	QlRestricted *r;
	QlSlotResult result;
	bool		lowered = false;

	if (!ql_restricted_load(c) || (r = ql_restricted_find(queue)) == NULL)
		return QL_ADMIT;
	if (r->paused)
		return QL_ADMIT_PAUSED;
	if (r->max_running < 0)
		return QL_ADMIT;
	ql_my_slots_reserve();
	roleid = get_role_oid(role, true);
	if (OidIsValid(roleid) && ql_role_is_admin(roleid))
		roleid = InvalidOid;
	result = ql_take(queue, r->max_running, job_id, MyProcPid, 0,
					 roleid, ql_database(), &lowered);
	if (lowered)
		ql_after_lowered();
	switch (result)
	{
		case QL_SLOT_TAKEN:
			my_slots[nmy_slots++] = job_id;
			no_room_logged = false;
			return QL_ADMIT;
		case QL_SLOT_FULL:
		case QL_SLOT_BUSY:		/* leased, of a queue since turned in-server */
			return QL_ADMIT_FULL;
		case QL_SLOT_NO_ROOM:
			break;
	}
	no_room_wait = true;
	if (!no_room_logged)
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many jobs of queues with a limit are running"),
				 errdetail("Job %lld of queue \"%s\" waits: qlater.max_limited_jobs (%d) jobs of queues with a max_running run or are claimed.",
						   (long long) job_id, queue, ql_max_limited_jobs),
				 errhint("Raise qlater.max_limited_jobs (it takes effect at server start).")));
		no_room_logged = true;
	}
	return QL_ADMIT_NO_ROOM;
}

/*
 * ql_limits_blocked_queues: a text[] of the queues whose jobs no claim
 * takes until the queue changes (paused, or limited to 0), as read again
 * if stale; (Datum) 0 if none.  Caller is in a transaction.
 */
Datum
ql_limits_blocked_queues(const QlCatalog *c)
{
	int			n;
	uint64		version;
	const QlQueue *qs = ql_queues_restricted(c, &n, &version);
	Datum	   *names;
	int			nblocked = 0;
	int			i;

	if (n == 0)
		return (Datum) 0;
	names = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		if (qs[i].paused || qs[i].max_running == 0)
			names[nblocked++] = CStringGetTextDatum(qs[i].name);
	}
	if (nblocked == 0)
		return (Datum) 0;
	return PointerGetDatum(construct_array(names, nblocked, TEXTOID, -1, false,
										   TYPALIGN_INT));
}

/*
 * ql_limits_room_wanted: the longest an idle worker may sleep, at most
 * ms, if it left a job for want of a slot since it was last asked
 */
long
ql_limits_room_wanted(long ms)
{
	if (!no_room_wait)
		return ms;
	no_room_wait = false;
	return Min(ms, QL_NO_ROOM_RETRY_MS);
}

/*
 * What this transaction does to slots at its end, each with the nest level
 * of the (sub)transaction that asked: a subtransaction rolled back takes
 * back what it asked (the row writes it undid), one committed hands it to
 * its parent.
 */
typedef struct QlSlotChange
{
	int64		job_id;
	TimestampTz lease_until;	/* commit_extends: the new end */
	int			nest_level;
} QlSlotChange;

/* ql_release_list: release the slots of a list of QlSlotChange now */
static void
ql_release_list(List *list)
{
	QlDatabase *db = ql_database();
	bool		lowered = false;
	ListCell   *lc;

	foreach(lc, list)
	{
		int64		job_id = ((QlSlotChange *) lfirst(lc))->job_id;

		if (ql_release(job_id, db))
			lowered = true;
		ql_forget_mine(job_id);
	}
	if (lowered)
		ql_after_lowered();
}

/* ql_extend_list: move the ends of the lease slots of a list */
static void
ql_extend_list(List *list)
{
	ListCell   *lc;

	LWLockAcquire(limits->lock, LW_EXCLUSIVE);
	foreach(lc, list)
	{
		QlSlotChange *c = (QlSlotChange *) lfirst(lc);
		QlSlotKey	key;
		QlSlot	   *s;

		ql_slot_key(&key, c->job_id);
		s = hash_search(limit_slots, &key, HASH_FIND, NULL);
		if (s != NULL && s->pid == 0)
			s->lease_until = c->lease_until;
	}
	LWLockRelease(limits->lock);
}

/*
 * ql_limits_xact_callback: releases of slots and lease renewals at commit,
 * leases taken released at abort
 */
static void
ql_limits_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (limits != NULL)
			{
				ql_release_list(commit_releases);
				if (commit_extends != NIL)
					ql_extend_list(commit_extends);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			/* the leases were not written: the jobs are claimable again */
			if (limits != NULL)
				ql_release_list(xact_leases);
			break;
		case XACT_EVENT_PRE_PREPARE:
			/*
			 * The slots this transaction took, renews or gives back move at
			 * its commit or abort, which COMMIT PREPARED and ROLLBACK
			 * PREPARED do not run: a slot would stay taken to the end of a
			 * lease of any length, or end before its renewed lease
			 */
			if (commit_releases != NIL || xact_leases != NIL || commit_extends != NIL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has claimed, renewed or finished jobs of a queue with max_running"),
						 errdetail("qlater takes, moves and gives back such a queue's slots when the transaction commits or rolls back, which COMMIT PREPARED and ROLLBACK PREPARED cannot do.")));
			return;
		case XACT_EVENT_PREPARE:
			/* nothing is left to move (PRE_PREPARE refused it) */
			break;
		default:
			return;
	}
	list_free_deep(commit_releases);
	commit_releases = NIL;
	list_free_deep(xact_leases);
	xact_leases = NIL;
	list_free_deep(commit_extends);
	commit_extends = NIL;
}

/* ql_sub_split: the entries of a list a subtransaction of level asked */
static List *
ql_sub_split(List **list, int level)
{
	List	   *mine = NIL;
	ListCell   *lc;

	foreach(lc, *list)
	{
		QlSlotChange *c = (QlSlotChange *) lfirst(lc);

		if (c->nest_level >= level)
		{
			mine = lappend(mine, c);
			*list = foreach_delete_current(*list, lc);
		}
	}
	return mine;
}

/* ql_sub_lift: hand a committed subtransaction's entries to its parent */
static void
ql_sub_lift(List *list, int level)
{
	ListCell   *lc;

	foreach(lc, list)
	{
		QlSlotChange *c = (QlSlotChange *) lfirst(lc);

		if (c->nest_level >= level)
			c->nest_level = level - 1;
	}
}

/*
 * ql_limits_subxact_callback: a subtransaction rolled back undid the rows
 * of what it asked: its leases are released now, its releases and renewals
 * at commit forgotten; one committed hands them to its parent.
 */
static void
ql_limits_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		List	   *leases = ql_sub_split(&xact_leases, level);
		List	   *releases = ql_sub_split(&commit_releases, level);
		List	   *extends = ql_sub_split(&commit_extends, level);

		MemoryContextSwitchTo(old);
		if (limits != NULL)
			ql_release_list(leases);
		list_free_deep(leases);
		list_free_deep(releases);
		list_free_deep(extends);
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		ql_sub_lift(xact_leases, level);
		ql_sub_lift(commit_releases, level);
		ql_sub_lift(commit_extends, level);
	}
}

/* ql_remember: add a change to one of the lists of this transaction */
static List *
ql_remember(List *list, int64 job_id, TimestampTz lease_until)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	QlSlotChange *c = palloc_object(QlSlotChange);

	if (!xact_callback_registered)
	{
		RegisterXactCallback(ql_limits_xact_callback, NULL);
		RegisterSubXactCallback(ql_limits_subxact_callback, NULL);
		xact_callback_registered = true;
	}
	c->job_id = job_id;
	c->lease_until = lease_until;
	c->nest_level = GetCurrentTransactionNestLevel();
	list = lappend(list, c);
	MemoryContextSwitchTo(old);
	return list;
}

/*
 * ql_slot_take: a consumer claims a job of a queue that runs at most
 * max_running jobs at once: take a slot for it, held by this session
 * (lease_until 0: a session-mode claim) or by a lease until lease_until.
 * A lease's slot taken by a transaction that aborts is released then.
 * Caller holds the job's claim.  Needs qlater preloaded.
 */
QlSlotResult
ql_slot_take(const char *queue, int32 max_running, int64 job_id,
			 TimestampTz lease_until)
{
	QlSlotResult result;
	bool		lowered = false;

	if (limits == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("qlater must be loaded via \"shared_preload_libraries\""),
				 errdetail("Queue \"%s\" has a max_running, which is kept in shared memory.", queue)));
	if (lease_until == 0)
		ql_my_slots_reserve();
	/* the consumer's role (the caller's, not the tables' owner it acts as) */
	result = ql_take(queue, max_running, job_id, lease_until == 0 ? MyProcPid : 0,
					 lease_until,
					 ql_role_is_admin(GetOuterUserId()) ? InvalidOid : GetOuterUserId(),
					 ql_database(), &lowered);
	if (result == QL_SLOT_TAKEN)
	{
		if (lease_until == 0)
			my_slots[nmy_slots++] = job_id;
		else
			xact_leases = ql_remember(xact_leases, job_id, 0);
	}
	if (lowered)
		ql_after_lowered();
	return result;
}

/*
 * ql_slot_release: free the slot of a job now (a session-mode claim given
 * back, or a claim that found its job gone or its lease lapsed), if it has
 * one.  A lease's slot taken by this transaction is no longer released at
 * its abort: by then the slot may be another session's claim of the job.
 */
void
ql_slot_release(int64 job_id)
{
	ListCell   *lc;

	if (limits == NULL || pg_atomic_read_u32(&limits->nslots) == 0)
		return;
	if (ql_release(job_id, ql_database()))
		ql_after_lowered();
	ql_forget_mine(job_id);
	foreach(lc, xact_leases)
	{
		QlSlotChange *c = (QlSlotChange *) lfirst(lc);

		if (c->job_id == job_id)
		{
			xact_leases = foreach_delete_current(xact_leases, lc);
			pfree(c);
		}
	}
}

/*
 * ql_slot_leave_to_holder: this session took the slot of a job whose lease
 * had run out, to count the lapse, but the lease's holder has its row
 * locked (it is finishing or renewing the lease): the slot is the
 * holder's, as a lease slot, and is not this session's to free.  Its end
 * is set until, provisional: the holder's commit frees it (a finish) or
 * moves its end (a renewal), and if the holder rolls back, the next claim
 * that meets the job takes the slot over again.
 */
void
ql_slot_leave_to_holder(int64 job_id, TimestampTz until)
{
	QlSlotKey	key;
	QlSlot	   *s;
	ListCell   *lc;

	if (limits == NULL || pg_atomic_read_u32(&limits->nslots) == 0)
		return;
	ql_slot_key(&key, job_id);
	LWLockAcquire(limits->lock, LW_EXCLUSIVE);
	s = hash_search(limit_slots, &key, HASH_FIND, NULL);
	if (s != NULL)
	{
		if (s->pid != 0)
			s->queue->nleases++;
		s->pid = 0;
		s->lease_until = until;
	}
	LWLockRelease(limits->lock);
	ql_forget_mine(job_id);
	foreach(lc, xact_leases)
	{
		QlSlotChange *c = (QlSlotChange *) lfirst(lc);

		if (c->job_id == job_id)
		{
			xact_leases = foreach_delete_current(xact_leases, lc);
			pfree(c);
		}
	}
}

/*
 * ql_slot_release_at_commit: free the slot of a job, if it has one, once
 * the transaction that finished it (or gave back its lease) commits.  An
 * abort keeps it, as it keeps the claim.  Costs nothing while no slot is
 * taken: no other session can take one for a job this one holds.
 */
void
ql_slot_release_at_commit(int64 job_id)
{
	if (limits == NULL || pg_atomic_read_u32(&limits->nslots) == 0)
		return;
	commit_releases = ql_remember(commit_releases, job_id, 0);
}

/*
 * ql_slot_extend: a lease renewed: its slot counts until the new end once
 * the renewal commits (rolled back, the lease ends when it did)
 */
void
ql_slot_extend(int64 job_id, TimestampTz lease_until)
{
	if (limits == NULL || pg_atomic_read_u32(&limits->nslots) == 0)
		return;
	commit_extends = ql_remember(commit_extends, job_id, lease_until);
}

/* ql_slot_no_room_error: a consumer's claim found the table of slots full */
void
ql_slot_no_room_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("too many jobs of queues with a limit are running"),
			 errdetail("At most qlater.max_limited_jobs (%d) jobs of queues with a max_running run or are claimed at once, half of them at most by one role (but admins).",
					   ql_max_limited_jobs),
			 errhint("Raise qlater.max_limited_jobs (it takes effect at server start), or finish claimed jobs first.")));
}
