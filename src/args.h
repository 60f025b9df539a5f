/*-------------------------------------------------------------------------
 *
 * args.h
 *		What qlater knows of a handler function's parameters, and the
 *		conversion of a job's JSON arguments to typed values.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QLATER_ARGS_H
#define QLATER_ARGS_H

#include "fmgr.h"
#include "utils/jsonb.h"

/* a handler function or procedure, as its callers need it */
typedef struct QlProcInfo
{
	Oid			oid;			/* hash key */
	char		prokind;		/* PROKIND_FUNCTION or PROKIND_PROCEDURE */
	bool		variadic;		/* last input parameter is VARIADIC */
	int			nargs;			/* input parameters */
	int			ndefaults;		/* trailing input parameters with defaults */
	Oid		   *argtypes;
	char	  **argnames;		/* NULL for an unnamed parameter */
	bool	   *argsafe;		/* value text means the same under any
								 * settings: stored as given */
	FmgrInfo   *inflinfo;		/* input functions */
	Oid		   *typioparam;
	Oid		   *typoutput;
	bool		all_safe;
	bool		passable;		/* a job can call it: a function or a procedure
								 * without output parameters, whose input
								 * parameters have concrete types */
	char	   *signature;		/* schema-qualified, e.g. public.f(text) */
	char	   *callname;		/* quoted, schema-qualified name */
} QlProcInfo;

#define QL_CALL_GIVEN_BYTES ((FUNC_MAX_ARGS + 7) / 8)

/* a call of a handler, ready for SPI */
typedef struct QlCall
{
	char	   *query;			/* SELECT f($1, b => $2) or CALL p(...) */
	bool		named;			/* named notation */
	bits8		given[QL_CALL_GIVEN_BYTES];	/* the input parameters given */
	int			nparams;
	Oid		   *types;
	Datum	   *values;
	char	   *nulls;			/* SPI convention: 'n' or ' ' */
} QlCall;

extern QlProcInfo *ql_procinfo(Oid procoid);
extern Oid	ql_signature_oid(const char *signature);
extern Oid	ql_to_regprocedure(const char *signature);
extern char *ql_signature(Oid procoid);
extern void ql_check_handler_signature(Oid procoid);
extern Jsonb *ql_args_normalize(QlProcInfo *pi, Jsonb *args);
extern void ql_args_to_call(QlProcInfo *pi, Jsonb *args, QlCall *call);

#endif							/* QLATER_ARGS_H */
