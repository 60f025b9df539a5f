# frozen_string_literal: true

require "test_helper"
require_relative "support/attack_active_record"

# Sessions killed under the worker (pg_terminate_backend), leases that run
# out mid-job: the worker must recover, and each job take effect once.
class AttackRecoveryTest < QLaterTest::Case
  def start(w)
    @runner = Thread.new { w.run }
    w
  end

  def finish(w)
    w.stop
    @runner.value
  end

  def running_pid
    row = jobs.find { |j| j["state"] == "running" }
    row && Integer(row["locked_by"])
  end

  def terminate(pid)
    value("SELECT pg_terminate_backend($1)", pid)
  end

  def test_a_job_whose_session_is_terminated_runs_again_exactly_once
    RecordKey.new("t1", sleep: 1.0).later
    RecordKey.new("t2").later
    w = start(worker(poll_interval: 0.2))
    wait_until(message: "the first job running") { running_pid && done_count.zero? }
    terminate(running_pid)
    wait_until(message: "both jobs") { done_count == 2 && jobs.empty? }
    assert @runner.alive?, "the worker is still running"
    counts = finish(w)
    assert_equal %w[t1 t2], done_keys
    assert_equal 2, counts[:completed], counts.inspect
    assert_equal 0, counts[:failed], counts.inspect
  end

  def test_an_active_record_job_whose_session_is_terminated_runs_again_exactly_once
    QLater.connection = nil
    prefix = "#{queue}_"
    QLater::ActiveJob.queue_prefix = prefix
    aj_queue = QLater::ActiveJob.declare_queues("default").first
    RecordJob.perform_later(queue, "a1", 1.0)
    RecordJob.perform_later(queue, "a2")
    aj_jobs = -> { conn.exec_params("SELECT * FROM qlater_jobs WHERE queue = $1", [aj_queue]).to_a }
    w = start(QLater::Worker.new(queues: [aj_queue], poll_interval: 0.2))
    wait_until(message: "the first job running") { aj_jobs.call.any? { |j| j["state"] == "running" } }
    sleep 0.3
    terminate(Integer(aj_jobs.call.find { |j| j["state"] == "running" }["locked_by"]))
    wait_until(message: "both jobs") { aj_jobs.call.empty? }
    assert @runner.alive?, "the worker is still running"
    counts = finish(w)
    assert_equal %w[a1 a2], RbAj.where(queue: queue).order(:key).pluck(:key)
    assert_equal 0, counts[:failed], counts.inspect
  ensure
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue LIKE $1", ["#{prefix}%"])
    QLater::ActiveJob.queue_prefix = QLater::ActiveJob::DEFAULT_PREFIX
  end

  def test_the_listener_session_terminated_is_reopened
    w = start(worker(poll_interval: 2))
    sleep 0.5
    listener = lambda do
      conn.exec("SELECT pid FROM pg_stat_activity WHERE query LIKE '%qlater_listen%' " \
                "AND pid <> pg_backend_pid() ORDER BY backend_start DESC LIMIT 1").column_values(0).first
    end
    old = listener.call
    refute_nil old
    terminate(Integer(old))
    wait_until(timeout: 10, message: "a new listener") { (l = listener.call) && l != old }
    sleep 0.3
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    RecordKey.new("woken").later
    wait_until(timeout: 10, message: "the job") { done_count == 1 }
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    assert_operator elapsed, :<, 1.0, "woken by NOTIFY again"
  ensure
    finish(w) if w
  end

  # A job longer than its lease (found by an attack: the lease ran out, the
  # completion failed, nothing was counted, and the job ran again and again,
  # holding up its queue).  The worker renews the leases it holds: the job
  # keeps its lease, runs once, and the queue's next job runs.
  def test_a_job_longer_than_its_lease_keeps_it_and_runs_once
    RecordKey.new("slow", sleep: 2.5).later(:call, max_attempts: 2)
    RecordKey.new("after").later
    w = start(worker(lease: 1, poll_interval: 0.2))
    wait_until(timeout: 30, message: "both jobs") { done_count == 2 }
    counts = finish(w)
    assert_equal %w[after slow], done_keys, "each once"
    assert_equal 0, counts[:failed], counts.inspect
    assert_empty jobs
  end
end
