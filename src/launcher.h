/*-------------------------------------------------------------------------
 *
 * launcher.h
 *		Entry points of qlater's background workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_LAUNCHER_H
#define QLATER_LAUNCHER_H

#include "fmgr.h"

extern PGDLLEXPORT void qlater_launcher_main(Datum main_arg);
extern PGDLLEXPORT void qlater_worker_main(Datum main_arg);

#endif							/* QLATER_LAUNCHER_H */
