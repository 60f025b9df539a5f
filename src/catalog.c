/*-------------------------------------------------------------------------
 *
 * catalog.c
 *		Where qlater's objects live in the current database: the extension's
 *		schema, its tables and their owner, cached per backend and dropped
 *		on relcache invalidation of the tables and on syscache invalidation
 *		of the schema (renamed); and running code as that owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "qlater.h"

static QlCatalog cat;
static bool cat_valid = false;
static bool callback_registered = false;

/*
 * ql_catalog_invalidate: relcache callback; any change to one of our
 * tables (or a full reset) makes us look everything up again.
 */
static void
ql_catalog_invalidate(Datum arg, Oid relid)
{
	if (!cat_valid)
		return;
	if (relid == InvalidOid || relid == cat.job_relid ||
		relid == cat.handler_relid)
		cat_valid = false;
}

/*
 * ql_catalog_invalidate_schema: syscache callback on pg_namespace; a change
 * of our schema (a rename), or a full reset, makes us look everything up
 * again.
 */
static void
ql_catalog_invalidate_schema(Datum arg, int cacheid, uint32 hashvalue)
{
	if (!cat_valid)
		return;
	if (hashvalue == 0 ||
		hashvalue == GetSysCacheHashValue1(NAMESPACEOID,
										   ObjectIdGetDatum(cat.schema_oid)))
		cat_valid = false;
}

/* ql_rel_owner: owner of a relation */
static Oid
ql_rel_owner(Oid relid)
{
	HeapTuple	tuple;
	Oid			owner;

	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * ql_extension_schema: OID of the schema qlater is installed in, or
 * InvalidOid if the extension is not installed in this database.
 */
static Oid
ql_extension_schema(bool *current)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	Oid			result = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(QLATER_EXTENSION_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		v = heap_getattr(tuple, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		result = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
		*current = !isnull &&
			strcmp(TextDatumGetCString(v), QLATER_SQL_VERSION) == 0;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return result;
}

/*
 * ql_catalog: where qlater lives in this database.  Must be called in a
 * transaction.  Returns NULL if the extension is not installed and
 * missing_ok; otherwise raises an error in that case.
 *
 * The library serves one version of the SQL objects (QLATER_SQL_VERSION).
 * A database whose extension is older (the library was installed, ALTER
 * EXTENSION qlater UPDATE not run yet) gets an error from the SQL
 * functions, whose arguments this library may not match, and its workers
 * (missing_ok) get the catalog with current false: they wait.  Such a
 * catalog is not kept, so that the update is seen at once.
 */
const QlCatalog *
ql_catalog(bool missing_ok)
{
	Oid			nsp;
	bool		current = false;

	if (cat_valid)
		return &cat;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(ql_catalog_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, ql_catalog_invalidate_schema,
									  (Datum) 0);
		callback_registered = true;
	}

	nsp = ql_extension_schema(&current);
	if (!OidIsValid(nsp))
	{
		if (missing_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"qlater\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION qlater.")));
	}
	if (!current && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"qlater\" must be updated to version %s",
						QLATER_SQL_VERSION),
				 errdetail("The qlater library installed serves version %s of the extension's SQL objects.",
						   QLATER_SQL_VERSION),
				 errhint("Run ALTER EXTENSION qlater UPDATE.")));

	cat.schema_oid = nsp;
	cat.job_relid = get_relname_relid("qlater_job", nsp);
	cat.handler_relid = get_relname_relid("qlater_handler", nsp);
	if (!OidIsValid(cat.job_relid) || !OidIsValid(cat.handler_relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tables of extension \"qlater\" are missing"),
				 errhint("Reinstall the extension with DROP EXTENSION and CREATE EXTENSION.")));
	cat.owner = ql_rel_owner(cat.job_relid);
	strlcpy(cat.schema_quoted,
			quote_identifier(get_namespace_name(nsp)), sizeof(cat.schema_quoted));
	cat.generation++;
	cat.current = current;
	cat_valid = current;
	return &cat;
}

/*
 * ql_become_owner: act as the owner of qlater's tables until ql_restore_user.
 * The switch is a local user-ID change, as PostgreSQL's referential
 * integrity checks do, so row-level security of the tables does not apply
 * and nothing run meanwhile can SET ROLE out of it.  The search_path is
 * pg_catalog meanwhile (in a GUC nest level): the caller's could hold an
 * operator or function of the same name as one the statements use, which
 * would run as the owner.
 */
void
ql_become_owner(const QlCatalog *c, QlUserSave *save)
{
	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	SetUserIdAndSecContext(c->owner,
						   save->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_NOFORCE_RLS);
	save->nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/* ql_restore_user: undo ql_become_owner */
void
ql_restore_user(const QlUserSave *save)
{
	AtEOXact_GUC(true, save->nestlevel);
	SetUserIdAndSecContext(save->userid, save->sec_context);
}

/*
 * ql_prepare_kept: prepare a statement through SPI and keep it for the life
 * of the backend (SPI_keepplan); cursor_options as for SPI_prepare_cursor
 * (CURSOR_OPT_GENERIC_PLAN: plan it once, not at every execution).  Caller
 * is connected to SPI.  Raises an error if the statement cannot be prepared.
 */
SPIPlanPtr
ql_prepare_kept(const char *query, int nargs, Oid *types, int cursor_options)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(query, nargs, types, cursor_options);

	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\": %s", query,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep the plan of \"%s\"", query);
	return plan;
}

/*
 * ql_stmt_exec: run statement s of a set (preparing it on first use, and
 * the whole set again after the catalog was loaded again) with the given
 * parameters (nulls as SPI takes them, or NULL); returns SPI's result code.
 * Caller is connected to SPI.
 *
 * The statements run as the owner of the tables but under the caller's
 * search_path (ql_become_owner sets pg_catalog; other callers too), so
 * every name in them is schema-qualified or in pg_catalog.
 */
int
ql_stmt_exec(QlStmtSet *set, const QlCatalog *c, int s, Datum *values,
			 const char *nulls, bool read_only, long count)
{
	return SPI_execute_plan(ql_stmt_plan(set, c, s), values, nulls, read_only, count);
}

/*
 * ql_stmt_exec_latest: ql_stmt_exec of a read, under the latest snapshot
 * whatever the isolation level: what every transaction committed, as a
 * check taken under a lock that waited for them must see.
 */
int
ql_stmt_exec_latest(QlStmtSet *set, const QlCatalog *c, int s, Datum *values,
					const char *nulls, long count)
{
	/* not read-only: what this transaction wrote is seen too */
	return SPI_execute_snapshot(ql_stmt_plan(set, c, s), values, nulls,
								GetLatestSnapshot(), InvalidSnapshot,
								false, false, count);
}

/* ql_stmt_plan: statement s of a set, prepared if needed */
SPIPlanPtr
ql_stmt_plan(QlStmtSet *set, const QlCatalog *c, int s)
{
	if (set->plans == NULL)
		set->plans = MemoryContextAllocZero(TopMemoryContext,
											sizeof(SPIPlanPtr) * set->n);
	if (set->generation != c->generation)
	{
		int			i;

		for (i = 0; i < set->n; i++)
		{
			if (set->plans[i] != NULL)
				SPI_freeplan(set->plans[i]);
			set->plans[i] = NULL;
		}
		set->generation = c->generation;
	}
	if (set->plans[s] == NULL)
	{
		const QlStmtDef *d = &set->defs[s];

		set->plans[s] = ql_prepare_kept(psprintf(d->sql, c->schema_quoted),
										d->nargs, (Oid *) d->types,
										CURSOR_OPT_GENERIC_PLAN);
	}
	return set->plans[s];
}
