/*-------------------------------------------------------------------------
 *
 * history.h
 *		The outcomes of jobs: recorded, kept per queue, expired.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_HISTORY_H
#define QLATER_HISTORY_H

#include "datatype/timestamp.h"

#include "catalog.h"
#include "stats.h"

struct QlJob;

/* one outcome, as ql_history_write writes it into qlater_outcome */
typedef struct QlOutcomeRow
{
	int64		id;
	const char *queue;
	const char *handler;
	const char *role;
	Datum		args;			/* jsonb; (Datum) 0: not kept */
	TimestampTz enqueued_at;
	TimestampTz run_at;
	TimestampTz started_at;		/* 0: not known */
	TimestampTz finished_at;
	int32		attempt;
	QlOutcome	outcome;
	Datum		error;			/* jsonb; (Datum) 0: none */
	TimestampTz expires_at;
	bool		external;
} QlOutcomeRow;

/* the partitions of qlater_outcome, written in turn */
#define QL_HISTORY_SLOTS	16

extern void ql_history_record(const QlCatalog *c, int64 id, QlOutcome outcome,
							  TimestampTz started_at, int32 attempt_added,
							  TimestampTz due_at);
extern void ql_history_record_many(const QlCatalog *c, Datum ids, QlOutcome outcome,
								   TimestampTz started_at, Datum started_ats,
								   int32 attempt_added);
extern void ql_history_write(const QlCatalog *c, int slot, const QlOutcomeRow *rows,
							 int n);
extern void ql_history_done(const struct QlJob *job);
extern void ql_history_flush(void);
extern void ql_history_expire_due(void);
extern int	ql_history_slot_now(const QlCatalog *c, TimestampTz now);
extern void ql_history_note(int slot, TimestampTz until);

#endif							/* QLATER_HISTORY_H */
