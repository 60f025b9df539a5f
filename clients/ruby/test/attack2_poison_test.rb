# frozen_string_literal: true

require "test_helper"
require "stringio"
require_relative "support/attack2_jobs"

# Second attack round: exceptions of every kind from a job must end as a
# recorded failed attempt, the job's writes rolled back, the worker going on.
class Attack2PoisonTest < QLaterTest::Case
  def run_for(seconds, **opts)
    w = worker(poll_interval: 0.1, logger: Logger.new(@log = StringIO.new), **opts)
    runner = Thread.new { w.run }
    sleep seconds
    w.stop
    begin
      runner.join(30)
    rescue Exception => e # rubocop:disable Lint/RescueException
      @run_error = e
    end
    w
  end

  def assert_failed_once(kind, pattern)
    id = Attack2Odd.allocate.tap { |o| o.instance_variable_set(:@kind, kind) }.later(:call, max_attempts: 3)
    w = run_for(1.5)
    row = conn.exec_params("SELECT * FROM qlater_jobs WHERE id = $1", [id]).first
    assert_nil @run_error, "run raised #{@run_error.class}: #{@run_error&.message}"
    assert row, "job #{kind} still there"
    assert_equal "1", row["attempts"], "#{kind}: one failed attempt recorded (#{row['state']}); log: #{@log.string.lines.last(3).join}"
    assert_match pattern, JSON.parse(row["last_error"].to_s)["message"].to_s
    assert_empty done_keys, "#{kind}: the job's write rolled back"
    assert_equal 1, w.counts[:failed], w.counts.inspect
  end

  def test_deep_recursion_is_a_failed_attempt
    assert_failed_once("stack", /SystemStackError/)
  end

  def test_no_memory_error_is_a_failed_attempt
    assert_failed_once("memory", /NoMemoryError/)
  end

  def test_timeout_in_a_job_is_a_failed_attempt
    assert_failed_once("timeout", /Timeout::Error/)
  end

  def test_raise_in_initialize_is_a_failed_attempt
    assert_failed_once("initialize", /ArgumentError: bad in initialize/)
  end

  # An exception whose class cannot be printed: error_summary interpolates
  # error.class (to_s) outside any rescue; record_failure raises, the
  # claim is given back unrecorded, and the job is claimed again and again
  # (every poll_interval), never counted, never dead (the first round fixed
  # only a message that raises).  (Were its to_s to raise a ScriptError
  # such as NotImplementedError, run itself would raise: each worker that
  # claims the job dies.)
  def test_an_exception_whose_class_name_raises_is_recorded
    assert_failed_once("odd_class", /plain message/)
  end

  # Batch commit mode: the same, in a savepoint.
  def test_deep_recursion_in_batch_commit
    Attack2Odd.allocate.tap { |o| o.instance_variable_set(:@kind, "stack") }.later(:call, max_attempts: 3)
    Attack2Odd.allocate.tap { |o| o.instance_variable_set(:@kind, "after") }.later
    w = run_for(1.5, batch: 10, commit: :batch)
    assert_equal %w[after], done_keys
    assert_equal({ completed: 1, failed: 1 }, w.counts.slice(:completed, :failed))
  end
end
