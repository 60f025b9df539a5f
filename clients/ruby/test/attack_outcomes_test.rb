# frozen_string_literal: true

require "test_helper"
require_relative "support/attack_active_record"

# Odd job outcomes on ActiveRecord's pool: each fails (or completes) as
# documented and leaves no claim on a pooled connection.
class AttackOutcomesTest < QLaterTest::Case
  def setup
    super
    QLater.connection = nil
    @prefix = "#{queue}_"
    QLater::ActiveJob.queue_prefix = @prefix
    @aj_queue = QLater::ActiveJob.declare_queues("default").first
  end

  def teardown
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue LIKE $1", ["#{@prefix}%"])
    QLater::ActiveJob.queue_prefix = QLater::ActiveJob::DEFAULT_PREFIX
    super
  end

  def aj_jobs
    conn.exec_params("SELECT * FROM qlater_jobs WHERE queue = $1 ORDER BY id", [@aj_queue]).to_a
  end

  def claims_in_pool
    ActiveRecord::Base.connection_pool.with_connection do |c|
      c.select_value("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) " \
                     "WHERE l.locktype = 'advisory' AND a.application_name = 'qlater-worker'").to_i
    end
  end

  def test_exit_in_a_job_fails_it_rolls_back_and_stops_the_worker
    AttackExitJob.perform_later(queue)
    w = QLater::Worker.new(queues: [@aj_queue], poll_interval: 0.1)
    RecordJob.perform_later(queue, "next") # not run: the worker stops
    assert_equal 1, w.work_off, "work_off returns (it does not re-raise the SystemExit)"
    assert w.stopping?
    job = aj_jobs.first
    assert_equal "1", job["attempts"]
    assert_match(/SystemExit/, JSON.parse(job["last_error"])["message"])
    assert_empty RbAj.where(queue: queue).pluck(:key)
    assert_equal 0, claims_in_pool
  end

  def test_an_aborted_transaction_fails_the_job
    AttackAbortedJob.perform_later(queue)
    assert_equal 1, QLater::Worker.new(queues: [@aj_queue]).work_off
    job = aj_jobs.first
    assert_equal "1", job["attempts"]
    assert_empty RbAj.where(queue: queue).pluck(:key)
    assert_equal 0, claims_in_pool
  end

  def test_a_raw_rollback_in_a_job
    AttackRawRollbackJob.perform_later(queue)
    QLater::Worker.new(queues: [@aj_queue]).work_off
    keys = RbAj.where(queue: queue).pluck(:key)
    left = aj_jobs
    # documented: the exactly-once link is lost; the job must at least not
    # be both completed and run again, nor hold a claim
    assert(left.empty? || left.first["attempts"] == "1", left.inspect)
    assert_equal 0, claims_in_pool
    puts "\n  raw ROLLBACK: rows #{keys.inspect}, job #{left.map { |j| j.slice('state', 'attempts') }.inspect}" if ENV["ATTACK_VERBOSE"]
  end
end
