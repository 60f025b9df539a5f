/*-------------------------------------------------------------------------
 *
 * xact.h
 *		The one way a qlater process opens and ends a transaction of its own.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_XACT_H
#define QLATER_XACT_H

#include "utils/palloc.h"

extern void ql_xact_init(void);
extern MemoryContext ql_loop_context(void);
extern void ql_xact_begin(void);
extern void ql_xact_begin_at(int isolation);
extern void ql_xact_commit(void);
extern void ql_xact_abort(void);
extern void ql_xact_after(void);
extern void ql_xact_recover(void);

#endif							/* QLATER_XACT_H */
