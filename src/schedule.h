/*-------------------------------------------------------------------------
 *
 * schedule.h
 *		Recurring jobs: the SQL API of schedules and their firing by the
 *		workers of each database.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_SCHEDULE_H
#define QLATER_SCHEDULE_H

#include "datatype/timestamp.h"

extern void ql_schedule_fire_due(long *sleep_ms);
extern bool ql_schedule_wake_pending(void);
extern TimestampTz ql_schedule_next_tick(void);

#endif							/* QLATER_SCHEDULE_H */
