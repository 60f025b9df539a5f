/*-------------------------------------------------------------------------
 *
 * stats.c
 *		Live statistics of queues (qlater_queue_stats, qlater_queue_histograms).
 *
 * Counters.  Each outcome of a job (stats.h: done, failed, dead, timeout,
 * crashed, cancelled, purged) is counted per queue in shared memory, with
 * the time the job waited (from when it was due to its attempt's start)
 * and the time its attempt ran, in histograms of fixed buckets: since the
 * counters began (the server's start, or the queue's creation), and per
 * minute over the last QL_STATS_WINDOW minutes, from which the
 * percentiles are derived.  Nothing is written to a table: a backend notes
 * what its transaction did (ql_stats_note) and adds it to the shared
 * counters when the transaction commits; a rollback, of the transaction or
 * of the subtransaction that noted it, forgets it.  The counters start
 * again from zero after a restart; Prometheus takes counter resets in its
 * stride.
 *
 * The shared table holds QL_STATS_QUEUES queues in all, at most
 * QL_STATS_QUEUES_PER_DB of one database: the outcomes of queues beyond
 * are counted together, in one entry of the database (an empty name),
 * shown as a row whose queue is NULL.  An entry is the queue of its name
 * created at its created_at: a queue dropped and created again starts from
 * zero, and the entries of queues gone are removed by the next reader.
 *
 * Depth.  How many jobs of each queue are ready, scheduled, running and
 * dead is counted from the job table when qlater_queue_stats is read, as
 * long as the table is small (QL_DEPTH_LIVE_BLOCKS): exact and current.
 * A larger table takes too long to count at every read (a second per few
 * million jobs): the reader then shows the count a worker of the database
 * made in the background, at most QL_DEPTH_REFRESH ago (or twenty times
 * as long as the count took, so that counting never takes more than a
 * twentieth of a worker), kept in the unlogged table qlater_queue_depth;
 * counted_at says when.  Workers count only while someone reads; a reader
 * that finds no recent count (a quiet spell, workers busy with long jobs)
 * counts itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "catalog.h"
#include "qlater.h"
#include "queue.h"
#include "shmem.h"
#include "stats.h"
#include "xact.h"

PG_FUNCTION_INFO_V1(qlater_queue_stats);
PG_FUNCTION_INFO_V1(qlater_queue_histograms);

const char *const ql_outcome_names[QL_NUM_OUTCOMES] = {
	[QL_OUTCOME_DONE] = "done",
	[QL_OUTCOME_FAILED] = "failed",
	[QL_OUTCOME_DEAD] = "dead",
	[QL_OUTCOME_TIMEOUT] = "timeout",
	[QL_OUTCOME_CRASHED] = "crashed",
	[QL_OUTCOME_CANCELLED] = "cancelled",
	[QL_OUTCOME_PURGED] = "purged",
};

/*
 * The buckets of the time histograms: their upper bounds in microseconds,
 * then one without a bound
 */
#define QL_STATS_BUCKETS	19
static const int64 bucket_le[QL_STATS_BUCKETS - 1] = {
	1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
	300000000, 900000000, INT64CONST(3600000000)
};

/* the percentiles are of the last this many minutes (the current one too) */
#define QL_STATS_WINDOW		5

/*
 * tracked queues of one owner in a database: no role takes every place of
 * its database
 */
#define QL_STATS_QUEUES_PER_OWNER	64

/* entries beyond QL_STATS_QUEUES for the databases' queues counted together */
#define QL_STATS_OTHERS		64

/* the largest job table (in blocks: about 11,000 jobs) counted at each read */
#define QL_DEPTH_LIVE_BLOCKS	256
/* how old a background count may be before the next */
#define QL_DEPTH_REFRESH	(5 * USECS_PER_SEC)
/* workers count while someone read the depth this recently */
#define QL_DEPTH_READ_WINDOW	(60 * USECS_PER_SEC)
/* a background count older than this (past the workers' pace) is not shown */
#define QL_DEPTH_STALE		(60 * USECS_PER_SEC)

typedef struct QlStatsKey
{
	Oid			dboid;
	char		queue[NAMEDATALEN]; /* "": the queues beyond the bound */
} QlStatsKey;

typedef struct QlTimes
{
	uint64		buckets[QL_STATS_BUCKETS];	/* not cumulative */
	double		sum;			/* microseconds (a double: never wraps) */
} QlTimes;

typedef struct QlWindowMinute
{
	int64		minute;			/* since the epoch */
	uint32		wait[QL_STATS_BUCKETS];
	uint32		run[QL_STATS_BUCKETS];
} QlWindowMinute;

typedef struct QlQueueStats
{
	QlStatsKey	key;			/* hash key */
	slock_t		mutex;			/* protects the rest */
	NameData	owner;			/* of the queue, when its entry was made */
	TimestampTz created_at;		/* of the queue counted */
	TimestampTz since;			/* when counting began */
	uint64		outcomes[QL_NUM_OUTCOMES];
	QlTimes		wait;
	QlTimes		run;
	QlWindowMinute window[QL_STATS_WINDOW];
} QlQueueStats;

/*
 * lock: shared to find entries and add to them (under each entry's
 * mutex), exclusive to add or remove entries
 */
typedef struct QlStatsShared
{
	LWLock	   *lock;
	int			nqueues;		/* entries of named queues */
	int			nothers;		/* entries of queues counted together */
	TimestampTz started_at;		/* the counters began (a start, a restart) */
} QlStatsShared;

static QlStatsShared *stats = NULL;
static HTAB *stats_hash = NULL;

Size
ql_stats_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(QlStatsShared)),
					hash_estimate_size(QL_STATS_QUEUES + QL_STATS_OTHERS,
									   sizeof(QlQueueStats)));
}

void
ql_stats_shmem_request(void)
{
	RequestAddinShmemSpace(ql_stats_shmem_size());
	RequestNamedLWLockTranche("qlater_stats", 1);
}

/* ql_stats_shmem_startup: under AddinShmemInitLock */
void
ql_stats_shmem_startup(void)
{
	HASHCTL		info;
	bool		found;

	stats = ShmemInitStruct("qlater_stats", sizeof(QlStatsShared), &found);
	if (!found)
	{
		stats->lock = &(GetNamedLWLockTranche("qlater_stats"))->lock;
		stats->nqueues = 0;
		stats->nothers = 0;
		stats->started_at = GetCurrentTimestamp();
	}
	info.keysize = sizeof(QlStatsKey);
	info.entrysize = sizeof(QlQueueStats);
	stats_hash = ShmemInitHash("qlater_stats queues",
							   QL_STATS_QUEUES + QL_STATS_OTHERS,
							   QL_STATS_QUEUES + QL_STATS_OTHERS,
							   &info, HASH_ELEM | HASH_BLOBS);
}

/* ---- counting ---- */

/* what a transaction noted, added to the counters when it commits */
typedef struct QlStatsNote
{
	char		queue[NAMEDATALEN];
	NameData	owner;			/* of the queue ("" if none) */
	TimestampTz created_at;		/* of the queue; 0: no queue of this name */
	int8		outcome;		/* QlOutcome */
	int32		count;			/* of jobs with this outcome */
	int64		wait;			/* microseconds; -1: not known */
	int64		run;
	TimestampTz at;
	int			nest_level;		/* of the (sub)transaction that noted it */
} QlStatsNote;

static QlStatsNote *notes = NULL;	/* in TopTransactionContext */
static int	nnotes = 0;
static int	notes_cap = 0;
static bool callbacks_registered = false;

/* ql_bucket: the bucket of a time */
static int
ql_bucket(int64 usecs)
{
	int			i;

	for (i = 0; i < QL_STATS_BUCKETS - 1; i++)
		if (usecs <= bucket_le[i])
			return i;
	return QL_STATS_BUCKETS - 1;
}

/*
 * ql_stats_room: whether a queue of owner may have an entry of its own in
 * this database: fewer than QL_STATS_QUEUES_PER_DB named entries there,
 * fewer than QL_STATS_QUEUES_PER_OWNER of the owner's, fewer than
 * QL_STATS_QUEUES in all.  Caller holds stats->lock.
 */
static bool
ql_stats_room(const char *owner)
{
	HASH_SEQ_STATUS seq;
	QlQueueStats *each;
	int			mine = 0;
	int			owners = 0;

	if (stats->nqueues >= QL_STATS_QUEUES)
		return false;
	hash_seq_init(&seq, stats_hash);
	while ((each = hash_seq_search(&seq)) != NULL)
	{
		if (each->key.dboid != MyDatabaseId || each->key.queue[0] == '\0')
			continue;
		mine++;
		if (strcmp(NameStr(each->owner), owner) == 0)
			owners++;
	}
	return mine < QL_STATS_QUEUES_PER_DB && owners < QL_STATS_QUEUES_PER_OWNER;
}

/*
 * ql_stats_find: the entry that counts the queue of note n in this
 * database, made if need be: its own, or if it may have none
 * (ql_stats_room), the one of the database's queues counted together;
 * NULL if there is no room at all.  Caller holds stats->lock in *mode,
 * which this may turn exclusive.
 */
static QlQueueStats *
ql_stats_find(const QlStatsNote *n, LWLockMode *mode)
{
	QlStatsKey	key;
	QlQueueStats *e;
	bool		found;
	TimestampTz created_at = n->created_at;

	memset(&key, 0, sizeof(key));
	key.dboid = MyDatabaseId;
	strlcpy(key.queue, n->queue, NAMEDATALEN);
	e = hash_search(stats_hash, &key, HASH_FIND, NULL);
	if (e != NULL)
		return e;
	if (*mode != LW_EXCLUSIVE)
	{
		LWLockRelease(stats->lock);
		LWLockAcquire(stats->lock, LW_EXCLUSIVE);
		*mode = LW_EXCLUSIVE;
		e = hash_search(stats_hash, &key, HASH_FIND, NULL);
		if (e != NULL)
			return e;
	}

	/* a named queue, if there is room for it */
	if (key.queue[0] != '\0' && !ql_stats_room(NameStr(n->owner)))
	{
		/* counted with the others (the whole key is hashed) */
		memset(key.queue, 0, NAMEDATALEN);
		created_at = 0;
		e = hash_search(stats_hash, &key, HASH_FIND, NULL);
		if (e != NULL)
			return e;
	}
	if (key.queue[0] == '\0' && stats->nothers >= QL_STATS_OTHERS)
		return NULL;
	e = hash_search(stats_hash, &key, HASH_ENTER_NULL, &found);
	if (e == NULL)
		return NULL;
	if (!found)
	{
		SpinLockInit(&e->mutex);
		e->owner = n->owner;
		e->created_at = created_at;
		e->since = GetCurrentTimestamp();
		memset(e->outcomes, 0, sizeof(e->outcomes));
		memset(&e->wait, 0, sizeof(e->wait));
		memset(&e->run, 0, sizeof(e->run));
		memset(e->window, 0, sizeof(e->window));
		if (key.queue[0] != '\0')
			stats->nqueues++;
		else
			stats->nothers++;
	}
	return e;
}

/* ql_stats_add: add note n to entry e; under e->mutex */
static void
ql_stats_add(QlQueueStats *e, const QlStatsNote *n)
{
	int64		minute = n->at / (60 * USECS_PER_SEC);
	QlWindowMinute *w = &e->window[minute % QL_STATS_WINDOW];

	if (e->key.queue[0] != '\0' && n->created_at != e->created_at)
	{
		/*
		 * The entry counted a queue of the same name dropped since (its
		 * created_at may be later: created_at is a transaction's start):
		 * this one starts anew
		 */
		e->created_at = n->created_at;
		e->owner = n->owner;
		e->since = GetCurrentTimestamp();
		memset(e->outcomes, 0, sizeof(e->outcomes));
		memset(&e->wait, 0, sizeof(e->wait));
		memset(&e->run, 0, sizeof(e->run));
		memset(e->window, 0, sizeof(e->window));
	}
	/* a minute gone by begins anew; a note older than its minute is left out */
	if (w->minute < minute)
	{
		memset(w, 0, sizeof(*w));
		w->minute = minute;
	}
	else if (w->minute > minute)
		w = NULL;
	if (n->outcome >= 0)
		e->outcomes[n->outcome] += n->count;
	if (n->wait >= 0)
	{
		int			b = ql_bucket(n->wait);

		e->wait.buckets[b]++;
		e->wait.sum += (double) n->wait;
		if (w != NULL)
			w->wait[b]++;
	}
	if (n->run >= 0)
	{
		int			b = ql_bucket(n->run);

		e->run.buckets[b]++;
		e->run.sum += (double) n->run;
		if (w != NULL)
			w->run[b]++;
	}
}

/* ql_stats_apply: add what the committed transaction noted */
static void
ql_stats_apply(void)
{
	LWLockMode	mode = LW_SHARED;
	int			i;

	if (stats == NULL || nnotes == 0)
		return;
	LWLockAcquire(stats->lock, mode);
	for (i = 0; i < nnotes; i++)
	{
		QlQueueStats *e = ql_stats_find(&notes[i], &mode);

		if (e == NULL)
			continue;			/* no room: documented */
		SpinLockAcquire(&e->mutex);
		ql_stats_add(e, &notes[i]);
		SpinLockRelease(&e->mutex);
	}
	LWLockRelease(stats->lock);
}

static void
ql_stats_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			ql_stats_apply();
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			notes = NULL;
			nnotes = 0;
			notes_cap = 0;
			break;
		default:
			break;
	}
}

static void
ql_stats_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			i;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* what this subtransaction and those it released noted goes */
		while (nnotes > 0 && notes[nnotes - 1].nest_level >= level)
			nnotes--;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (i = nnotes - 1; i >= 0 && notes[i].nest_level >= level; i--)
			notes[i].nest_level = level - 1;
	}
}

/*
 * ql_stats_note: count, when the current (sub)transaction commits, count
 * jobs of queue with an outcome (QL_OUTCOME_NONE: an attempt began); the
 * time it waited if due and started are known (not 0), the time it ran if
 * started and finished are.  Looks up the queue's row (a transaction with
 * a snapshot).
 */
void
ql_stats_note(const char *queue, QlOutcome outcome, int count,
			  TimestampTz due, TimestampTz started, TimestampTz finished)
{
	if (stats == NULL)
		return;
	ql_stats_note_queue(queue, ql_queue_get(ql_catalog(false), queue), outcome,
						count, due, started, finished);
}

/*
 * ql_stats_note_queue: ql_stats_note, for a caller that has the queue's row
 * at hand (q; NULL: the queue has none)
 */
void
ql_stats_note_queue(const char *queue, const QlQueue *q, QlOutcome outcome,
					int count, TimestampTz due, TimestampTz started,
					TimestampTz finished)
{
	QlStatsNote *n;

	if (stats == NULL)
		return;
	if (!callbacks_registered)
	{
		RegisterXactCallback(ql_stats_xact_callback, NULL);
		RegisterSubXactCallback(ql_stats_subxact_callback, NULL);
		callbacks_registered = true;
	}
	/* outcomes without times in a row: one note (a bulk cancel or purge) */
	if (nnotes > 0 && due == 0 && started == 0 && outcome != QL_OUTCOME_NONE)
	{
		n = &notes[nnotes - 1];
		if (n->wait < 0 && n->run < 0 && n->outcome == (int8) outcome &&
			n->nest_level == GetCurrentTransactionNestLevel() &&
			strcmp(n->queue, queue) == 0 && n->count <= PG_INT32_MAX - count)
		{
			n->count += count;
			return;
		}
	}
	if (nnotes == notes_cap)
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		notes_cap = Max(notes_cap * 2, 16);
		notes = notes == NULL ? palloc(sizeof(QlStatsNote) * notes_cap) :
			repalloc(notes, sizeof(QlStatsNote) * notes_cap);
		MemoryContextSwitchTo(old);
	}
	n = &notes[nnotes++];
	strlcpy(n->queue, queue, NAMEDATALEN);
	namestrcpy(&n->owner, q != NULL ? q->owner : "");
	n->created_at = q != NULL ? q->created_at : 0;
	n->outcome = (int8) outcome;
	n->count = count;
	n->wait = due != 0 && started != 0 ? Max(started - due, 0) : -1;
	n->run = started != 0 && finished != 0 ? Max(finished - started, 0) : -1;
	n->at = finished != 0 ? finished : started != 0 ? started : GetCurrentTimestamp();
	n->nest_level = GetCurrentTransactionNestLevel();
}

/* ---- reading ---- */

static int	ql_name_cmp(const void *a, const void *b);

/* ql_stats_may_see_all: the current role sees every queue's statistics */
static bool
ql_stats_may_see_all(void)
{
	return ql_role_is_admin(GetUserId()) ||
		has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
}

/* a copy of an entry, read under its mutex */
typedef struct QlStatsCopy
{
	char		queue[NAMEDATALEN];
	NameData	owner;
	TimestampTz created_at;
	TimestampTz since;
	uint64		outcomes[QL_NUM_OUTCOMES];
	QlTimes		wait;
	QlTimes		run;
	uint64		wait_window[QL_STATS_BUCKETS];
	uint64		run_window[QL_STATS_BUCKETS];
} QlStatsCopy;

/*
 * ql_stats_copy_all: copies of this database's entries (*n of them), the
 * windows summed over the last QL_STATS_WINDOW minutes; *full: a queue
 * without an entry can have none (the database, or the table, is full)
 */
static QlStatsCopy *
ql_stats_copy_all(int *n, bool *full)
{
	HASH_SEQ_STATUS seq;
	QlQueueStats *e;
	QlStatsCopy *copies;
	int			cap = 16;
	int			named = 0;
	int64		minute = GetCurrentTimestamp() / (60 * USECS_PER_SEC);

	copies = palloc(sizeof(QlStatsCopy) * cap);
	*n = 0;
	LWLockAcquire(stats->lock, LW_SHARED);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		QlStatsCopy *c;
		int			w;
		int			b;

		if (e->key.dboid != MyDatabaseId)
			continue;
		if (*n == cap)
		{
			cap *= 2;
			copies = repalloc(copies, sizeof(QlStatsCopy) * cap);
		}
		c = &copies[(*n)++];
		memset(c, 0, sizeof(*c));
		strlcpy(c->queue, e->key.queue, NAMEDATALEN);
		if (c->queue[0] != '\0')
			named++;
		SpinLockAcquire(&e->mutex);
		c->owner = e->owner;
		c->created_at = e->created_at;
		c->since = e->since;
		memcpy(c->outcomes, e->outcomes, sizeof(c->outcomes));
		c->wait = e->wait;
		c->run = e->run;
		for (w = 0; w < QL_STATS_WINDOW; w++)
		{
			if (e->window[w].minute <= minute - QL_STATS_WINDOW ||
				e->window[w].minute > minute)
				continue;
			for (b = 0; b < QL_STATS_BUCKETS; b++)
			{
				c->wait_window[b] += e->window[w].wait[b];
				c->run_window[b] += e->window[w].run[b];
			}
		}
		SpinLockRelease(&e->mutex);
	}
	*full = named >= QL_STATS_QUEUES_PER_DB || stats->nqueues >= QL_STATS_QUEUES;
	LWLockRelease(stats->lock);
	qsort(copies, *n, sizeof(QlStatsCopy), ql_name_cmp);
	return copies;
}

/*
 * ql_stats_forget: remove the entries of this database's queues that are
 * gone: named queues not among names (created_at[i] each), counted before
 * read_at (an entry made since may be of a queue made since)
 */
static void
ql_stats_forget(char **names, TimestampTz *created_at, int nnames,
				TimestampTz read_at)
{
	HASH_SEQ_STATUS seq;
	QlQueueStats *e;

	LWLockAcquire(stats->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		bool		live = false;
		int			i;

		if (e->key.dboid != MyDatabaseId || e->key.queue[0] == '\0' ||
			e->since >= read_at)
			continue;
		for (i = 0; i < nnames && !live; i++)
			live = strcmp(names[i], e->key.queue) == 0 && created_at[i] == e->created_at;
		if (!live)
		{
			(void) hash_search(stats_hash, &e->key, HASH_REMOVE, NULL);
			stats->nqueues--;
		}
	}
	LWLockRelease(stats->lock);
}

/*
 * ql_stats_forget_databases: remove the entries of databases not among
 * present (n of them): dropped ones (the launcher, as it finds them gone)
 */
void
ql_stats_forget_databases(const Oid *present, int n)
{
	HASH_SEQ_STATUS seq;
	QlQueueStats *e;

	if (stats == NULL)
		return;
	LWLockAcquire(stats->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		bool		found = false;
		int			i;

		for (i = 0; i < n && !found; i++)
			found = present[i] == e->key.dboid;
		if (found)
			continue;
		if (e->key.queue[0] != '\0')
			stats->nqueues--;
		else
			stats->nothers--;
		(void) hash_search(stats_hash, &e->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(stats->lock);
}

/*
 * ql_percentile: the p-th quantile (0..1) of the times in buckets (not
 * cumulative), in microseconds, interpolated within its bucket; -1 if
 * there are none.  The last bucket has no bound: its lower one is given.
 */
static int64
ql_percentile(const uint64 *buckets, double p)
{
	uint64		total = 0;
	double		rank;
	uint64		below = 0;
	int			b;

	for (b = 0; b < QL_STATS_BUCKETS; b++)
		total += buckets[b];
	if (total == 0)
		return -1;
	rank = p * (double) total;
	for (b = 0; b < QL_STATS_BUCKETS; b++)
	{
		double		lower = b == 0 ? 0 : (double) bucket_le[b - 1];

		if (buckets[b] > 0 && (double) (below + buckets[b]) >= rank)
		{
			if (b == QL_STATS_BUCKETS - 1)
				return (int64) lower;
			return (int64) (lower + ((double) bucket_le[b] - lower) *
							((rank - (double) below) / (double) buckets[b]));
		}
		below += buckets[b];
	}
	return bucket_le[QL_STATS_BUCKETS - 2];
}

static Datum
ql_interval_datum(int64 usecs)
{
	Interval   *i = palloc0(sizeof(Interval));

	i->time = usecs;
	return IntervalPGetDatum(i);
}

/* ---- depth ---- */

typedef enum QlStatsStmt
{
	QL_S_QUEUES,				/* the queues, and which the caller sees */
	QL_S_DEPTH,					/* count the jobs of each queue */
	QL_S_CACHED,				/* the background count */
	QL_S_CACHE_CLEAR,
	QL_S_CACHE_FILL,
	QL_NUM_S_STMTS
} QlStatsStmt;

/*
 * The jobs of each queue, at $2: running (claimed by a session, the
 * advisory lock qlater_jobs reads too, or leased), ready (due), scheduled
 * and dead; and when the oldest ready job was due.  $1: the database.
 */
#define QL_DEPTH_SQL \
	"WITH l AS (SELECT (l.classid::pg_catalog.int8 OPERATOR(pg_catalog.<<) 32) " \
	"OPERATOR(pg_catalog.|) l.objid::pg_catalog.int8 AS id FROM pg_catalog.pg_locks l " \
	"WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' " \
	"AND l.objsubid OPERATOR(pg_catalog.=) 29036 AND l.granted " \
	"AND l.database OPERATOR(pg_catalog.=) $1), " \
	"r AS (SELECT j.queue, j.dead, j.run_at, " \
	"(l.id IS NOT NULL OR COALESCE(j.lease_until OPERATOR(pg_catalog.>) $2, false)) " \
	"AS running " \
	"FROM %1$s.qlater_job j LEFT JOIN l ON l.id OPERATOR(pg_catalog.=) j.id) " \
	"SELECT r.queue, " \
	"pg_catalog.count(*) FILTER (WHERE NOT r.dead AND NOT r.running " \
	"AND r.run_at OPERATOR(pg_catalog.<=) $2), " \
	"pg_catalog.count(*) FILTER (WHERE NOT r.dead AND NOT r.running " \
	"AND r.run_at OPERATOR(pg_catalog.>) $2), " \
	"pg_catalog.count(*) FILTER (WHERE NOT r.dead AND r.running), " \
	"pg_catalog.count(*) FILTER (WHERE r.dead), " \
	"pg_catalog.min(r.run_at) FILTER (WHERE NOT r.dead AND NOT r.running " \
	"AND r.run_at OPERATOR(pg_catalog.<=) $2), " \
	"$2 FROM r GROUP BY r.queue"

static const QlStmtDef s_stmt_defs[QL_NUM_S_STMTS] = {
	/* $1: the caller sees all; $2: the caller */
	[QL_S_QUEUES] = {
		"SELECT q.name, q.owner, q.external, q.paused, q.created_at, "
		"($1 OR q.owner OPERATOR(pg_catalog.=) $2 OR EXISTS ("
		"SELECT FROM %1$s.qlater_queue_grant g WHERE g.queue OPERATOR(pg_catalog.=) q.name "
		"AND g.grantee OPERATOR(pg_catalog.=) $2 "
		"AND g.privilege OPERATOR(pg_catalog.=) 'consume')) "
		"FROM %1$s.qlater_queue q ORDER BY q.name",
		2, {BOOLOID, NAMEOID}
	},
	[QL_S_DEPTH] = {
		QL_DEPTH_SQL,
		2, {OIDOID, TIMESTAMPTZOID}
	},
	[QL_S_CACHED] = {
		"SELECT queue, ready, scheduled, running, dead, oldest_ready, counted_at "
		"FROM %1$s.qlater_queue_depth",
		0, {InvalidOid}
	},
	[QL_S_CACHE_CLEAR] = {
		"DELETE FROM %1$s.qlater_queue_depth",
		0, {InvalidOid}
	},
	[QL_S_CACHE_FILL] = {
		"INSERT INTO %1$s.qlater_queue_depth (queue, ready, scheduled, running, dead, "
		"oldest_ready, counted_at) " QL_DEPTH_SQL,
		2, {OIDOID, TIMESTAMPTZOID}
	},
};

static QlStmtSet s_stmts = {s_stmt_defs, QL_NUM_S_STMTS, NULL, 0};

/* a queue's depth, as counted */
typedef struct QlDepth
{
	char		queue[NAMEDATALEN];
	int64		ready;
	int64		scheduled;
	int64		running;
	int64		dead;
	TimestampTz oldest_ready;	/* 0: none ready */
	TimestampTz counted_at;
} QlDepth;

/* ql_depth_big: whether the job table is too large to count at each read */
static bool
ql_depth_big(const QlCatalog *c)
{
	Relation	rel = table_open(c->job_relid, AccessShareLock);
	bool		big = RelationGetNumberOfBlocks(rel) > QL_DEPTH_LIVE_BLOCKS;

	table_close(rel, AccessShareLock);
	return big;
}

/*
 * ql_depth_read: the rows of the last SPI result, a QL_DEPTH_SQL's or
 * QL_S_CACHED's, as QlDepth (*n of them)
 */
static QlDepth *
ql_depth_read(int *n)
{
	QlDepth    *d = palloc0(sizeof(QlDepth) * Max(SPI_processed, 1));
	uint64		i;

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		v;

		strlcpy(d[i].queue, TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull)),
				NAMEDATALEN);
		d[i].ready = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
		d[i].scheduled = DatumGetInt64(SPI_getbinval(row, desc, 3, &isnull));
		d[i].running = DatumGetInt64(SPI_getbinval(row, desc, 4, &isnull));
		d[i].dead = DatumGetInt64(SPI_getbinval(row, desc, 5, &isnull));
		v = SPI_getbinval(row, desc, 6, &isnull);
		d[i].oldest_ready = isnull ? 0 : DatumGetTimestampTz(v);
		d[i].counted_at = DatumGetTimestampTz(SPI_getbinval(row, desc, 7, &isnull));
	}
	*n = (int) SPI_processed;
	qsort(d, *n, sizeof(QlDepth), ql_name_cmp);
	return d;
}

/*
 * ql_depth_ask_worker: wake a worker of the database to count the depth
 * (its loop does, ql_stats_depth_refresh_due), or if it has none, ask the
 * launcher for one
 */
static void
ql_depth_ask_worker(QlDatabase *db)
{
	int			i;

	for (i = 0; i < ql_shared->nslots; i++)
	{
		QlWorkerSlot *slot = &ql_shared->slots[i];
		Latch	   *latch = slot->latch;

		if (slot->dboid == MyDatabaseId && slot->pid != 0 && latch != NULL)
		{
			SetLatch(latch);
			return;
		}
	}
	ql_database_want(db);
}

/*
 * ql_depth_get: the depth of every queue with jobs (*n of them), counted
 * now; or if the table is large, the background count if there is one
 * recent (else a worker is asked to make it, and this read counts).
 * *counted_at: when.  Caller is connected to SPI, acting as the owner.
 */
static QlDepth *
ql_depth_get(const QlCatalog *c, int *n, TimestampTz *counted_at)
{
	TimestampTz now = GetCurrentTimestamp();
	Datum		values[2];

	QlDatabase *db = ql_shared != NULL ? ql_my_database() : NULL;

	*counted_at = now;
	if (db != NULL && ql_depth_big(c))
	{
		/* workers count while someone reads */
		pg_atomic_write_u64(&db->depth_read_at, (uint64) now);
		*counted_at = (TimestampTz) pg_atomic_read_u64(&db->depth_counted_at);
		/* stale: older than the workers' pace, and a minute more */
		if (*counted_at != 0 &&
			now - *counted_at <= QL_DEPTH_STALE +
			((TimestampTz) pg_atomic_read_u64(&db->depth_next_at) - *counted_at))
		{
			if (ql_stmt_exec(&s_stmts, c, QL_S_CACHED, NULL, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read the depth of queues");
			return ql_depth_read(n);
		}
		/*
		 * None recent (a quiet spell, or workers busy with long jobs): a
		 * worker of the database is asked for one, and this read counts
		 */
		ql_depth_ask_worker(db);
		*counted_at = now;
	}
	values[0] = ObjectIdGetDatum(MyDatabaseId);
	values[1] = TimestampTzGetDatum(now);
	if (ql_stmt_exec(&s_stmts, c, QL_S_DEPTH, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not count the jobs of queues");
	return ql_depth_read(n);
}

/*
 * ql_stats_depth_refresh_due: in a worker's loop, outside a transaction:
 * count the depth of the database's queues into qlater_queue_depth if
 * someone read it lately, the job table is large and the last count is
 * due for renewal; one worker of the database at a time.
 */
void
ql_stats_depth_refresh_due(void)
{
	QlDatabase *db = ql_shared != NULL ? ql_my_database() : NULL;
	uint64		read_at;
	TimestampTz now;
	uint64		next;
	const QlCatalog *c;
	QlUserSave	save;
	Datum		values[2];
	TimestampTz took;

	/* after every job: no clock read while nobody ever read the depth */
	if (db == NULL || (read_at = pg_atomic_read_u64(&db->depth_read_at)) == 0)
		return;
	now = GetCurrentTimestamp();
	if ((uint64) now > read_at + QL_DEPTH_READ_WINDOW)
		return;
	next = pg_atomic_read_u64(&db->depth_next_at);
	if ((uint64) now < next ||
		!pg_atomic_compare_exchange_u64(&db->depth_next_at, &next,
										(uint64) (now + QL_DEPTH_REFRESH)))
		return;

	ql_xact_begin();
	c = ql_catalog(true);
	if (c == NULL || !c->current || !ql_depth_big(c))
	{
		ql_xact_commit();
		return;
	}
	values[0] = ObjectIdGetDatum(MyDatabaseId);
	values[1] = TimestampTzGetDatum(now);
	ql_become_owner(c, &save);
	if (ql_stmt_exec(&s_stmts, c, QL_S_CACHE_CLEAR, NULL, NULL, false, 0) != SPI_OK_DELETE ||
		ql_stmt_exec(&s_stmts, c, QL_S_CACHE_FILL, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not count the jobs of queues");
	ql_restore_user(&save);
	ql_xact_commit();
	pg_atomic_write_u64(&db->depth_counted_at, (uint64) now);
	pgstat_report_stat(false);

	/* counting takes a twentieth of a worker at most */
	took = GetCurrentTimestamp() - now;
	if (took * 20 > QL_DEPTH_REFRESH)
		pg_atomic_write_u64(&db->depth_next_at, (uint64) (now + took * 20));
}

/* ---- the SQL functions ---- */

/* sort and search QlDepth and QlStatsCopy by queue name (both begin with it) */
static int
ql_name_cmp(const void *a, const void *b)
{
	return strcmp((const char *) a, (const char *) b);
}

/* ql_find_depth: the depth of queue among d (n of them, sorted), or NULL */
static QlDepth *
ql_find_depth(QlDepth *d, int n, const char *queue)
{
	return n == 0 ? NULL : bsearch(queue, d, n, sizeof(QlDepth), ql_name_cmp);
}

/*
 * ql_find_copy: the counters of queue (created_at) among s (n of them,
 * sorted; the entry of the queues counted together: queue ""), or NULL
 */
static QlStatsCopy *
ql_find_copy(QlStatsCopy *s, int n, const char *queue, TimestampTz created_at)
{
	QlStatsCopy *c = n == 0 ? NULL :
		bsearch(queue, s, n, sizeof(QlStatsCopy), ql_name_cmp);

	if (c == NULL || (queue[0] != '\0' && c->created_at != created_at))
		return NULL;
	return c;
}

/* ql_owner_full: whether owner has as many entries among s as it may */
static bool
ql_owner_full(const QlStatsCopy *s, int n, const char *owner)
{
	int			count = 0;
	int			i;

	for (i = 0; i < n; i++)
		if (s[i].queue[0] != '\0' && strcmp(NameStr(s[i].owner), owner) == 0)
			count++;
	return count >= QL_STATS_QUEUES_PER_OWNER;
}

#define QL_STATS_COLS	24

/*
 * ql_stats_row: one row of qlater_queue_stats: queue (NULL: the queues
 * counted together), its depth (NULL: none shown), its counters (NULL:
 * none kept; zero: none yet)
 */
static void
ql_stats_row(Tuplestorestate *ts, TupleDesc desc, const char *queue,
			 const char *owner, bool external, bool paused, bool show_depth,
			 const QlDepth *d, const QlStatsCopy *s, bool counted,
			 TimestampTz counted_at, TimestampTz since)
{
	Datum		values[QL_STATS_COLS];
	bool		nulls[QL_STATS_COLS];
	int			i;

	memset(nulls, 0, sizeof(nulls));
	values[0] = queue != NULL ? CStringGetTextDatum(queue) : (Datum) 0;
	nulls[0] = queue == NULL;
	values[1] = owner != NULL ? DirectFunctionCall1(namein, CStringGetDatum(owner)) : (Datum) 0;
	nulls[1] = owner == NULL;
	values[2] = BoolGetDatum(external);
	values[3] = BoolGetDatum(paused);
	nulls[2] = nulls[3] = queue == NULL;
	values[4] = Int64GetDatum(d != NULL ? d->ready : 0);
	values[5] = Int64GetDatum(d != NULL ? d->scheduled : 0);
	values[6] = Int64GetDatum(d != NULL ? d->running : 0);
	values[7] = Int64GetDatum(d != NULL ? d->dead : 0);
	values[8] = ql_interval_datum(d != NULL ? counted_at - d->oldest_ready : 0);
	for (i = 4; i <= 7; i++)
		nulls[i] = !show_depth;
	nulls[8] = !show_depth || d == NULL || d->oldest_ready == 0;
	for (i = 0; i < QL_NUM_OUTCOMES; i++)
	{
		values[9 + i] = Int64GetDatum(s != NULL ? (int64) s->outcomes[i] : 0);
		nulls[9 + i] = !counted;
	}
	/* wait_p50 .. run_p99 */
	for (i = 0; i < 6; i++)
	{
		static const double ps[3] = {0.5, 0.95, 0.99};
		int64		v = s == NULL ? -1 :
			ql_percentile(i < 3 ? s->wait_window : s->run_window, ps[i % 3]);

		values[16 + i] = ql_interval_datum(v);
		nulls[16 + i] = v < 0;
	}
	values[22] = TimestampTzGetDatum(s != NULL ? s->since : Max(since, stats->started_at));
	nulls[22] = !counted;
	values[23] = TimestampTzGetDatum(counted_at);
	nulls[23] = !show_depth;
	tuplestore_putvalues(ts, desc, values, nulls);
}

/*
 * qlater_queue_stats() returns setof record: the queues the caller may
 * see (its own, those it may consume; every queue for admins and members
 * of pg_read_all_stats) with their depth and counters; the row of the
 * queues counted together (queue NULL) for those who see every queue.
 */
Datum
qlater_queue_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const QlCatalog *c = ql_catalog(false);
	bool		all = ql_stats_may_see_all();
	QlUserSave	save;
	Datum		values[2];
	QlDepth    *depth;
	int			ndepth;
	QlStatsCopy *copies;
	int			ncopies;
	bool		full;
	char	  **names;
	TimestampTz *created;
	bool		forget = false;
	uint64		nqueues;
	uint64		i;
	int			k;
	bool	   *shown;
	bool	   *live;
	bool		counted;
	TimestampTz counted_at;
	TimestampTz read_at;

	/* the counters live in shared memory */
	ql_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	read_at = GetCurrentTimestamp();
	copies = ql_stats_copy_all(&ncopies, &full);

	values[0] = BoolGetDatum(all);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ndepth = 0;
	depth = ql_depth_get(c, &ndepth, &counted_at);
	counted = depth != NULL;
	shown = palloc0(sizeof(bool) * Max(ndepth, 1));
	live = palloc0(sizeof(bool) * Max(ncopies, 1));
	/*
	 * The queues as committed now, whatever the caller's snapshot: the
	 * entries of those not among them are forgotten below (an entry made
	 * since read_at is left alone: its queue may be newer than this read)
	 */
	if (ql_stmt_exec_latest(&s_stmts, c, QL_S_QUEUES, values, NULL, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the queues");
	nqueues = SPI_processed;
	names = palloc(sizeof(char *) * Max(nqueues, 1));
	created = palloc(sizeof(TimestampTz) * Max(nqueues, 1));
	for (i = 0; i < nqueues; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *name = TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull));
		QlDepth    *d = ql_find_depth(depth, ndepth, name);
		QlStatsCopy *s;
		char	   *owner;

		names[i] = name;
		created[i] = DatumGetTimestampTz(SPI_getbinval(row, desc, 5, &isnull));
		if (d != NULL)
			shown[d - depth] = true;
		s = ql_find_copy(copies, ncopies, name, created[i]);
		if (s != NULL)
			live[s - copies] = true;
		if (!DatumGetBool(SPI_getbinval(row, desc, 6, &isnull)))
			continue;
		owner = NameStr(*DatumGetName(SPI_getbinval(row, desc, 2, &isnull)));
		/* no entry: none yet (zero), or none to be had (NULL) */
		ql_stats_row(rsinfo->setResult, rsinfo->setDesc, name, owner,
					 DatumGetBool(SPI_getbinval(row, desc, 3, &isnull)),
					 DatumGetBool(SPI_getbinval(row, desc, 4, &isnull)),
					 counted, d, s,
					 s != NULL || (!full && !ql_owner_full(copies, ncopies, owner)),
					 counted_at, created[i]);
	}
	/* jobs of queues without a row: for those who see all */
	for (k = 0; all && k < ndepth; k++)
	{
		if (!shown[k])
			ql_stats_row(rsinfo->setResult, rsinfo->setDesc, depth[k].queue, NULL,
						 false, false, true, &depth[k], NULL, false, counted_at, 0);
	}
	/* the queues counted together */
	if (all)
	{
		QlStatsCopy *s = ql_find_copy(copies, ncopies, "", 0);

		if (s != NULL)
			ql_stats_row(rsinfo->setResult, rsinfo->setDesc, NULL, NULL, false,
						 false, false, NULL, s, true, counted_at, 0);
	}
	/* entries of queues gone */
	for (k = 0; k < ncopies && !forget; k++)
		forget = !live[k] && copies[k].queue[0] != '\0';
	if (forget)
		ql_stats_forget(names, created, (int) nqueues, read_at);
	SPI_finish();
	ql_restore_user(&save);
	return (Datum) 0;
}

/*
 * qlater_queue_histograms() returns setof record: per queue the caller may
 * see (as qlater_queue_stats), the wait and run times since the counters
 * began, as Prometheus histograms: upper bounds in seconds, cumulative
 * counts, the sum in seconds, the count
 */
Datum
qlater_queue_histograms(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const QlCatalog *c = ql_catalog(false);
	bool		all = ql_stats_may_see_all();
	QlUserSave	save;
	Datum		values[2];
	QlStatsCopy *copies;
	int			ncopies;
	bool		full;
	Datum		le[QL_STATS_BUCKETS];
	Datum		le_array;
	uint64		i;
	int			b;

	/* the counters live in shared memory */
	ql_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	copies = ql_stats_copy_all(&ncopies, &full);
	for (b = 0; b < QL_STATS_BUCKETS; b++)
		le[b] = Float8GetDatum(b < QL_STATS_BUCKETS - 1 ?
							   (double) bucket_le[b] / USECS_PER_SEC : get_float8_infinity());
	le_array = PointerGetDatum(construct_array(le, QL_STATS_BUCKETS, FLOAT8OID, 8,
											   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));

	values[0] = BoolGetDatum(all);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (ql_stmt_exec(&s_stmts, c, QL_S_QUEUES, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the queues");
	for (i = 0; i <= SPI_processed; i++)
	{
		QlStatsCopy *s;
		const char *queue = NULL;
		int			kind;

		if (i < SPI_processed)
		{
			HeapTuple	row = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;

			if (!DatumGetBool(SPI_getbinval(row, desc, 6, &isnull)))
				continue;
			queue = TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull));
			s = ql_find_copy(copies, ncopies, queue,
							 DatumGetTimestampTz(SPI_getbinval(row, desc, 5, &isnull)));
		}
		else
			s = all ? ql_find_copy(copies, ncopies, "", 0) : NULL;
		if (s == NULL)
			continue;
		for (kind = 0; kind < 2; kind++)
		{
			const QlTimes *t = kind == 0 ? &s->wait : &s->run;
			Datum		counts[QL_STATS_BUCKETS];
			Datum		row[6];
			bool		nulls[6] = {false, false, false, false, false, false};
			uint64		cum = 0;

			for (b = 0; b < QL_STATS_BUCKETS; b++)
			{
				cum += t->buckets[b];
				counts[b] = Int64GetDatum((int64) cum);
			}
			row[0] = queue != NULL ? CStringGetTextDatum(queue) : (Datum) 0;
			nulls[0] = queue == NULL;
			row[1] = CStringGetTextDatum(kind == 0 ? "wait" : "run");
			row[2] = le_array;
			row[3] = PointerGetDatum(construct_array(counts, QL_STATS_BUCKETS, INT8OID, 8,
													 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
			row[4] = Float8GetDatum(t->sum / USECS_PER_SEC);
			row[5] = Int64GetDatum((int64) cum);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, row, nulls);
		}
	}
	SPI_finish();
	ql_restore_user(&save);
	return (Datum) 0;
}
