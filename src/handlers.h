/*-------------------------------------------------------------------------
 *
 * handlers.h
 *		The registry of job handlers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_HANDLERS_H
#define QLATER_HANDLERS_H

#include "datatype/timestamp.h"

/* a registered handler and its defaults */
typedef struct QlHandler
{
	Oid			proc;			/* hash key */
	char	   *queue;
	int32		priority;
	int32		max_attempts;
	bool		has_timeout;
	Interval	timeout;
} QlHandler;

extern QlHandler *ql_handler_lookup(Oid proc);
extern Oid	ql_resolve_handler(const char *name, QlHandler **handler,
							   bool enqueue, const char *queue);
extern void ql_handlers_changed(void);
extern Oid	ql_proc_owner(Oid proc);

#endif							/* QLATER_HANDLERS_H */
