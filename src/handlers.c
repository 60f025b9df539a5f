/*-------------------------------------------------------------------------
 *
 * handlers.c
 *		The registry of job handlers (table qlater_handler), cached per
 *		backend by function OID.
 *
 * The table stores each handler by its schema-qualified signature.  The
 * cache maps the functions those signatures name now; it is dropped when
 * the table changes (qlater_register and qlater_unregister send a relcache
 * invalidation for it) or when pg_proc changes (a rename or drop).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "args.h"
#include "catalog.h"
#include "handlers.h"

static MemoryContext handler_cxt = NULL;
static HTAB *handler_hash = NULL;
static bool handler_stale = true;
static Oid	handler_relid = InvalidOid;	/* the table the cache was read from */

/*
 * invalidation callbacks: forget the registry when its table changes (or
 * every relation's cache is reset), or pg_proc does
 */
static void
ql_handlers_relcache_cb(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == handler_relid)
		handler_stale = true;
}

static void
ql_handlers_syscache_cb(Datum arg, int cacheid, uint32 hashvalue)
{
	handler_stale = true;
}

/*
 * ql_handlers_changed: make every backend reload the registry once the
 * current transaction commits.
 */
void
ql_handlers_changed(void)
{
	const QlCatalog *c = ql_catalog(false);

	CacheInvalidateRelcacheByRelid(c->handler_relid);
}

/*
 * ql_proc_owner: the owner of a function
 */
Oid
ql_proc_owner(Oid proc)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(proc));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", proc);
	owner = ((Form_pg_proc) GETSTRUCT(tuple))->proowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * ql_registration_holds: whether a registration, made for the function's
 * owner at the time (registered_by), holds for the function its signature
 * names now.  A signature is text: once the function is dropped, another
 * role may create one of the same signature (in a schema it may create
 * in), and the registration, with every job and schedule of that
 * signature, must not pass to it.  It holds while the owner is the same
 * role, or one the registered role is a member of (not through superuser
 * rights); after ALTER FUNCTION ... OWNER TO another role, register again.
 */
static bool
ql_registration_holds(Oid proc, const char *registered_by)
{
	Oid			owner = ql_proc_owner(proc);
	Oid			registered = get_role_oid(registered_by, true);

	return OidIsValid(registered) && registered == owner;
}

/*
 * ql_handlers_load: read the registry table into a fresh cache.  Reads as
 * the tables' owner: resolving a signature must not depend on the
 * caller's rights on the handler's schema.  The cache is published only
 * once complete, so an error leaves none.
 */
static void
ql_handlers_load(void)
{
	const QlCatalog *c = ql_catalog(false);
	HASHCTL		ctl;
	HTAB	   *hash;
	QlUserSave	save;
	char	   *query;
	uint64		i;

	if (handler_cxt == NULL)
	{
		handler_cxt = AllocSetContextCreate(CacheMemoryContext,
											"qlater handlers",
											ALLOCSET_SMALL_SIZES);
		CacheRegisterRelcacheCallback(ql_handlers_relcache_cb, (Datum) 0);
		CacheRegisterSyscacheCallback(PROCOID, ql_handlers_syscache_cb, (Datum) 0);
	}
	else
		MemoryContextReset(handler_cxt);
	handler_hash = NULL;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(QlHandler);
	ctl.hcxt = handler_cxt;
	hash = hash_create("qlater handlers", 32, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	/* mark fresh before reading, so that an invalidation meanwhile is kept */
	handler_relid = c->handler_relid;
	handler_stale = false;

	query = psprintf("SELECT handler, queue, priority, max_attempts, timeout, registered_by "
					 "FROM %s.qlater_handler WHERE registered_at <> '-infinity'", c->schema_quoted);
	ql_become_owner(c, &save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(query, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the job handler registry");

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *signature = SPI_getvalue(tup, desc, 1);
		Oid			proc = ql_signature_oid(signature);
		QlHandler  *h;
		bool		found;
		bool		isnull;
		Datum		d;

		if (!OidIsValid(proc))
			continue;			/* function dropped or renamed */
		if (!ql_registration_holds(proc, SPI_getvalue(tup, desc, 6)))
			continue;			/* dropped and created again by another role */
		h = hash_search(hash, &proc, HASH_ENTER, &found);
		h->queue = MemoryContextStrdup(handler_cxt, SPI_getvalue(tup, desc, 2));
		h->priority = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		h->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		d = SPI_getbinval(tup, desc, 5, &isnull);
		h->has_timeout = !isnull;
		if (!isnull)
			h->timeout = *DatumGetIntervalP(d);
	}
	SPI_finish();
	ql_restore_user(&save);
	handler_hash = hash;
}

/*
 * ql_handler_lookup: the registration of a function, or NULL if it is not
 * a registered handler.  Valid until the next call.
 */
QlHandler *
ql_handler_lookup(Oid proc)
{
	if (handler_stale || handler_hash == NULL)
		ql_handlers_load();
	return hash_search(handler_hash, &proc, HASH_FIND, NULL);
}

/*
 * ql_not_found_hint: the hint of the error for a handler name that names
 * no function: plain (the default), or for an enqueue into an in-server
 * queue, which may have meant an external one.  For errhint's place in an
 * ereport.
 */
static int
ql_not_found_hint(bool enqueue, const char *queue, const char *plain)
{
	if (!enqueue)
		return errhint("%s", plain);
	if (queue != NULL)
		return errhint("Queue \"%s\" is an in-server queue, whose jobs call registered SQL functions. "
					   "Jobs for application code go into an external queue, created with qlater_create_queue(name, external => true).",
					   queue);
	return errhint("%s Jobs for application code go into an external queue, created with qlater_create_queue(name, external => true) and named with queue => name.",
				   plain);
}

/*
 * ql_resolve_handler: the registered handler that name denotes under the
 * caller's search_path: "name", "schema.name" or a signature
 * "name(text,int)".  Only registered handlers are candidates, so an
 * unregistered overload makes nothing ambiguous.  Raises an error if there
 * is no such handler or more than one.  An enqueue (enqueue true) into an
 * in-server queue (queue, NULL if none was named) that names no function
 * at all may have meant an application's job: the error's hint says where
 * those go.
 */
Oid
ql_resolve_handler(const char *name, QlHandler **handler, bool enqueue,
				   const char *queue)
{
	Oid			result = InvalidOid;
	QlHandler  *h;

	if (strchr(name, '(') != NULL)
	{
		result = ql_to_regprocedure(name);
		if (!OidIsValid(result))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("function %s does not exist", name),
					 ql_not_found_hint(enqueue, queue,
									   "Check the name and argument types, and the search_path.")));
		h = ql_handler_lookup(result);
	}
	else
	{
		List	   *names = stringToQualifiedNameList(name);
		FuncCandidateList clist;
		int			nfound = 0;
		char	   *first = NULL;

#if PG_VERSION_NUM >= 140000
		clist = FuncnameGetCandidates(names, -1, NIL, false, false, false, true);
#else
		clist = FuncnameGetCandidates(names, -1, NIL, false, false, true);
#endif
		if (clist == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("function \"%s\" does not exist", name),
					 ql_not_found_hint(enqueue, queue,
									   "Check the name and the search_path.")));
		for (; clist != NULL; clist = clist->next)
		{
			if (ql_handler_lookup(clist->oid) == NULL)
				continue;
			if (nfound == 0)
				result = clist->oid;
			else if (first == NULL)
				first = format_procedure(result);
			nfound++;
		}
		if (nfound > 1)
			ereport(ERROR,
					(errcode(ERRCODE_AMBIGUOUS_FUNCTION),
					 errmsg("handler name \"%s\" is ambiguous", name),
					 errdetail("%d registered handlers have this name.", nfound),
					 errhint("Name the handler with its argument types, for example \"%s\".",
							 first)));
		if (nfound == 0)
		{
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("function \"%s\" is not registered as a job handler", name),
					 errhint("Register it with qlater_register('%s(...)').", name)));
		}
		h = ql_handler_lookup(result);
	}

	if (h == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("function %s is not registered as a job handler",
						format_procedure(result)),
				 errhint("Register it with qlater_register('%s').",
						 format_procedure(result))));
	*handler = h;
	return result;
}
