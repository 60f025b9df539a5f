/*-------------------------------------------------------------------------
 *
 * failure.c
 *		Failed attempts: their last_error, their backoff (attempts^4 + 3
 *		seconds, at most a year: the one place it is computed, for the
 *		workers and the external consumers alike), and their record.
 *
 * A handler's failure is recorded by the worker that ran it, in a new
 * transaction (or in the batch's).  An attempt that ended in a process
 * that could not record it (the server crashed, or the worker was ended
 * for a timeout or cancel its handler ignored) is recorded later by a
 * worker of its database (ql_settle_ended).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "api.h"
#include "catalog.h"
#include "history.h"
#include "job.h"
#include "qlater.h"
#include "shmem.h"
#include "xact.h"

/* the most bytes of a handler error's message, detail, hint or context kept */
#define QL_MAX_ERROR_FIELD	8192

/*
 * ql_error_json_fields: the last_error value of a failed attempt: a jsonb
 * object with the keys sqlstate, message, detail, hint, context (each may
 * be NULL), attempt and at.
 */
Jsonb *
ql_error_json_fields(const char *sqlstate, const char *message,
					 const char *detail, const char *hint,
					 const char *context, int attempt, TimestampTz at)
{
	StringInfoData buf;
	const char *keys[5] = {"sqlstate", "message", "detail", "hint", "context"};
	const char *vals[5];
	int			i;

	vals[0] = sqlstate;
	vals[1] = message;
	vals[2] = detail;
	vals[3] = hint;
	vals[4] = context;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (i = 0; i < 5; i++)
	{
		escape_json(&buf, keys[i]);
		appendStringInfoString(&buf, ": ");
		if (vals[i])
			escape_json(&buf, vals[i]);
		else
			appendStringInfoString(&buf, "null");
		appendStringInfoString(&buf, ", ");
	}
	appendStringInfo(&buf, "\"attempt\": %d, \"at\": ", attempt);
	escape_json(&buf, timestamptz_to_str(at));
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/*
 * ql_clip: a field of a handler's error as last_error and the log keep it:
 * at most QL_MAX_ERROR_FIELD bytes (a handler may raise an error of any
 * size, and its record must not fail for it: the attempt would never
 * count).
 */
const char *
ql_clip(const char *text)
{
	size_t		len;

	if (text == NULL)
		return NULL;
	len = strlen(text);
	if (len <= QL_MAX_ERROR_FIELD)
		return text;
	return psprintf("%s... (%zu bytes)",
					pnstrdup(text, pg_mbcliplen(text, len, QL_MAX_ERROR_FIELD)), len);
}

/* ql_error_json: the last_error value of an attempt that raised edata */
static Jsonb *
ql_error_json(ErrorData *edata, int attempt, TimestampTz at)
{
	return ql_error_json_fields(unpack_sql_state(edata->sqlerrcode),
								ql_clip(edata->message), ql_clip(edata->detail),
								ql_clip(edata->hint), ql_clip(edata->context),
								attempt, at);
}

/*
 * ql_retry_time: when a job that has failed attempts times runs again:
 * attempts^4 + 3 seconds after now, at most a year.
 */
TimestampTz
ql_retry_time(int32 attempts, TimestampTz now)
{
	double		backoff = (double) attempts * attempts * attempts * attempts + 3.0;

	if (backoff > 365.0 * SECS_PER_DAY)
		backoff = 365.0 * SECS_PER_DAY;
	return now + (TimestampTz) (backoff * USECS_PER_SEC);
}

/*
 * ql_failed_key: the statement that put a failed job of a queue and role
 * back to waiting returned its key in column keycol of its row: let the
 * job keep the key only if no other job of it is alive (ql_key_settle).
 * A worker that holds the job's claim (claimed) releases it at commit,
 * before the key's lock: the next enqueue of the key then sees the job
 * waiting, never running.  Jobs without a key cost nothing more.  Caller
 * is connected to SPI, in the failure's transaction.
 */
static void
ql_failed_key(int64 job_id, const char *queue, const char *role, int keycol,
			  bool claimed)
{
	char	   *key;

	if (SPI_processed == 0)
		return;
	key = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, keycol);
	if (key == NULL)
		return;
	ql_key_settle(ql_catalog(false), job_id, queue, role, key);
	if (claimed)
		ql_release_claim_at_commit(job_id);
}

/*
 * ql_record_failure: count the failed attempt and reschedule the job, or
 * make it dead: in a transaction of its own, or, for a job of a batch, in
 * the batch's transaction; with its outcome in the history (timed_out: the
 * attempt ran out of its timeout).
 */
void
ql_record_failure(QlWorker *w, QlJob *job, ErrorData *edata, bool timed_out,
				  bool permanent, bool in_batch)
{
	int32		attempts = job->attempts + 1;
	bool		dead = permanent || attempts >= job->max_attempts;
	bool		updated;
	TimestampTz now;
	Datum		values[5];

	if (!in_batch)
		ql_xact_begin();
	else
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
	}
	now = GetCurrentTimestamp();

	values[0] = Int64GetDatum(job->id);
	values[1] = Int32GetDatum(attempts);
	values[2] = JsonbPGetDatum(ql_error_json(edata, attempts, now));
	values[3] = TimestampTzGetDatum(dead ? now : ql_retry_time(attempts, now));
	values[4] = BoolGetDatum(dead);
	if (SPI_execute_plan(w->plans.fail, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not record the failure of job %lld", (long long) job->id);
	updated = SPI_processed > 0;
	if (!dead)
	{
		QlClaimKey	key = {job->priority, DatumGetTimestampTz(values[3]), job->id};

		ql_lower_frontier_at_commit(&key);
		ql_failed_key(job->id, job->queue, job->role, 1, true);
	}
	if (updated)
		ql_history_record(ql_catalog(false), job->id,
						  timed_out ? QL_OUTCOME_TIMEOUT : dead ? QL_OUTCOME_DEAD : QL_OUTCOME_FAILED,
						  job->started_at, 0, job->run_at);
	if (!in_batch)
		ql_xact_commit();
	else
	{
		SPI_finish();
		PopActiveSnapshot();
	}

	ereport(LOG,
			(errmsg("qlater job %lld (%s) failed%s: %s",
					(long long) job->id, job->handler,
					dead ? ", now dead" : "", ql_clip(edata->message))));
}

/*
 * ql_settle_ended: record the end of an attempt whose process could not
 * record it itself: the server crashed while it ran (QL_END_CRASH), or its
 * worker was ended because the handler went on after a timeout
 * (QL_END_TIMEOUT) or a committed qlater_cancel (QL_END_CANCEL; the cancel
 * removed the job, and nothing is left to record).  The attempt counts as
 * failed, with a last_error that says why, and the job is retried after
 * its backoff or is dead.  Runs its own transaction.
 */
void
ql_settle_ended(QlWorker *w, int64 job_id, QlEndKind kind)
{
	const QlCatalog *c;
	Datum		id = Int64GetDatum(job_id);

	ql_xact_begin();
	c = ql_catalog(true);
	/* a database still at an older version waits to be updated (worker.c) */
	if (c != NULL && c->current)
	{
		ql_prepare_plans(w, c);
		if (SPI_execute_plan(w->plans.settle_read, &id, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read job %lld", (long long) job_id);
		if (SPI_processed > 0)
		{
			HeapTuple	row = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int32		attempts = DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull)) + 1;
			int32		max_attempts = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
			int32		crashes = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
			Datum		timeout = SPI_getbinval(row, desc, 4, &isnull);
			TimestampTz now = GetCurrentTimestamp();
			bool		dead;
			bool		updated;
			Jsonb	   *error;
			Datum		values[6];

			if (kind == QL_END_CRASH)
			{
				crashes++;
				error = ql_error_json_fields("XX000", "the server crashed while the job ran",
											 psprintf("Crash %d of at most %d.", crashes, ql_max_crashes),
											 "A handler that crashes its process restarts the whole server.",
											 NULL, attempts, now);
			}
			else
				error = ql_error_json_fields("57014",
											 kind == QL_END_TIMEOUT && !isnull ?
											 psprintf("job timed out after %s",
													  DatumGetCString(DirectFunctionCall1(interval_out, timeout))) :
											 "job was cancelled",
											 psprintf("The handler went on for %d seconds after its cancel: its worker was ended and its work rolled back.",
													  QL_OVERRUN_GRACE_MS / 1000),
											 "A handler must not catch query_canceled without raising it again.",
											 NULL, attempts, now);
			dead = (attempts >= max_attempts || crashes >= ql_max_crashes);
			values[0] = id;
			values[1] = Int32GetDatum(attempts);
			values[2] = Int32GetDatum(crashes);
			values[3] = JsonbPGetDatum(error);
			values[4] = TimestampTzGetDatum(dead ? now : ql_retry_time(attempts, now));
			values[5] = BoolGetDatum(dead);
			if (SPI_execute_plan(w->plans.settle, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
				elog(ERROR, "could not record the end of job %lld", (long long) job_id);
			updated = SPI_processed > 0;
			/* the process that held its claim is gone */
			if (!dead && updated)
				ql_failed_key(job_id,
							  SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
							  SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2),
							  3, false);
			if (updated)
				ql_history_record(c, job_id,
								  kind == QL_END_CRASH ? QL_OUTCOME_CRASHED :
								  kind == QL_END_TIMEOUT ? QL_OUTCOME_TIMEOUT :
								  dead ? QL_OUTCOME_DEAD : QL_OUTCOME_FAILED,
								  0, 0, DatumGetTimestampTz(SPI_getbinval(row, desc, 5, &isnull)));
			ql_lower_frontier_at_commit(&ql_key_min);
		}
	}
	ql_xact_commit();
}
