/*-------------------------------------------------------------------------
 *
 * job.h
 *		Claiming and running one job in a worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_JOB_H
#define QLATER_JOB_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

#include "shmem.h"

typedef enum QlJobResult
{
	QL_JOB_RAN,
	QL_JOB_NONE,
	QL_JOB_NO_EXTENSION
} QlJobResult;

extern void ql_job_init(void);
extern QlJobResult ql_run_next_job(QlWorkerSlot *slot, long *sleep_ms);
extern void ql_settle_ended(int64 job_id, QlEndKind kind);
extern Jsonb *ql_error_json_fields(const char *sqlstate, const char *message,
								   const char *detail, const char *hint,
								   const char *context, int attempt,
								   TimestampTz at);
extern TimestampTz ql_retry_time(int32 attempts, TimestampTz now);

#endif							/* QLATER_JOB_H */
