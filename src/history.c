/*-------------------------------------------------------------------------
 *
 * history.c
 *		Every outcome of a job, recorded in the transaction of the outcome
 *		itself, kept per queue, and expired without bloat; and
 *		qlater_job_status.
 *
 * The outcomes live in qlater_outcome, partitioned by slot into a ring of
 * QL_HISTORY_SLOTS tables.  The slot written now is the current stretch of
 * time, each stretch a twelfth of the longest keep_history of the
 * database's queues (QL_HISTORY_MIN_WIDTH at least): a slot is written for
 * one stretch, and its rows have all expired a stretch or two before its
 * turn comes again.  A worker of the database looks every second
 * (ql_history_expire_due) for slots whose rows have all expired and empties
 * them with TRUNCATE: no dead tuples, nothing for VACUUM.
 *
 * What each slot holds until at least when is noted in shared memory by
 * every writer (QlDatabase.history_expires_by); the expiry trusts it only
 * to decide where to look: it locks the slot's table without waiting (a
 * reader, a dump or a writer holding it makes it try again a second
 * later, and no job's completion ever waits in a queue behind it), then
 * reads the latest expires_at of the table under that lock, which keeps
 * writers out, and empties the table only if every row has expired.  So a
 * row is never removed before its expires_at, whatever the shared memory
 * says (after a restart it says nothing; after a restore of a dump, too
 * little).  The table of a slot is the one PostgreSQL routes the slot's
 * rows to, as for the writers (ql_history_write); one that takes other
 * rows too (a DBA's table of several slots, a default partition) is never
 * emptied.  The view qlater_history hides expired rows meanwhile, so each
 * queue's retention is exact to the second; only the space comes back a
 * stretch or two later.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "pgstat.h"
#include "rewrite/rewriteHandler.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/partcache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "api.h"
#include "catalog.h"
#include "history.h"
#include "job.h"
#include "qlater.h"
#include "queue.h"
#include "shmem.h"
#include "stats.h"
#include "xact.h"

PG_FUNCTION_INFO_V1(qlater_job_status);
PG_FUNCTION_INFO_V1(qlater_purge_dead);

/* the shortest stretch a slot is written for */
#define QL_HISTORY_MIN_WIDTH	(5 * USECS_PER_SEC)

/* how often a worker looks for slots to empty */
#define QL_HISTORY_EXPIRE_EVERY	USECS_PER_SEC

/* history_expires_by of a slot known empty; 0: not known */
#define QL_HISTORY_EMPTY		1

typedef enum QlHistoryStmt
{
	QL_H_RECORD,				/* the outcome of one job, from its row */
	QL_H_RECORD_MANY,			/* the same for several */
	QL_H_INSERT,				/* outcomes, from arrays (ql_history_insert) */
	QL_H_JOB,					/* a job as it is now */
	QL_H_LAST,					/* a job's last outcome */
	QL_H_PURGE,					/* remove dead jobs, with their outcomes */
	QL_NUM_H_STMTS
} QlHistoryStmt;

/*
 * The outcome of job(s) $1, read from the job's row, as its (sub)
 * transaction leaves it: before a removal (done, cancelled, purged: the
 * attempt is the row's attempts plus $5), or after the update that records
 * a failure (failed, dead, timeout, crashed: the row's last_error and
 * attempts are this attempt's already, $5 is 0, and $7 is when the attempt
 * was due, the row's run_at before the update; NULL: the row's).  $3 is
 * when the attempt began; NULL: when the row's lease was taken, if it has
 * one (running.c), else not known.  Nothing is written for a queue that
 * keeps no history.  Returns each job's queue and when its attempt was due
 * (for its counters: stats.c), the latest expires_at written, and whether
 * the job is external.
 */
#define QL_H_RECORD_SQL(where, started) \
	"WITH j AS (SELECT j.id, j.queue, j.handler, j.role, " \
	"CASE WHEN COALESCE(q.history_args, true) THEN j.args END AS args, " \
	"j.enqueued_at, COALESCE($7, j.run_at) AS due, " started " AS started, " \
	"j.attempts OPERATOR(pg_catalog.+) $5 AS attempt, " \
	"CASE WHEN $6 OPERATOR(pg_catalog.=) ANY ('{done,cancelled}'::pg_catalog.text[]) " \
	"THEN NULL ELSE j.last_error END AS error, " \
	"COALESCE(q.keep_history, '1 day'::pg_catalog.interval) AS keep, j.external " \
	"FROM %1$s.qlater_job j LEFT JOIN %1$s.qlater_queue q " \
	"ON q.name OPERATOR(pg_catalog.=) j.queue WHERE " where "), " \
	"h AS (INSERT INTO %1$s.qlater_outcome (slot, id, queue, handler, role, args, " \
	"enqueued_at, run_at, started_at, finished_at, attempt, outcome, error, expires_at, " \
	"external) " \
	"SELECT $2, j.id, j.queue, j.handler, j.role, j.args, j.enqueued_at, j.due, j.started, $4, " \
	"j.attempt, $6, j.error, $4 OPERATOR(pg_catalog.+) j.keep, j.external FROM j " \
	"WHERE j.keep OPERATOR(pg_catalog.>) '0'::pg_catalog.interval " \
	"RETURNING expires_at) " \
	"SELECT j.queue, j.due, (SELECT pg_catalog.max(h.expires_at) FROM h), j.external, " \
	"j.started FROM j"

static const QlStmtDef h_stmt_defs[QL_NUM_H_STMTS] = {
	[QL_H_RECORD] = {
		QL_H_RECORD_SQL("j.id OPERATOR(pg_catalog.=) $1", "COALESCE($3, j.claimed_at)"),
		7, {INT8OID, INT2OID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, TEXTOID,
		TIMESTAMPTZOID}
	},
	[QL_H_RECORD_MANY] = {
		/* $8: the start of each job's attempt, in the order of $1 (or NULL) */
		QL_H_RECORD_SQL("j.id OPERATOR(pg_catalog.=) ANY ($1)",
						"COALESCE($3, (SELECT u.s FROM ROWS FROM (pg_catalog.unnest($1), "
						"pg_catalog.unnest($8)) AS u(i, s) WHERE u.i OPERATOR(pg_catalog.=) j.id "
						"LIMIT 1), j.claimed_at)"),
		8, {INT8ARRAYOID, INT2OID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, TEXTOID,
		TIMESTAMPTZOID, TIMESTAMPTZARRAYOID}
	},
	/* $1 the slot, then a column each, in QlOutcomeColumn's order */
	[QL_H_INSERT] = {
		"INSERT INTO %1$s.qlater_outcome (slot, id, queue, handler, role, args, "
		"enqueued_at, run_at, started_at, finished_at, attempt, outcome, error, expires_at, "
		"external) "
		"SELECT $1, d.* FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), "
		"pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
		"pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), "
		"pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), "
		"pg_catalog.unnest($13), pg_catalog.unnest($14), pg_catalog.unnest($15)) AS d",
		15, {INT2OID, INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, NAMEARRAYOID,
			JSONBARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID,
			TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
		JSONBARRAYOID, TIMESTAMPTZARRAYOID, BOOLARRAYOID}
	},
	/* as qlater_jobs shows it */
	[QL_H_JOB] = {
		"SELECT id, state, queue, handler, role, attempts, enqueued_at, run_at, "
		"NULL::pg_catalog.timestamptz, NULL::pg_catalog.timestamptz, last_error "
		"FROM %1$s.qlater_jobs WHERE id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	},
	[QL_H_LAST] = {
		"SELECT id, outcome, queue, handler, role, attempt, enqueued_at, run_at, "
		"started_at, finished_at, error "
		"FROM %1$s.qlater_history WHERE id OPERATOR(pg_catalog.=) $1 "
		"ORDER BY finished_at DESC, attempt DESC LIMIT 1",
		1, {INT8OID}
	},
	/*
	 * The dead jobs of queue $1 (NULL: any) that died at $2 or before, of role $3
	 * (NULL: any role's), removed with a 'purged' outcome each (in slot $4,
	 * at $5); returns how many
	 */
	[QL_H_PURGE] = {
		"WITH d AS (DELETE FROM %1$s.qlater_job j WHERE j.dead "
		"AND ($1 IS NULL OR j.queue OPERATOR(pg_catalog.=) $1) "
		"AND j.run_at OPERATOR(pg_catalog.<=) $2 "
		"AND ($3 IS NULL OR j.role OPERATOR(pg_catalog.=) $3) RETURNING j.*), "
		"h AS (INSERT INTO %1$s.qlater_outcome (slot, id, queue, handler, role, args, "
		"enqueued_at, run_at, started_at, finished_at, attempt, outcome, error, expires_at, "
		"external) "
		"SELECT $4, d.id, d.queue, d.handler, d.role, "
		"CASE WHEN COALESCE(q.history_args, true) THEN d.args END, "
		"d.enqueued_at, d.run_at, NULL, $5, d.attempts, 'purged', d.last_error, "
		"$5 OPERATOR(pg_catalog.+) COALESCE(q.keep_history, '1 day'::pg_catalog.interval), "
		"d.external "
		"FROM d LEFT JOIN %1$s.qlater_queue q ON q.name OPERATOR(pg_catalog.=) d.queue "
		"WHERE COALESCE(q.keep_history, '1 day'::pg_catalog.interval) "
		"OPERATOR(pg_catalog.>) '0'::pg_catalog.interval) "
		"SELECT d.queue, pg_catalog.count(*) FROM d GROUP BY d.queue",
		5, {TEXTOID, TIMESTAMPTZOID, NAMEOID, INT2OID, TIMESTAMPTZOID}
	},
};

static QlStmtSet h_stmts = {h_stmt_defs, QL_NUM_H_STMTS, NULL, 0};

StaticAssertDecl(lengthof(((QlDatabase *) NULL)->history_expires_by) == QL_HISTORY_SLOTS,
				 "one history bound per slot");

/* when this backend last looked for slots to empty */
static TimestampTz last_expiry_look = 0;

/*
 * ql_history_width: the stretch of time a slot is written for, in
 * microseconds: a twelfth of the longest keep_history, so that a slot's
 * rows have all expired 13 stretches after its own began, three before it
 * is written again
 */
static int64
ql_history_width(const QlCatalog *c)
{
	return Max(ql_queues_max_keep(c) / 12, QL_HISTORY_MIN_WIDTH);
}

/* ql_history_slot_at: the slot written at time t */
static int
ql_history_slot_at(int64 width, TimestampTz t)
{
	return (int) (((uint64) Max(t, 0) / (uint64) width) % QL_HISTORY_SLOTS);
}

/* ql_history_slot_now: the slot written at now */
int
ql_history_slot_now(const QlCatalog *c, TimestampTz now)
{
	return ql_history_slot_at(ql_history_width(c), now);
}

/* ql_history_note: slot holds rows until until at least (shared memory) */
void
ql_history_note(int slot, TimestampTz until)
{
	QlDatabase *db = ql_shared != NULL ? ql_my_database() : NULL;
	pg_atomic_uint64 *bound;
	uint64		old;

	if (db == NULL)
		return;
	bound = &db->history_expires_by[slot];
	old = pg_atomic_read_u64(bound);
	while (old < (uint64) until &&
		   !pg_atomic_compare_exchange_u64(bound, &old, (uint64) until))
		;
}

/*
 * ql_history_record_stmt: run a record statement on id (one, or an array
 * of them) and note what it wrote
 */
static void
ql_history_record_stmt(const QlCatalog *c, QlHistoryStmt s, Datum id,
					   QlOutcome outcome, TimestampTz started_at,
					   Datum started_ats, int32 attempt_added, TimestampTz due_at)
{
	TimestampTz now = GetCurrentTimestamp();
	int			slot = ql_history_slot_at(ql_history_width(c), now);
	QlUserSave	save;
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	TimestampTz until = 0;
	uint64		i;

	values[0] = id;
	values[1] = Int16GetDatum(slot);
	values[2] = TimestampTzGetDatum(started_at);
	if (started_at == 0)
		nulls[2] = 'n';
	values[3] = TimestampTzGetDatum(now);
	values[4] = Int32GetDatum(attempt_added);
	values[5] = CStringGetTextDatum(ql_outcome_names[outcome]);
	values[6] = TimestampTzGetDatum(due_at);
	if (due_at == 0)
		nulls[6] = 'n';
	values[7] = started_ats;
	if (started_ats == (Datum) 0)
		nulls[7] = 'n';

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (ql_stmt_exec(&h_stmts, c, s, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not record the outcome of a job");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		t;

		bool		no_start;
		Datum		started = SPI_getbinval(row, desc, 5, &no_start);

		/*
		 * The attempt ran from its start (column 5: the history's
		 * started_at); an external job's wait was counted at its claim
		 * (qlater_lock), so its due time is not passed on (column 4:
		 * external)
		 */
		ql_stats_note(SPI_getvalue(row, desc, 1), outcome, 1,
					  DatumGetBool(SPI_getbinval(row, desc, 4, &isnull)) ? 0 :
					  DatumGetTimestampTz(SPI_getbinval(row, desc, 2, &isnull)),
					  no_start ? 0 : DatumGetTimestampTz(started), now);
		t = SPI_getbinval(row, desc, 3, &isnull);
		if (!isnull)
			until = Max(until, DatumGetTimestampTz(t));
	}
	SPI_finish();
	ql_restore_user(&save);
	if (until != 0)
		ql_history_note(slot, until);
}

/*
 * ql_history_record: record the outcome of job id from its row, in the
 * current (sub)transaction: before the row is removed (done, cancelled,
 * purged; attempt_added 1 if this was an attempt, 0 if not) or after the
 * update that recorded a failure (failed, dead, timeout, crashed;
 * attempt_added 0; due_at: the run_at the row had before that update).
 * started_at: when the attempt began; either 0 if not known.  Nothing is
 * recorded for a queue that keeps no history, or a job gone.
 */
void
ql_history_record(const QlCatalog *c, int64 id, QlOutcome outcome,
				  TimestampTz started_at, int32 attempt_added, TimestampTz due_at)
{
	ql_history_record_stmt(c, QL_H_RECORD, Int64GetDatum(id), outcome,
						   started_at, (Datum) 0, attempt_added, due_at);
}

/*
 * ql_history_record_many: the same for the jobs of an int8[]; started_ats,
 * a timestamptz[] of the start of each one's attempt in the order of ids
 * (elements NULL, or started_ats (Datum) 0: as ql_history_record's 0)
 */
void
ql_history_record_many(const QlCatalog *c, Datum ids, QlOutcome outcome,
					   TimestampTz started_at, Datum started_ats,
					   int32 attempt_added)
{
	ql_history_record_stmt(c, QL_H_RECORD_MANY, ids, outcome, started_at,
						   started_ats, attempt_added, 0);
}

/*
 * The columns of qlater_outcome, as ql_history_write fills them, with
 * their types: a table whose column of one of these names has another
 * type is written by an INSERT statement (ql_history_insert), never with a
 * datum of the wrong type
 */
typedef enum QlOutcomeColumn
{
	QL_OC_SLOT,
	QL_OC_ID,
	QL_OC_QUEUE,
	QL_OC_HANDLER,
	QL_OC_ROLE,
	QL_OC_ARGS,
	QL_OC_ENQUEUED_AT,
	QL_OC_RUN_AT,
	QL_OC_STARTED_AT,
	QL_OC_FINISHED_AT,
	QL_OC_ATTEMPT,
	QL_OC_OUTCOME,
	QL_OC_ERROR,
	QL_OC_EXPIRES_AT,
	QL_OC_EXTERNAL,
	QL_NUM_OC
} QlOutcomeColumn;

static const struct
{
	const char *name;
	Oid			type;
}			ql_outcome_columns[QL_NUM_OC] = {
	[QL_OC_SLOT] = {"slot", INT2OID},
	[QL_OC_ID] = {"id", INT8OID},
	[QL_OC_QUEUE] = {"queue", TEXTOID},
	[QL_OC_HANDLER] = {"handler", TEXTOID},
	[QL_OC_ROLE] = {"role", NAMEOID},
	[QL_OC_ARGS] = {"args", JSONBOID},
	[QL_OC_ENQUEUED_AT] = {"enqueued_at", TIMESTAMPTZOID},
	[QL_OC_RUN_AT] = {"run_at", TIMESTAMPTZOID},
	[QL_OC_STARTED_AT] = {"started_at", TIMESTAMPTZOID},
	[QL_OC_FINISHED_AT] = {"finished_at", TIMESTAMPTZOID},
	[QL_OC_ATTEMPT] = {"attempt", INT4OID},
	[QL_OC_OUTCOME] = {"outcome", TEXTOID},
	[QL_OC_ERROR] = {"error", JSONBOID},
	[QL_OC_EXPIRES_AT] = {"expires_at", TIMESTAMPTZOID},
	[QL_OC_EXTERNAL] = {"external", BOOLOID},
};

/*
 * ql_history_columns: for each attribute of rel, which of our columns it
 * is; -1: none of them (dropped, or added by someone else: the default
 * an INSERT into qlater_outcome, parent, gives it is prepared in
 * defaults[], else NULL is written).  False if one of our columns is
 * missing or has another type, or a column is of a domain type: only an
 * INSERT says what to make of such a table.
 */
static bool
ql_history_columns(Relation parent, Relation rel, EState *estate, int *map,
				   ExprState **defaults)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		found[QL_NUM_OC] = {0};
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		int			k;

		map[i] = -1;
		defaults[i] = NULL;
		if (att->attisdropped)
			continue;
		for (k = 0; k < QL_NUM_OC; k++)
			if (strcmp(NameStr(att->attname), ql_outcome_columns[k].name) == 0)
				break;
		if (k == QL_NUM_OC)
		{
			AttrNumber	pattnum;
			Node	   *expr;

			/* a domain checks even a value left out: only an INSERT does */
			if (get_typtype(att->atttypid) == TYPTYPE_DOMAIN)
				return false;
			if (att->attgenerated != '\0')
				continue;
			/* as an INSERT into qlater_outcome that does not name it */
			pattnum = get_attnum(RelationGetRelid(parent), NameStr(att->attname));
			if (pattnum == InvalidAttrNumber)
				return false;
			expr = build_column_default(parent, pattnum);
			if (expr != NULL)
				defaults[i] = ExecPrepareExpr((Expr *) expr, estate);
			continue;
		}
		if (att->atttypid != ql_outcome_columns[k].type)
			return false;
		map[i] = k;
		found[k] = true;
	}
	for (i = 0; i < QL_NUM_OC; i++)
		if (!found[i])
			return false;
	return true;
}

/*
 * ql_history_leaf: the leaf table of qlater_outcome (parent, locked) that
 * PostgreSQL routes a row of slot to; InvalidOid if none, or if
 * qlater_outcome is not partitioned by slot as the extension made it.
 * *alone: whether that table takes no other slot's rows (not the default
 * partition, not a list of several slots).
 */
static Oid
ql_history_leaf(Relation parent, int slot, bool *alone)
{
	PartitionKey key;
	PartitionDesc pd;
	PartitionBoundInfo b;
	int			part = -1;
	int			nvalues = 0;
	int			i;

	*alone = false;
	if (parent->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		return InvalidOid;
	key = RelationGetPartitionKey(parent);
	if (key->strategy != PARTITION_STRATEGY_LIST || key->partnatts != 1 ||
		key->partattrs[0] == 0 || key->parttypid[0] != INT2OID ||
		strcmp(NameStr(TupleDescAttr(RelationGetDescr(parent),
									 key->partattrs[0] - 1)->attname), "slot") != 0)
		return InvalidOid;
	pd = RelationGetPartitionDesc(parent, true);
	b = pd->boundinfo;
	if (b == NULL)
		return InvalidOid;
	for (i = 0; i < b->ndatums; i++)
		if (DatumGetInt16(b->datums[i][0]) == slot)
			part = b->indexes[i];
	if (part < 0)
		part = b->default_index;
	if (part < 0 || !pd->is_leaf[part])
		return InvalidOid;
	for (i = 0; i < b->ndatums; i++)
		if (b->indexes[i] == part)
			nvalues++;
	*alone = nvalues == 1 && part != b->default_index && part != b->null_index;
	return pd->oids[part];
}

/*
 * ql_history_partition: the table of qlater_outcome (parent, locked) that
 * an INSERT of a row of slot would write, if the row goes there as
 * PostgreSQL routes it and nothing but the row's own table has a say in
 * it; else InvalidOid (ql_history_insert writes it)
 */
static Oid
ql_history_partition(Relation parent, int slot)
{
	TriggerDesc *trig = parent->trigdesc;
	bool		alone;

	/* what an INSERT into the parent does more than its partition's */
	if ((trig != NULL && (trig->trig_insert_before_statement ||
						  trig->trig_insert_after_statement ||
						  trig->trig_insert_new_table)) ||
		parent->rd_rules != NULL ||
		(parent->rd_rel->relrowsecurity && parent->rd_rel->relforcerowsecurity))
		return InvalidOid;
	return ql_history_leaf(parent, slot, &alone);
}

/* ql_history_array: an array of the n values (nulls where isnull says) */
static Datum
ql_history_array(Datum *values, bool *isnull, int n, Oid type)
{
	int16		len;
	bool		byval;
	char		align;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(type, &len, &byval, &align);
	return PointerGetDatum(construct_md_array(values, isnull, 1, dims, lbs,
											  type, len, byval, align));
}

/*
 * ql_outcome_values: outcome r as the values of our columns but slot
 * (values[QL_OC_ID] on), and which are null; in the current memory context
 */
static void
ql_outcome_values(const QlOutcomeRow *r, Datum *values, bool *nulls)
{
	Name		role = palloc(NAMEDATALEN);

	namestrcpy(role, r->role);
	values[QL_OC_ID] = Int64GetDatum(r->id);
	values[QL_OC_QUEUE] = CStringGetTextDatum(r->queue);
	values[QL_OC_HANDLER] = CStringGetTextDatum(r->handler);
	values[QL_OC_ROLE] = NameGetDatum(role);
	values[QL_OC_ARGS] = r->args;
	values[QL_OC_ENQUEUED_AT] = TimestampTzGetDatum(r->enqueued_at);
	values[QL_OC_RUN_AT] = TimestampTzGetDatum(r->run_at);
	values[QL_OC_STARTED_AT] = TimestampTzGetDatum(r->started_at);
	values[QL_OC_FINISHED_AT] = TimestampTzGetDatum(r->finished_at);
	values[QL_OC_ATTEMPT] = Int32GetDatum(r->attempt);
	values[QL_OC_OUTCOME] = CStringGetTextDatum(ql_outcome_names[r->outcome]);
	values[QL_OC_ERROR] = r->error;
	values[QL_OC_EXPIRES_AT] = TimestampTzGetDatum(r->expires_at);
	values[QL_OC_EXTERNAL] = BoolGetDatum(r->external);
	memset(nulls, 0, sizeof(bool) * QL_NUM_OC);
	nulls[QL_OC_ARGS] = r->args == (Datum) 0;
	nulls[QL_OC_STARTED_AT] = r->started_at == 0;
	nulls[QL_OC_ERROR] = r->error == (Datum) 0;
}

/*
 * ql_history_insert: write n outcomes into qlater_outcome with an INSERT
 * statement, as PostgreSQL does whatever the table has become; what
 * ql_history_write does when its own way would do less
 */
static void
ql_history_insert(const QlCatalog *c, int slot, const QlOutcomeRow *rows, int n)
{
	Datum		values[QL_NUM_OC];
	Datum	   *cols[QL_NUM_OC];
	bool	   *isnull[QL_NUM_OC];
	int			i;
	int			k;

	for (k = 1; k < QL_NUM_OC; k++)
	{
		cols[k] = palloc(sizeof(Datum) * n);
		isnull[k] = palloc0(sizeof(bool) * n);
	}
	for (i = 0; i < n; i++)
	{
		bool		nulls[QL_NUM_OC];

		ql_outcome_values(&rows[i], values, nulls);
		for (k = 1; k < QL_NUM_OC; k++)
		{
			cols[k][i] = values[k];
			isnull[k][i] = nulls[k];
		}
	}
	values[QL_OC_SLOT] = Int16GetDatum(slot);
	for (k = 1; k < QL_NUM_OC; k++)
		values[k] = ql_history_array(cols[k], isnull[k], n, ql_outcome_columns[k].type);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (ql_stmt_exec(&h_stmts, c, QL_H_INSERT, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the outcomes of %d jobs", n);
	SPI_finish();
}

/*
 * ql_history_write: write n outcomes of slot into qlater_outcome, in the
 * current (sub)transaction.  Into the table an INSERT would route them to
 * (ql_history_partition), as logical replication applies an insert
 * (ExecSimpleRelationInsert): that table's constraints, indexes, row
 * triggers and the defaults of columns it does not know, as for an INSERT,
 * without a statement to plan and start for each outcome.  When the
 * tables are not as the extension made them in a way that asks for more
 * (a statement trigger or a rule on qlater_outcome, forced row security,
 * no table for the slot, a column of ours missing or of another type, a
 * column of a domain type), an INSERT statement writes them
 * (ql_history_insert): whatever PostgreSQL makes of it, done or refused,
 * is what happens.
 *
 * The tables stay locked (RowExclusiveLock) until the transaction ends:
 * an expiry (ql_history_empty_slot) leaves the slot until a later look.  Caller acts as the
 * tables' owner, with an active snapshot; notes the slot's rows
 * (ql_history_note) after this.
 */
void
ql_history_write(const QlCatalog *c, int slot, const QlOutcomeRow *rows, int n)
{
	Oid			parent_relid = get_relname_relid("qlater_outcome", c->schema_oid);
	Relation	parent = NULL;
	Oid			relid = InvalidOid;
	Relation	rel = NULL;
	EState	   *estate = NULL;
	RangeTblEntry *rte;
	ResultRelInfo *rri;
	TupleTableSlot *ts;
	int		   *map = NULL;
	ExprState **defaults = NULL;
	ExprContext *econtext;
	Datum		values[QL_NUM_OC];
	bool		nulls[QL_NUM_OC];
	int			i;

	/* the table an INSERT routes the rows to, unless it asks for more */
	if (OidIsValid(parent_relid))
	{
		/* as an INSERT into it locks it */
		parent = table_open(parent_relid, RowExclusiveLock);
		relid = ql_history_partition(parent, slot);
		if (OidIsValid(relid))
			rel = table_open(relid, RowExclusiveLock);
	}
	if (rel != NULL && rel->rd_rel->relkind == RELKIND_RELATION)
	{
		estate = CreateExecutorState();
		map = palloc(sizeof(int) * RelationGetDescr(rel)->natts);
		defaults = palloc(sizeof(ExprState *) * RelationGetDescr(rel)->natts);
		if (!ql_history_columns(parent, rel, estate, map, defaults))
		{
			FreeExecutorState(estate);
			estate = NULL;
		}
	}
	if (parent != NULL)
		table_close(parent, NoLock);
	if (estate == NULL)
	{
		/* else an INSERT statement writes them */
		if (rel != NULL)
			table_close(rel, NoLock);
		if (map != NULL)
		{
			pfree(map);
			pfree(defaults);
		}
		ql_history_insert(c, slot, rows, n);
		return;
	}
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = RELKIND_RELATION;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	/* for the triggers: closed here, not by the executor (no refcount) */
	estate->es_opened_result_relations = list_make1(rri);
	estate->es_output_cid = GetCurrentCommandId(true);
	AfterTriggerBeginQuery();
	ExecOpenIndices(rri, false);
	ts = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), &TTSOpsVirtual);
	econtext = GetPerTupleExprContext(estate);

	values[QL_OC_SLOT] = Int16GetDatum(slot);
	for (i = 0; i < n; i++)
	{
		MemoryContext old;
		int			a;

		/* this row's values and defaults: until the next row */
		ExecClearTuple(ts);
		ResetExprContext(econtext);
		old = MemoryContextSwitchTo(econtext->ecxt_per_tuple_memory);
		ql_outcome_values(&rows[i], values, nulls);
		MemoryContextSwitchTo(old);
		for (a = 0; a < ts->tts_tupleDescriptor->natts; a++)
		{
			if (map[a] >= 0)
			{
				ts->tts_isnull[a] = nulls[map[a]];
				ts->tts_values[a] = nulls[map[a]] ? (Datum) 0 : values[map[a]];
			}
			else if (defaults[a] != NULL)
				ts->tts_values[a] = ExecEvalExprSwitchContext(defaults[a], econtext,
															  &ts->tts_isnull[a]);
			else
			{
				ts->tts_isnull[a] = true;
				ts->tts_values[a] = (Datum) 0;
			}
		}
		ExecStoreVirtualTuple(ts);
		ExecSimpleRelationInsert(rri, estate, ts);
	}

	ExecCloseIndices(rri);
	AfterTriggerEndQuery(estate);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	pfree(map);
	pfree(defaults);
	table_close(rel, NoLock);
}

/*
 * The jobs the in-server workers did in the current transaction, whose
 * outcomes ql_history_flush writes before it commits, all at once
 * (ql_history_write): a job's row is gone by then (a batch removes each job in its
 * subtransaction), so what is written comes from the claim (QlJob).  In
 * TopTransactionContext; forgotten when the transaction ends.
 */
static QlOutcomeRow *done_rows = NULL;
static int	ndone = 0;
static int	done_cap = 0;
static bool done_callback_registered = false;

static void
ql_history_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		done_rows = NULL;
		ndone = 0;
		done_cap = 0;
	}
}

/*
 * ql_history_done: job, run by this worker, is done (its removal is part
 * of the current transaction, or of a subtransaction of it that was
 * released): its outcome is written by ql_history_flush, unless its queue
 * keeps no history
 */
void
ql_history_done(const QlJob *job)
{
	const QlCatalog *c = ql_catalog(false);
	const QlQueue *q;
	int64		keep;
	MemoryContext old;
	QlOutcomeRow *r;
	bool		snapshot = !ActiveSnapshotSet();
	TimestampTz finished = GetCurrentTimestamp();

	/* the queue's settings may have to be read */
	if (snapshot)
		PushActiveSnapshot(GetTransactionSnapshot());
	q = ql_queue_get(c, job->queue);
	keep = q != NULL ? q->keep_history : USECS_PER_DAY;
	ql_stats_note_queue(job->queue, q, QL_OUTCOME_DONE, 1, job->run_at, job->started_at,
						finished);
	if (snapshot)
		PopActiveSnapshot();
	if (keep <= 0)
		return;
	if (!done_callback_registered)
	{
		RegisterXactCallback(ql_history_xact_callback, NULL);
		done_callback_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	if (ndone == done_cap)
	{
		done_cap = Max(done_cap * 2, 16);
		done_rows = done_rows == NULL ? palloc(sizeof(QlOutcomeRow) * done_cap) :
			repalloc(done_rows, sizeof(QlOutcomeRow) * done_cap);
	}
	r = &done_rows[ndone++];
	memset(r, 0, sizeof(*r));
	r->id = job->id;
	r->queue = pstrdup(job->queue);
	r->handler = pstrdup(job->handler);
	r->role = pstrdup(job->role);
	if (q == NULL || q->history_args)
		r->args = PointerGetDatum(PG_DETOAST_DATUM_COPY(JsonbPGetDatum(job->args)));
	r->enqueued_at = job->enqueued_at;
	r->run_at = job->run_at;
	r->started_at = job->started_at;
	r->finished_at = finished;
	r->attempt = job->attempts + 1;
	r->outcome = QL_OUTCOME_DONE;
	r->expires_at = r->finished_at + keep;
	r->external = false;
	MemoryContextSwitchTo(old);
}

/*
 * ql_history_flush: write the outcomes of the jobs done in the current
 * transaction (ql_history_done); before it commits
 */
void
ql_history_flush(void)
{
	const QlCatalog *c;
	TimestampTz until = 0;
	QlUserSave	save;
	int			slot;
	int			i;

	if (ndone == 0)
		return;
	c = ql_catalog(false);
	PushActiveSnapshot(GetTransactionSnapshot());
	slot = ql_history_slot_now(c, GetCurrentTimestamp());
	for (i = 0; i < ndone; i++)
		until = Max(until, done_rows[i].expires_at);
	ql_become_owner(c, &save);
	ql_history_write(c, slot, done_rows, ndone);
	ql_restore_user(&save);
	PopActiveSnapshot();
	/* noted while the table is locked: an expiry sees it after */
	ql_history_note(slot, until);
	ndone = 0;
}

/*
 * ql_history_truncate: empty table, slot's, in a subtransaction: a table a
 * DBA changed so that TRUNCATE fails (a foreign key to it, a trigger that
 * raises) is left as it is, with a warning once per slot and process, and
 * the other slots are still emptied.  False if it failed.
 */
static bool
ql_history_truncate(const char *table, int slot)
{
	static bool warned[QL_HISTORY_SLOTS];
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	bool		ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (SPI_execute(psprintf("TRUNCATE %s", table), false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not empty history slot %d", slot);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (!warned[slot])
			ereport(WARNING,
					(errcode(edata->sqlerrcode),
					 errmsg("could not empty the expired history in table %s: %s",
							table, edata->message),
					 errhint("The table's expired outcomes stay, hidden by qlater_history; "
							 "the other history tables are still emptied.")));
		warned[slot] = true;
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * ql_history_empty_slot: empty slot if all its rows have expired; false
 * if its table is in use (try later).  Caller is in a transaction,
 * connected to SPI (ql_xact_begin), acting as the owner.
 */
static bool
ql_history_empty_slot(const QlCatalog *c, QlDatabase *db, int slot)
{
	/* what a writer notes from now on is not overwritten below */
	uint64		by = pg_atomic_read_u64(&db->history_expires_by[slot]);
	uint64		now_by;
	Oid			parent_relid = get_relname_relid("qlater_outcome", c->schema_oid);
	Relation	parent;
	Oid			relid;
	bool		alone;
	char	   *nsp;
	char	   *rel;
	char	   *table;
	SPIPlanPtr	plan;
	Datum		latest;
	bool		isnull;

	if (!OidIsValid(parent_relid))
		return true;
	/* no waiting: a waiting TRUNCATE would hold up every writer behind it */
	if (!ConditionalLockRelationOid(parent_relid, AccessShareLock))
		return false;
	parent = table_open(parent_relid, NoLock);
	relid = ql_history_leaf(parent, slot, &alone);
	table_close(parent, NoLock);

	/*
	 * Only the table the slot's rows are routed to, a plain table, and only
	 * if it takes no other slot's: a table a DBA made of several slots, the
	 * default partition or a foreign table keeps its rows (the view hides
	 * the expired ones)
	 */
	if (!OidIsValid(relid) || !alone || get_rel_relkind(relid) != RELKIND_RELATION)
		return true;
	if (!ConditionalLockRelationOid(relid, AccessExclusiveLock))
		return false;
	nsp = get_namespace_name(get_rel_namespace(relid));
	rel = get_rel_name(relid);
	if (nsp == NULL || rel == NULL)
		return true;
	table = quote_qualified_identifier(nsp, rel);

	/*
	 * Every writer is out now: what the table holds is all committed, and
	 * read under a snapshot taken after the lock.  Read in this table
	 * alone: a DBA's lock on another slot's does not hold the expiry up.
	 */
	plan = SPI_prepare(psprintf("SELECT pg_catalog.max(expires_at) FROM %s", table), 0, NULL);
	if (plan == NULL ||
		SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read history slot %d", slot);
	SPI_freeplan(plan);
	latest = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		now_by = QL_HISTORY_EMPTY;
	else if (DatumGetTimestampTz(latest) < GetCurrentTimestamp())
	{
		if (!ql_history_truncate(table, slot))
			return true;
		now_by = QL_HISTORY_EMPTY;
	}
	else
		now_by = (uint64) DatumGetTimestampTz(latest);
	/* unless a writer noted more since: its rows may not be visible here */
	(void) pg_atomic_compare_exchange_u64(&db->history_expires_by[slot], &by, now_by);
	return true;
}

/*
 * ql_history_expire_due: in a worker, once a second (per database): empty
 * the slots whose rows have all expired, each in a transaction of its own,
 * leaving alone the slots written now, just before and next.  Called in the
 * worker's loop, outside a transaction.
 */
void
ql_history_expire_due(void)
{
	QlDatabase *db = ql_shared != NULL ? ql_my_database() : NULL;
	TimestampTz now = GetCurrentTimestamp();
	uint64		due;
	const QlCatalog *c;
	int64		width;
	int			current;
	int			i;

	if (db == NULL || now - last_expiry_look < QL_HISTORY_EXPIRE_EVERY)
		return;
	last_expiry_look = now;
	/* one worker of the database a second */
	due = pg_atomic_read_u64(&db->history_expire_at);
	if ((uint64) now < due ||
		!pg_atomic_compare_exchange_u64(&db->history_expire_at, &due,
										(uint64) (now + QL_HISTORY_EXPIRE_EVERY)))
		return;

	for (i = 0; i < QL_HISTORY_SLOTS; i++)
	{
		uint64		by = pg_atomic_read_u64(&db->history_expires_by[i]);
		QlUserSave	save;

		if (by == QL_HISTORY_EMPTY || (by != 0 && by >= (uint64) now))
			continue;
		/* read committed: the slot's rows as committed when it is locked */
		ql_xact_begin_at(XACT_READ_COMMITTED);
		c = ql_catalog(true);
		if (c == NULL || !c->current)
		{
			ql_xact_commit();
			return;
		}
		width = ql_history_width(c);
		current = ql_history_slot_at(width, now);
		if (i != current && i != (current + 1) % QL_HISTORY_SLOTS &&
			i != (current + QL_HISTORY_SLOTS - 1) % QL_HISTORY_SLOTS)
		{
			ql_become_owner(c, &save);
			(void) ql_history_empty_slot(c, db, i);
			ql_restore_user(&save);
		}
		ql_xact_commit();
		pgstat_report_stat(false);
	}
}

/*
 * qlater_job_status(id bigint) returns record: the job as qlater_jobs shows
 * it now (pending, running, dead), or else its last outcome in
 * qlater_history; NULL if neither shows it to the current role.
 */
Datum
qlater_job_status(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	Datum		id = PG_GETARG_DATUM(0);
	TupleDesc	desc;
	HeapTuple	tuple = NULL;
	int			s;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	/* the views decide what the caller sees: read as the caller */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	for (s = QL_H_JOB; s <= QL_H_LAST && tuple == NULL; s++)
	{
		if (ql_stmt_exec(&h_stmts, c, s, &id, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read job");
		if (SPI_processed > 0)
		{
			Datum		values[11];
			bool		nulls[11];
			int			i;

			for (i = 0; i < 11; i++)
				values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										  i + 1, &nulls[i]);
			tuple = heap_form_tuple(BlessTupleDesc(desc), values, nulls);
			tuple = SPI_copytuple(tuple);
		}
	}
	SPI_finish();
	if (tuple == NULL)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}

/*
 * qlater_purge_dead(queue text, older_than interval) returns bigint: remove
 * the dead jobs of queue (NULL: of every queue) that died older_than ago or
 * more, the caller's own (an admin's: every role's), in one statement,
 * each with a 'purged' outcome in the history.  Dead jobs hold no claim,
 * slot or key: nothing else to release, however many.
 */
Datum
qlater_purge_dead(PG_FUNCTION_ARGS)
{
	const QlCatalog *c = ql_catalog(false);
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz cutoff = ql_older_than_cutoff(fcinfo, 1, now);
	int64		keep_max;
	int			slot;
	QlUserSave	save;
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int64		n;
	bool		isnull;
	uint64		i;

	keep_max = ql_queues_max_keep(c);
	slot = ql_history_slot_at(Max(keep_max / 12, QL_HISTORY_MIN_WIDTH), now);
	values[0] = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	nulls[0] = PG_ARGISNULL(0) ? 'n' : ' ';
	values[1] = TimestampTzGetDatum(cutoff);
	/* the caller's own, unless an admin (the owner we act as is not the caller) */
	if (ql_is_admin())
		nulls[2] = 'n';
	else
		values[2] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	values[3] = Int16GetDatum(slot);
	values[4] = TimestampTzGetDatum(now);

	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (ql_stmt_exec(&h_stmts, c, QL_H_PURGE, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not purge dead jobs");
	n = 0;
	for (i = 0; i < SPI_processed; i++)
	{
		int64		count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 2, &isnull));

		ql_stats_note(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
					  QL_OUTCOME_PURGED, (int) count, 0, 0, now);
		n += count;
	}
	SPI_finish();
	ql_restore_user(&save);
	/* an upper bound of what the slot holds now (the longest keep) */
	if (n > 0)
		ql_history_note(slot, now + keep_max);
	PG_RETURN_INT64(n);
}
