/*-------------------------------------------------------------------------
 *
 * inflight.c
 *		Which job each worker is running, in a file that outlives the
 *		process and a crash-restart of the server.
 *
 * A handler can crash its process (a segfault in C code, an out-of-memory
 * kill).  The postmaster then restarts every backend and resets shared
 * memory, so shared memory cannot say which job was to blame.  Each worker
 * therefore maps its record in the file qlater.inflight of the data
 * directory (MAP_SHARED) and stores the job it runs there: plain memory
 * writes, no system call and no WAL per job.  Pages of a shared file
 * mapping survive the death of the process that wrote them.
 *
 * A worker told to quit by the postmaster (SIGQUIT: crash of another
 * process, or immediate shutdown) marks its record as a victim from its
 * signal handler; a worker stopped by SIGTERM or leaving normally clears
 * it.  So after a crash-restart, a record still "running" names the job of
 * the process that crashed.  The launcher reads the file once per server
 * start (ql_inflight_collect) and hands those jobs to their databases'
 * workers, which count the crash against them.  An operating system crash
 * loses the file's latest writes: its jobs simply run again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/lwlock.h"

#include "inflight.h"
#include "qlater.h"
#include "shmem.h"

#define QL_INFLIGHT_FILE	"qlater.inflight"

#define QL_INFLIGHT_IDLE	0
#define QL_INFLIGHT_RUNNING	1
#define QL_INFLIGHT_VICTIM	2

typedef struct QlInflight
{
	uint32		dboid;
	uint32		state;
	int64		job_id;
} QlInflight;

/* this worker's record, mapped from the file */
static volatile QlInflight *my_record = NULL;

/*
 * ql_inflight_collect: at server start, before any worker runs, move the
 * records of crashed jobs into shared memory (QlShared.crashed) and start
 * a clean file with one record per slot.  Caller is the launcher.
 */
void
ql_inflight_collect(int nslots)
{
	int			fd;
	QlInflight	rec;
	int			ncrashed = 0;
	QlCrashedJob crashed[QL_MAX_CRASHED];
	char	   *zeros;

	fd = OpenTransientFile(QL_INFLIGHT_FILE, O_RDONLY | PG_BINARY);
	if (fd >= 0)
	{
		while (read(fd, &rec, sizeof(rec)) == sizeof(rec))
		{
			if (rec.state == QL_INFLIGHT_RUNNING && rec.job_id > 0 &&
				ncrashed < QL_MAX_CRASHED)
			{
				crashed[ncrashed].dboid = rec.dboid;
				crashed[ncrashed].job_id = rec.job_id;
				crashed[ncrashed].kind = QL_END_CRASH;
				crashed[ncrashed].counting = false;
				ncrashed++;
				ereport(LOG,
						(errmsg("qlater job %lld of database %u was running when the server crashed",
								(long long) rec.job_id, rec.dboid)));
			}
		}
		CloseTransientFile(fd);
	}

	LWLockAcquire(ql_shared->lock, LW_EXCLUSIVE);
	memcpy(ql_shared->crashed, crashed, sizeof(QlCrashedJob) * ncrashed);
	ql_shared->ncrashed = ncrashed;
	LWLockRelease(ql_shared->lock);

	fd = OpenTransientFile(QL_INFLIGHT_FILE, O_RDWR | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", QL_INFLIGHT_FILE)));
	zeros = palloc0(sizeof(QlInflight) * nslots);
	if (write(fd, zeros, sizeof(QlInflight) * nslots) != sizeof(QlInflight) * nslots)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", QL_INFLIGHT_FILE)));
	CloseTransientFile(fd);
	pfree(zeros);
}

/*
 * ql_inflight_attach: map this worker's record.  Without the file (it is
 * written by the launcher before any worker starts) crash accounting is
 * off for this worker, which is logged.
 */
void
ql_inflight_attach(int slot)
{
	int			fd;
	void	   *map;
	size_t		len = sizeof(QlInflight) * (slot + 1);

	fd = OpenTransientFile(QL_INFLIGHT_FILE, O_RDWR | PG_BINARY);
	if (fd < 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", QL_INFLIGHT_FILE)));
		return;
	}
	map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CloseTransientFile(fd);
	if (map == MAP_FAILED)
	{
		ereport(LOG,
				(errmsg("could not map file \"%s\": %m", QL_INFLIGHT_FILE)));
		return;
	}
	my_record = &((QlInflight *) map)[slot];
	ql_inflight_clear();
}

/* ql_inflight_set: record the job this worker is about to run */
void
ql_inflight_set(Oid dboid, int64 job_id)
{
	if (my_record == NULL)
		return;
	my_record->dboid = dboid;
	my_record->job_id = job_id;
	pg_write_barrier();
	my_record->state = QL_INFLIGHT_RUNNING;
}

/* ql_inflight_clear: this worker runs no job */
void
ql_inflight_clear(void)
{
	if (my_record == NULL)
		return;
	my_record->state = QL_INFLIGHT_IDLE;
}

/*
 * ql_inflight_mark_victim: from a signal handler; the job was not to blame
 * for the crash.
 */
void
ql_inflight_mark_victim(void)
{
	if (my_record != NULL && my_record->state == QL_INFLIGHT_RUNNING)
		my_record->state = QL_INFLIGHT_VICTIM;
}
