/*-------------------------------------------------------------------------
 *
 * inflight.h
 *		Per-worker record of the job in flight, kept across crash-restarts.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_INFLIGHT_H
#define QLATER_INFLIGHT_H

extern void ql_inflight_collect(int nslots);
extern void ql_inflight_attach(int slot);
extern void ql_inflight_set(Oid dboid, int64 job_id);
extern void ql_inflight_clear(void);
extern void ql_inflight_mark_victim(void);

#endif							/* QLATER_INFLIGHT_H */
