# Makefile for the qlater extension (PGXS)

EXTENSION = qlater
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big = qlater
OBJS = \
	src/api.o \
	src/args.o \
	src/batch.o \
	src/catalog.o \
	src/claim.o \
	src/consumer.o \
	src/cron.o \
	src/failure.o \
	src/handlers.o \
	src/inflight.o \
	src/launcher.o \
	src/limits.o \
	src/plans.o \
	src/qlater.o \
	src/queue.o \
	src/run.o \
	src/schedule.o \
	src/shmem.o \
	src/worker.o \
	src/xact.o
PGFILEDESC = "qlater - durable background jobs inside PostgreSQL"

DATA = $(wildcard sql/$(EXTENSION)--*.sql)

# pg_regress runs twice: the tests of REGRESS_NOLOAD against a server that
# does not preload qlater (test/noload.conf), the others against one that
# does (test/qlater.conf).  Both sets are in REGRESS, so that
# "make installcheck REGRESS='...'" picks tests of either.
REGRESS = setup api args security consumer queues cron schedule unique twophase noload
REGRESS_NOLOAD = noload
REGRESS_OPTS = --temp-config=test/qlater.conf --temp-instance=./tmp_check
NOLOAD_OPTS = --temp-config=test/noload.conf --temp-instance=./output_noload/tmp_check \
	--outputdir=output_noload
EXTRA_CLEAN = output_noload

# installcheck is defined below, to run both pg_regress sets
NO_INSTALLCHECK = 1

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

REGRESS_PRELOADED = $(filter-out $(REGRESS_NOLOAD),$(REGRESS))
REGRESS_NOT_PRELOADED = $(filter $(REGRESS_NOLOAD),$(REGRESS))

# Both sets run even if the first fails; the second's differences are shown
# here, since they are not in ./regression.diffs.  Then the TAP tests, as
# PGXS's own installcheck does.
installcheck: submake
ifdef REGRESS
	@status=0; \
	$(if $(REGRESS_PRELOADED),$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESS_PRELOADED) || status=1;) \
	$(if $(REGRESS_NOT_PRELOADED),$(pg_regress_installcheck) \
		$(filter --dbname=%,$(REGRESS_OPTS)) $(NOLOAD_OPTS) $(REGRESS_NOT_PRELOADED) || \
		{ status=1; cat output_noload/regression.diffs 2>/dev/null; };) \
	exit $$status
endif
ifdef TAP_TESTS
	$(prove_installcheck)
endif

# every object depends on every header (PGXS tracks no header dependencies)
$(OBJS): $(wildcard src/*.h)

# Treat every compiler warning as an error when asked: make WERROR=1
ifdef WERROR
override CFLAGS += -Werror
endif
