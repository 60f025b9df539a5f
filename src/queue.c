/*-------------------------------------------------------------------------
 *
 * queue.c
 *		Queues as objects: every queue is a row of qlater_queue with an
 *		owner; the functions that create, change, pause, hand over, drop
 *		and grant them; the checks of who may put jobs into a queue and
 *		who may consume it; and the per-backend cache of queue rows.
 *
 * The model (README, "Who may do what"):
 *	- A queue's owner, superusers and members of qlater_admin may change,
 *	  pause, limit, grant, hand over and drop it; nobody else.  'default'
 *	  belongs to the extension's owner, and every role may put jobs into
 *	  it.
 *	- Naming a queue that does not exist (a registration, an enqueue, a
 *	  schedule) creates it, in-server, for the naming role.
 *	- Putting jobs into a queue (enqueue, register a handler into it,
 *	  schedule into it) needs the 'enqueue' privilege unless the role owns
 *	  the queue, is an admin, or the queue is in-server and is 'default' or
 *	  the queue the handler was registered into by its owner.  An external
 *	  queue's jobs are run by its consumers: every enqueue into it needs
 *	  the privilege.
 *	- Consuming an external queue (claim, see its jobs, listen) needs the
 *	  'consume' privilege, or ownership, or admin.
 *	- A queue's min_priority (set by admins) bounds the priorities of the
 *	  jobs non-admins put into it; a queue created by a role starts with
 *	  the min_priority of 'default'.
 * Roles are compared by name, as jobs store them.
 *
 * A queue's name is locked (an advisory lock in qlater's queue key space,
 * on a hash of the name: a collision only makes two queues wait on each
 * other): every enqueue, registration and schedule holds it in share mode
 * until its transaction ends, a drop and a change of kind exclusively,
 * and both check the queue after they have the lock.  So no job lands in
 * a queue dropped, or turned external or in-server, under its enqueue; a
 * drop counts the jobs that every enqueue before it committed.
 *
 * The cache of queue rows is dropped on relcache invalidation of
 * qlater_queue or qlater_queue_grant (every function here that writes them
 * sends one) and when the database's queue generation in shared memory
 * moves (bumped after the commit of such a change, before anything it
 * unblocks is announced: qlater.c), so that a worker sees a pause or a
 * resume from the commit on, not from its next transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "api.h"
#include "catalog.h"
#include "qlater.h"
#include "queue.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(qlater_create_queue);
PG_FUNCTION_INFO_V1(qlater_alter_queue);
PG_FUNCTION_INFO_V1(qlater_drop_queue);
PG_FUNCTION_INFO_V1(qlater_pause_queue);
PG_FUNCTION_INFO_V1(qlater_resume_queue);
PG_FUNCTION_INFO_V1(qlater_grant_queue);
PG_FUNCTION_INFO_V1(qlater_revoke_queue);

typedef enum QlQueueStmt
{
	QL_Q_GET,					/* a queue's row */
	QL_Q_LOCK,					/* the same, locking it */
	QL_Q_CREATE,
	QL_Q_ALTER,
	QL_Q_PAUSE,
	QL_Q_OTHERS_USE,			/* do roles other than $2 use queue $1 */
	QL_Q_MOVE_JOBS,				/* a queue's jobs change hands */
	QL_Q_IN_USE,				/* what still names queue $1 */
	QL_Q_DROP,
	QL_Q_GRANT,
	QL_Q_REVOKE,
	QL_Q_HAS_GRANT,
	QL_Q_RESTRICTED,			/* the queues paused or limited */
	QL_Q_MAX_KEEP,				/* the longest keep_history */
	QL_NUM_Q_STMTS
} QlQueueStmt;

#define QL_QUEUE_COLUMNS \
	"owner, external, paused, COALESCE(max_running, -1), min_priority, " \
	"batch_size, (extract(epoch FROM batch_delay) " \
	"OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8, " \
	"(extract(epoch FROM keep_history) " \
	"OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8, history_args, created_at"

static const QlStmtDef q_stmt_defs[QL_NUM_Q_STMTS] = {
	[QL_Q_GET] = {
		"SELECT " QL_QUEUE_COLUMNS " FROM %1$s.qlater_queue "
		"WHERE name OPERATOR(pg_catalog.=) $1",
		1, {TEXTOID}
	},
	[QL_Q_LOCK] = {
		"SELECT " QL_QUEUE_COLUMNS " FROM %1$s.qlater_queue "
		"WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
		1, {TEXTOID}
	},
	/*
	 * A new queue takes the min_priority of 'default'.  Its created_at is
	 * the clock's: the history shows a queue's owner the outcomes finished
	 * since (a transaction begun before a queue of the name was dropped
	 * must not date its new queue before that queue's outcomes).
	 */
	[QL_Q_CREATE] = {
		"INSERT INTO %1$s.qlater_queue (name, external, owner, batch_size, batch_delay, min_priority, "
		"created_at) "
		"VALUES ($1, $2, $3, COALESCE($4, 1), COALESCE($5, '20 ms'), "
		"COALESCE((SELECT d.min_priority FROM %1$s.qlater_queue d "
		"WHERE d.name OPERATOR(pg_catalog.=) 'default'), -32768), pg_catalog.clock_timestamp()) "
		"ON CONFLICT (name) DO NOTHING",
		5, {TEXTOID, BOOLOID, NAMEOID, INT4OID, INTERVALOID}
	},
	/* NULL: unchanged; max_running below 0: no limit; external: no batches */
	[QL_Q_ALTER] = {
		"UPDATE %1$s.qlater_queue SET "
		"external = COALESCE($2, external), "
		"batch_size = CASE WHEN COALESCE($2, external) THEN 1 "
		"ELSE COALESCE($3, batch_size) END, "
		"batch_delay = COALESCE($4, batch_delay), "
		"max_running = CASE WHEN $5 IS NULL THEN max_running "
		"WHEN $5 OPERATOR(pg_catalog.<) 0 THEN NULL ELSE $5 END, "
		"min_priority = COALESCE($6, min_priority), "
		"owner = COALESCE($7, owner), "
		"keep_history = COALESCE($8, keep_history), "
		"history_args = COALESCE($9, history_args) "
		"WHERE name OPERATOR(pg_catalog.=) $1",
		9, {TEXTOID, BOOLOID, INT4OID, INTERVALOID, INT4OID, INT4OID, NAMEOID,
		INTERVALOID, BOOLOID}
	},
	[QL_Q_PAUSE] = {
		"UPDATE %1$s.qlater_queue SET paused = $2 "
		"WHERE name OPERATOR(pg_catalog.=) $1 AND paused OPERATOR(pg_catalog.<>) $2",
		2, {TEXTOID, BOOLOID}
	},
	/* their jobs, registrations (tombstones too) and schedules */
	[QL_Q_OTHERS_USE] = {
		"SELECT EXISTS (SELECT FROM %1$s.qlater_job WHERE queue OPERATOR(pg_catalog.=) $1 "
		"AND role OPERATOR(pg_catalog.<>) $2) "
		"OR EXISTS (SELECT FROM %1$s.qlater_handler WHERE queue OPERATOR(pg_catalog.=) $1 "
		"AND registered_by OPERATOR(pg_catalog.<>) $2) "
		"OR EXISTS (SELECT FROM %1$s.qlater_schedule WHERE queue OPERATOR(pg_catalog.=) $1 "
		"AND owner OPERATOR(pg_catalog.<>) $2)",
		2, {TEXTOID, NAMEOID}
	},
	/*
	 * A job moved in-server under a live lease is due when the lease ends,
	 * not before: its consumer may still be running it (as a session claim
	 * keeps the workers off it until it is released).  Returns how many
	 * moved, and the first lease end among them (the workers' wake-up).
	 */
	[QL_Q_MOVE_JOBS] = {
		"WITH m AS (UPDATE %1$s.qlater_job SET external = $2, "
		"run_at = CASE WHEN NOT $2 AND lease_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp() "
		"THEN GREATEST(run_at, lease_until) ELSE run_at END "
		"WHERE queue OPERATOR(pg_catalog.=) $1 AND external OPERATOR(pg_catalog.<>) $2 "
		"RETURNING run_at, lease_until) "
		"SELECT pg_catalog.count(*), pg_catalog.min(run_at) FILTER (WHERE run_at OPERATOR(pg_catalog.=) lease_until "
		"AND run_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()) FROM m",
		2, {TEXTOID, BOOLOID}
	},
	[QL_Q_IN_USE] = {
		"SELECT (SELECT pg_catalog.count(*) FROM %1$s.qlater_job "
		"WHERE queue OPERATOR(pg_catalog.=) $1), "
		"(SELECT pg_catalog.count(*) FROM %1$s.qlater_handler "
		"WHERE queue OPERATOR(pg_catalog.=) $1), "
		"(SELECT pg_catalog.count(*) FROM %1$s.qlater_schedule "
		"WHERE queue OPERATOR(pg_catalog.=) $1)",
		1, {TEXTOID}
	},
	[QL_Q_DROP] = {
		"DELETE FROM %1$s.qlater_queue WHERE name OPERATOR(pg_catalog.=) $1",
		1, {TEXTOID}
	},
	[QL_Q_GRANT] = {
		"INSERT INTO %1$s.qlater_queue_grant (queue, grantee, privilege) "
		"VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
		3, {TEXTOID, NAMEOID, TEXTOID}
	},
	[QL_Q_REVOKE] = {
		"DELETE FROM %1$s.qlater_queue_grant WHERE queue OPERATOR(pg_catalog.=) $1 "
		"AND grantee OPERATOR(pg_catalog.=) $2 AND privilege OPERATOR(pg_catalog.=) $3",
		3, {TEXTOID, NAMEOID, TEXTOID}
	},
	[QL_Q_HAS_GRANT] = {
		"SELECT FROM %1$s.qlater_queue_grant WHERE queue OPERATOR(pg_catalog.=) $1 "
		"AND grantee OPERATOR(pg_catalog.=) $2 AND privilege OPERATOR(pg_catalog.=) $3",
		3, {TEXTOID, NAMEOID, TEXTOID}
	},
	[QL_Q_RESTRICTED] = {
		"SELECT name, " QL_QUEUE_COLUMNS " FROM %1$s.qlater_queue "
		"WHERE paused OR max_running IS NOT NULL",
		0, {InvalidOid}
	},
	/* a queue without a row keeps the column's default, one day */
	[QL_Q_MAX_KEEP] = {
		"SELECT (extract(epoch FROM COALESCE(pg_catalog.max(keep_history), "
		"'1 day'::pg_catalog.interval)) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8 "
		"FROM %1$s.qlater_queue",
		0, {InvalidOid}
	},
};

static QlStmtSet q_stmts = {q_stmt_defs, QL_NUM_Q_STMTS, NULL, 0};

static const char *const priv_names[] = {"consume", "enqueue"};

/*
 * The cache: one entry per queue name asked about, with the row (or none)
 * and the privileges of the last few roles asked about (an enqueue asks
 * for the caller and the handler's owner; a notification for listeners).
 */
#define QL_PRIV_ROLES	4

typedef struct QlRolePrivs
{
	Oid			role;			/* InvalidOid: slot unused */
	int8		privs[2];		/* by QlQueuePriv: -1 unknown, 0, 1 */
} QlRolePrivs;

typedef struct QlQueueEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	bool		exists;
	QlQueue		q;
	QlRolePrivs roles[QL_PRIV_ROLES];
	int			next_slot;		/* the slot a new role takes */
} QlQueueEntry;

static HTAB *queue_cache = NULL;
static bool queue_cache_valid = false;
static uint32 queue_cache_catalog = 0;	/* catalog generation */
static uint64 queue_cache_gen = 0;	/* the database's queue generation */
static Oid	queue_relid = InvalidOid;
static Oid	grant_relid = InvalidOid;

/* the queues paused or limited (ql_queues_restricted), read with the cache */
static QlQueue *restricted = NULL;	/* in TopMemoryContext */
static int	nrestricted = 0;
static bool restricted_valid = false;
static uint64 restricted_version = 0;	/* bumped at each read */
static uint64 restricted_read = 0;	/* the version of the last read done */

/* the longest keep_history (ql_queues_max_keep), read with the cache */
static int64 max_keep = 0;
static bool max_keep_valid = false;

static void
ql_queue_cache_inval(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == queue_relid || relid == grant_relid)
		queue_cache_valid = false;
}

/* ql_queues_gen: the database's queue generation, 0 without shared memory */
static uint64
ql_queues_gen(void)
{
	QlDatabase *db = ql_shared != NULL ? ql_my_database() : NULL;

	return db != NULL ? pg_atomic_read_u64(&db->queues_gen) : 0;
}

/* ql_queue_cache: the cache, emptied if anything it holds may be stale */
static HTAB *
ql_queue_cache(const QlCatalog *c)
{
	uint64		gen = ql_queues_gen();

	if (!queue_cache_valid || queue_cache_catalog != c->generation ||
		queue_cache_gen != gen)
	{
		HASHCTL		ctl;

		if (queue_cache == NULL)
			CacheRegisterRelcacheCallback(ql_queue_cache_inval, (Datum) 0);
		else
			hash_destroy(queue_cache);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(QlQueueEntry);
		queue_cache = hash_create("qlater queues", 16, &ctl,
								  HASH_ELEM | HASH_STRINGS);
		queue_relid = get_relname_relid("qlater_queue", c->schema_oid);
		grant_relid = get_relname_relid("qlater_queue_grant", c->schema_oid);
		queue_cache_catalog = c->generation;
		queue_cache_gen = gen;
		restricted_valid = false;
		max_keep_valid = false;
		/* valid from before the reads: an invalidation meanwhile is kept */
		queue_cache_valid = true;
	}
	return queue_cache;
}

/*
 * ql_queue_changed: this transaction wrote qlater_queue or its grants:
 * every backend reads them again, now and (workers) from the commit on.
 */
static void
ql_queue_changed(const QlCatalog *c)
{
	CacheInvalidateRelcacheByRelid(get_relname_relid("qlater_queue", c->schema_oid));
	CacheInvalidateRelcacheByRelid(get_relname_relid("qlater_queue_grant", c->schema_oid));
	ql_queues_changed_at_commit();
	/* this backend's next read sees the change at once */
	queue_cache_valid = false;
}

/*
 * ql_read_queue_at: fill q from row i of the last SPI result, whose
 * QL_QUEUE_COLUMNS begin at column first
 */
static void
ql_read_queue_at(const char *name, QlQueue *q, uint64 i, int first)
{
	HeapTuple	row = SPI_tuptable->vals[i];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	bool		isnull;

	memset(q, 0, sizeof(*q));
	strlcpy(q->name, name, NAMEDATALEN);
	strlcpy(q->owner, NameStr(*DatumGetName(SPI_getbinval(row, desc, first, &isnull))),
			NAMEDATALEN);
	q->external = DatumGetBool(SPI_getbinval(row, desc, first + 1, &isnull));
	q->paused = DatumGetBool(SPI_getbinval(row, desc, first + 2, &isnull));
	q->max_running = DatumGetInt32(SPI_getbinval(row, desc, first + 3, &isnull));
	q->min_priority = DatumGetInt32(SPI_getbinval(row, desc, first + 4, &isnull));
	q->batch_size = DatumGetInt32(SPI_getbinval(row, desc, first + 5, &isnull));
	q->batch_delay = DatumGetInt64(SPI_getbinval(row, desc, first + 6, &isnull));
	q->keep_history = DatumGetInt64(SPI_getbinval(row, desc, first + 7, &isnull));
	q->history_args = DatumGetBool(SPI_getbinval(row, desc, first + 8, &isnull));
	q->created_at = DatumGetTimestampTz(SPI_getbinval(row, desc, first + 9, &isnull));
}

/* ql_read_queue: fill q from the first row of a QL_Q_GET or QL_Q_LOCK */
static void
ql_read_queue(const char *name, QlQueue *q)
{
	ql_read_queue_at(name, q, 0, 1);
}

/* ql_spi_connect_owner: act as the tables' owner and connect to SPI */
static void
ql_spi_connect_owner(const QlCatalog *c, QlUserSave *save)
{
	ql_become_owner(c, save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
ql_spi_finish_owner(QlUserSave *save)
{
	SPI_finish();
	ql_restore_user(save);
}

/*
 * ql_queue_lock_mode: lock a queue's name until the end of the transaction
 * (ShareLock: putting jobs into it; ExclusiveLock: dropping it or changing
 * its kind), then take in the invalidations committed meanwhile: what was
 * cached of the queue before may have changed while we waited.  With
 * nowait, returns false rather than wait.
 */
static bool
ql_queue_lock_mode(const char *queue, LOCKMODE mode, bool nowait)
{
	LOCKTAG		tag;
	uint64		h = hash_bytes_extended((const unsigned char *) queue,
										strlen(queue), 0);
	LockAcquireResult res;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 QLATER_QUEUE_LOCK_SPACE);
	res = LockAcquire(&tag, mode, false, nowait);
	if (res == LOCKACQUIRE_NOT_AVAIL)
		return false;
	if (res != LOCKACQUIRE_ALREADY_HELD)
		AcceptInvalidationMessages();
	return true;
}

/* ql_queue_lock: the same, waiting for the lock */
static void
ql_queue_lock(const char *queue, LOCKMODE mode)
{
	(void) ql_queue_lock_mode(queue, mode, false);
}

/*
 * ql_queue_lock_put: lock a queue's name in share mode, as
 * ql_queue_check_put does, for jobs put into a queue checked otherwise (a
 * schedule's tick, for its owner: ql_queue_may_put after the lock).  With
 * nowait, false at once if a drop or a change of kind holds the name: a
 * worker does not wait for a transaction left open.
 */
bool
ql_queue_lock_put(const char *queue, bool nowait)
{
	return ql_queue_lock_mode(queue, ShareLock, nowait);
}

/* ql_queue_entry: the cache entry of a queue, read if needed */
static QlQueueEntry *
ql_queue_entry(const QlCatalog *c, const char *name)
{
	HTAB	   *cache = ql_queue_cache(c);
	QlQueueEntry *e;
	QlUserSave	save;
	Datum		values[1];
	QlQueue		q;
	bool		exists;
	bool		found;

	if (strlen(name) >= NAMEDATALEN)
		return NULL;			/* no such queue: names are checked */
	e = hash_search(cache, name, HASH_FIND, NULL);
	if (e != NULL)
		return e;

	values[0] = CStringGetTextDatum(name);
	ql_spi_connect_owner(c, &save);

	/*
	 * Under the latest snapshot, whatever the isolation level: a revoke or
	 * a pause takes effect at once, as PostgreSQL's own privileges do (and
	 * a queue this transaction just made is seen).
	 */
	if (ql_stmt_exec_latest(&q_stmts, c, QL_Q_GET, values, NULL, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read queue \"%s\"", name);
	exists = SPI_processed > 0;
	if (exists)
		ql_read_queue(name, &q);
	ql_spi_finish_owner(&save);

	/* the read may have processed an invalidation: the cache anew */
	cache = ql_queue_cache(c);
	e = hash_search(cache, name, HASH_ENTER, &found);
	e->exists = exists;
	if (exists)
		e->q = q;
	memset(e->roles, 0, sizeof(e->roles));
	e->next_slot = 0;
	return e;
}

/*
 * ql_queue_get: a queue's row, or NULL if there is no such queue.  The row
 * is the cache's: valid until the next call of this module (copy it to
 * keep it).
 */
const QlQueue *
ql_queue_get(const QlCatalog *c, const char *name)
{
	QlQueueEntry *e = ql_queue_entry(c, name);

	return e != NULL && e->exists ? &e->q : NULL;
}

/*
 * ql_queues_restricted: the queues that are paused or have a max_running,
 * as this backend last read them, in an array of *n; *version changes
 * whenever they are read again.  They are read again with the cache of
 * queue rows, once anything it holds may be stale (above): after the
 * commit of a pause, resume or limit, from the moment the database's
 * queue generation has moved.  With none, it costs a look at that
 * generation.  The array is valid until the next call.
 */
const QlQueue *
ql_queues_restricted(const QlCatalog *c, int *n, uint64 *version)
{
	(void) ql_queue_cache(c);
	/* an error in the middle of a read leaves them to be read again */
	if (!restricted_valid || restricted_read != restricted_version)
	{
		QlUserSave	save;
		QlQueue    *rows;
		int			nrows = 0;
		uint64		i;

		/* valid from before the read: an invalidation meanwhile is kept */
		restricted_valid = true;
		restricted_version++;
		ql_spi_connect_owner(c, &save);

		/*
		 * Under the latest snapshot, whatever the isolation level: taken
		 * after the generation was read, it sees every change the
		 * generation's move announced (limits.c relies on that).
		 */
		if (ql_stmt_exec_latest(&q_stmts, c, QL_Q_RESTRICTED, NULL, NULL, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the paused and limited queues");
		rows = MemoryContextAlloc(TopMemoryContext,
								  sizeof(QlQueue) * (SPI_processed + 1));
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			char	   *name = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc,
																 1, &isnull));

			/* a name no job can name (names are checked) is left out */
			if (strlen(name) >= NAMEDATALEN)
				continue;
			ql_read_queue_at(name, &rows[nrows++], i, 2);
		}
		ql_spi_finish_owner(&save);
		if (restricted != NULL)
			pfree(restricted);
		restricted = rows;
		nrestricted = nrows;
		restricted_read = restricted_version;
	}
	*n = nrestricted;
	*version = restricted_version;
	return restricted;
}

/*
 * ql_queues_max_keep: the longest keep_history of the database's queues,
 * in microseconds, as this backend last read them (again after any change
 * to the queues).  Caller is in a transaction.
 */
int64
ql_queues_max_keep(const QlCatalog *c)
{
	QlUserSave	save;
	bool		isnull;

	(void) ql_queue_cache(c);
	if (max_keep_valid)
		return max_keep;
	ql_spi_connect_owner(c, &save);
	if (ql_stmt_exec(&q_stmts, c, QL_Q_MAX_KEEP, NULL, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the queues' keep_history");
	max_keep = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	ql_spi_finish_owner(&save);
	max_keep_valid = true;
	return max_keep;
}

/* ql_queue_is_external: whether jobs of this queue are for applications */
bool
ql_queue_is_external(const QlCatalog *c, const char *queue)
{
	const QlQueue *q = ql_queue_get(c, queue);

	return q != NULL && q->external;
}

/* ql_role_is_admin: whether a role sees and manages everything */
bool
ql_role_is_admin(Oid roleid)
{
	Oid			admin;

	if (superuser_arg(roleid))
		return true;
	admin = get_role_oid("qlater_admin", true);
	return OidIsValid(admin) && is_member_of_role(roleid, admin);
}

/* ql_role_owns: whether a role owns a queue (by name, as stored) */
static bool
ql_role_owns(const QlQueue *q, Oid roleid)
{
	char	   *name = GetUserNameFromId(roleid, true);

	return name != NULL && strcmp(q->owner, name) == 0;
}

/*
 * ql_queue_privilege: whether a role holds a privilege on a queue: its
 * owner and admins hold every one; others by a grant.
 */
bool
ql_queue_privilege(const QlCatalog *c, const QlQueue *q, Oid roleid,
				   QlQueuePriv priv)
{
	QlQueueEntry *e;
	QlUserSave	save;
	Datum		values[3];
	char		queue[NAMEDATALEN];
	char	   *rolename;
	bool		granted;
	int			i;

	if (ql_role_owns(q, roleid) || ql_role_is_admin(roleid))
		return true;
	rolename = GetUserNameFromId(roleid, true);
	if (rolename == NULL)
		return false;
	/* q may be the cache's row, which the reads below may free */
	strlcpy(queue, q->name, NAMEDATALEN);
	e = ql_queue_entry(c, queue);
	for (i = 0; e != NULL && i < QL_PRIV_ROLES; i++)
	{
		if (e->roles[i].role == roleid && e->roles[i].privs[priv] >= 0)
			return e->roles[i].privs[priv] > 0;
	}

	values[0] = CStringGetTextDatum(queue);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(rolename));
	values[2] = CStringGetTextDatum(priv_names[priv]);
	ql_spi_connect_owner(c, &save);
	if (ql_stmt_exec_latest(&q_stmts, c, QL_Q_HAS_GRANT, values, NULL, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the grants of queue \"%s\"", queue);
	granted = SPI_processed > 0;
	ql_spi_finish_owner(&save);

	e = ql_queue_entry(c, queue);
	if (e != NULL)
	{
		QlRolePrivs *slot = NULL;

		for (i = 0; i < QL_PRIV_ROLES; i++)
		{
			if (e->roles[i].role == roleid)
				slot = &e->roles[i];
		}
		if (slot == NULL)
		{
			slot = &e->roles[e->next_slot];
			e->next_slot = (e->next_slot + 1) % QL_PRIV_ROLES;
			slot->role = roleid;
			slot->privs[0] = slot->privs[1] = -1;
		}
		slot->privs[priv] = granted ? 1 : 0;
	}
	return granted;
}

/* ql_queue_denied: the error for a queue one may not use so */
static void
ql_queue_denied(const char *queue, QlQueuePriv priv)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for queue \"%s\"", queue),
			 errhint("The queue's owner may grant it: qlater_grant_queue('%s', role, '%s').",
					 queue, priv_names[priv])));
}

/*
 * ql_queue_create_row: create a queue for a role (in-server unless
 * external); false if it exists already.  Caller acts as the owner,
 * connected to SPI.
 */
static bool
ql_queue_create_row(const QlCatalog *c, const char *queue, bool external,
					Datum batch_size, bool size_null,
					Datum batch_delay, bool delay_null, Oid roleid)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	/* the new owner: DROP ROLE waits, and then sees the queue */
	ql_lock_role(roleid);
	values[0] = CStringGetTextDatum(queue);
	values[1] = BoolGetDatum(external);
	values[2] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(roleid, false)));
	values[3] = batch_size;
	nulls[3] = size_null ? 'n' : ' ';
	values[4] = batch_delay;
	nulls[4] = delay_null ? 'n' : ' ';
	if (ql_stmt_exec(&q_stmts, c, QL_Q_CREATE, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not create queue \"%s\"", queue);
	if (SPI_processed == 0)
		return false;
	ql_queue_changed(c);
	return true;
}

/*
 * ql_others_use: whether roles other than the one named use a queue (their
 * jobs, registrations or schedules name it), under the latest snapshot.
 * Caller acts as the owner, connected to SPI.
 */
static bool
ql_others_use(const QlCatalog *c, const char *queue, Oid roleid)
{
	Datum		values[2];
	bool		isnull;

	values[0] = CStringGetTextDatum(queue);
	values[1] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(roleid, false)));
	if (ql_stmt_exec_latest(&q_stmts, c, QL_Q_OTHERS_USE, values, NULL, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read what uses queue \"%s\"", queue);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * ql_check_new_name: raise an error unless a role may make a queue of this
 * name: not 'default' (the extension's owner's), and not a name that other
 * roles' jobs, registrations or schedules already use (left by a queue
 * dropped before 0.2's checks, or rows written by hand): the new owner
 * would see or redirect them.  Admins may.  Caller acts as the owner,
 * connected to SPI.
 */
static void
ql_check_new_name(const QlCatalog *c, const char *queue, Oid roleid)
{
	if (ql_role_is_admin(roleid))
		return;
	if (strcmp(queue, "default") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create queue \"default\""),
				 errdetail("Queue \"default\" belongs to the extension's owner.")));
	if (ql_others_use(c, queue, roleid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create queue \"%s\"", queue),
				 errdetail("Jobs, registrations or schedules of other roles name it."),
				 errhint("Use another name, or ask a member of qlater_admin to create it.")));
}

/*
 * ql_check_default_in_server: 'default' never becomes external, not even
 * by an admin: it is where every role's jobs go when no queue is named,
 * and those jobs (SQL functions, other roles' arguments) would go to its
 * consumers.
 */
static void
ql_check_default_in_server(const char *queue, bool external)
{
	if (external && strcmp(queue, "default") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("queue \"default\" cannot be external"),
				 errdetail("Queue \"default\" is the in-server queue where every role's jobs go when no queue is named."),
				 errhint("Create an external queue of another name.")));
}

/*
 * ql_queue_not_external_error: raise the error for a queue a consumer
 * names that is not external (or not there); 'default' stays in-server
 */
void
ql_queue_not_external_error(const char *queue)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("queue \"%s\" is not an external queue", queue),
			 strcmp(queue, "default") == 0 ?
			 errhint("Queue \"default\" stays in-server: consumers serve an external queue of another name, "
					 "created with qlater_create_queue(name, external => true).") :
			 errhint("Create it with qlater_create_queue('%s', external => true).", queue)));
}

/*
 * ql_queue_put_allowed: whether a role may put a job of the given
 * priority into queue q, for a handler registered into handler_queue by
 * its owner handler_owner (NULL and InvalidOid for jobs for applications
 * and for a registration itself).  The queue a handler was registered
 * into is open to every caller of the handler only while the handler's
 * owner may put jobs into it itself.
 */
static bool
ql_queue_put_allowed(const QlCatalog *c, const QlQueue *q,
					 const char *handler_queue, Oid handler_owner,
					 Oid roleid, bool *priority_ok, int32 priority)
{
	QlQueue		copy = *q;		/* the privilege reads may free q */

	*priority_ok = priority >= copy.min_priority || ql_role_is_admin(roleid);
	if (!copy.external && strcmp(copy.name, "default") == 0)
		return true;
	if (!copy.external && handler_queue != NULL && OidIsValid(handler_owner) &&
		strcmp(handler_queue, copy.name) == 0 &&
		ql_queue_privilege(c, &copy, handler_owner, QL_PRIV_ENQUEUE))
		return true;
	return ql_queue_privilege(c, &copy, roleid, QL_PRIV_ENQUEUE);
}

/*
 * ql_queue_check_put: the current role puts a job of this priority into a
 * queue (an enqueue or a schedule, for a handler registered into
 * handler_queue; or a registration into it, handler_queue NULL): create
 * the queue for the role if it does not exist, else raise an error unless
 * the role may.  Returns the queue's row.
 */
const QlQueue *
ql_queue_check_put(const QlCatalog *c, const char *queue,
				   const char *handler_queue, Oid handler_owner,
				   int32 priority)
{
	const QlQueue *q;
	QlQueue		copy;
	bool		priority_ok;

	ql_check_queue_name(queue);
	ql_queue_lock(queue, ShareLock);
	q = ql_queue_get(c, queue);
	if (q == NULL)
	{
		QlUserSave	save;
		Oid			owner;

		ql_spi_connect_owner(c, &save);
		/* 'default' is the extension's, whoever names it first */
		owner = strcmp(queue, "default") == 0 ? c->owner : save.userid;
		if (owner == save.userid)
			ql_check_new_name(c, queue, owner);
		(void) ql_queue_create_row(c, queue, false, (Datum) 0, true,
								   (Datum) 0, true, owner);
		ql_spi_finish_owner(&save);
		q = ql_queue_get(c, queue);
		if (q == NULL)
			elog(ERROR, "queue \"%s\" vanished", queue);
	}
	copy = *q;
	if (!ql_queue_put_allowed(c, &copy, handler_queue, handler_owner, GetUserId(),
							  &priority_ok, priority))
		ql_queue_denied(queue, QL_PRIV_ENQUEUE);
	if (!priority_ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("priority %d is below the lowest priority queue \"%s\" accepts",
						priority, queue),
				 errdetail("Queue \"%s\" takes jobs of priority %d and above.",
						   queue, copy.min_priority),
				 errhint("Lower values run first; members of qlater_admin set the bound with qlater_alter_queue(..., min_priority => ...).")));
	return ql_queue_get(c, queue);
}

/*
 * ql_queue_may_put: whether a role (not the current one: a schedule's
 * owner at a tick) may put a job into an existing queue, as above.
 */
bool
ql_queue_may_put(const QlCatalog *c, const char *queue,
				 const char *handler_queue, Oid handler_owner,
				 int32 priority, Oid roleid)
{
	const QlQueue *q = ql_queue_get(c, queue);
	QlQueue		copy;
	bool		priority_ok;

	if (q == NULL)
		return false;
	copy = *q;
	return ql_queue_put_allowed(c, &copy, handler_queue, handler_owner, roleid,
								&priority_ok, priority) && priority_ok;
}

/*
 * ql_queue_check_consume: raise an error unless the current role may
 * consume an external queue.
 */
void
ql_queue_check_consume(const QlCatalog *c, const char *queue)
{
	const QlQueue *q;

	/* a name no queue can have is said to be one */
	ql_check_queue_name(queue);
	q = ql_queue_get(c, queue);
	if (q == NULL || !q->external)
		ql_queue_not_external_error(queue);
	if (!ql_queue_privilege(c, q, GetUserId(), QL_PRIV_CONSUME))
		ql_queue_denied(queue, QL_PRIV_CONSUME);
}

/* ql_queue_arg: argument n, a queue name, never null, checked */
static char *
ql_queue_arg(FunctionCallInfo fcinfo, int n)
{
	char	   *queue;

	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue name must not be null")));
	queue = text_to_cstring(PG_GETARG_TEXT_PP(n));
	ql_check_queue_name(queue);
	return queue;
}

/*
 * ql_check_batch: raise an error for batch options (arguments n and n + 1)
 * out of range, or given for an external queue.
 */
static void
ql_check_batch(FunctionCallInfo fcinfo, int n, bool external)
{
	if (!PG_ARGISNULL(n))
	{
		int32		size = PG_GETARG_INT32(n);

		if (size < 1 || size > QL_MAX_BATCH)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batch_size %d is out of range", size),
					 errhint("A batch has 1 to %d jobs, each in a subtransaction; "
							 "1 commits every job alone.", QL_MAX_BATCH)));
		if (external && size > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("an external queue cannot have batches"),
					 errhint("Batches are for queues served by the in-server workers; "
							 "applications commit their jobs themselves.")));
	}
	if (!PG_ARGISNULL(n + 1))
	{
		Interval   *d = PG_GETARG_INTERVAL_P(n + 1);

		if (d->month != 0 || d->day != 0 || d->time <= 0 ||
			d->time > QL_MAX_BATCH_DELAY_MS * INT64CONST(1000))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batch_delay must be more than 0 and at most %d ms",
							QL_MAX_BATCH_DELAY_MS)));
	}
}

/*
 * ql_keep_history_usecs: the length of a keep_history, months counted as
 * 30 days and days as 24 hours (as extract(epoch) counts them)
 */
static int64
ql_keep_history_usecs(const Interval *keep)
{
	return keep->time +
		((int64) keep->month * DAYS_PER_MONTH + keep->day) * USECS_PER_DAY;
}

/* ql_check_keep_history: raise an error unless keep is a keep_history */
static void
ql_check_keep_history(const Interval *keep)
{
	const int64 max = (int64) (QL_MAX_KEEP_HISTORY_YEARS * DAYS_PER_YEAR) * USECS_PER_DAY;

	/* bounded part by part first: their sum cannot overflow then */
	if (keep->month < 0 || keep->day < 0 ||
		keep->month > QL_MAX_KEEP_HISTORY_YEARS * MONTHS_PER_YEAR ||
		keep->day > max / USECS_PER_DAY || keep->time > max || keep->time < -max ||
		ql_keep_history_usecs(keep) < 0 || ql_keep_history_usecs(keep) > max)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keep_history must be between 0 and %d years",
						QL_MAX_KEEP_HISTORY_YEARS),
				 errhint("'0' keeps no history of the queue's jobs.")));
}

/*
 * ql_keep_history_rounded: keep as it is stored: whole seconds, months of
 * 30 days and days of 24 hours (a history slot's time is a duration)
 */
static Interval *
ql_keep_history_rounded(const Interval *keep)
{
	Interval   *r = palloc0(sizeof(Interval));
	int64		usecs = ql_keep_history_usecs(keep);

	r->time = (usecs + USECS_PER_SEC - 1) / USECS_PER_SEC * USECS_PER_SEC;
	return r;
}

/*
 * ql_lock_own_queue: lock a queue's row and raise an error unless the
 * calling role (save: as ql_spi_connect_owner saved it) owns it or is an
 * admin.  A queue's name and owner are public (qlater_queues), its jobs
 * and grants are not.  Caller acts as the owner, connected to SPI.
 */
static void
ql_lock_own_queue(const QlCatalog *c, const char *queue,
				  const QlUserSave *save, QlQueue *q)
{
	Datum		values[1];

	values[0] = CStringGetTextDatum(queue);
	/* 'default' has a row once first used or changed (see the install) */
	if (strcmp(queue, "default") == 0)
		(void) ql_queue_create_row(c, queue, false, (Datum) 0, true,
								   (Datum) 0, true, c->owner);
	if (ql_stmt_exec(&q_stmts, c, QL_Q_LOCK, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read queue \"%s\"", queue);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("queue \"%s\" does not exist", queue),
				 errhint("Create it with qlater_create_queue('%s').", queue)));
	ql_read_queue(queue, q);
	if (!ql_role_owns(q, save->userid) && !ql_role_is_admin(save->userid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of queue \"%s\"", queue)));
}

/*
 * ql_check_kind_change: a queue turned external (or in-server) that other
 * roles use (their jobs, registrations or schedules name it) changes hands
 * by an admin only: external, their jobs would leave the workers for the
 * queue's consumers (and a registration's next ones too); in-server, the
 * workers would run applications' jobs as those roles.  'default' always
 * holds or takes other roles' jobs.
 */
static void
ql_check_kind_change(const QlCatalog *c, const char *queue, bool external,
					 const QlUserSave *save)
{
	if (ql_role_is_admin(save->userid))
		return;
	if (strcmp(queue, "default") == 0 || ql_others_use(c, queue, save->userid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 external ?
				 errmsg("cannot make queue \"%s\" external", queue) :
				 errmsg("cannot make queue \"%s\" in-server", queue),
				 external ?
				 errdetail("The queue holds or takes jobs of other roles, which would leave the in-server workers.") :
				 errdetail("The queue holds or takes jobs of other roles, which the in-server workers would run as those roles."),
				 errhint("Use a queue of your own, or ask a member of qlater_admin.")));
}

/* ql_queue_exists: the error for creating a queue that exists */
static void
ql_queue_exists(const char *queue)
{
	ereport(ERROR,
			(errcode(ERRCODE_DUPLICATE_OBJECT),
			 errmsg("queue \"%s\" already exists", queue),
			 errhint("Change it with qlater_alter_queue('%s', ...); a queue is made when a registration, "
					 "an enqueue or a schedule first names it.", queue)));
}

/*
 * ql_queue_lock_own: lock a queue's name exclusively, for a drop or a
 * change of kind, once the caller is known to own the queue (or be an
 * admin) as far as the cache knows: the lock waits for every enqueue into
 * the queue under way, and every enqueue after it waits for it, so a role
 * that may not change the queue must not get to wait there (it would hold
 * every enqueue into another role's queue, 'default' too, for as long as
 * it keeps an enqueue of its own open).  Checked again under the lock
 * (ql_lock_own_queue).
 */
static void
ql_queue_lock_own(const QlCatalog *c, const char *queue)
{
	const QlQueue *q = ql_queue_get(c, queue);

	if (q != NULL && !ql_role_owns(q, GetUserId()) && !ql_is_admin())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of queue \"%s\"", queue)));
	ql_queue_lock(queue, ExclusiveLock);
}

/*
 * qlater_create_queue(name text, external boolean, batch_size int,
 *					   batch_delay interval) returns void
 *
 * Creates a queue owned by the current role: in-server (a new queue has
 * batch_size 1, no batches, and batch_delay 20 ms) or external.  A queue
 * that exists is an error: qlater_alter_queue changes it.
 */
Datum
qlater_create_queue(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue = ql_queue_arg(fcinfo, 0);
	bool		external;
	QlUserSave	save;
	bool		created;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("external must not be null")));
	external = PG_GETARG_BOOL(1);
	ql_check_batch(fcinfo, 2, external);

	ql_queue_lock(queue, ShareLock);
	if (ql_queue_get(c, queue) != NULL)
		ql_queue_exists(queue);
	ql_spi_connect_owner(c, &save);
	ql_check_new_name(c, queue, save.userid);
	ql_check_default_in_server(queue, external);
	/* 'default' is the extension's owner's, even made by an admin */
	created = ql_queue_create_row(c, queue, external,
								  PG_GETARG_DATUM(2), PG_ARGISNULL(2),
								  PG_GETARG_DATUM(3), PG_ARGISNULL(3),
								  strcmp(queue, "default") == 0 ? c->owner : save.userid);
	ql_spi_finish_owner(&save);
	if (!created)
		ql_queue_exists(queue);
	PG_RETURN_VOID();
}

/*
 * qlater_alter_queue(name text, external boolean, batch_size int,
 *					  batch_delay interval, max_running int,
 *					  min_priority int, owner name) returns void
 *
 * Changes a queue's settings (NULL: unchanged; max_running below 0 removes
 * the limit), or hands it to another owner.  Its owner or an admin;
 * min_priority an admin only.
 */
Datum
qlater_alter_queue(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue = ql_queue_arg(fcinfo, 0);
	QlUserSave	save;
	QlQueue		q;
	bool		external;
	uint64		moved = 0;
	Datum		values[9];
	char		nulls[9];
	int			i;

	/*
	 * Asked for, even of a 'default' made external before this check; from
	 * the arguments alone, before waiting for the enqueues into it
	 */
	if (!PG_ARGISNULL(1))
		ql_check_default_in_server(queue, PG_GETARG_BOOL(1));
	if (!PG_ARGISNULL(7))
		ql_check_keep_history(PG_GETARG_INTERVAL_P(7));
	if (!PG_ARGISNULL(5))
	{
		int32		p = PG_GETARG_INT32(5);

		ql_check_priority(p);
		if (!ql_is_admin())
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to set the min_priority of queue \"%s\"", queue),
					 errdetail("Only superusers and members of qlater_admin bound the priorities of a queue.")));
	}
	if (!PG_ARGISNULL(6))
	{
		Oid			newowner = get_role_oid(NameStr(*PG_GETARG_NAME(6)), false);

		/* as ALTER ... OWNER TO: the new owner is a role one could become */
		if (!ql_is_admin() && !has_privs_of_role(GetUserId(), newowner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("must be able to SET ROLE \"%s\" to hand queue \"%s\" to it",
							NameStr(*PG_GETARG_NAME(6)), queue)));
		ql_lock_role(newowner);
	}

	/* a change of kind waits for the enqueues under way, whose kind it sets */
	if (!PG_ARGISNULL(1))
		ql_queue_lock_own(c, queue);
	ql_spi_connect_owner(c, &save);
	ql_lock_own_queue(c, queue, &save, &q);
	external = PG_ARGISNULL(1) ? q.external : PG_GETARG_BOOL(1);
	ql_check_batch(fcinfo, 2, external);
	if (external != q.external)
		ql_check_kind_change(c, queue, external, &save);

	for (i = 0; i < 9; i++)
	{
		values[i] = PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	values[0] = CStringGetTextDatum(queue);
	if (!PG_ARGISNULL(7))
		values[7] = IntervalPGetDatum(ql_keep_history_rounded(PG_GETARG_INTERVAL_P(7)));
	if (ql_stmt_exec(&q_stmts, c, QL_Q_ALTER, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not change queue \"%s\"", queue);
	if (external != q.external)
	{
		bool		isnull;
		Datum		first_lease_end;

		values[1] = BoolGetDatum(external);
		if (ql_stmt_exec(&q_stmts, c, QL_Q_MOVE_JOBS, values, NULL, false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not move the jobs of queue \"%s\"", queue);
		moved = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		first_lease_end = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		/* jobs due when their leases end: a worker looks then */
		if (!isnull)
			ql_wake_workers_at_commit(1, DatumGetTimestampTz(first_lease_end));
	}
	ql_spi_finish_owner(&save);
	ql_queue_changed(c);

	if (q.external && !external && moved > 0)
		ereport(NOTICE,
				(errmsg("%llu jobs of queue \"%s\" are the in-server workers' now",
						(unsigned long long) moved, queue),
				 errdetail("A job runs only if its handler is the signature of a registered handler; "
						   "the others end dead, and qlater_retry runs them once the queue is external again.")));

	/* jobs a limit held back, or of a queue turned in-server, may run now */
	ql_lower_frontier_at_commit(&ql_key_min);
	ql_wake_workers_at_commit(1, GetCurrentTransactionStartTimestamp());
	PG_RETURN_VOID();
}

/*
 * qlater_drop_queue(name text) returns void
 *
 * Removes a queue that no job (pending, running or dead), registration or
 * schedule names, with its grants.  A queue still in use is an error that
 * says what uses it: dropped, its name could be taken by another role,
 * which would then receive those jobs.
 */
Datum
qlater_drop_queue(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue = ql_queue_arg(fcinfo, 0);
	QlUserSave	save;
	QlQueue		q;
	Datum		values[1];
	bool		isnull;
	int64		njobs;
	int64		nhandlers;
	int64		nschedules;

	if (strcmp(queue, "default") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot drop queue \"default\""),
				 errdetail("Every role may put jobs into it.")));
	/* waits for the enqueues into it under way: their jobs are counted */
	ql_queue_lock_own(c, queue);
	ql_spi_connect_owner(c, &save);
	ql_lock_own_queue(c, queue, &save, &q);
	values[0] = CStringGetTextDatum(queue);
	if (ql_stmt_exec_latest(&q_stmts, c, QL_Q_IN_USE, values, NULL, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read what uses queue \"%s\"", queue);
	njobs = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	nhandlers = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	nschedules = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	if (njobs + nhandlers + nschedules > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop queue \"%s\" because it is in use", queue),
				 errdetail("%lld jobs, %lld handler registrations and %lld schedules name it.",
						   (long long) njobs, (long long) nhandlers, (long long) nschedules),
				 errhint("Cancel or finish its jobs (dead ones too), register its handlers into another queue "
						 "and move or remove its schedules first.")));
	if (ql_stmt_exec(&q_stmts, c, QL_Q_DROP, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not drop queue \"%s\"", queue);
	ql_spi_finish_owner(&save);
	ql_queue_changed(c);
	PG_RETURN_VOID();
}

/* ql_set_paused: pause or resume a queue; its owner or an admin */
static void
ql_set_paused(FunctionCallInfo fcinfo, bool paused)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue = ql_queue_arg(fcinfo, 0);
	QlUserSave	save;
	QlQueue		q;
	Datum		values[2];

	ql_spi_connect_owner(c, &save);
	ql_lock_own_queue(c, queue, &save, &q);
	values[0] = CStringGetTextDatum(queue);
	values[1] = BoolGetDatum(paused);
	if (ql_stmt_exec(&q_stmts, c, QL_Q_PAUSE, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not change queue \"%s\"", queue);
	ql_spi_finish_owner(&save);
	ql_queue_changed(c);
	if (!paused)
	{
		/* the workers passed its jobs over: they look again from the start */
		ql_lower_frontier_at_commit(&ql_key_min);
		ql_wake_workers_at_commit(1, GetCurrentTransactionStartTimestamp());
	}
}

/* qlater_pause_queue(queue text) returns void */
Datum
qlater_pause_queue(PG_FUNCTION_ARGS)
{
	ql_set_paused(fcinfo, true);
	PG_RETURN_VOID();
}

/* qlater_resume_queue(queue text) returns void */
Datum
qlater_resume_queue(PG_FUNCTION_ARGS)
{
	ql_set_paused(fcinfo, false);
	PG_RETURN_VOID();
}

/* ql_priv_arg: the privilege argument n */
static QlQueuePriv
ql_priv_arg(FunctionCallInfo fcinfo, int n)
{
	char	   *s = text_to_cstring(PG_GETARG_TEXT_PP(n));

	if (strcmp(s, "consume") == 0)
		return QL_PRIV_CONSUME;
	if (strcmp(s, "enqueue") == 0)
		return QL_PRIV_ENQUEUE;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unrecognized queue privilege \"%s\"", s),
			 errhint("The privileges of a queue are 'consume' and 'enqueue'.")));
	return QL_PRIV_CONSUME;		/* keep compiler quiet */
}

/*
 * ql_change_grant: grant or revoke a privilege on a queue; its owner or an
 * admin.  Returns whether a grant changed.
 */
static bool
ql_change_grant(FunctionCallInfo fcinfo, bool grant)
{
	const QlCatalog *c = ql_catalog(false);
	char	   *queue = ql_queue_arg(fcinfo, 0);
	Name		role = PG_GETARG_NAME(1);
	QlQueuePriv priv = ql_priv_arg(fcinfo, 2);
	QlUserSave	save;
	QlQueue		q;
	Datum		values[3];
	bool		changed;

	if (grant)
		ql_lock_role(get_role_oid(NameStr(*role), false));
	ql_spi_connect_owner(c, &save);
	ql_lock_own_queue(c, queue, &save, &q);
	values[0] = CStringGetTextDatum(queue);
	values[1] = NameGetDatum(role);
	values[2] = CStringGetTextDatum(priv_names[priv]);
	if (ql_stmt_exec(&q_stmts, c, grant ? QL_Q_GRANT : QL_Q_REVOKE, values, NULL,
					 false, 0) < 0)
		elog(ERROR, "could not change the grants of queue \"%s\"", queue);
	changed = SPI_processed > 0;
	ql_spi_finish_owner(&save);
	if (changed)
		ql_queue_changed(c);
	return changed;
}

/* qlater_grant_queue(queue text, role name, privilege text) returns void */
Datum
qlater_grant_queue(PG_FUNCTION_ARGS)
{
	(void) ql_change_grant(fcinfo, true);
	PG_RETURN_VOID();
}

/* qlater_revoke_queue(queue text, role name, privilege text) returns boolean */
Datum
qlater_revoke_queue(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(ql_change_grant(fcinfo, false));
}
