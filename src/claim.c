/*-------------------------------------------------------------------------
 *
 * claim.c
 *		Claiming ready jobs in a worker: looks from the claim frontier, the
 *		candidates they read, and the check of a claimed row's version.
 *
 * A job is claimed with a session-level advisory lock in qlater's key space
 * (QLATER_LOCK_SPACE), as Que does: claiming writes nothing, never waits, and a
 * claim vanishes with the session that held it.  The classic race: a lock
 * granted just after another worker finished and deleted the same job, as
 * seen in an older snapshot.  So once the lock is held the row is read
 * again under a fresh snapshot, and the lock is released only after the
 * transaction that finished the job has committed (run.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "executor/executor.h"
#include "storage/procarray.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "api.h"
#include "args.h"
#include "job.h"
#include "limits.h"
#include "qlater.h"
#include "running.h"
#include "shmem.h"

/*
 * The most rows a look reads at once while it passes over the jobs of
 * paused or full queues (limits.c): the look reads on, each time more
 * rows, up to this many, until it finds a job it may claim or the end.
 */
#define QL_LOOK_MAX_ROWS	8192

/* ql_set_job_locktag: the advisory lock tag that claims a job */
void
ql_set_job_locktag(LOCKTAG *tag, int64 job_id)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 (uint32) (((uint64) job_id) >> 32),
						 (uint32) job_id,
						 QLATER_LOCK_SPACE);
}

/*
 * ql_try_claim: take a job's claim without waiting.  A session lock stays
 * until ql_release_claim or the end of the session; otherwise it goes with
 * the transaction.  Returns false if another session holds it.  A session
 * that already holds the claim gets true again and holds it twice.
 */
bool
ql_try_claim(int64 job_id, bool session_lock)
{
	LOCKTAG		tag;

	ql_set_job_locktag(&tag, job_id);
	return LockAcquire(&tag, ExclusiveLock, session_lock, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * ql_release_job_lock: release a session-level hold of a job's lock, unless
 * it is gone already (a pg_advisory_unlock_all() of the session's code)
 */
void
ql_release_job_lock(int64 job_id)
{
	LOCKTAG		tag;

	ql_set_job_locktag(&tag, job_id);
	if (LockHeldByMe(&tag, ExclusiveLock))
		LockRelease(&tag, ExclusiveLock, true);
}

/* ql_release_claim: release a session-level claim taken by ql_try_claim */
void
ql_release_claim(int64 job_id)
{
	ql_release_job_lock(job_id);
	/* a consumer's record of the claim goes with it (running.c) */
	ql_claims_forget(job_id);
}

typedef enum QlCandidateResult
{
	QL_CANDIDATE_CLAIMED,
	QL_CANDIDATE_NONE_LEFT,		/* every candidate tried */
	QL_CANDIDATE_OTHER_BATCH	/* the next one cannot join the batch */
} QlCandidateResult;

/* ql_row_key: the place in the claim order of a row a look read */
static void
ql_row_key(HeapTuple row, TupleDesc desc, QlClaimKey *key)
{
	bool		isnull;

	key->id = DatumGetInt64(heap_getattr(row, QL_ROW_ID, desc, &isnull));
	key->priority = DatumGetInt32(heap_getattr(row, QL_ROW_PRIORITY, desc, &isnull));
	key->run_at = DatumGetTimestampTz(heap_getattr(row, QL_ROW_RUN_AT, desc, &isnull));
}

/* ql_att: a column of the job row in slot (QlJobAtt) */
static Datum
ql_att(QlWorker *w, TupleTableSlot *slot, QlJobAtt att, bool *isnull)
{
	return slot_getattr(slot, w->plans.att[att], isnull);
}

/*
 * ql_row_being_changed: whether a transaction still running locks or
 * changes the row in slot (a qlater_cancel or qlater_retry that has not
 * ended): the job is left alone until it ends, or its removal would wait
 * for it (run.c).
 */
static bool
ql_row_being_changed(TupleTableSlot *slot)
{
	HeapTuple	tuple = ExecFetchSlotHeapTuple(slot, false, NULL);
	HeapTupleHeader htup = tuple->t_data;

	if (htup->t_infomask & (HEAP_XMAX_INVALID | HEAP_XMAX_IS_MULTI))
		return false;
	return TransactionIdIsInProgress(HeapTupleHeaderGetRawXmax(htup));
}

/*
 * ql_read_row: read the job whose row version a look read (QL_ROW_COLUMNS)
 * into *job, in the worker's job_cxt, if that version is still the job's current one
 * under a fresh snapshot: not deleted or updated by a transaction that has
 * committed since.  Returns false if it is not.  The same xmin and id at
 * the same place is the same version: a place is reused only once the
 * version there is dead to everyone, and by a later transaction.  Caller
 * is in the look's transaction (its lock keeps the table's pages), with an
 * active snapshot.  The job's batch settings are its queue's (ql_queue_settings).
 */
static bool
ql_read_row(QlWorker *w, HeapTuple row, TupleDesc desc, QlJob *job)
{
	bool		isnull;
	ItemPointer tid = (ItemPointer) DatumGetPointer(heap_getattr(row, QL_ROW_CTID, desc, &isnull));
	TransactionId xmin = DatumGetTransactionId(heap_getattr(row, QL_ROW_XMIN, desc, &isnull));
	QlClaimKey	key;
	Relation	rel;
	TupleTableSlot *slot;
	bool		current;

	ql_row_key(row, desc, &key);
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(w->plans.job_relid, NoLock);
	slot = table_slot_create(rel, NULL);
	current = table_tuple_fetch_row_version(rel, tid, GetActiveSnapshot(), slot) &&
		TransactionIdEquals(DatumGetTransactionId(slot_getsysattr(slot, MinTransactionIdAttributeNumber, &isnull)), xmin) &&
		DatumGetInt64(ql_att(w, slot, QL_ATT_ID, &isnull)) == key.id &&
		!ql_row_being_changed(slot);
	if (current)
	{
		MemoryContext old = MemoryContextSwitchTo(w->job_cxt);
		Datum		d;

		job->id = key.id;
		job->priority = key.priority;
		job->run_at = key.run_at;
		job->tid = *tid;
		job->handler = TextDatumGetCString(ql_att(w, slot, QL_ATT_HANDLER, &isnull));
		job->args = DatumGetJsonbPCopy(ql_att(w, slot, QL_ATT_ARGS, &isnull));
		job->role = pstrdup(NameStr(*DatumGetName(ql_att(w, slot, QL_ATT_ROLE, &isnull))));
		d = ql_att(w, slot, QL_ATT_TIMEOUT, &isnull);
		job->has_timeout = !isnull;
		if (!isnull)
			job->timeout = *DatumGetIntervalP(d);
		job->attempts = DatumGetInt32(ql_att(w, slot, QL_ATT_ATTEMPTS, &isnull));
		job->max_attempts = DatumGetInt32(ql_att(w, slot, QL_ATT_MAX_ATTEMPTS, &isnull));
		job->queue = TextDatumGetCString(ql_att(w, slot, QL_ATT_QUEUE, &isnull));
		job->enqueued_at = DatumGetTimestampTz(ql_att(w, slot, QL_ATT_ENQUEUED_AT, &isnull));
		job->batch_size = 1;
		job->batch_delay = 0;
		/* InvalidOid for text that names no function: ql_check_runnable */
		job->proc = ql_signature_oid(job->handler);
		MemoryContextSwitchTo(old);
	}
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, NoLock);
	return current;
}

/*
 * ql_fetch: read a claimed job under a fresh snapshot, into the worker's job_cxt.
 * Returns false if it is no longer ready (done, cancelled, rescheduled).
 * Caller is connected to SPI, in a transaction with an active snapshot.
 */
bool
ql_fetch(QlWorker *w, int64 id, QlJob *job)
{
	Datum		idd = Int64GetDatum(id);

	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute_plan(w->plans.fetch, &idd, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read job");
	return SPI_processed > 0 &&
		ql_read_row(w, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, job);
}

/*
 * ql_queue_settings: the batch settings of the job's queue, into *job.
 * Caller is connected to SPI, in a transaction with an active snapshot.
 */
void
ql_queue_settings(QlWorker *w, QlJob *job)
{
	Datum		name = CStringGetTextDatum(job->queue);
	bool		isnull;

	if (SPI_execute_plan(w->plans.queue, &name, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the settings of queue \"%s\"", job->queue);
	if (SPI_processed == 0)
		return;					/* never declared: no batches */
	job->batch_size = Min(DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1, &isnull)),
						  QL_MAX_BATCH);
	job->batch_delay = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 2, &isnull));
}

/* ql_future_before: whether jobs not due yet lie at priorities [lo, hi) */
static bool
ql_future_before(QlWorker *w, int32 lo, int32 hi)
{
	Datum		params[2];

	params[0] = Int32GetDatum(lo);
	params[1] = Int32GetDatum(hi);
	if (SPI_execute_plan(w->plans.future_before, params, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for future jobs");
	return SPI_processed > 0;
}

/*
 * ql_next_frontier: where the claim frontier may move after a look from
 * it, at from, found first the ready job at first (NULL if none): the
 * first one not left out for its queue (limits.c).  Without one, the look
 * read every ready job after from, and those it read, up to priority
 * end_priority, were left out.
 *
 * No ready job lies before from.  Every index entry between from and
 * first with the same priority is of a job not visible to the look's
 * snapshot: done (deleted) or not yet committed, and a commit that writes
 * jobs lowers the frontier again (qlater.c); or of a job of a queue that
 * is paused or full, and whatever unblocks it lowers the frontier again
 * (limits.c).  Entries of jobs not due yet may lie before first only at a
 * lower priority: the frontier crosses into first's priority only if
 * there are none.  Without a ready job, it moves past the entries due by
 * now at its priority, or at end_priority if it may cross into it.
 * Caller is connected to SPI.
 */
static void
ql_next_frontier(QlWorker *w, const QlClaimKey *from, const QlClaimKey *first,
				 int32 end_priority, QlClaimKey *next)
{
	if (first != NULL && first->priority == from->priority)
	{
		*next = *first;
		return;
	}
	if (first != NULL && !ql_future_before(w, from->priority, first->priority))
	{
		*next = *first;
		return;
	}
	next->priority = from->priority;
	if (first == NULL && end_priority > from->priority &&
		!ql_future_before(w, from->priority, end_priority))
		next->priority = end_priority;
	next->run_at = GetCurrentTransactionStartTimestamp();	/* now() */
	next->id = PG_INT64_MAX;
}

/*
 * ql_look_row: a row of a look, as the filter of paused and full queues
 * sees it
 */
static void
ql_look_row(HeapTuple row, TupleDesc desc, QlLookRow *out)
{
	bool		isnull;
	Datum		d = heap_getattr(row, QL_ROW_QUEUE, desc, &isnull);

	out->queue[0] = '\0';
	if (!isnull)
	{
		text	   *t = DatumGetTextPP(d);
		int			len = VARSIZE_ANY_EXHDR(t);

		/* a longer name is no queue's: names are checked */
		if (len < NAMEDATALEN)
		{
			memcpy(out->queue, VARDATA_ANY(t), len);
			out->queue[len] = '\0';
		}
	}
	ql_row_key(row, desc, &out->key);
}

/*
 * ql_look: read up to limit ready jobs at or after start in the claim
 * order: the candidates of the claims that follow.  The jobs of queues
 * that are paused or full are left out (limits.c); if every row read was
 * of one, the look reads on, more rows at a time, until it finds a job
 * it may claim or the end.  Caller is connected to SPI, in a transaction
 * with an active snapshot.
 */
static void
ql_look(QlWorker *w, const QlClaimKey *start, int limit)
{
	bool		filter = ql_limits_look_begin(ql_catalog(false));
	int			want = limit;
	QlClaimKey	from = *start;
	int			room = 0;
	MemoryContext old;

	MemoryContextReset(w->cands.cxt);
	w->cands.desc = NULL;
	w->cands.rows = NULL;
	w->cands.n = 0;
	w->cands.next = 0;
	for (;;)
	{
		Datum		params[4];
		QlLookRow  *look = NULL;
		uint64		nread;
		uint64		i;

		params[0] = Int32GetDatum(limit);
		params[1] = Int32GetDatum(from.priority);
		params[2] = TimestampTzGetDatum(from.run_at);
		params[3] = Int64GetDatum(from.id);
		if (SPI_execute_plan(w->plans.candidates, params, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look for jobs");
		nread = SPI_processed;

		old = MemoryContextSwitchTo(w->cands.cxt);
		if (w->cands.desc == NULL)
			w->cands.desc = CreateTupleDescCopy(SPI_tuptable->tupdesc);
		if (filter && nread > 0)
		{
			look = palloc(sizeof(QlLookRow) * nread);
			for (i = 0; i < nread; i++)
				ql_look_row(SPI_tuptable->vals[i], w->cands.desc, &look[i]);
			ql_limits_filter(look, (int) nread);
		}
		if (w->cands.n + (int) nread + 1 > room)
		{
			room = w->cands.n + (int) nread + 1;
			w->cands.rows = w->cands.rows == NULL ?
				palloc(sizeof(HeapTuple) * room) :
				repalloc(w->cands.rows, sizeof(HeapTuple) * room);
		}
		w->cands.cut = (nread == (uint64) limit);
		for (i = 0; i < nread; i++)
		{
			if (look != NULL && look[i].blocked)
				continue;
			w->cands.rows[w->cands.n++] = heap_copytuple(SPI_tuptable->vals[i]);
			/* as many as asked for: the rest is for a look for more */
			if (w->cands.n == want && i + 1 < nread)
			{
				nread = i + 1;
				w->cands.cut = true;
			}
		}
		if (look != NULL)
			pfree(look);
		MemoryContextSwitchTo(old);

		/* a look for more starts right after the last row */
		if (nread > 0)
		{
			ql_row_key(SPI_tuptable->vals[nread - 1], SPI_tuptable->tupdesc, &from);
			from.id++;
		}
		SPI_freetuptable(SPI_tuptable);
		if (!filter || w->cands.n > 0 || !w->cands.cut)
			break;
		/* only jobs of paused or full queues so far: read on */
		limit = Max(limit, Min(limit * 8, QL_LOOK_MAX_ROWS));
	}
	w->cands.resume = from;
}

/*
 * ql_claim_candidate: claim the next candidate of the last look that no
 * other session holds and whose row is still current, into *job, if its
 * queue lets it run now: not paused, and a slot taken if the queue has a
 * limit (limits.c).  For a batch (queue not NULL), stop at a job that
 * cannot join it, or when its queue is paused or full.  Caller is
 * connected to SPI, in the look's transaction, with an active snapshot.
 */
static QlCandidateResult
ql_claim_candidate(QlWorker *w, QlJob *job, const char *queue)
{
	while (w->cands.next < w->cands.n)
	{
		HeapTuple	row = w->cands.rows[w->cands.next];
		bool		isnull;
		int64		id = DatumGetInt64(heap_getattr(row, QL_ROW_ID, w->cands.desc, &isnull));

		if (ql_job_crash_pending(id) || !ql_try_claim(id, true))
		{
			w->cands.next++;
			continue;
		}
		MemoryContextReset(w->job_cxt);
		/* done or changed since the look, as a fresh snapshot sees it? */
		if (!ql_read_row(w, row, w->cands.desc, job))
		{
			w->cands.next++;
			ql_release_claim(id);
			continue;
		}
		if (queue != NULL && strcmp(job->queue, queue) != 0)
		{
			/* the next round runs it */
			ql_release_claim(id);
			return QL_CANDIDATE_OTHER_BATCH;
		}
		/* paused or full since the look, or with no slot left? */
		if (ql_limits_admit(ql_catalog(false), job->queue, job->role, id) != QL_ADMIT)
		{
			ql_release_claim(id);
			if (queue != NULL)
				return QL_CANDIDATE_OTHER_BATCH;	/* the batch ends */
			w->cands.next++;
			continue;
		}
		w->cands.next++;
		return QL_CANDIDATE_CLAIMED;
	}
	return QL_CANDIDATE_NONE_LEFT;
}

/*
 * Reservations.  Under a drain of batches, the jobs at the frontier are
 * claimed by the batches under way, each of which takes the candidates
 * after its first job in turn: a look from the frontier meets a claimed
 * job per batch job under way, and a worker that claimed the first free
 * one after them would take the next jobs of a batch that has just begun,
 * and the two would claim alternately, each failing on the other's claims.
 * So a worker that starts a batch publishes where it expects the batch to
 * end, the database's reservation, and a worker whose look from the
 * frontier found every candidate claimed looks on from the reservation,
 * and moves it past the jobs its own batch will take.
 *
 * A reservation is only a hint: no job is claimed but one by one, as
 * always.  A job it passes over that no batch takes (one that ended early,
 * or released a claim) is found by the looks from the frontier once the
 * jobs before it are done, or by the look that goes back when none is
 * left after the reservation.  It holds until the next commit that writes
 * jobs (frontier_gen), which may have put ready ones anywhere before it: a
 * job of a higher priority is not passed over for it.
 */

/* ql_reservation: this database's reservation, if one holds */
static bool
ql_reservation(QlDatabase *db, uint64 gen, QlClaimKey *key)
{
	bool		valid;

	SpinLockAcquire(&db->frontier_mutex);
	valid = (db->reserved_gen == gen && db->frontier_gen == gen);
	*key = db->reserved;
	SpinLockRelease(&db->frontier_mutex);
	return valid;
}

/*
 * ql_reserve_from: move the reservation from one place to another, as
 * read from at generation gen; false if it moved meanwhile.  Without from,
 * only forward (or in a new generation).
 */
static bool
ql_reserve_from(QlDatabase *db, uint64 gen, const QlClaimKey *from,
				const QlClaimKey *to)
{
	bool		moved = false;

	SpinLockAcquire(&db->frontier_mutex);
	if (db->frontier_gen == gen &&
		(from != NULL ?
		 db->reserved_gen == gen && ql_key_cmp(&db->reserved, from) == 0 :
		 db->reserved_gen != gen || ql_key_cmp(to, &db->reserved) > 0))
	{
		db->reserved = *to;
		db->reserved_gen = gen;
		moved = true;
	}
	SpinLockRelease(&db->frontier_mutex);
	return moved;
}

/* ql_candidate_key: the place of candidate i of the last look, or after its last */
static void
ql_candidate_key(QlWorker *w, int i, QlClaimKey *key)
{
	if (i < w->cands.n)
		ql_row_key(w->cands.rows[i], w->cands.desc, key);
	else
		*key = w->cands.resume;
}

/*
 * ql_reserve: the job just claimed starts a batch of about njobs jobs:
 * reserve the candidates after it, unless the reservation goes further
 * already.
 */
void
ql_reserve(QlWorker *w, int njobs)
{
	QlClaimKey	end;

	if (njobs <= 1 || w->cands.next == 0)
		return;
	ql_candidate_key(w, w->cands.next - 1 + njobs, &end);
	(void) ql_reserve_from(w->database, w->look_gen, NULL, &end);
}

/*
 * ql_look_reserved: look from the reservation, if one holds past after,
 * and take the jobs of a batch of about njobs from there; false if none
 * holds.  If another worker moves it first, look again from where it
 * moved.
 */
static bool
ql_look_reserved(QlWorker *w, const QlClaimKey *after, int limit, int njobs)
{
	QlClaimKey	from;
	QlClaimKey	end;
	int			tries;

	for (tries = 0; tries < 3; tries++)
	{
		if (!ql_reservation(w->database, w->look_gen, &from) ||
			ql_key_cmp(&from, after) <= 0)
			return tries > 0;
		ql_look(w, &from, limit);
		ql_candidate_key(w, njobs, &end);
		if (ql_reserve_from(w->database, w->look_gen, &from, &end))
			break;
	}
	return true;
}

/*
 * ql_claim_begin: read the claim frontier for the next claim without a
 * batch, before its transaction takes its snapshot.  A commit that writes
 * jobs, or unblocks a queue, lowers the frontier after it is visible: one
 * that the look's snapshot, or its reading of the paused and limited
 * queues (limits.c), does not see lowers it after this read, and the
 * look's advance, checked against the generation read here, fails.  Read
 * inside the transaction, a REPEATABLE READ snapshot (taken at its start)
 * could miss a commit whose lowering came before the read.
 */
void
ql_claim_begin(QlWorker *w)
{
	ql_frontier_get(w->database, &w->look_from, &w->look_gen);
}

/*
 * ql_claim: claim the first ready job at or after a place in the claim
 * order.  Returns false if there is none, or, for a batch of a queue, if
 * the next one cannot join it.  Caller is connected to SPI, in a
 * transaction with an active snapshot.
 *
 * Without a batch, the look starts at the claim frontier of the database
 * as ql_claim_begin read it (moving it forward), or, in one worker of the
 * database every qlater.poll_interval, at the start of the order, in case
 * jobs were written other than through qlater's functions (moving the
 * frontier back to the first it finds);
 * if it finds every job claimed, it looks on from the reservation (above).
 * A batch takes the candidates of its last look first, and then looks on
 * from there.  Either way the look skips the index entries of jobs done,
 * which stay until no snapshot can see them: a look from the start would
 * visit each of them again, with every claim, and for as long as any
 * session holds an old snapshot.
 */
bool
ql_claim(QlWorker *w, QlJob *job, const char *batch_queue, int batch_size)
{
	int			base = ql_shared->nslots * 2 + 8;
	int			limit = base;
	int			looks = 0;
	int			max_looks = 3;
	bool		look;
	bool		jumped = false;
	QlClaimKey	start;
	QlClaimKey	skipped = ql_key_min;
	uint64		gen = 0;
	bool		from_start = false;

	if (batch_queue == NULL)
	{
		TimestampTz now = GetCurrentTimestamp();
		uint64		last = pg_atomic_read_u64(&w->database->looked_from_start);

		start = w->look_from;
		gen = w->look_gen;

		/*
		 * One worker of the database looks from the start every
		 * poll_interval: with jobs of paused or full queues before the
		 * frontier, each such look reads them all.
		 */
		if (now - (TimestampTz) last >= (int64) ql_poll_interval * 1000 &&
			pg_atomic_compare_exchange_u64(&w->database->looked_from_start,
										   &last, (uint64) now))
		{
			from_start = true;
			start = ql_key_min;
		}
	}
	else
		limit += batch_size * 2;

	/* a batch first tries what its last look left */
	for (look = (batch_queue == NULL);; look = true)
	{
		QlCandidateResult result;

		if (look)
		{
			ql_look(w, &start, limit);
			if (batch_queue == NULL && looks == 0)
			{
				QlClaimKey	first;
				QlClaimKey	next;

				if (w->cands.n > 0)
					ql_row_key(w->cands.rows[0], w->cands.desc, &first);
				ql_next_frontier(w, &start, w->cands.n > 0 ? &first : NULL,
								 w->cands.resume.priority, &next);
				if (ql_key_cmp(&next, &start) > 0)
					ql_frontier_advance(w->database, &next, gen);
				/* jobs the frontier had passed: every worker finds them now */
				if (from_start && w->cands.n > 0 &&
					ql_key_cmp(&first, &w->look_from) < 0)
					ql_frontier_lower(w->database, &first);
			}
			looks++;
		}
		result = ql_claim_candidate(w, job, batch_queue);
		if (result != QL_CANDIDATE_NONE_LEFT)
			return result == QL_CANDIDATE_CLAIMED;
		if (batch_queue == NULL && looks == 1 && w->cands.cut)
		{
			/* all claimed: batches are under way; look after the last */
			skipped = w->cands.resume;
			if (ql_look_reserved(w, &skipped, base + Max(w->batch_expect, 1),
								 Max(w->batch_expect, 1)))
			{
				jumped = true;
				looks++;
				max_looks++;
				result = ql_claim_candidate(w, job, NULL);
				if (result == QL_CANDIDATE_CLAIMED)
					return true;
			}
		}
		if (jumped && !w->cands.cut)
		{
			/* none left after it: back to what the reservation passed over */
			jumped = false;
			start = skipped;
			limit = base * 8;
			max_looks++;
			continue;
		}
		if (look && (!w->cands.cut || looks >= max_looks))
			return false;
		/* every candidate was claimed by others, or tried: look further */
		if (look)
			limit *= 8;
		start = w->cands.resume;
	}
}

/*
 * ql_first_due: when the first job for the in-server workers is due, ready
 * or not (one running in another worker counts), DT_NOEND if there is
 * none.  Jobs of paused queues and of queues limited to 0 do not count:
 * what lets them run wakes a worker of the database, or makes it wanted
 * (limits.c).  Caller is connected to SPI.
 */
TimestampTz
ql_first_due(QlWorker *w)
{
	bool		isnull;
	Datum		d;
	Datum		blocked = ql_limits_blocked_queues(ql_catalog(false));
	int			rc;

	if (blocked == (Datum) 0)
		rc = SPI_execute_plan(w->plans.first_due, NULL, NULL, true, 1);
	else
		rc = SPI_execute_plan(w->plans.first_due_but, &blocked, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not look for the first job due");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? DT_NOEND : DatumGetTimestampTz(d);
}

/*
 * ql_next_wakeup_ms: how long an idle worker may sleep: until the next
 * future job is due, at most qlater.poll_interval.  Caller is connected to
 * SPI.
 */
long
ql_next_wakeup_ms(QlWorker *w)
{
	bool		isnull;
	Datum		d;
	long		ms = ql_poll_interval;

	if (SPI_execute_plan(w->plans.next, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for future jobs");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
	{
		TimestampTz next = DatumGetTimestampTz(d);
		TimestampTz now = GetCurrentTimestamp();

		if (next <= now)
			ms = 0;
		else
		{
			/* round up: waking early only costs another look */
			int64		wait = (next - now + 999) / 1000;

			if (wait < ms)
				ms = (long) wait;
		}
	}
	/* a job left for want of a slot: no release wakes the worker for it */
	return ql_limits_room_wanted(ms);
}
