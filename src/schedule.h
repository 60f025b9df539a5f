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

/*
 * A due tick is fired with catch_up = false only if it is at most this
 * late (the server was down, or every worker was busy).
 */
#define QL_SCHEDULE_GRACE_MS		5000

/*
 * Shortest wait of a scheduler whose due tick another worker is firing
 * (or a long transaction holds locked).
 */
#define QL_SCHEDULE_RETRY_MS		100

extern void ql_schedule_fire_due(long *sleep_ms);

#endif							/* QLATER_SCHEDULE_H */
