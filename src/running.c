/*-------------------------------------------------------------------------
 *
 * running.c
 *		What runs now: the view qlater_running, and the claim times of
 *		external consumers it shows.
 *
 * A worker's job and the start of its attempt are in the worker's slot
 * (shmem.h).  A consumer's claim leaves no trace of its time in the job
 * table (a session claim is a lock, a lease writes the job's row): each
 * session records its claims in a small array of its own in shared memory,
 * QL_CLAIM_RECORDS entries, written by the session that claims only (a
 * spinlock per session, never contended but by a reader of the view), and
 * read by qlater_running.  Nothing is written to the job table for a
 * session claim; a lease also writes its claim time to the job's row
 * (claimed_at), with the lease itself.
 *
 * A record is a hint, checked by every reader, never the truth:
 *
 *	- a session claim shows only if the lock manager says the session holds
 *	  the job's claim now (pg_locks' data), and the job's row is there and
 *	  holds no lease: a claim given back by pg_advisory_unlock_all() or
 *	  DISCARD ALL, behind qlater's back, leaves a record that shows nothing;
 *	- a lease shows only if the job's row has that lease's token and the
 *	  lease has not run out.
 *
 * Records are forgotten when a claim is released by qlater (at the commit
 * of a finish), when a lease is finished by the session that took it (at
 * commit), and when the session ends; an entry whose claim the session no
 * longer holds (or whose lease has run out) is taken again when the array
 * is full.  A session that holds more session claims than it has entries
 * keeps the others in its own memory, with their times, and flags its
 * array: its claims without an entry show, with started_at NULL, until an
 * entry frees up for them.  (The lock manager does not tell a claim from
 * the brief hold of a job's lock that a keyed enqueue or a cancel takes in
 * its transaction: while a flagged session does that, the job it holds
 * shows as its claim too.  Only jobs that session may enqueue or cancel,
 * and only until its transaction ends.)  A lease that finds no entry, or whose record
 * is lost (its session ended while the lease lasts, or another session
 * extended it), is kept in a table of orphan leases of the cluster,
 * QL_MAX_ORPHAN_LEASES entries, until it would run out; if that table is
 * full too, it is still not lost to the view: until that lease would run
 * out, qlater_running reads the live leases from the job table itself
 * (leases_unlisted_until), the whole backlog of the external queues.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "catalog.h"
#include "qlater.h"
#include "queue.h"
#include "running.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(qlater_running_jobs);

/* one claim a session recorded */
typedef struct QlClaimRecord
{
	int64		job_id;			/* 0: entry free */
	TimestampTz claimed_at;
	TimestampTz lease_until;	/* 0: a session claim */
	pg_uuid_t	token;			/* a lease's */
} QlClaimRecord;

/* the records of one session (of MaxBackends, by backend id) */
typedef struct QlSessionClaims
{
	slock_t		mutex;
	pid_t		pid;			/* 0: no records */
	Oid			dboid;
	int			nused;			/* entries [0, nused) may be in use */
	bool		overflow;		/* holds session claims without an entry */
	QlClaimRecord recs[QL_CLAIM_RECORDS];
} QlSessionClaims;

/*
 * Leases whose records are gone: their sessions ended, or another session
 * extended them, or their sessions' records were full.  At most this many
 * in the cluster; an entry whose lease has run out is taken again.
 */
#define QL_MAX_ORPHAN_LEASES	1024

typedef struct QlOrphanLease
{
	Oid			dboid;			/* InvalidOid: entry free */
	int64		job_id;
	TimestampTz lease_until;
	pg_uuid_t	token;
} QlOrphanLease;

typedef struct QlRunningShared
{
	LWLock	   *orphan_lock;	/* protects orphans[] */
	QlOrphanLease orphans[QL_MAX_ORPHAN_LEASES];

	/*
	 * TimestampTz: until then a live lease may have no record, not even an
	 * orphan's (orphans[] was full): the view reads the job table's live
	 * leases
	 */
	pg_atomic_uint64 leases_unlisted_until;
	QlSessionClaims sessions[FLEXIBLE_ARRAY_MEMBER];
} QlRunningShared;

static QlRunningShared *running = NULL;
static QlSessionClaims *my_claims = NULL;

/* session claims of this session without an entry, with their times */
typedef struct QlUnrecorded
{
	int64		job_id;
	TimestampTz claimed_at;
} QlUnrecorded;

static QlUnrecorded *unrecorded = NULL;	/* in TopMemoryContext */
static int	nunrecorded = 0;
static int	maxunrecorded = 0;

/* leases this session finished, forgotten at commit */
typedef struct QlLeaseFinished
{
	int64		job_id;
	int			nest_level;
} QlLeaseFinished;

static List *finished_leases = NIL; /* in TopMemoryContext */
static bool callbacks_registered = false;

/*
 * The candidates of the view, checked against the job table by one
 * statement.  kind: QL_RUN_WORKER, QL_RUN_SESSION or QL_RUN_LEASE.
 */
#define QL_RUN_WORKER	1
#define QL_RUN_SESSION	2
#define QL_RUN_LEASE	3

/*
 * $1..$5: id, pid, kind, started_at, token of each candidate; $6: read
 * the live leases of the table too; $7: the caller sees every job; $8: the
 * caller's name.  Visibility as qlater_jobs' (and everything for members
 * of pg_read_all_stats).
 */
static const QlStmtDef running_defs[1] = {
	{
		"SELECT DISTINCT ON (r.id) r.id, r.queue, r.handler, r.role, r.attempt, r.pid, "
		"CASE WHEN r.kind OPERATOR(pg_catalog.=) 1 THEN 'worker' ELSE 'consumer' END, "
		"r.started_at, pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) r.started_at, "
		"r.lease_until FROM ("
		"SELECT j.id, j.queue, j.handler, j.role, "
		"j.attempts OPERATOR(pg_catalog.+) 1 AS attempt, c.pid, c.kind, "
		"COALESCE(c.started_at, j.claimed_at) AS started_at, "
		"CASE WHEN c.kind OPERATOR(pg_catalog.=) 3 THEN j.lease_until END AS lease_until "
		"FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
		"pg_catalog.unnest($4), pg_catalog.unnest($5)) AS c(id, pid, kind, started_at, token) "
		"JOIN %1$s.qlater_job j ON j.id OPERATOR(pg_catalog.=) c.id "
		"WHERE NOT j.dead AND CASE WHEN c.kind OPERATOR(pg_catalog.=) 1 THEN true "
		"WHEN c.kind OPERATOR(pg_catalog.=) 2 THEN j.claim_token IS NULL "
		"ELSE j.claim_token OPERATOR(pg_catalog.=) c.token "
		"AND j.lease_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp() END "
		"UNION ALL "
		"SELECT j.id, j.queue, j.handler, j.role, "
		"j.attempts OPERATOR(pg_catalog.+) 1, NULL::pg_catalog.int4, 3, j.claimed_at, "
		"j.lease_until FROM %1$s.qlater_job j "
		"WHERE $6 AND j.external AND NOT j.dead "
		"AND j.lease_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()"
		") r WHERE $7 OR r.role OPERATOR(pg_catalog.=) $8 "
		"OR EXISTS (SELECT FROM %1$s.qlater_queue q "
		"WHERE q.name OPERATOR(pg_catalog.=) r.queue AND q.external "
		"AND (q.owner OPERATOR(pg_catalog.=) $8 "
		"OR EXISTS (SELECT FROM %1$s.qlater_queue_grant g "
		"WHERE g.queue OPERATOR(pg_catalog.=) q.name "
		"AND g.grantee OPERATOR(pg_catalog.=) $8 "
		"AND g.privilege OPERATOR(pg_catalog.=) 'consume'))) "
		"ORDER BY r.id, r.kind",
		8, {INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID,
		UUIDARRAYOID, BOOLOID, BOOLOID, NAMEOID}
	},
};

static QlStmtSet running_stmts = {running_defs, 1, NULL, 0};

/* ql_running_shmem_size: the shared memory of the records */
Size
ql_running_shmem_size(void)
{
	return add_size(offsetof(QlRunningShared, sessions),
					mul_size(MaxBackends, sizeof(QlSessionClaims)));
}

/*
 * ql_running_shmem_startup: create or attach to the records; from the
 * shared memory startup hook, which holds AddinShmemInitLock
 */
void
ql_running_shmem_startup(void)
{
	bool		found;
	int			i;

	running = ShmemInitStruct("qlater claims", ql_running_shmem_size(), &found);
	if (!found)
	{
		memset(running, 0, ql_running_shmem_size());
		running->orphan_lock = &(GetNamedLWLockTranche("qlater claims"))->lock;
		pg_atomic_init_u64(&running->leases_unlisted_until, 0);
		for (i = 0; i < MaxBackends; i++)
			SpinLockInit(&running->sessions[i].mutex);
	}
}

/* ql_leases_unlisted: a live lease may have no record until `until` */
static void
ql_leases_unlisted(TimestampTz until)
{
	uint64		old = pg_atomic_read_u64(&running->leases_unlisted_until);

	while ((TimestampTz) old < until)
	{
		if (pg_atomic_compare_exchange_u64(&running->leases_unlisted_until,
										   &old, (uint64) until))
			break;
	}
}

/*
 * ql_lease_orphan: the lease (id, token) of this database, until `until`,
 * has no record of its session any more: keep it in orphans[], or else
 * let the view read the table's leases until it ends
 */
static void
ql_lease_orphan(int64 id, const pg_uuid_t *token, TimestampTz until)
{
	TimestampTz now = GetCurrentTimestamp();
	int			free = -1;
	int			i;

	LWLockAcquire(running->orphan_lock, LW_EXCLUSIVE);
	for (i = 0; i < QL_MAX_ORPHAN_LEASES; i++)
	{
		QlOrphanLease *o = &running->orphans[i];

		if (o->dboid == MyDatabaseId && o->job_id == id)
		{
			free = i;
			break;
		}
		if (free < 0 && (!OidIsValid(o->dboid) || o->lease_until < now))
			free = i;
	}
	if (free >= 0)
	{
		QlOrphanLease *o = &running->orphans[free];

		/* the same lease, seen by its claimer and an extender: the later end */
		if (o->dboid == MyDatabaseId && o->job_id == id &&
			memcmp(&o->token, token, sizeof(pg_uuid_t)) == 0)
			until = Max(until, o->lease_until);
		o->dboid = MyDatabaseId;
		o->job_id = id;
		o->lease_until = until;
		memcpy(&o->token, token, sizeof(pg_uuid_t));
	}
	LWLockRelease(running->orphan_lock);
	if (free < 0)
		ql_leases_unlisted(until);
}

/* ql_claims_exit: forget this session's records (before_shmem_exit) */
static void
ql_claims_exit(int code, Datum arg)
{
	QlSessionClaims *m = my_claims;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (m == NULL)
		return;
	/* the leases go on without their session: orphans (only we write m) */
	for (i = 0; i < m->nused; i++)
	{
		if (m->recs[i].job_id != 0 && m->recs[i].lease_until > now)
			ql_lease_orphan(m->recs[i].job_id, &m->recs[i].token,
							m->recs[i].lease_until);
	}
	SpinLockAcquire(&m->mutex);
	for (i = 0; i < m->nused; i++)
		m->recs[i].job_id = 0;
	m->nused = 0;
	m->overflow = false;
	m->pid = 0;
	m->dboid = InvalidOid;
	SpinLockRelease(&m->mutex);
	my_claims = NULL;
}

/*
 * ql_claims_xact_callback: forget at commit the leases this session
 * finished; an abort keeps them
 */
static void
ql_claims_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	if (finished_leases == NIL)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (my_claims != NULL)
			{
				foreach(lc, finished_leases)
				{
					int64		id = ((QlLeaseFinished *) lfirst(lc))->job_id;
					int			i;

					SpinLockAcquire(&my_claims->mutex);
					for (i = 0; i < my_claims->nused; i++)
					{
						if (my_claims->recs[i].job_id == id &&
							my_claims->recs[i].lease_until != 0)
							my_claims->recs[i].job_id = 0;
					}
					SpinLockRelease(&my_claims->mutex);
				}
			}
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			list_free_deep(finished_leases);
			finished_leases = NIL;
			break;
		default:
			break;
	}
}

/* ql_claims_subxact_callback: a rolled back finish keeps its lease's record */
static void
ql_claims_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (finished_leases == NIL)
		return;
	foreach(lc, finished_leases)
	{
		QlLeaseFinished *f = (QlLeaseFinished *) lfirst(lc);

		if (f->nest_level < level)
			continue;
		if (event == SUBXACT_EVENT_ABORT_SUB)
		{
			finished_leases = foreach_delete_current(finished_leases, lc);
			pfree(f);
		}
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
			f->nest_level = level - 1;
	}
}

/* ql_claims_attach: this session's records, taken on its first claim */
static QlSessionClaims *
ql_claims_attach(void)
{
	QlSessionClaims *m;

	if (my_claims != NULL)
		return my_claims;
	if (running == NULL || MyBackendId < 1 || MyBackendId > MaxBackends)
		return NULL;
	m = &running->sessions[MyBackendId - 1];
	if (!callbacks_registered)
	{
		before_shmem_exit(ql_claims_exit, (Datum) 0);
		RegisterXactCallback(ql_claims_xact_callback, NULL);
		RegisterSubXactCallback(ql_claims_subxact_callback, NULL);
		callbacks_registered = true;
	}
	SpinLockAcquire(&m->mutex);
	memset(m->recs, 0, sizeof(m->recs));
	m->nused = 0;
	m->overflow = false;
	m->dboid = MyDatabaseId;
	m->pid = MyProcPid;
	SpinLockRelease(&m->mutex);
	my_claims = m;
	return m;
}

/* ql_claim_held: whether this session holds the claim of a job */
static bool
ql_claim_held(int64 id)
{
	LOCKTAG		tag;

	ql_set_job_locktag(&tag, id);
	return LockHeldByMe(&tag, ExclusiveLock);
}

/*
 * ql_claims_put: write a record in a free entry of m, or update the one
 * of the same job; false if none is free
 */
static bool
ql_claims_put(QlSessionClaims *m, int64 id, const pg_uuid_t *token,
			  TimestampTz claimed_at, TimestampTz lease_until)
{
	int			free = -1;
	int			i;
	bool		done = false;

	SpinLockAcquire(&m->mutex);
	for (i = 0; i < m->nused; i++)
	{
		if (m->recs[i].job_id == id)
		{
			free = i;
			break;
		}
		if (m->recs[i].job_id == 0 && free < 0)
			free = i;
	}
	if (free < 0 && m->nused < QL_CLAIM_RECORDS)
		free = m->nused++;
	if (free >= 0)
	{
		QlClaimRecord *r = &m->recs[free];

		r->job_id = id;
		r->claimed_at = claimed_at;
		r->lease_until = lease_until;
		if (token != NULL)
			memcpy(&r->token, token, sizeof(pg_uuid_t));
		else
			memset(&r->token, 0, sizeof(pg_uuid_t));
		done = true;
	}
	SpinLockRelease(&m->mutex);
	return done;
}

/*
 * ql_claims_prune: free the entries of claims this session no longer holds
 * and of leases run out; give freed entries to the claims kept without one
 * (those still held), and clear the overflow flag once none is left.
 * Only this session writes its entries: it reads them without the lock.
 */
static void
ql_claims_prune(QlSessionClaims *m)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;
	int			k = 0;

	for (i = 0; i < m->nused; i++)
	{
		QlClaimRecord *r = &m->recs[i];
		bool		gone;

		if (r->job_id == 0)
			continue;
		gone = r->lease_until == 0 ? !ql_claim_held(r->job_id) : r->lease_until < now;
		if (gone)
		{
			SpinLockAcquire(&m->mutex);
			r->job_id = 0;
			SpinLockRelease(&m->mutex);
		}
	}
	for (i = 0; i < nunrecorded; i++)
	{
		QlUnrecorded *u = &unrecorded[i];

		if (!ql_claim_held(u->job_id))
			continue;
		if (!ql_claims_put(m, u->job_id, NULL, u->claimed_at, 0))
			unrecorded[k++] = *u;
	}
	nunrecorded = k;
	SpinLockAcquire(&m->mutex);
	while (m->nused > 0 && m->recs[m->nused - 1].job_id == 0)
		m->nused--;
	m->overflow = nunrecorded > 0;
	SpinLockRelease(&m->mutex);
}

/*
 * ql_claims_record: this session claimed job id at claimed_at: a session
 * claim (token NULL) or a lease until lease_until.  A session claim that
 * finds no entry is kept in the session's memory (the view shows it
 * without its time); a lease, in the job's row (the view reads the leases
 * of the table until it would run out).
 */
void
ql_claims_record(int64 id, const pg_uuid_t *token, TimestampTz claimed_at,
				 TimestampTz lease_until)
{
	QlSessionClaims *m = ql_claims_attach();

	if (m == NULL)
		return;
	if (token == NULL)
		lease_until = 0;
	if (ql_claims_put(m, id, token, claimed_at, lease_until))
		return;
	ql_claims_prune(m);
	if (ql_claims_put(m, id, token, claimed_at, lease_until))
		return;
	if (token != NULL)
	{
		ql_lease_orphan(id, token, lease_until);
		return;
	}
	if (nunrecorded == maxunrecorded)
	{
		maxunrecorded = Max(64, maxunrecorded * 2);
		unrecorded = unrecorded == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(QlUnrecorded) * maxunrecorded) :
			repalloc(unrecorded, sizeof(QlUnrecorded) * maxunrecorded);
	}
	unrecorded[nunrecorded].job_id = id;
	unrecorded[nunrecorded].claimed_at = claimed_at;
	nunrecorded++;
	SpinLockAcquire(&m->mutex);
	m->overflow = true;
	SpinLockRelease(&m->mutex);
}

/*
 * ql_claims_forget: this session released its session claim of job id
 * (claim.c); its record goes
 */
void
ql_claims_forget(int64 id)
{
	QlSessionClaims *m = my_claims;
	int			i;

	if (m == NULL)
		return;
	for (i = 0; i < m->nused; i++)
	{
		if (m->recs[i].job_id == id && m->recs[i].lease_until == 0)
		{
			SpinLockAcquire(&m->mutex);
			if (nunrecorded > 0)
			{
				/* a claim kept without an entry takes this one */
				nunrecorded--;
				m->recs[i].job_id = unrecorded[nunrecorded].job_id;
				m->recs[i].claimed_at = unrecorded[nunrecorded].claimed_at;
				m->overflow = nunrecorded > 0;
			}
			else
			{
				m->recs[i].job_id = 0;
				while (m->nused > 0 && m->recs[m->nused - 1].job_id == 0)
					m->nused--;
			}
			SpinLockRelease(&m->mutex);
			return;
		}
	}
	for (i = 0; i < nunrecorded; i++)
	{
		if (unrecorded[i].job_id == id)
		{
			unrecorded[i] = unrecorded[--nunrecorded];
			if (nunrecorded == 0)
			{
				SpinLockAcquire(&m->mutex);
				m->overflow = false;
				SpinLockRelease(&m->mutex);
			}
			break;
		}
	}
}

/*
 * ql_claims_time: when this session claimed job id (a session claim), or
 * 0 if it did not record it
 */
TimestampTz
ql_claims_time(int64 id)
{
	QlSessionClaims *m = my_claims;
	int			i;

	if (m == NULL)
		return 0;
	for (i = 0; i < m->nused; i++)
	{
		if (m->recs[i].job_id == id && m->recs[i].lease_until == 0)
			return m->recs[i].claimed_at;
	}
	for (i = 0; i < nunrecorded; i++)
	{
		if (unrecorded[i].job_id == id)
			return unrecorded[i].claimed_at;
	}
	return 0;
}

/*
 * ql_claims_times: a timestamptz[] of ql_claims_time of each of the n jobs
 * ids (NULL where 0)
 */
Datum
ql_claims_times(const int64 *ids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	for (i = 0; i < n; i++)
	{
		TimestampTz t = ql_claims_time(ids[i]);

		elems[i] = TimestampTzGetDatum(t);
		nulls[i] = (t == 0);
	}
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, TIMESTAMPTZOID,
											  sizeof(TimestampTz), FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
}

/*
 * ql_claims_lease_extended: the lease of job id with token now lasts until
 * `until`.  The record of the session that took it follows, if it is this
 * one; else that session's record may be freed before the lease ends:
 * an orphan's entry keeps it.
 */
void
ql_claims_lease_extended(int64 id, const pg_uuid_t *token, TimestampTz until)
{
	QlSessionClaims *m = my_claims;
	int			i;

	if (running == NULL)
		return;
	if (m != NULL)
	{
		for (i = 0; i < m->nused; i++)
		{
			QlClaimRecord *r = &m->recs[i];

			if (r->job_id == id && r->lease_until != 0 &&
				memcmp(&r->token, token, sizeof(pg_uuid_t)) == 0)
			{
				SpinLockAcquire(&m->mutex);
				r->lease_until = until;
				SpinLockRelease(&m->mutex);
				return;
			}
		}
	}
	ql_lease_orphan(id, token, until);
}

/*
 * ql_claims_lease_finished: the lease of job id was finished (completed,
 * failed, given back) in this transaction: its record, if this session
 * has one, goes when the transaction commits
 */
void
ql_claims_lease_finished(int64 id)
{
	MemoryContext old;
	QlLeaseFinished *f;

	if (my_claims == NULL)
		return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	f = palloc(sizeof(QlLeaseFinished));
	f->job_id = id;
	f->nest_level = GetCurrentTransactionNestLevel();
	finished_leases = lappend(finished_leases, f);
	MemoryContextSwitchTo(old);
}

/* a session claim a record names, as the view copied it */
typedef struct QlSeenClaim
{
	pid_t		pid;
	int64		job_id;
	TimestampTz claimed_at;		/* 0: without an entry */
} QlSeenClaim;

static int
ql_seen_cmp(const void *a, const void *b)
{
	const QlSeenClaim *x = (const QlSeenClaim *) a;
	const QlSeenClaim *y = (const QlSeenClaim *) b;

	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	if (x->job_id != y->job_id)
		return x->job_id < y->job_id ? -1 : 1;
	return 0;
}

/* the candidates of the view */
typedef struct QlCandidates
{
	int			n;
	int			max;
	Datum	   *ids;
	Datum	   *pids;
	bool	   *pid_nulls;
	Datum	   *kinds;
	Datum	   *started;
	bool	   *started_nulls;
	Datum	   *tokens;
	bool	   *token_nulls;
	pg_uuid_t  *token_data;
} QlCandidates;

static void
ql_candidate_add(QlCandidates *c, int64 id, pid_t pid, int kind,
				 TimestampTz started, const pg_uuid_t *token)
{
	int			n = c->n;

	if (n == c->max)
	{
		int			max = Max(64, c->max * 2);

		if (c->max == 0)
		{
			c->ids = palloc(sizeof(Datum) * max);
			c->pids = palloc(sizeof(Datum) * max);
			c->pid_nulls = palloc(sizeof(bool) * max);
			c->kinds = palloc(sizeof(Datum) * max);
			c->started = palloc(sizeof(Datum) * max);
			c->started_nulls = palloc(sizeof(bool) * max);
			c->tokens = palloc(sizeof(Datum) * max);
			c->token_nulls = palloc(sizeof(bool) * max);
			c->token_data = palloc(sizeof(pg_uuid_t) * max);
		}
		else
		{
			c->ids = repalloc(c->ids, sizeof(Datum) * max);
			c->pids = repalloc(c->pids, sizeof(Datum) * max);
			c->pid_nulls = repalloc(c->pid_nulls, sizeof(bool) * max);
			c->kinds = repalloc(c->kinds, sizeof(Datum) * max);
			c->started = repalloc(c->started, sizeof(Datum) * max);
			c->started_nulls = repalloc(c->started_nulls, sizeof(bool) * max);
			c->tokens = repalloc(c->tokens, sizeof(Datum) * max);
			c->token_nulls = repalloc(c->token_nulls, sizeof(bool) * max);
			c->token_data = repalloc(c->token_data, sizeof(pg_uuid_t) * max);
		}
		c->max = max;
	}
	c->ids[n] = Int64GetDatum(id);
	c->pids[n] = Int32GetDatum((int32) pid);
	c->pid_nulls[n] = (pid == 0);
	c->kinds[n] = Int32GetDatum(kind);
	c->started[n] = TimestampTzGetDatum(started);
	c->started_nulls[n] = (started == 0);
	if (token != NULL)
		memcpy(&c->token_data[n], token, sizeof(pg_uuid_t));
	else
		memset(&c->token_data[n], 0, sizeof(pg_uuid_t));
	c->token_nulls[n] = (token == NULL);
	c->n++;
}

static ArrayType *
ql_candidate_array(Datum *elems, bool *nulls, int n, Oid type, int len,
				   bool byval, char align)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return construct_md_array(elems, nulls, 1, dims, lbs, type, len, byval, align);
}

/* ql_pid_in: whether pid is one of pids */
static bool
ql_pid_in(const pid_t *pids, int n, pid_t pid)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		if (pids[i] == pid)
			return true;
	}
	return false;
}

/*
 * qlater_running_jobs(): the jobs whose attempt runs now in this database,
 * that the caller may see: in the workers, and claimed by consumers
 * (sessions, leases).  The view qlater_running shows them.
 */
Datum
qlater_running_jobs(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const QlCatalog *cat;
	QlCandidates cand;
	QlSeenClaim *seen = NULL;
	int			nseen = 0;
	int			maxseen = 0;
	pid_t	   *overflow_pids = NULL;
	int			noverflow = 0;
	pid_t	   *worker_pids;
	int			nworker_pids = 0;
	bool		any_session = false;
	bool		fallback;
	bool		see_all;
	char	   *me;
	QlUserSave	save;
	Datum		values[8];
	uint64		r;
	int			i;

	ql_require_preload();
	cat = ql_catalog(false);
	InitMaterializedSRF(fcinfo, 0);
	memset(&cand, 0, sizeof(cand));
	see_all = ql_role_is_admin(GetUserId()) ||
		has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
	me = GetUserNameFromId(GetUserId(), false);

	/* the workers: the job each one runs, and since when */
	worker_pids = palloc(sizeof(pid_t) * Max(ql_shared->nslots, 1));
	for (i = 0; i < ql_shared->nslots; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];
		pid_t		pid = slot->pid;
		uint64		job;
		uint64		since;

		if (pid == 0)
			continue;
		worker_pids[nworker_pids++] = pid;
		if (slot->dboid != MyDatabaseId)
			continue;
		job = pg_atomic_read_u64(&slot->job_id);
		pg_read_barrier();
		since = pg_atomic_read_u64(&slot->job_started);
		pg_read_barrier();
		if (job == 0 || pg_atomic_read_u64(&slot->job_id) != job)
			continue;
		ql_candidate_add(&cand, (int64) job, pid, QL_RUN_WORKER,
						 (TimestampTz) since, NULL);
	}

	/* the consumers' records: leases, and session claims to check */
	fallback = GetCurrentTimestamp() <
		(TimestampTz) pg_atomic_read_u64(&running->leases_unlisted_until);
	for (i = 0; i < MaxBackends; i++)
	{
		QlSessionClaims *m = &running->sessions[i];
		QlClaimRecord recs[QL_CLAIM_RECORDS];
		int			n = 0;
		pid_t		pid;
		bool		overflow;
		int			k;

		if (m->pid == 0)
			continue;
		SpinLockAcquire(&m->mutex);
		pid = m->pid;
		overflow = m->overflow;
		if (pid != 0 && m->dboid == MyDatabaseId)
		{
			n = m->nused;
			memcpy(recs, m->recs, sizeof(QlClaimRecord) * n);
		}
		else
			overflow = false;
		SpinLockRelease(&m->mutex);
		if (overflow)
		{
			if (overflow_pids == NULL)
				overflow_pids = palloc(sizeof(pid_t) * MaxBackends);
			overflow_pids[noverflow++] = pid;
			any_session = true;
		}
		for (k = 0; k < n; k++)
		{
			if (recs[k].job_id == 0)
				continue;
			if (recs[k].lease_until != 0)
			{
				/* the table's leases are read, all of them */
				if (!fallback)
					ql_candidate_add(&cand, recs[k].job_id, 0, QL_RUN_LEASE, 0,
									 &recs[k].token);
				continue;
			}
			if (nseen == maxseen)
			{
				maxseen = Max(64, maxseen * 2);
				seen = seen == NULL ? palloc(sizeof(QlSeenClaim) * maxseen) :
					repalloc(seen, sizeof(QlSeenClaim) * maxseen);
			}
			seen[nseen].pid = pid;
			seen[nseen].job_id = recs[k].job_id;
			seen[nseen].claimed_at = recs[k].claimed_at;
			nseen++;
			any_session = true;
		}
	}

	/* leases whose sessions' records are gone */
	if (!fallback)
	{
		TimestampTz now = GetCurrentTimestamp();

		LWLockAcquire(running->orphan_lock, LW_SHARED);
		for (i = 0; i < QL_MAX_ORPHAN_LEASES; i++)
		{
			QlOrphanLease *o = &running->orphans[i];

			if (o->dboid == MyDatabaseId && o->lease_until > now)
				ql_candidate_add(&cand, o->job_id, 0, QL_RUN_LEASE, 0, &o->token);
		}
		LWLockRelease(running->orphan_lock);
	}

	/*
	 * Session claims: those the lock manager says are held, by a session
	 * that recorded them (or that has claims without an entry)
	 */
	if (any_session)
	{
		LockData   *locks = GetLockStatusData();

		if (nseen > 1)
			qsort(seen, nseen, sizeof(QlSeenClaim), ql_seen_cmp);
		for (i = 0; i < locks->nelements; i++)
		{
			LockInstanceData *l = &locks->locks[i];
			QlSeenClaim key;
			QlSeenClaim *found;

			if (l->locktag.locktag_type != LOCKTAG_ADVISORY ||
				l->locktag.locktag_lockmethodid != USER_LOCKMETHOD ||
				l->locktag.locktag_field1 != MyDatabaseId ||
				l->locktag.locktag_field4 != QLATER_LOCK_SPACE ||
				(l->holdMask & LOCKBIT_ON(ExclusiveLock)) == 0 ||
				ql_pid_in(worker_pids, nworker_pids, l->pid))
				continue;
			key.pid = l->pid;
			key.job_id = (int64) (((uint64) l->locktag.locktag_field2 << 32) |
								  (uint64) l->locktag.locktag_field3);
			found = nseen > 0 ? bsearch(&key, seen, nseen, sizeof(QlSeenClaim),
										ql_seen_cmp) : NULL;
			if (found != NULL)
				ql_candidate_add(&cand, key.job_id, key.pid, QL_RUN_SESSION,
								 found->claimed_at, NULL);
			else if (ql_pid_in(overflow_pids, noverflow, l->pid))
				ql_candidate_add(&cand, key.job_id, key.pid, QL_RUN_SESSION, 0, NULL);
		}
	}

	if (cand.n == 0 && !fallback)
		return (Datum) 0;

	for (i = 0; i < cand.n; i++)
		cand.tokens[i] = UUIDPGetDatum(&cand.token_data[i]);
	values[0] = PointerGetDatum(ql_candidate_array(cand.ids, NULL, cand.n, INT8OID,
												   sizeof(int64), FLOAT8PASSBYVAL,
												   TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(ql_candidate_array(cand.pids, cand.pid_nulls, cand.n,
												   INT4OID, sizeof(int32), true,
												   TYPALIGN_INT));
	values[2] = PointerGetDatum(ql_candidate_array(cand.kinds, NULL, cand.n, INT4OID,
												   sizeof(int32), true, TYPALIGN_INT));
	values[3] = PointerGetDatum(ql_candidate_array(cand.started, cand.started_nulls,
												   cand.n, TIMESTAMPTZOID,
												   sizeof(TimestampTz), FLOAT8PASSBYVAL,
												   TYPALIGN_DOUBLE));
	values[4] = PointerGetDatum(ql_candidate_array(cand.tokens, cand.token_nulls, cand.n,
												   UUIDOID, UUID_LEN, false,
												   TYPALIGN_CHAR));
	values[5] = BoolGetDatum(fallback);
	values[6] = BoolGetDatum(see_all);
	values[7] = DirectFunctionCall1(namein, CStringGetDatum(me));

	ql_become_owner(cat, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (ql_stmt_exec(&running_stmts, cat, 0, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the running jobs");
	for (r = 0; r < SPI_processed; r++)
	{
		Datum		row[10];
		bool		nulls[10];
		int			k;

		for (k = 0; k < 10; k++)
			row[k] = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
								   k + 1, &nulls[k]);
		/* the row's values live in SPI's memory: copied by the tuplestore */
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, row, nulls);
	}
	SPI_finish();
	ql_restore_user(&save);
	return (Datum) 0;
}
