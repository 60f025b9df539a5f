// test/bench/peers/drain.js: one drain of a peer job queue, for test/bench/run.
//
//   node drain.js PEER SOCKET_DIR PORT DATABASE JOBS CONCURRENCY BATCH WINDOW_S
//
// PEER is one of
//   graphile        graphile-worker's runner, CONCURRENCY jobs at once, defaults
//   graphile-batch  the same with its batching: localQueue.size = BATCH and
//                   completeJobBatchDelay = 20 ms
//   pgboss          CONCURRENCY loops of pg-boss fetch() + complete(), BATCH = 1
//   pgboss-batch    the same, fetch() with batchSize = BATCH
//
// Each run: install or migrate the peer's schema, delete its leftover jobs,
// VACUUM, enqueue JOBS due no-op jobs, CHECKPOINT, then start the clock, start
// the workers and stop the clock when the peer's job table holds no unfinished
// job (polled every 20 ms on a connection of its own), or at the end of a
// window of WINDOW_S seconds, whichever comes first.  Prints one line,
// "SECONDS JOBS_DONE", on stdout (JOBS_DONE < JOBS when the window ended the
// drain); exits non-zero when the drain breaks (a worker error, no job done).
// Run by test/bench/run with NODE_PATH pointing at the node_modules it
// installed from package.json.

'use strict'

const { Pool, Client } = require('pg')

const [peer, socketDir, port, database, jobsArg, concArg, batchArg, windowArg] = process.argv.slice(2)
const JOBS = parseInt(jobsArg, 10)
const CONC = parseInt(concArg, 10)
const BATCH = parseInt(batchArg, 10)
const WINDOW_MS = parseFloat(windowArg) * 1000
if (!peer || !(JOBS > 0) || !(CONC > 0) || !(BATCH > 0) || !(WINDOW_MS > 0)) {
  console.error('usage: node drain.js PEER SOCKET_DIR PORT DATABASE JOBS CONCURRENCY BATCH WINDOW_S')
  process.exit(2)
}
const conn = { host: socketDir, port: parseInt(port, 10), user: 'postgres', database }

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const now = () => performance.now()

let workerError = null
function noteError (err) {
  if (!workerError) workerError = err
  console.error('worker error:', err && err.message ? err.message : err)
}

// waitEmpty(sql, t0): poll sql (a count of unfinished jobs) every 20 ms
// until it is 0 or the window has passed: { secs: from t0, done: jobs done }
async function waitEmpty (client, sql, t0) {
  for (;;) {
    const { rows } = await client.query(sql)
    const left = Number(rows[0].n)
    const secs = (now() - t0) / 1000
    if (left === 0 || secs * 1000 >= WINDOW_MS) return { secs, done: JOBS - left }
    if (workerError) throw new Error(`drain broken: ${workerError.message || workerError}`)
    await sleep(20)
  }
}

// after the enqueue: VACUUM ANALYZE the peer's table (statistics for its
// planner, as autovacuum would give it in time), CHECKPOINT
async function settle (client, table) {
  await client.query(`VACUUM ANALYZE ${table}`)
  await client.query('CHECKPOINT')
}

async function graphile (batched) {
  const { run, runMigrations, Logger } = require('graphile-worker')
  // errors and warnings only
  const logger = new Logger(() => (level, message) => {
    if (level === 'error' || level === 'warning') console.error(`graphile-worker ${level}: ${message}`)
    if (level === 'error') noteError(new Error(message))
  })
  const pool = new Pool({ ...conn, max: CONC + 2 })
  pool.on('error', noteError)
  pool.on('connect', c => c.on('error', noteError))
  const client = new Client(conn)
  await client.connect()
  try {
    await runMigrations({ pgPool: pool, logger })
    await client.query('DELETE FROM graphile_worker._private_jobs')
    await client.query('VACUUM graphile_worker._private_jobs')
    // add_jobs(): graphile-worker's own bulk enqueue
    await client.query(`SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(
        SELECT ROW('noop', json_build_object('i', g), NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
        FROM generate_series(1, $1) g))`, [JOBS])
    await settle(client, 'graphile_worker._private_jobs')
    const options = {
      pgPool: pool,
      concurrency: CONC,
      noHandleSignals: true,
      logger,
      taskList: { noop: async () => {} }
    }
    if (batched) {
      options.preset = { worker: { localQueue: { size: BATCH }, completeJobBatchDelay: 20 } }
    }
    const t0 = now()
    const runner = await run(options)
    try {
      return await waitEmpty(client, 'SELECT count(*) AS n FROM graphile_worker._private_jobs', t0)
    } finally {
      await runner.stop()
    }
  } finally {
    await client.end()
    await pool.end()
  }
}

async function pgboss (batchSize) {
  const PgBoss = require('pg-boss')
  const boss = new PgBoss({ ...conn, max: CONC + 2, supervise: false, schedule: false })
  boss.on('error', noteError)
  const client = new Client(conn)
  await client.connect()
  try {
    await boss.start()
    await boss.createQueue('noop')
    await client.query("DELETE FROM pgboss.job WHERE name = 'noop'")
    await client.query('VACUUM pgboss.job')
    // boss.insert(): pg-boss's own bulk insert, in chunks
    for (let i = 0; i < JOBS; i += 5000) {
      const chunk = []
      for (let k = i; k < Math.min(JOBS, i + 5000); k++) chunk.push({ name: 'noop', data: { i: k } })
      await boss.insert(chunk)
    }
    await settle(client, 'pgboss.job')
    const t0 = now()
    // CONCURRENCY loops: fetch up to batchSize jobs, run the no-op handler
    // for each, complete them, fetch again at once (pg-boss's work() would
    // wait out its polling interval, at least 0.5 s, between fetches)
    let stop = false
    const loop = async () => {
      while (!stop) {
        const jobs = await boss.fetch('noop', { batchSize })
        if (jobs.length === 0) {
          await sleep(5)
          continue
        }
        for (const job of jobs) await noop(job)
        await boss.complete('noop', jobs.map(j => j.id))
      }
    }
    const loops = Array.from({ length: CONC }, () => loop().catch(noteError))
    try {
      return await waitEmpty(client,
        "SELECT count(*) AS n FROM pgboss.job WHERE name = 'noop' AND state < 'completed'", t0)
    } finally {
      stop = true
      await Promise.all(loops)
    }
  } finally {
    await client.end()
    await boss.stop({ graceful: false, wait: true })
  }
}

async function noop (job) {
  return job.id
}

async function main () {
  let r
  switch (peer) {
    case 'graphile': r = await graphile(false); break
    case 'graphile-batch': r = await graphile(true); break
    case 'pgboss': r = await pgboss(1); break
    case 'pgboss-batch': r = await pgboss(BATCH); break
    default: throw new Error(`unknown peer ${peer}`)
  }
  if (workerError) throw new Error(`worker error during the drain: ${workerError.message || workerError}`)
  if (!(r.done > 0)) throw new Error(`no job done in ${r.secs} s`)
  console.log(`${r.secs.toFixed(3)} ${r.done}`)
}

main().then(() => process.exit(0), err => {
  console.error(`${peer}: ${err && err.stack ? err.stack : err}`)
  process.exit(1)
})
