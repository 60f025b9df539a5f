/*-------------------------------------------------------------------------
 *
 * limits.h
 *		Pause and concurrency limits of queues, where jobs are claimed:
 *		the shared table of running-job slots of limited queues, and the
 *		filter of the workers' looks.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_LIMITS_H
#define QLATER_LIMITS_H

#include "datatype/timestamp.h"

#include "catalog.h"
#include "shmem.h"

/* what a claim of a job of a queue with a limit got */
typedef enum QlSlotResult
{
	QL_SLOT_TAKEN,				/* a slot: the job may run */
	QL_SLOT_FULL,				/* max_running jobs of the queue run */
	QL_SLOT_NO_ROOM,			/* the table of slots is full */
	QL_SLOT_BUSY				/* the job holds a slot already: a live lease */
} QlSlotResult;

/* whether a worker may run a job it has claimed (ql_limits_admit) */
typedef enum QlAdmit
{
	QL_ADMIT,					/* unrestricted, or a slot taken */
	QL_ADMIT_PAUSED,
	QL_ADMIT_FULL,
	QL_ADMIT_NO_ROOM
} QlAdmit;

/*
 * A row of a worker's look, as the filter sees it: the job's queue (empty
 * for a name no queue can have) and its place in the claim order; the
 * filter sets blocked.
 */
typedef struct QlLookRow
{
	char		queue[NAMEDATALEN];
	QlClaimKey	key;
	bool		blocked;
	void	   *entry;			/* limits.c's own */
} QlLookRow;

/* settings (qlater.c) */
extern int	ql_max_limited_jobs;

/* shared memory (shmem.c) */
extern Size ql_limits_shmem_size(void);
extern void ql_limits_shmem_request(void);
extern void ql_limits_shmem_startup(void);

/* the workers' looks and claims (claim.c) */
extern bool ql_limits_look_begin(const QlCatalog *c);
extern void ql_limits_filter(QlLookRow *rows, int n);
extern QlAdmit ql_limits_admit(const QlCatalog *c, const char *queue,
							   const char *role, int64 job_id);
extern void ql_limits_release_mine(bool wake);
extern long ql_limits_room_wanted(long ms);
extern Datum ql_limits_blocked_queues(const QlCatalog *c);

/* slots of consumers' claims (consumer.c) */
extern QlSlotResult ql_slot_take(const char *queue, int32 max_running,
								 int64 job_id, TimestampTz lease_until);
extern void ql_slot_release(int64 job_id);
extern void ql_slot_leave_to_holder(int64 job_id, TimestampTz until);
extern void ql_slot_release_at_commit(int64 job_id);
extern void ql_slot_extend(int64 job_id, TimestampTz lease_until);
extern void ql_slot_no_room_error(void);

#endif							/* QLATER_LIMITS_H */
