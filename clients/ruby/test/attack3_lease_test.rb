# frozen_string_literal: true

require "test_helper"
require "logger"
require "stringio"

# Third attack on lease mode (made through a real transaction-pooling
# PgBouncer; reproduced here without one): a connection lost mid-cycle, a
# heartbeat queued behind the job transactions, renewals of jobs already
# finished.
class Attack3LeaseTest < QLaterTest::Case
  # Holds a FOR UPDATE lock on its own job's row for +hold+ seconds, in its
  # transaction: a renewal of its lease (an UPDATE of that row) waits for it
  class HoldOwnRow
    include QLater::ProcessLater

    def initialize(key, hold) = (@key, @hold = key, hold)
    def initializer_arguments = [@key, @hold]

    def call
      job = QLater.current_job
      QLater.connection.exec_params("SELECT 1 FROM qlater_job WHERE id = $1 FOR UPDATE", [job.id])
      QLater.connection.exec_params("INSERT INTO rb_done (queue, key) VALUES ($1, $2)", [job.queue, @key])
      sleep @hold
    end
  end

  def lease_worker(**opts)
    @log = StringIO.new
    logger = Logger.new(@log)
    logger.formatter = proc { |severity, _, _, message| "#{severity} #{message}\u0000" }
    worker(logger: logger, **opts)
  end

  def log_records
    @log.string.split("\u0000")
  end

  def start(w)
    @runner = Thread.new { w.run }
    w
  end

  # The backend of a job's transaction: its INSERT done, not committed.
  def job_backend
    value("SELECT (SELECT pid FROM pg_stat_activity WHERE datname = current_database() " \
          "AND state = 'idle in transaction' AND query LIKE 'INSERT INTO rb_done%' LIMIT 1)")
  end

  # Found by an attack: a lease worker whose connection was lost mid-cycle
  # (pg_terminate_backend; a pooler's KILL or restart does the same)
  # dropped every claim of the cycle from its heartbeat and gave none back,
  # though their tokens still held: the running job and the four not yet
  # started waited for their leases to run out, each was counted a failed
  # attempt, and nothing said so per job.  The worker gives them back (its
  # heartbeat, on a session of its own), logs each, and runs them again.
  def test_claims_of_a_lost_connection_are_given_back
    5.times { |i| RecordKey.new("l#{i}", sleep: 0.8).later }
    w = start(lease_worker(lease: 120, batch: 5, poll_interval: 0.2))
    pid = nil
    wait_until(message: "the first job's transaction") { pid = job_backend }
    value("SELECT pg_terminate_backend($1)", pid)
    wait_until(timeout: 60, message: "every job done (a lapse takes 120 s)") { done_count == 5 }
    w.stop
    counts = @runner.value
    assert_equal %w[l0 l1 l2 l3 l4], done_keys
    assert_equal 0, counts[:failed], counts.inspect
    outcomes = conn.exec_params("SELECT outcome FROM qlater_history WHERE queue = $1", [queue]).column_values(0)
    assert_equal %w[done] * 5, outcomes, "no attempt failed or ran out"
    given_back = log_records.grep(/outcome=given back/)
    assert_equal 5, given_back.size, log_records.join("\n")
    errors = log_records.grep(/worker thread error/)
    assert_equal 1, errors.size, log_records.join("\n")
    refute_includes errors.first, "\n", "the lost connection is one line"
  ensure
    w&.stop
  end

  # The heartbeat renews the leases of the jobs the worker still holds: not
  # those of a claim's jobs already completed (each beat asked for them, and
  # the server logged "job N does not exist" for each).
  def test_the_heartbeat_renews_only_jobs_not_finished
    3.times { |i| RecordKey.new("h#{i}", sleep: 1.0).later }
    w = start(lease_worker(lease: 3, batch: 3, poll_interval: 0.2))
    stale = []
    until done_count == 3
      held = w.send(:heartbeat)&.held_ids || []
      finished = conn.exec_params("SELECT count(*) FROM qlater_jobs WHERE id = ANY($1::bigint[])",
                                  ["{#{held.join(',')}}"]).getvalue(0, 0).to_i
      # a job completes, then leaves the heartbeat: read twice to be sure
      stale << held if finished < held.size && (w.send(:heartbeat)&.held_ids || []) == held &&
                       sleep(0.2) && (w.send(:heartbeat)&.held_ids || []) == held
      sleep 0.05
    end
    w.stop
    @runner.value
    assert_empty stale, "finished jobs still renewed"
  ensure
    w&.stop
  end

  # Behind a transaction pooler whose pool is as large as the worker's
  # threads, the heartbeat's renewals waited in the pooler's queue behind
  # the jobs' transactions, and every job longer than its lease was lost.
  # A direct URL given for LISTEN (--listen-url) carries the renewals too.
  def test_the_heartbeat_connects_where_the_listener_does
    RecordKey.new("d", sleep: 1.5).later
    direct = PG::Connection.conninfo_parse("").to_h { |o| [o[:keyword].to_sym, o[:val]] }.compact
    direct[:application_name] = "rb-direct-#{SecureRandom.hex(3)}"
    w = start(lease_worker(lease: 30, poll_interval: 0.2, listen: direct))
    sessions = nil
    wait_until(message: "the job's transaction") { job_backend }
    sessions = Integer(value("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                             direct[:application_name]))
    w.stop
    @runner.value
    assert_equal 2, sessions, "the listener and the heartbeat connect with listen:"
  ensure
    w&.stop
  end

  # A renewal that waits longer than the third of the lease it has (a
  # pooler's queue, a lock) is logged: the lease is in danger.
  def test_a_slow_renewal_is_logged
    HoldOwnRow.new("slow", 2.0).later
    w = start(lease_worker(lease: 3, poll_interval: 0.2))
    wait_until(message: "the job") { done_count == 1 && jobs.empty? }
    sleep 0.3
    w.stop
    @runner.value
    assert_match(/lease renewal .*took/, log_records.join("\n"))
  ensure
    w&.stop
  end
end
