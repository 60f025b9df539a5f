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

/* the partitions of qlater_outcome, written in turn */
#define QL_HISTORY_SLOTS	16

extern void ql_history_record(const QlCatalog *c, int64 id, QlOutcome outcome,
							  TimestampTz started_at, int32 attempt_added,
							  TimestampTz due_at);
extern void ql_history_record_many(const QlCatalog *c, Datum ids, QlOutcome outcome,
								   TimestampTz started_at, Datum started_ats,
								   int32 attempt_added);
extern void ql_history_done(const struct QlJob *job);
extern void ql_history_flush(void);
extern void ql_history_expire_due(void);
extern int	ql_history_slot_now(const QlCatalog *c, TimestampTz now);
extern void ql_history_note(int slot, TimestampTz until);

#endif							/* QLATER_HISTORY_H */
