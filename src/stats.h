/*-------------------------------------------------------------------------
 *
 * stats.h
 *		Live statistics of queues: outcome counters and time histograms in
 *		shared memory, and the depth of each queue (qlater_queue_stats).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_STATS_H
#define QLATER_STATS_H

#include "datatype/timestamp.h"

/* how an attempt ended, or a job left the queue */
typedef enum QlOutcome
{
	QL_OUTCOME_NONE = -1,		/* an attempt began: no outcome yet */
	QL_OUTCOME_DONE = 0,
	QL_OUTCOME_FAILED,			/* to be retried */
	QL_OUTCOME_DEAD,
	QL_OUTCOME_TIMEOUT,
	QL_OUTCOME_CRASHED,
	QL_OUTCOME_CANCELLED,
	QL_OUTCOME_PURGED,
	QL_NUM_OUTCOMES
} QlOutcome;

/* tracked queues per database; the others are counted together */
#define QL_STATS_QUEUES_PER_DB	256
/* tracked queues in all databases */
#define QL_STATS_QUEUES			2048

extern const char *const ql_outcome_names[QL_NUM_OUTCOMES];

extern Size ql_stats_shmem_size(void);
extern void ql_stats_shmem_request(void);
extern void ql_stats_shmem_startup(void);

extern void ql_stats_note(const char *queue, QlOutcome outcome, int count,
						  TimestampTz due, TimestampTz started,
						  TimestampTz finished);
struct QlQueue;
extern void ql_stats_note_queue(const char *queue, const struct QlQueue *q,
								QlOutcome outcome, int count, TimestampTz due,
								TimestampTz started, TimestampTz finished);
extern void ql_stats_depth_refresh_due(void);
extern void ql_stats_forget_databases(const Oid *present, int n);

#endif							/* QLATER_STATS_H */
