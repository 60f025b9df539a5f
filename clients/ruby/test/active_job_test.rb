# frozen_string_literal: true

require "test_helper"
require "rbconfig"
require_relative "support/active_record_setup"

# The ActiveJob adapter and the worker on ActiveRecord's connection pool.
class ActiveJobTest < QLaterTest::Case
  def setup
    super
    QLater.connection = nil # ActiveRecord's connection, as in a Rails app
    @prefix = "#{queue}_"
    QLater::ActiveJob.queue_prefix = @prefix
    @aj_queue = QLater::ActiveJob.declare_queues("default").first
  end

  def teardown
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue LIKE $1", ["#{@prefix}%"])
    QLater::ActiveJob.queue_prefix = QLater::ActiveJob::DEFAULT_PREFIX
    QLater.active_record_class = nil
    super
  end

  def aj_jobs(q = @aj_queue)
    conn.exec_params("SELECT * FROM qlater_jobs WHERE queue = $1 ORDER BY id", [q]).to_a
  end

  def rows(q = queue)
    RbAj.where(queue: q).order(:key).pluck(:key)
  end

  def aj_worker(**opts)
    QLater::Worker.new(queues: [@aj_queue], **opts)
  end

  def test_the_adapter_maps_queue_names_and_enqueues_in_the_callers_transaction
    assert_equal "#{@prefix}default", @aj_queue
    job = RecordJob.perform_later(queue, "committed")
    assert_kind_of Integer, job.provider_job_id
    row = aj_jobs.first
    assert_equal "RecordJob", row["handler"]
    assert_equal job.provider_job_id, Integer(row["id"])
    assert_equal "RecordJob", JSON.parse(row["args"])["job_class"]

    ActiveRecord::Base.transaction do
      RecordJob.perform_later(queue, "rolled back")
      raise ActiveRecord::Rollback
    end
    assert_equal 1, aj_jobs.size, "a rolled-back transaction leaves no job"

    ActiveRecord::Base.transaction do
      RbAj.create!(queue: queue, key: "with the data")
      RecordJob.perform_later(queue, "with the data too")
    end
    assert_equal 2, aj_jobs.size
    assert_equal 2, aj_worker.work_off
    assert_equal ["committed", "with the data", "with the data too"], rows
  end

  def test_a_queue_not_declared_or_in_server_is_a_clear_error
    error = assert_raises(QLater::Error) { RecordJob.set(queue: "mailers").perform_later(queue, "x") }
    assert_match(/qlater queue "#{@prefix}mailers" of ActiveJob queue "mailers" does not exist/, error.message)
    assert_match(/declare_queues\("mailers"\)/, error.message)
    conn.exec_params("SELECT qlater_create_queue($1)", ["#{@prefix}sql"])
    error = assert_raises(QLater::Error) { RecordJob.set(queue: "sql").perform_later(queue, "x") }
    assert_match(/is an in-server queue/, error.message)
    assert_raises(QLater::Error) { QLater::ActiveJob.declare_queues("sql") }
    assert_equal ["#{@prefix}mailers"], QLater::ActiveJob.declare_queues("mailers")
    RecordJob.set(queue: "mailers").perform_later(queue, "m")
    assert_equal 1, aj_jobs("#{@prefix}mailers").size
    assert_empty aj_jobs("default"), "never qlater's in-server 'default'"
  end

  # With no prefix, ActiveJob's "default" is qlater's own in-server queue:
  # the error must not tell the user to turn that queue external (its SQL
  # jobs would go to external consumers), only to set a prefix
  def test_an_empty_prefix_does_not_suggest_turning_qlaters_default_external
    QLater::ActiveJob.queue_prefix = ""
    error = assert_raises(QLater::Error) { RecordJob.perform_later(queue, "x") }
    assert_match(/qlater queue "default" of ActiveJob queue "default" is an in-server queue/, error.message)
    assert_match(/QLater::ActiveJob.queue_prefix/, error.message)
    refute_match(/qlater_alter_queue/, error.message)
    error = assert_raises(QLater::Error) { QLater::ActiveJob.declare_queues("default") }
    refute_match(/qlater_alter_queue/, error.message)
    assert_empty aj_jobs("default")
  end

  def test_scheduled_jobs_and_priority
    RecordJob.set(wait: 3600).perform_later(queue, "later")
    RecordJob.set(wait_until: Time.now + 7200, priority: 5).perform_later(queue, "much later")
    first, second = aj_jobs
    assert_in_delta Time.now + 3600, Time.parse(first["run_at"]), 60
    assert_in_delta Time.now + 7200, Time.parse(second["run_at"]), 60
    assert_equal "5", second["priority"]
    assert_equal 0, aj_worker.work_off, "nothing is due"
    conn.exec_params("UPDATE qlater_job SET run_at = now() WHERE queue = $1", [@aj_queue])
    assert_equal 2, aj_worker.work_off
    assert_equal ["later", "much later"], rows
  end

  def test_the_job_runs_on_the_claiming_connection_in_a_transaction
    PinnedJob.perform_later(queue)
    assert_equal 1, aj_worker.work_off
    held, open, klass, same = RbAj.find_by!(queue: queue, key: "pinned").info.split
    assert_operator Integer(held), :>=, 1, "the job's session holds its claim"
    assert_equal "true", open, "in a transaction"
    assert_equal "ActiveRecord::Base", klass
    assert_equal "true", same, "QLater.connection is that connection"
    assert_empty aj_jobs
  end

  def test_the_active_record_class_is_configurable
    QLater.active_record_class = "OtherRecord"
    PinnedJob.perform_later(queue)
    assert_equal 1, aj_worker.work_off
    held, _, klass, = RbAj.find_by!(queue: queue, key: "pinned").info.split
    assert_equal "OtherRecord", klass
    assert_operator Integer(held), :>=, 1, "OtherRecord's connection holds the claim"
  end

  def test_own_transaction_blocks_roll_back_alone_and_a_bare_rollback_fails_the_job
    NestedRollbackJob.perform_later(queue)
    assert_equal 1, aj_worker.work_off
    assert_equal ["outer"], rows, "the job's own rolled-back block only"
    assert_empty aj_jobs

    TopRollbackJob.perform_later(queue)
    assert_equal 1, aj_worker.work_off
    job = aj_jobs.first
    assert_equal "1", job["attempts"], "a failed attempt"
    assert_match(/ActiveRecord::Rollback raised outside a transaction block/,
                 JSON.parse(job["last_error"])["message"])
    assert_equal ["outer"], rows, "its write is rolled back"
  end

  def test_an_exception_fails_the_attempt_and_qlater_retries_the_same_job
    job = BoomJob.perform_later(queue, "b1")
    assert_equal 1, aj_worker.work_off
    row = aj_jobs.first
    assert_equal job.provider_job_id, Integer(row["id"]), "the same job"
    assert_equal "1", row["attempts"]
    assert_match(/RuntimeError: boom b1/, JSON.parse(row["last_error"])["message"])
    assert_empty rows, "rolled back"
  end

  def test_retry_on_enqueues_new_jobs_and_discard_on_completes
    RetryJob.perform_later(queue, 3)
    assert_equal 3, aj_worker.work_off, "retry_on's wait: 0 jobs are due at once"
    assert_equal %w[run1 run2 run3], rows, "each execution a new job; writes before the raise stay"
    assert_empty aj_jobs

    RetryJob.perform_later("#{queue}x", 99)
    assert_equal 3, aj_worker.work_off
    row = aj_jobs.first
    assert_equal "2", JSON.parse(row["args"])["executions"].to_s, "the job of the third execution (2 before it)"
    assert_equal "1", row["attempts"], "then qlater records the failure"
    assert_equal "2", row["max_attempts"], "qlater_max_attempts"
    assert_equal %w[run1 run2], rows("#{queue}x"), "the failed execution's write is rolled back"
    make_ready_aj!
    assert_equal 1, aj_worker.work_off
    assert_equal "dead", aj_jobs.first["state"]

    DiscardJob.perform_later(queue)
    assert_equal 1, aj_worker.work_off
    assert_equal 1, aj_jobs.size, "discarded: only the dead job is left"
  end

  def test_batch_commit_mode_rolls_back_a_failing_job_alone
    %w[ok1 bad ok2 ok3].each { |k| BoomJob.perform_later(queue, k) }
    counts = nil
    w = aj_worker(batch: 10, commit: :batch)
    assert_equal 4, w.work_off
    counts = w.counts
    assert_equal({ completed: 3, failed: 1 }, counts.slice(:completed, :failed))
    assert_equal %w[ok1 ok2 ok3], rows
    left = aj_jobs
    assert_equal 1, left.size
    assert_equal "1", left.first["attempts"]
    assert_equal 1, Integer(value("SELECT count(DISTINCT pid) FROM rb_aj WHERE queue = $1", queue)),
                 "one session"
  end

  def test_a_killed_worker_loses_nothing_and_runs_nothing_twice
    ActiveRecord::Base.transaction do
      30.times { |i| RecordJob.perform_later(queue, format("%02d", i), 0.05) }
    end
    lib = File.join(QLaterTest::ROOT, "lib")
    test = File.join(QLaterTest::ROOT, "test")
    pid = Process.spawn(RbConfig.ruby, "-I", lib, "-I", test,
                        File.join(test, "support", "aj_worker_process.rb"), @aj_queue, out: File::NULL)
    wait_until(timeout: 30, message: "jobs run by the subprocess") { rows.size >= 5 }
    Process.kill(:KILL, pid)
    Process.wait(pid)
    assert_operator rows.size, :<, 30, "killed mid-run"
    wait_until(timeout: 30, message: "every job, by another worker") do
      aj_worker.work_off
      aj_jobs.empty?
    end
    assert_equal (0...30).map { |i| format("%02d", i) }, rows, "every job exactly once"
  end

  def test_an_idle_worker_on_the_pool_is_woken_by_notify
    w = aj_worker(threads: 2, poll_interval: 60)
    runner = Thread.new { w.run }
    sleep 0.5 # listening and waiting
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    RecordJob.perform_later(queue, "wake")
    wait_until(timeout: 10, message: "the notified worker") { rows == ["wake"] }
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    assert_operator elapsed, :<, 5, "woken by NOTIFY, not by the 60 s poll"
    w.stop
    assert_equal 1, runner.value[:completed]
  ensure
    w&.stop
    runner&.join
  end

  def make_ready_aj!
    conn.exec_params("UPDATE qlater_job SET run_at = now() WHERE queue = $1", [@aj_queue])
  end
end
