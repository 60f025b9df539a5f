/*-------------------------------------------------------------------------
 *
 * args.c
 *		Handler parameters and job arguments.
 *
 * A job's args are JSON: an array passes arguments by position, an object
 * by name.  Each value becomes the declared parameter type through the
 * type's input function (json and jsonb parameters take the value as is;
 * JSON null is SQL NULL).  At enqueue every value is checked under the
 * caller's settings; a value whose text could mean something else under
 * other settings (dates, times, intervals, reg* types, ...) is stored in
 * its canonical text, written under fixed settings that any reader parses
 * the same way.  Values of other types are stored as given.
 *
 * Parameter information is cached per backend by function OID and dropped
 * when pg_proc changes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "common/hashfn.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#include "args.h"

/*
 * Cache of signature text to OID.  The key is a pointer to the text, copied
 * into procinfo_cxt: a signature has no length limit (a hundred parameters
 * of schema-qualified types).
 */
typedef struct QlSignatureEntry
{
	char	   *signature;		/* hash key */
	Oid			oid;
} QlSignatureEntry;

static MemoryContext procinfo_cxt = NULL;
static HTAB *procinfo_hash = NULL;
static HTAB *signature_hash = NULL;
static bool procinfo_stale = false;

/*
 * Conversions of arguments under way (they may run code that changes
 * pg_proc and comes back: a domain CHECK that enqueues) hold the cache
 * generation they read their entry from: an invalidation then retires
 * that generation until the transaction ends instead of freeing it.  A
 * generation nothing holds is reset in place, so memory stays bounded by
 * the depth of such nesting.
 */
static uint64 procinfo_generation = 0;
static int	procinfo_pins = 0;	/* holds of the current generation */
static bool procinfo_xact_cb = false;

/* error context while a value is converted */
typedef struct QlArgContext
{
	QlProcInfo *pi;
	int			argno;
} QlArgContext;

/* ql_procinfo_invalidate: syscache callback for pg_proc and pg_type */
static void
ql_procinfo_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	procinfo_stale = true;
}

/* hash support of signature_hash: keys are pointers to C strings */
static uint32
ql_signature_hash(const void *key, Size keysize)
{
	const char *str = *(const char *const *) key;

	return string_hash(str, strlen(str) + 1);
}

static int
ql_signature_match(const void *key1, const void *key2, Size keysize)
{
	return strcmp(*(const char *const *) key1, *(const char *const *) key2);
}

static void *
ql_signature_keycopy(void *dest, const void *src, Size keysize)
{
	*(char **) dest = MemoryContextStrdup(procinfo_cxt, *(const char *const *) src);
	return dest;
}

/*
 * ql_procinfo_reset: (re)create the caches, after an invalidation.  Entries
 * handed out stay valid until the end of the transaction.
 */
static void
ql_procinfo_reset(void)
{
	HASHCTL		ctl;

	if (procinfo_cxt == NULL)
	{
		procinfo_cxt = AllocSetContextCreate(CacheMemoryContext,
											 "qlater handler info",
											 ALLOCSET_SMALL_SIZES);
		CacheRegisterSyscacheCallback(PROCOID, ql_procinfo_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(TYPEOID, ql_procinfo_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, ql_procinfo_invalidate, (Datum) 0);
	}
	else if (procinfo_pins > 0 && IsTransactionState())
	{
		/*
		 * A caller up the stack may still use an entry: a type input
		 * function or domain check of a job's argument can run code that
		 * changes pg_proc and comes back here (a nested qlater_enqueue).
		 * The old entries live until the transaction ends.
		 */
		MemoryContextSetParent(procinfo_cxt, TopTransactionContext);
		procinfo_cxt = AllocSetContextCreate(CacheMemoryContext,
											 "qlater handler info",
											 ALLOCSET_SMALL_SIZES);
	}
	else
		MemoryContextReset(procinfo_cxt);
	procinfo_generation++;
	procinfo_pins = 0;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(QlProcInfo);
	ctl.hcxt = procinfo_cxt;
	procinfo_hash = hash_create("qlater handler info", 32, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(QlSignatureEntry);
	ctl.hcxt = procinfo_cxt;
	ctl.hash = ql_signature_hash;
	ctl.match = ql_signature_match;
	ctl.keycopy = ql_signature_keycopy;
	signature_hash = hash_create("qlater handler signatures", 32, &ctl,
								 HASH_ELEM | HASH_FUNCTION | HASH_COMPARE |
								 HASH_KEYCOPY | HASH_CONTEXT);
	procinfo_stale = false;
}

/* at the end of a transaction no conversion is under way any more */
static void
ql_procinfo_xact_end(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		procinfo_pins = 0;
}

/* ql_procinfo_pin: hold the current generation while a conversion runs */
static uint64
ql_procinfo_pin(void)
{
	if (!procinfo_xact_cb)
	{
		RegisterXactCallback(ql_procinfo_xact_end, NULL);
		procinfo_xact_cb = true;
	}
	procinfo_pins++;
	return procinfo_generation;
}

/* ql_procinfo_unpin: the conversion that held generation gen has ended */
static void
ql_procinfo_unpin(uint64 gen)
{
	if (gen == procinfo_generation && procinfo_pins > 0)
		procinfo_pins--;
}

static void
ql_procinfo_check_cache(void)
{
	if (procinfo_hash == NULL || procinfo_stale)
		ql_procinfo_reset();
}

/*
 * ql_type_is_safe: true if the text of a value of this type means the same
 * whatever the session's settings, so it can be stored as given.
 */
static bool
ql_type_is_safe(Oid typid)
{
	Oid			base = getBaseType(typid);
	Oid			elem;

	switch (base)
	{
		case BOOLOID:
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case NAMEOID:
		case CHAROID:
		case UUIDOID:
		case JSONOID:
		case JSONBOID:
		case BYTEAOID:
		case OIDOID:
		case INETOID:
		case CIDROID:
		case MACADDROID:
		case MACADDR8OID:
		case BITOID:
		case VARBITOID:
		case XMLOID:
			return true;
		default:
			break;
	}
	if (type_is_enum(base))
		return true;
	elem = get_element_type(base);
	if (OidIsValid(elem))
		return ql_type_is_safe(elem);
	return false;
}

/*
 * ql_signature: the schema-qualified signature under which a handler is
 * stored, e.g. public.export_stations(text,text).  Types of pg_catalog are
 * left unqualified (pg_catalog is always searched first); others are
 * qualified, so the text names the same function under any search_path.
 */
char *
ql_signature(Oid procoid)
{
	HeapTuple	tuple;
	Form_pg_proc proc;
	StringInfoData buf;
	int			i;

	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(procoid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", procoid);
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	initStringInfo(&buf);
	appendStringInfo(&buf, "%s(",
					 quote_qualified_identifier(get_namespace_name(proc->pronamespace),
												NameStr(proc->proname)));
	for (i = 0; i < proc->pronargs; i++)
	{
		char	   *t = format_type_be_qualified(proc->proargtypes.values[i]);

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		if (strncmp(t, "pg_catalog.", 11) == 0)
			t += 11;
		appendStringInfoString(&buf, t);
	}
	appendStringInfoChar(&buf, ')');
	ReleaseSysCache(tuple);
	return buf.data;
}

/*
 * ql_procinfo: what a call of the function or procedure needs.  Raises an
 * error if it does not exist.  The result stays valid until a lookup
 * after an invalidation, and while a conversion of arguments holds its
 * generation, until the end of the transaction (ql_procinfo_reset).  The
 * entry is built in full before
 * it enters the cache, so an error on the way leaves no half-filled entry.
 */
QlProcInfo *
ql_procinfo(Oid procoid)
{
	QlProcInfo	info;
	QlProcInfo *pi;
	bool		found;
	HeapTuple	tuple;
	Form_pg_proc proc;
	Oid		   *alltypes;
	char	  **allnames;
	char	   *modes;
	int			nall;
	int			i;
	int			n;
	MemoryContext build_cxt;
	MemoryContext old;

	ql_procinfo_check_cache();
	pi = hash_search(procinfo_hash, &procoid, HASH_FIND, NULL);
	if (pi != NULL)
		return pi;

	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(procoid));
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", procoid)));
	proc = (Form_pg_proc) GETSTRUCT(tuple);

	/* built in a context of its own, kept only once complete */
	build_cxt = AllocSetContextCreate(CurrentMemoryContext,
									  "qlater handler info entry",
									  ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(build_cxt);
	memset(&info, 0, sizeof(info));
	info.oid = procoid;
	info.prokind = proc->prokind;
	info.variadic = OidIsValid(proc->provariadic);
	info.ndefaults = proc->pronargdefaults;
	info.passable = (proc->prokind == PROKIND_FUNCTION ||
					 proc->prokind == PROKIND_PROCEDURE);
	nall = get_func_arg_info(tuple, &alltypes, &allnames, &modes);
	info.argtypes = palloc0(sizeof(Oid) * Max(nall, 1));
	info.argnames = palloc0(sizeof(char *) * Max(nall, 1));
	info.argsafe = palloc0(sizeof(bool) * Max(nall, 1));
	info.inflinfo = palloc0(sizeof(FmgrInfo) * Max(nall, 1));
	info.typioparam = palloc0(sizeof(Oid) * Max(nall, 1));
	info.typoutput = palloc0(sizeof(Oid) * Max(nall, 1));
	info.all_safe = true;
	n = 0;
	for (i = 0; i < nall; i++)
	{
		char		mode = modes ? modes[i] : PROARGMODE_IN;
		Oid			typinput;
		bool		isvarlena;

		if (mode == PROARGMODE_OUT || mode == PROARGMODE_TABLE)
		{
			if (proc->prokind == PROKIND_PROCEDURE)
				info.passable = false;
			continue;
		}
		info.argtypes[n] = alltypes[i];
		info.argnames[n] = (allnames && allnames[i] && allnames[i][0]) ?
			pstrdup(allnames[i]) : NULL;
		info.argsafe[n] = ql_type_is_safe(alltypes[i]);
		if (!info.argsafe[n])
			info.all_safe = false;
		/* pseudo-types have no usable input: such a function is no handler */
		if (IsPolymorphicType(alltypes[i]) ||
			get_typtype(alltypes[i]) == TYPTYPE_PSEUDO)
			info.passable = false;
		else
		{
			getTypeInputInfo(alltypes[i], &typinput, &info.typioparam[n]);
			fmgr_info_cxt(typinput, &info.inflinfo[n], build_cxt);
			getTypeOutputInfo(alltypes[i], &info.typoutput[n], &isvarlena);
		}
		n++;
	}
	info.nargs = n;
	info.signature = ql_signature(procoid);
	info.callname = quote_qualified_identifier(get_namespace_name(proc->pronamespace),
											   NameStr(proc->proname));
	MemoryContextSwitchTo(old);
	ReleaseSysCache(tuple);

	/* complete: it joins the cache */
	MemoryContextSetParent(build_cxt, procinfo_cxt);
	pi = hash_search(procinfo_hash, &procoid, HASH_ENTER, &found);
	*pi = info;
	return pi;
}

/*
 * ql_to_regprocedure: the function a signature names, or InvalidOid if
 * there is none; to_regprocedure(), which raises an error for text that is
 * no signature.
 */
Oid
ql_to_regprocedure(const char *signature)
{
	LOCAL_FCINFO(fcinfo, 1);
	Datum		d;

	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = PointerGetDatum(cstring_to_text(signature));
	fcinfo->args[0].isnull = false;
	d = to_regprocedure(fcinfo);
	return fcinfo->isnull ? InvalidOid : DatumGetObjectId(d);
}

/*
 * ql_regprocedure: the function a signature names, or InvalidOid.
 * to_regprocedure() raises an error for text that is no signature at all
 * ("ExportStations", a job for applications): run it in a subtransaction
 * and take such an error as no function.
 */
static Oid
ql_regprocedure(const char *signature)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile Oid result = InvalidOid;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		result = ql_to_regprocedure(signature);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return result;
}

/*
 * ql_signature_oid: the function a schema-qualified signature such as
 * "public.f(text,integer)" names, or InvalidOid if there is none (dropped,
 * renamed, a type is gone, or the text is no signature).  Looked up once
 * per text until pg_proc, pg_type or pg_namespace change.  Caller is in a
 * transaction.
 */
Oid
ql_signature_oid(const char *signature)
{
	QlSignatureEntry *entry;
	bool		found;
	Oid			oid;

	ql_procinfo_check_cache();
	entry = hash_search(signature_hash, &signature, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->oid;

	oid = ql_regprocedure(signature);
	/* the subtransaction may have taken invalidations: the cache is fresh? */
	ql_procinfo_check_cache();
	entry = hash_search(signature_hash, &signature, HASH_ENTER, &found);
	entry->oid = oid;
	return oid;
}

/*
 * ql_check_handler_signature: refuse functions qlater cannot call with
 * arguments from JSON: polymorphic and pseudo-type parameters, and
 * procedures with output parameters.
 */
void
ql_check_handler_signature(Oid procoid)
{
	HeapTuple	tuple;
	Oid		   *types;
	char	  **names;
	char	   *modes;
	int			nall;
	int			i;
	char		prokind;

	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(procoid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", procoid);
	prokind = ((Form_pg_proc) GETSTRUCT(tuple))->prokind;
	if (((Form_pg_proc) GETSTRUCT(tuple))->prorettype == TRIGGEROID ||
		((Form_pg_proc) GETSTRUCT(tuple))->prorettype == EVENT_TRIGGEROID)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is a trigger function", format_procedure(procoid)),
				 errhint("Trigger functions can only be called as triggers.")));
	if (prokind != PROKIND_FUNCTION && prokind != PROKIND_PROCEDURE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a function or procedure",
						format_procedure(procoid)),
				 errhint("Aggregate and window functions cannot be job handlers.")));
	nall = get_func_arg_info(tuple, &types, &names, &modes);
	for (i = 0; i < nall; i++)
	{
		char		mode = modes ? modes[i] : PROARGMODE_IN;

		if (mode == PROARGMODE_OUT || mode == PROARGMODE_TABLE)
		{
			if (prokind == PROKIND_PROCEDURE)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("procedure \"%s\" has output parameters",
								format_procedure(procoid)),
						 errhint("A job handler procedure takes input parameters only.")));
			continue;
		}
		if (IsPolymorphicType(types[i]) || get_typtype(types[i]) == TYPTYPE_PSEUDO)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("parameter %d of \"%s\" has type %s, which a job cannot pass",
							i + 1, format_procedure(procoid), format_type_be(types[i])),
					 errhint("Job handlers take parameters of concrete types; wrap the function in one that does.")));
	}
	ReleaseSysCache(tuple);
}

/*
 * ql_check_passable: raise an error unless a job can call the function (a
 * job of an external queue names any function, and the queue may become
 * an in-server one).
 */
static void
ql_check_passable(const QlProcInfo *pi)
{
	if (!pi->passable)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function %s cannot be a job handler", pi->signature),
				 errdetail("Job handlers are functions or procedures whose input parameters have concrete types, "
						   "and procedures without output parameters.")));
}

/* ql_arg_errcontext: error context naming the argument being converted */
static void
ql_arg_errcontext(void *arg)
{
	QlArgContext *ctx = (QlArgContext *) arg;
	QlProcInfo *pi = ctx->pi;

	if (pi->argnames[ctx->argno])
		errcontext("argument %d (\"%s\") of handler \"%s\"",
				   ctx->argno + 1, pi->argnames[ctx->argno], pi->signature);
	else
		errcontext("argument %d of handler \"%s\"", ctx->argno + 1, pi->signature);
}

/*
 * ql_arg_datum: the value of JSON value v for input parameter argno, in the
 * current memory context.
 */
static Datum
ql_arg_datum(QlProcInfo *pi, int argno, JsonbValue *v, bool *isnull)
{
	Oid			typid = pi->argtypes[argno];
	Oid			base = getBaseType(typid);
	char	   *str = NULL;
	ErrorContextCallback errcb;
	QlArgContext ctx;
	Datum		result;

	ctx.pi = pi;
	ctx.argno = argno;
	errcb.callback = ql_arg_errcontext;
	errcb.arg = &ctx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	if (v->type == jbvNull)
		str = NULL;
	else if (base == JSONBOID || base == JSONOID)
	{
		Jsonb	   *jb = JsonbValueToJsonb(v);

		if (typid == JSONBOID)
		{
			error_context_stack = errcb.previous;
			*isnull = false;
			return JsonbPGetDatum(jb);
		}
		str = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	}
	else
	{
		switch (v->type)
		{
			case jbvString:
				str = pnstrdup(v->val.string.val, v->val.string.len);
				break;
			case jbvNumeric:
				str = DatumGetCString(DirectFunctionCall1(numeric_out,
														  NumericGetDatum(v->val.numeric)));
				break;
			case jbvBool:
				str = v->val.boolean ? "true" : "false";
				break;
			default:
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("a JSON array or object cannot be passed as type %s",
								format_type_be(typid)),
						 errhint("Only json and jsonb parameters take JSON arrays and objects; "
								 "pass other values as JSON strings in the type's input syntax.")));
		}
	}

	result = InputFunctionCall(&pi->inflinfo[argno], str, pi->typioparam[argno], -1);
	error_context_stack = errcb.previous;
	*isnull = (str == NULL);
	return result;
}

/*
 * ql_match_args: map the JSON args onto the input parameters.  On return,
 * vals[i] is the value given for parameter i or NULL if it was left to its
 * default; *named tells the notation.  Raises an error for a call that
 * could not be made.
 */
static void
ql_match_args(QlProcInfo *pi, Jsonb *args, JsonbValue **vals, bool *named)
{
	int			nrequired = pi->nargs - pi->ndefaults;
	int			i;

	for (i = 0; i < pi->nargs; i++)
		vals[i] = NULL;

	if (JB_ROOT_IS_ARRAY(args) && !JB_ROOT_IS_SCALAR(args))
	{
		int			n = JB_ROOT_COUNT(args);

		*named = false;
		if (n < nrequired || n > pi->nargs)
		{
			if (nrequired == pi->nargs)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("handler \"%s\" takes %d arguments, but %d were given",
								pi->signature, pi->nargs, n)));
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("handler \"%s\" takes %d to %d arguments, but %d were given",
								pi->signature, nrequired, pi->nargs, n)));
		}
		for (i = 0; i < n; i++)
			vals[i] = getIthJsonbValueFromContainer(&args->root, i);
	}
	else if (JB_ROOT_IS_OBJECT(args))
	{
		JsonbIterator *it = JsonbIteratorInit(&args->root);
		JsonbValue	v;
		JsonbIteratorToken tok;

		*named = true;
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			char	   *key;
			int			argno = -1;

			if (tok != WJB_KEY)
				continue;
			key = pnstrdup(v.val.string.val, v.val.string.len);
			for (i = 0; i < pi->nargs; i++)
			{
				if (pi->argnames[i] && strcmp(pi->argnames[i], key) == 0)
				{
					argno = i;
					break;
				}
			}
			if (argno < 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("handler \"%s\" has no parameter named \"%s\"",
								pi->signature, key)));
			tok = JsonbIteratorNext(&it, &v, true);
			Assert(tok == WJB_VALUE);
			vals[argno] = palloc(sizeof(JsonbValue));
			*vals[argno] = v;
		}
		for (i = 0; i < nrequired; i++)
		{
			if (vals[i] != NULL)
				continue;
			if (pi->argnames[i])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("missing value for parameter \"%s\" of handler \"%s\"",
								pi->argnames[i], pi->signature),
						 errhint("Every parameter without a default must be given.")));
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("parameter %d of handler \"%s\" has no name and no default",
								i + 1, pi->signature),
						 errhint("Pass the arguments as a JSON array to give them by position.")));
		}
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("job arguments must be a JSON array or object"),
				 errhint("A JSON array passes arguments by position, an object by parameter name.")));
}

/*
 * ql_canonical_settings: enter a GUC nest level with the settings under which
 * canonical text is written.  Undo with AtEOXact_GUC(true, level).
 */
static int
ql_canonical_settings(void)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("datestyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("intervalstyle", "iso_8601", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("timezone", "UTC", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("extra_float_digits", "1", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * ql_args_normalize: check args against the handler's parameters (count,
 * names, each value through its type's input function) under the caller's
 * settings, and return the JSON to store.  Raises an error for a call that
 * could not be made.
 */
Jsonb *
ql_args_normalize(QlProcInfo *pi, Jsonb *args)
{
	JsonbValue **vals;
	Datum	   *datums;
	bool	   *isnull;
	bool		named;
	bool		rewrite = false;
	int			i;
	JsonbParseState *state = NULL;
	JsonbValue *res;
	uint64		gen;

	ql_check_passable(pi);
	vals = palloc(sizeof(JsonbValue *) * Max(pi->nargs, 1));
	datums = palloc(sizeof(Datum) * Max(pi->nargs, 1));
	isnull = palloc(sizeof(bool) * Max(pi->nargs, 1));
	ql_match_args(pi, args, vals, &named);

	gen = ql_procinfo_pin();
	for (i = 0; i < pi->nargs; i++)
	{
		if (vals[i] == NULL)
			continue;
		datums[i] = ql_arg_datum(pi, i, vals[i], &isnull[i]);
		if (!pi->argsafe[i] && !isnull[i])
			rewrite = true;
	}
	ql_procinfo_unpin(gen);
	if (!rewrite)
		return args;

	/* write the canonical text of every settings-dependent value */
	{
		int			level = ql_canonical_settings();

		for (i = 0; i < pi->nargs; i++)
		{
			char	   *text;

			if (vals[i] == NULL || pi->argsafe[i] || isnull[i])
				continue;
			text = OidOutputFunctionCall(pi->typoutput[i], datums[i]);
			vals[i] = palloc(sizeof(JsonbValue));
			vals[i]->type = jbvString;
			vals[i]->val.string.val = text;
			vals[i]->val.string.len = strlen(text);
		}
		AtEOXact_GUC(true, level);
	}

	pushJsonbValue(&state, named ? WJB_BEGIN_OBJECT : WJB_BEGIN_ARRAY, NULL);
	for (i = 0; i < pi->nargs; i++)
	{
		if (vals[i] == NULL)
			continue;
		if (named)
		{
			JsonbValue	key;

			key.type = jbvString;
			key.val.string.val = pi->argnames[i];
			key.val.string.len = strlen(pi->argnames[i]);
			pushJsonbValue(&state, WJB_KEY, &key);
			pushJsonbValue(&state, WJB_VALUE, vals[i]);
		}
		else
			pushJsonbValue(&state, WJB_ELEM, vals[i]);
	}
	res = pushJsonbValue(&state, named ? WJB_END_OBJECT : WJB_END_ARRAY, NULL);
	return JsonbValueToJsonb(res);
}

/*
 * ql_args_to_call: build the SQL call of the handler with the stored args,
 * in the current memory context.
 */
void
ql_args_to_call(QlProcInfo *pi, Jsonb *args, QlCall *call)
{
	JsonbValue **vals;
	bool		named;
	int			i;
	int			n = 0;
	StringInfoData q;
	uint64		gen;

	ql_check_passable(pi);
	vals = palloc(sizeof(JsonbValue *) * Max(pi->nargs, 1));
	ql_match_args(pi, args, vals, &named);

	call->types = palloc(sizeof(Oid) * Max(pi->nargs, 1));
	call->values = palloc(sizeof(Datum) * Max(pi->nargs, 1));
	call->nulls = palloc(sizeof(char) * Max(pi->nargs, 1));

	call->named = named;
	memset(call->given, 0, sizeof(call->given));

	initStringInfo(&q);
	/* the marker tells the worker's call from a handler's own queries (run.c) */
	appendStringInfo(&q, "%s /* qlater job */ %s(",
					 pi->prokind == PROKIND_PROCEDURE ? "CALL" : "SELECT",
					 pi->callname);
	gen = ql_procinfo_pin();
	for (i = 0; i < pi->nargs; i++)
	{
		bool		isnull;

		if (vals[i] == NULL)
			continue;
		call->given[i / 8] |= (1 << (i % 8));
		call->types[n] = pi->argtypes[i];
		call->values[n] = ql_arg_datum(pi, i, vals[i], &isnull);
		call->nulls[n] = isnull ? 'n' : ' ';
		if (n > 0)
			appendStringInfoString(&q, ", ");
		if (pi->variadic && i == pi->nargs - 1)
			appendStringInfoString(&q, "VARIADIC ");
		if (named)
			appendStringInfo(&q, "%s => ", quote_identifier(pi->argnames[i]));
		appendStringInfo(&q, "$%d", n + 1);
		n++;
	}
	ql_procinfo_unpin(gen);
	appendStringInfoChar(&q, ')');
	call->query = q.data;
	call->nparams = n;
}
