/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		Shared state of qlater: the databases served and the worker slots.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_SHMEM_H
#define QLATER_SHMEM_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"

/* at most this many databases are tracked by the launcher */
#define QL_MAX_DATABASES	1024

/* at most this many crashed jobs are carried over a crash-restart */
#define QL_MAX_CRASHED		64

typedef enum QlDbState
{
	QL_DB_FREE = 0,				/* entry unused */
	QL_DB_UNKNOWN,				/* not yet probed: start a worker to look */
	QL_DB_ACTIVE,				/* qlater is installed: keep workers running */
	QL_DB_ABSENT				/* qlater is not installed: no workers */
} QlDbState;

/* a place in the claim order of the in-server workers */
typedef struct QlClaimKey
{
	int32		priority;
	TimestampTz run_at;
	int64		id;
} QlClaimKey;

typedef struct QlDatabase
{
	Oid			dboid;
	QlDbState	state;
	TimestampTz dropping_since;	/* DROP DATABASE began; 0 if not */

	/*
	 * The claim frontier: no ready job lies before it in the claim order,
	 * but jobs of paused or full queues (limits.c), so the workers look from
	 * there (claim.c).  Under frontier_mutex; gen is bumped by every commit
	 * that writes jobs, and whenever the frontier moves back.  A place in
	 * the job table frontier_relid.
	 */
	slock_t		frontier_mutex;
	uint64		frontier_gen;
	QlClaimKey	frontier;
	Oid			frontier_relid;

	/*
	 * When a worker of the database last looked from the start of the claim
	 * order (TimestampTz): one look every qlater.poll_interval, whatever the
	 * number of workers (claim.c).
	 */
	pg_atomic_uint64 looked_from_start;

	/*
	 * The reservation: where the batches under way expect to end, so that
	 * a worker whose look from the frontier finds only claimed jobs looks
	 * on from there (claim.c).  A hint, under frontier_mutex; it holds
	 * while reserved_gen is frontier_gen.
	 */
	uint64		reserved_gen;
	QlClaimKey	reserved;

	/*
	 * Demand, for the launcher (launcher.c).  wanted: ready jobs found no
	 * idle worker here (set by committers and workers, cleared by a worker
	 * whose look found nothing ready).  next_due: the earliest time known
	 * at which work becomes due here (a job's run_at, a schedule's tick),
	 * as a TimestampTz, 0 if none; lowered by committers and by a worker
	 * that leaves, cleared by the launcher once due.
	 */
	pg_atomic_uint32 wanted;
	pg_atomic_uint64 next_due;

	/*
	 * Bumped after the commit of every change to the database's queues or
	 * their grants: backends read the queues again (queue.c).
	 */
	pg_atomic_uint64 queues_gen;

	/*
	 * History (history.c): until when at least each slot of qlater_outcome
	 * holds rows (TimestampTz; 0 unknown, 1 empty), raised by every writer;
	 * and when a worker of the database next looks for slots to empty.
	 */
	pg_atomic_uint64 history_expires_by[16];
	pg_atomic_uint64 history_expire_at;

	/*
	 * Depth of queues (stats.c): when a reader last wanted the background
	 * count, when a worker may next make it, and when the count in
	 * qlater_queue_depth was made (TimestampTz; 0: none)
	 */
	pg_atomic_uint64 depth_read_at;
	pg_atomic_uint64 depth_next_at;
	pg_atomic_uint64 depth_counted_at;

	/* the launcher's own bookkeeping, under lock */
	TimestampTz waiting_since;	/* wants a worker and has none, since */
	TimestampTz last_served;	/* a worker last left or started here */
	bool		starved_logged; /* the long wait is logged */

	/* a worker logged that the extension here waits for its update */
	bool		outdated_logged;
} QlDatabase;

/* why an attempt ended without its process recording it */
typedef enum QlEndKind
{
	QL_END_CRASH = 0,			/* the server crashed while it ran */
	QL_END_TIMEOUT,				/* its worker was ended after its timeout */
	QL_END_CANCEL				/* its worker was ended after a qlater_cancel */
} QlEndKind;

/*
 * How long a handler may go on after its timeout or a committed
 * qlater_cancel interrupted it (a handler that catches query_canceled)
 * before the launcher ends its worker, as PostgreSQL ends a session for
 * idle_in_transaction_session_timeout.
 */
#define QL_OVERRUN_GRACE_MS	5000

/*
 * A job whose attempt ended in a process that could not record it: one
 * that was running when the server crashed, or in a worker that was ended
 * for overrunning its timeout or a cancel.  No worker claims a listed job
 * until a worker of its database has recorded the end (worker.c).
 */
typedef struct QlCrashedJob
{
	Oid			dboid;
	int64		job_id;
	QlEndKind	kind;
	bool		counting;		/* a worker is recording it */
} QlCrashedJob;

/*
 * Listener entries (a session counts once for each queue it listens to):
 * at most this many in the cluster, of which one database holds at most
 * QL_MAX_LISTENERS_PER_DATABASE and one role at most
 * QL_MAX_LISTENERS_PER_ROLE in one database and
 * QL_MAX_LISTENERS_PER_ROLE_CLUSTER in all, so that no role can take them
 * all.
 */
#define QL_MAX_LISTENERS				1024
#define QL_MAX_LISTENERS_PER_DATABASE	256
#define QL_MAX_LISTENERS_PER_ROLE		64
#define QL_MAX_LISTENERS_PER_ROLE_CLUSTER	128

/* a session that called qlater_listen(queue) */
typedef struct QlListener
{
	Oid			dboid;			/* InvalidOid: entry free */
	Oid			roleid;			/* the role that listens */
	pid_t		pid;
	uint64		nonce;			/* of its channel (consumer.c) */
	char		queue[NAMEDATALEN];
} QlListener;

typedef struct QlWorkerSlot
{
	/* set by the launcher under the lock */
	Oid			dboid;			/* InvalidOid: slot free */
	bool		stop_requested; /* leave after the current job */
	bool		left;			/* set by the worker: it left on purpose,
								 * having told the launcher what its
								 * database still needs */
	/* set by the worker itself */
	pid_t		pid;
	Latch	   *latch;
	pg_atomic_uint32 idle;		/* 1 while waiting for work; an enqueuer
								 * clears it when it sets the latch */
	pg_atomic_uint64 job_id;	/* job being run, 0 if none */
	pg_atomic_uint64 job_started;	/* TimestampTz: when the attempt of
									 * job_id began; written before job_id */
	pg_atomic_uint64 cancel_job;	/* job whose attempt must stop */
	pg_atomic_uint64 wake_at;	/* an idle worker's next look on its own
								 * (TimestampTz); 0 while it looks */
	pg_atomic_uint64 busy_since;	/* TimestampTz: when it last went from
									 * idle to running jobs; 0 while idle */

	/*
	 * A job whose handler was interrupted by its timeout or a cancel: if
	 * the worker still runs it QL_OVERRUN_GRACE_MS after overrun_at, the
	 * launcher ends the worker (ending_job, then SIGTERM).
	 */
	pg_atomic_uint64 overrun_job;
	pg_atomic_uint64 overrun_at;	/* TimestampTz */
	pg_atomic_uint32 overrun_kind;	/* QlEndKind */
	pg_atomic_uint64 ending_job;
} QlWorkerSlot;

/*
 * QlShared: one per cluster.
 *
 * lock protects dbs[] (but for the frontier, wanted and next_due),
 * ncrashed/crashed[], listeners[], and each slot's dboid, stop_requested,
 * left and pid.  Latch pointers, idle, job_id and cancel_job are read
 * without the lock (atomics, or a pointer that at worst wakes the wrong
 * process once).  A backend reads its own database's entry without the
 * lock (ql_my_database): an entry is freed only once its database is gone.
 */
typedef struct QlShared
{
	LWLock	   *lock;
	bool		inflight_collected; /* qlater.inflight read since start */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	QlDatabase	dbs[QL_MAX_DATABASES];
	int			ncrashed;
	QlCrashedJob crashed[QL_MAX_CRASHED];
	QlListener	listeners[QL_MAX_LISTENERS];
	pg_atomic_uint32 notify_next;	/* round robin among listeners */
	pg_atomic_uint32 unserved;	/* a database waits for a worker that no
								 * free slot or idle worker could give
								 * (launcher.c): a worker going idle
								 * wakes the launcher */
	uint64		key_seed;		/* of the hash of job keys' locks (api.c),
								 * drawn at start, secret */
	int			nslots;
	QlWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} QlShared;

extern QlShared *ql_shared;
extern const QlClaimKey ql_key_min;

extern void ql_shmem_init(void);
extern QlDatabase *ql_find_database(Oid dboid, bool create);
extern QlDatabase *ql_add_database(Oid dboid);
extern QlDatabase *ql_my_database(void);
extern void ql_database_want(QlDatabase *db);
extern void ql_database_due(QlDatabase *db, TimestampTz due);
extern bool ql_job_crash_pending(int64 job_id);
extern void ql_mark_overrun(QlWorkerSlot *slot, QlEndKind kind);
extern int	ql_key_cmp(const QlClaimKey *a, const QlClaimKey *b);
extern void ql_frontier_get(QlDatabase *db, QlClaimKey *key, uint64 *gen);
extern void ql_frontier_advance(QlDatabase *db, const QlClaimKey *key, uint64 gen);
extern void ql_frontier_lower(QlDatabase *db, const QlClaimKey *key);
extern void ql_frontier_table(QlDatabase *db, Oid relid);

#endif							/* QLATER_SHMEM_H */
