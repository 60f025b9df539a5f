/*-------------------------------------------------------------------------
 *
 * qlater.h
 *		Declarations shared by every module of qlater: settings, the
 *		advisory-lock key space and the wake-up of workers at commit.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_H
#define QLATER_H

#include "storage/lock.h"

#include "shmem.h"

/*
 * qlater's own advisory-lock key space.  pg_advisory_lock() uses field4 = 1
 * (bigint key) or 2 (two int4 keys); qlater claims jobs with field4 = 29036,
 * so an application's pg_advisory_lock(42) never blocks job 42.  The value
 * shows as pg_locks.objsubid.
 */
#define QLATER_LOCK_SPACE	29036
/*
 * The key space of the locks on queue names (queue.c): an enqueue holds
 * its queue's in share mode until it commits, a drop or a change of kind
 * exclusively, so that no job lands in a queue dropped or changed under it.
 */
#define QLATER_QUEUE_LOCK_SPACE	29038

#define QLATER_EXTENSION_NAME	"qlater"
/* the version of the extension's SQL objects this library serves */
#define QLATER_SQL_VERSION	"0.7"

/* settings (qlater.c) */
extern int	ql_max_workers;
extern int	ql_poll_interval;
extern int	ql_max_crashes;
extern int	ql_revisit_interval;

/* claim.c: a job's claim, for workers and consumers alike */
extern void ql_set_job_locktag(LOCKTAG *tag, int64 job_id);
extern bool ql_try_claim(int64 job_id, bool session_lock);
extern void ql_release_job_lock(int64 job_id);
extern void ql_release_claim(int64 job_id);

/* qlater.c */
extern void ql_wake_workers_at_commit(int njobs, TimestampTz run_at);
extern void ql_wake_another_worker(void);
extern void ql_lower_frontier_at_commit(const QlClaimKey *key);
extern void ql_wake_launcher_at_commit(void);
extern void ql_cancel_running_at_commit(int64 job_id);
extern void ql_release_claim_at_commit(int64 job_id);
extern void ql_release_claim_at_end(int64 job_id);
extern bool ql_claim_held_to_end(int64 job_id);
extern void ql_queues_changed_at_commit(void);
extern void ql_require_preload(void);

#endif							/* QLATER_H */
