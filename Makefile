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
	src/plans.o \
	src/qlater.o \
	src/run.o \
	src/schedule.o \
	src/shmem.o \
	src/worker.o \
	src/xact.o
PGFILEDESC = "qlater - durable background jobs inside PostgreSQL"

DATA = $(wildcard sql/$(EXTENSION)--*.sql)

REGRESS = setup api args security consumer cron schedule
REGRESS_OPTS = --temp-config=test/qlater.conf --temp-instance=./tmp_check

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on every header (PGXS tracks no header dependencies)
$(OBJS): $(wildcard src/*.h)

# Treat every compiler warning as an error when asked: make WERROR=1
ifdef WERROR
override CFLAGS += -Werror
endif
