/*-------------------------------------------------------------------------
 *
 * catalog.h
 *		Where qlater's objects live in the current database.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_CATALOG_H
#define QLATER_CATALOG_H

#include "executor/spi.h"

typedef struct QlCatalog
{
	Oid			schema_oid;
	Oid			job_relid;
	Oid			handler_relid;
	Oid			owner;			/* owner of the job table */
	char		schema_quoted[NAMEDATALEN * 2 + 3];
	uint32		generation;		/* bumped at every reload */
} QlCatalog;

typedef struct QlUserSave
{
	Oid			userid;
	int			sec_context;
	int			nestlevel;		/* GUC nest level of the owner's settings */
} QlUserSave;

extern const QlCatalog *ql_catalog(bool missing_ok);
extern void ql_become_owner(const QlCatalog *c, QlUserSave *save);
extern void ql_restore_user(const QlUserSave *save);
extern SPIPlanPtr ql_prepare_kept(const char *query, int nargs, Oid *types,
								  int cursor_options);

#endif							/* QLATER_CATALOG_H */
