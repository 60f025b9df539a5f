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
	src/history.o \
	src/inflight.o \
	src/launcher.o \
	src/limits.o \
	src/plans.o \
	src/qlater.o \
	src/queue.o \
	src/run.o \
	src/running.o \
	src/schedule.o \
	src/shmem.o \
	src/stats.o \
	src/worker.o \
	src/xact.o
PGFILEDESC = "qlater - durable background jobs inside PostgreSQL"

DATA = $(wildcard sql/$(EXTENSION)--*.sql)

# pg_regress, as PGXS's installcheck does, runs against the server you run
# (libpq's PGHOST, PGPORT, PGUSER; the role must be a superuser), which must
# preload qlater (shared_preload_libraries = 'qlater', max_prepared_transactions
# > 0: see test/qlater.conf); it makes and drops a database contrib_regression.
# With TEMP_INSTANCE=1 (test/run does so) it starts servers of its own
# instead, twice: the tests of REGRESS_NOLOAD against one that does not
# preload qlater (test/noload.conf), the others against one that does
# (test/qlater.conf); PostgreSQL refuses to start a server as root, so run
# it as another user.  Both sets are in REGRESS, so that
# "make installcheck REGRESS='...'" picks tests of either.  The TAP tests
# start servers of their own either way (as root they are left out, saying
# so).
REGRESS = setup api args security consumer queues cron schedule unique twophase noload
REGRESS_NOLOAD = noload
ifdef TEMP_INSTANCE
REGRESS_OPTS = --temp-config=test/qlater.conf --temp-instance=./tmp_check
else
REGRESS_OPTS =
endif
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
	$(if $(and $(TEMP_INSTANCE),$(REGRESS_NOT_PRELOADED)),$(pg_regress_installcheck) \
		$(filter --dbname=%,$(REGRESS_OPTS)) $(NOLOAD_OPTS) $(REGRESS_NOT_PRELOADED) || \
		{ status=1; cat output_noload/regression.diffs 2>/dev/null; };) \
	$(if $(TEMP_INSTANCE),,$(if $(REGRESS_NOT_PRELOADED),echo "not run against your server: $(REGRESS_NOT_PRELOADED) (needs one without the preload; TEMP_INSTANCE=1 starts one)";)) \
	exit $$status
endif
ifdef TAP_TESTS
ifeq ($(shell id -u),0)
	@echo "TAP tests not run: they start servers of their own, which PostgreSQL refuses to run as root (run make installcheck as another user, or bash test/run)"
else
	$(prove_installcheck)
endif
endif

# every object depends on every header (PGXS tracks no header dependencies)
$(OBJS): $(wildcard src/*.h)

# Treat every compiler warning as an error when asked: make WERROR=1
ifdef WERROR
override CFLAGS += -Werror
endif
