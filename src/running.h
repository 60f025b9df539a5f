/*-------------------------------------------------------------------------
 *
 * running.h
 *		What runs now: the claims of external consumers, as their sessions
 *		record them, and the view qlater_running.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_RUNNING_H
#define QLATER_RUNNING_H

#include "datatype/timestamp.h"
#include "utils/uuid.h"

/* claims one session records in shared memory, with their times */
#define QL_CLAIM_RECORDS	64

extern Size ql_running_shmem_size(void);
extern void ql_running_shmem_startup(void);

extern void ql_claims_record(int64 id, const pg_uuid_t *token,
							 TimestampTz claimed_at, TimestampTz lease_until);
extern void ql_claims_forget(int64 id);
extern TimestampTz ql_claims_time(int64 id);
extern Datum ql_claims_times(const int64 *ids, int n);
extern void ql_claims_lease_extended(int64 id, const pg_uuid_t *token,
									 TimestampTz until);
extern void ql_claims_lease_finished(int64 id);

#endif							/* QLATER_RUNNING_H */
