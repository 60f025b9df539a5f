/*-------------------------------------------------------------------------
 *
 * api.h
 *		Checks and writes shared by the SQL-callable functions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_API_H
#define QLATER_API_H

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "utils/jsonb.h"

#include "catalog.h"

/* priorities: lower runs first */
#define QL_MIN_PRIORITY		(-32768)
#define QL_MAX_PRIORITY		32767

/* defaults of jobs for applications (external queues) */
#define QL_DEFAULT_PRIORITY		100
#define QL_DEFAULT_MAX_ATTEMPTS	25

/* longest application handler name */
#define QL_MAX_APP_HANDLER		200

/*
 * Job keys (api.c).  Enqueues of one (queue, role, key) are serialized by
 * a transaction-level advisory lock in a key space of their own
 * (pg_locks.objsubid), apart from the claims of jobs (QLATER_LOCK_SPACE),
 * on a 64-bit hash of the three: a collision only serializes two keys.
 */
#define QLATER_KEY_SPACE	29037
/*
 * The keys of a (queue, role) as a whole: every taker of a key's lock
 * holds this one in share mode too (an enqueue waits for it, a recorder
 * of a failure tries it), and qlater_retry_dead settles the keys of many
 * jobs under it in exclusive mode (one lock, not one per key).
 */
#define QLATER_KEY_GROUP_SPACE	29039
/* longest job key, in bytes */
#define QL_MAX_KEY			512

/*
 * most jobs a worker commits together, each in a subtransaction: a
 * backend's cache of subtransaction IDs has 64 entries, and snapshots of
 * every session slow down once one overflows
 */
#define QL_MAX_BATCH			64
/* longest batch_delay */
#define QL_MAX_BATCH_DELAY_MS	10000

extern void ql_check_priority(int32 priority);
extern void ql_check_max_attempts(int32 max_attempts);
extern void ql_check_queue_name(const char *queue);
extern bool ql_is_admin(void);
extern TimestampTz ql_older_than_cutoff(FunctionCallInfo fcinfo, int argno,
										TimestampTz now);
extern void ql_check_role_drop(Oid roleid, const char *newname);
extern void ql_lock_job_role(void);
extern void ql_lock_role(Oid roleid);
extern void ql_key_settle(const QlCatalog *c, int64 id, const char *queue,
						  const char *role, const char *key);
extern void ql_key_settle_returned(const QlCatalog *c, int64 id);
extern bool ql_enqueue_holds(int64 job_id);
extern int64 ql_insert_job(const QlCatalog *c, const char *queue,
						   const char *signature, Jsonb *args, int32 priority,
						   TimestampTz run_at, int32 max_attempts,
						   const Interval *timeout, int64 schedule_id);

#endif							/* QLATER_API_H */
