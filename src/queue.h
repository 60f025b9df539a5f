/*-------------------------------------------------------------------------
 *
 * queue.h
 *		Queues as objects: their rows, owners, privileges and settings.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_QUEUE_H
#define QLATER_QUEUE_H

#include "datatype/timestamp.h"

#include "catalog.h"

/* a queue's row, as the current backend last read it */
typedef struct QlQueue
{
	char		name[NAMEDATALEN];
	char		owner[NAMEDATALEN];
	bool		external;
	bool		paused;
	int32		max_running;	/* -1: no limit */
	int32		min_priority;
	int32		batch_size;
	int64		batch_delay;	/* microseconds */
	int64		keep_history;	/* microseconds; 0: no history */
	bool		history_args;	/* the history keeps the jobs' args */
	TimestampTz created_at;		/* tells apart queues of one name, in turn */
} QlQueue;

/* the longest keep_history */
#define QL_MAX_KEEP_HISTORY_YEARS	10

/* privileges on a queue, besides its owner's and the admins' */
typedef enum QlQueuePriv
{
	QL_PRIV_CONSUME = 0,		/* claim, see and finish its jobs; listen */
	QL_PRIV_ENQUEUE				/* enqueue, register or schedule into it */
} QlQueuePriv;

extern const QlQueue *ql_queue_get(const QlCatalog *c, const char *name);
extern int64 ql_queues_max_keep(const QlCatalog *c);
extern bool ql_queue_is_external(const QlCatalog *c, const char *queue);
extern const QlQueue *ql_queues_restricted(const QlCatalog *c, int *n,
										   uint64 *version);
extern bool ql_queue_privilege(const QlCatalog *c, const QlQueue *q,
							   Oid roleid, QlQueuePriv priv);
extern const QlQueue *ql_queue_check_put(const QlCatalog *c, const char *queue,
										 const char *handler_queue,
										 Oid handler_owner, int32 priority);
extern bool ql_queue_lock_put(const char *queue, bool nowait);
extern bool ql_queue_may_put(const QlCatalog *c, const char *queue,
							 const char *handler_queue, Oid handler_owner,
							 int32 priority, Oid roleid);
extern void ql_queue_check_consume(const QlCatalog *c, const char *queue);
extern void ql_queue_not_external_error(const char *queue) pg_attribute_noreturn();
extern bool ql_role_is_admin(Oid roleid);

#endif							/* QLATER_QUEUE_H */
