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
	bool		current;		/* the installed SQL is the version this
								 * library serves (QLATER_SQL_VERSION) */
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

/*
 * A module's statements on qlater's tables: prepared on first use in a
 * backend with a generic plan, kept until the catalog is loaded again.
 * sql has %1$s for qlater's schema (quoted).
 */
typedef struct QlStmtDef
{
	const char *sql;
	int			nargs;
	Oid			types[16];
} QlStmtDef;

typedef struct QlStmtSet
{
	const QlStmtDef *defs;
	int			n;
	SPIPlanPtr *plans;			/* n of them */
	uint32		generation;
} QlStmtSet;

extern SPIPlanPtr ql_stmt_plan(QlStmtSet *set, const QlCatalog *c, int s);
extern int	ql_stmt_exec(QlStmtSet *set, const QlCatalog *c, int s,
						 Datum *values, const char *nulls, bool read_only,
						 long count);
extern int	ql_stmt_exec_latest(QlStmtSet *set, const QlCatalog *c, int s,
								Datum *values, const char *nulls, long count);

#endif							/* QLATER_CATALOG_H */
