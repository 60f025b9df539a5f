/*-------------------------------------------------------------------------
 *
 * consumer.h
 *		Queues served by applications (external consumers).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_CONSUMER_H
#define QLATER_CONSUMER_H

#include "catalog.h"

extern void ql_notify_listener(const char *queue, int64 job_id);

#endif							/* QLATER_CONSUMER_H */
