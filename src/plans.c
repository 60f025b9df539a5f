/*-------------------------------------------------------------------------
 *
 * plans.c
 *		A worker's state, and the statements it runs on the job table:
 *		prepared once per catalog generation, with their own settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "job.h"
#include "qlater.h"
#include "shmem.h"

static const char *const job_att_names[QL_NJOBATTS] = {
	"id", "handler", "args", "role", "timeout", "attempts", "max_attempts", "queue",
	"enqueued_at"
};

/* settings of the worker's own statements; handlers run with the database's */
static const char *const worker_settings[][2] = {
	/*
	 * They run as a superuser: the database's search_path (ALTER DATABASE
	 * ... SET) could hold an operator or function of the same name as one
	 * they use.
	 */
	{"search_path", "pg_catalog, pg_temp"},

	/*
	 * Their plans are kept, and a plan made while the statistics said the
	 * job table was empty (after a VACUUM of an empty queue) would scan and
	 * sort every ready job at each claim: the claim-order index it is.
	 */
	{"enable_seqscan", "off"},
	{"enable_bitmapscan", "off"},
	{"enable_sort", "off"},

	/*
	 * A scan disabled above that a statement cannot do without (the read
	 * of qlater_handler, which has no index for it) costs the plan 1e10:
	 * far above jit_above_cost, so JIT would compile, inline and optimize
	 * it at every run, about 0.1 s of CPU for a few rows, in every worker
	 * at every reload of the registry.
	 */
	{"jit", "off"},
};

/* ql_worker_settings: the worker's own settings, for the session */
void
ql_worker_settings(void)
{
	int			i;

	for (i = 0; i < lengthof(worker_settings); i++)
		SetConfigOption(worker_settings[i][0], worker_settings[i][1],
						PGC_SUSET, PGC_S_SESSION);
}

/*
 * ql_handler_settings: the database's settings in place of the worker's
 * own, in the current GUC nest level.
 */
void
ql_handler_settings(void)
{
	int			i;

	for (i = 0; i < lengthof(worker_settings); i++)
		(void) set_config_option(worker_settings[i][0],
								 GetConfigOptionResetString(worker_settings[i][0]),
								 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/* ql_job_init: per-process set-up; call once after connecting */
void
ql_job_init(QlWorker *w, QlWorkerSlot *slot)
{
	memset(w, 0, sizeof(*w));
	w->slot = slot;
	ql_worker_settings();
	w->job_cxt = AllocSetContextCreate(TopMemoryContext, "qlater job",
									ALLOCSET_DEFAULT_SIZES);
	w->cands.cxt = AllocSetContextCreate(TopMemoryContext, "qlater candidates",
									  ALLOCSET_DEFAULT_SIZES);
	w->timeout_id = RegisterTimeout(USER_TIMEOUT, ql_job_timeout_handler);
	ql_call_init();
	LWLockAcquire(ql_shared->lock, LW_SHARED);
	w->database = ql_find_database(MyDatabaseId, false);
	LWLockRelease(ql_shared->lock);
	if (w->database == NULL)
		elog(ERROR, "database %u is not served by qlater", MyDatabaseId);
}

/*
 * ql_prepare: prepare and keep a statement, with a generic plan: the
 * planner would otherwise plan every execution anew for a parameter such
 * as a LIMIT, whose generic estimate looks worse than the custom one.
 * Caller is connected to SPI.
 */
SPIPlanPtr
ql_prepare(const char *query, int nargs, Oid *types)
{
	return ql_prepare_kept(query, nargs, types, CURSOR_OPT_GENERIC_PLAN);
}

/* ql_prepare_plans: (re)prepare the job-table statements if needed */
void
ql_prepare_plans(QlWorker *w, const QlCatalog *c)
{
	const char *s = c->schema_quoted;
	Oid			t_from[4] = {INT4OID, INT4OID, TIMESTAMPTZOID, INT8OID};
	Oid			t_prio[2] = {INT4OID, INT4OID};
	Oid			t_id[1] = {INT8OID};
	Oid			t_text[1] = {TEXTOID};
	Oid			t_texts[1] = {TEXTARRAYOID};
	Oid			t_fail[5] = {INT8OID, INT4OID, JSONBOID, TIMESTAMPTZOID, BOOLOID};
	Oid			t_settle[6] = {INT8OID, INT4OID, INT4OID, JSONBOID, TIMESTAMPTZOID, BOOLOID};
	int			i;

	if (w->plans.candidates != NULL && w->plans.generation == c->generation)
		return;
	if (w->plans.candidates != NULL)
	{
		SPI_freeplan(w->plans.candidates);
		SPI_freeplan(w->plans.future_before);
		SPI_freeplan(w->plans.fetch);
		SPI_freeplan(w->plans.queue);
		SPI_freeplan(w->plans.delete);
		SPI_freeplan(w->plans.fail);
		SPI_freeplan(w->plans.next);
		SPI_freeplan(w->plans.first_due);
		SPI_freeplan(w->plans.first_due_but);
		SPI_freeplan(w->plans.settle_read);
		SPI_freeplan(w->plans.settle);
	}
	w->plans.candidates = ql_prepare(psprintf("SELECT " QL_ROW_COLUMNS " FROM %s.qlater_job "
										   "WHERE NOT dead AND run_at <= now() AND NOT external "
										   "AND (priority, run_at, id) >= ($2, $3, $4) "
										   "ORDER BY priority, run_at, id LIMIT $1", s),
								  4, t_from);
	w->plans.future_before = ql_prepare(psprintf("SELECT FROM %s.qlater_job "
											  "WHERE NOT dead AND NOT external AND run_at > now() "
											  "AND priority >= $1 AND priority < $2 LIMIT 1", s),
									 2, t_prio);
	/* the job by id alone: no plan may read another of its indexes */
	w->plans.fetch = ql_prepare(psprintf("SELECT " QL_ROW_COLUMNS " FROM %s.qlater_job "
									  "WHERE id = $1 AND NOT dead AND NOT external "
									  "AND run_at <= now()", s),
							 1, t_id);
	w->plans.queue = ql_prepare(psprintf("SELECT batch_size, "
									  "(extract(epoch FROM batch_delay) * 1000000)::int8 "
									  "FROM %s.qlater_queue WHERE name = $1", s),
							 1, t_text);
	w->plans.delete = ql_prepare(psprintf("DELETE FROM %s.qlater_job WHERE id = $1", s),
							  1, t_id);
	w->plans.fail = ql_prepare(psprintf("UPDATE %s.qlater_job SET attempts = $2, last_error = $3, "
									 "run_at = $4, dead = $5 WHERE id = $1 RETURNING key", s),
							5, t_fail);
	w->plans.next = ql_prepare(psprintf("SELECT min(run_at) FROM %s.qlater_job "
									 "WHERE NOT dead AND NOT external AND run_at > now()", s),
							0, NULL);
	w->plans.first_due = ql_prepare(psprintf("SELECT min(run_at) FROM %s.qlater_job "
										  "WHERE NOT dead AND NOT external", s),
								 0, NULL);
	w->plans.first_due_but = ql_prepare(psprintf("SELECT min(run_at) FROM %s.qlater_job "
											  "WHERE NOT dead AND NOT external "
											  "AND queue <> ALL ($1)", s),
									 1, t_texts);
	w->plans.settle_read = ql_prepare(psprintf("SELECT attempts, max_attempts, crashes, timeout, run_at "
											"FROM %s.qlater_job WHERE id = $1 AND NOT dead "
											"FOR UPDATE", s),
								   1, t_id);
	w->plans.settle = ql_prepare(psprintf("UPDATE %s.qlater_job SET attempts = $2, crashes = $3, "
									   "last_error = $4, run_at = $5, dead = $6 WHERE id = $1 "
									   "RETURNING queue, role, key", s),
							  6, t_settle);
	w->plans.job_relid = c->job_relid;
	for (i = 0; i < QL_NJOBATTS; i++)
	{
		w->plans.att[i] = get_attnum(c->job_relid, job_att_names[i]);
		if (w->plans.att[i] == InvalidAttrNumber)
			elog(ERROR, "column %s.qlater_job.%s does not exist", s, job_att_names[i]);
	}
	w->plans.generation = c->generation;
	/* a new job table: the frontier means nothing in it */
	ql_frontier_table(w->database, c->job_relid);
}
