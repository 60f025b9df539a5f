# frozen_string_literal: true

require "test_helper"
require_relative "support/attack2_active_record"

# Second attack round on the worker on ActiveRecord's pool: the patched
# TransactionManager (after_commit after the job's COMMIT) and the pinned
# connection.
class Attack2ActiveRecordTest < QLaterTest::Case
  def setup
    super
    QLater.connection = nil
    @prefix = "#{queue}_"
    QLater::ActiveJob.queue_prefix = @prefix
    @aj_queue = QLater::ActiveJob.declare_queues("default").first
    Attack2Record.reset!
  end

  def teardown
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue LIKE $1", ["#{@prefix}%"])
    QLater::ActiveJob.queue_prefix = QLater::ActiveJob::DEFAULT_PREFIX
    super
  end

  def aj_jobs
    conn.exec_params("SELECT * FROM qlater_jobs WHERE queue = $1 ORDER BY id", [@aj_queue]).to_a
  end

  def aj_worker(**opts)
    QLater::Worker.new(queues: [@aj_queue], logger: Logger.new(@log = StringIO.new), **opts)
  end

  def keys
    RbAj.where(queue: queue).order(:key).pluck(:key)
  end

  # Batch commit: each committed job's record gets after_commit once, after
  # the batch's COMMIT; a job whose savepoint rolled back gets none (its
  # record gets after_rollback).
  def test_batch_commit_after_commit_once_per_committed_job
    %w[a1 fail2 a3 a4].each { |k| Attack2SaveJob.perform_later(queue, k) }
    assert_equal 4, aj_worker(batch: 10, commit: :batch).work_off
    assert_equal %w[a1 a3 a4], keys
    assert_equal %w[a1 a3 a4], Attack2Record.committed.sort
    assert_equal %w[fail2], Attack2Record.rolled_back
  end

  def test_a_requires_new_block_that_raises_in_a_job
    Attack2RequiresNewJob.perform_later(queue)
    assert_equal 1, aj_worker.work_off
    assert_equal %w[outer], keys
    assert_equal %w[outer], Attack2Record.committed
    assert_equal %w[inner], Attack2Record.rolled_back
  end

  # An after_commit that raises (a webhook down) runs now after the job's
  # COMMIT: the job is done and completed.  Outside a job, the exception
  # reaches the code that saved the record, after the commit.  In the
  # worker it reaches run_one's rescue, which takes the committed job for
  # a failed one: qlater_fail of a completed job raises (job does not
  # exist), then qlater_unlock_many too, the connection is discarded, and
  # work_off raises PG::UndefinedObject (run logs a worker thread error);
  # the job's outcome is never logged or counted.
  def test_an_after_commit_that_raises_does_not_break_the_worker
    Attack2SaveJob.perform_later(queue, "raise1")
    Attack2SaveJob.perform_later(queue, "ok2")
    w = aj_worker
    ran = nil
    begin
      ran = w.work_off
    rescue StandardError => e
      flunk "work_off raised #{e.class}: #{e.message.lines.first.strip} (log: #{@log.string.lines.grep(/raise1|error/).join(' | ')})"
    end
    assert_equal 2, ran
    assert_equal %w[ok2 raise1], keys, "both jobs committed"
    assert_empty aj_jobs, "both completed"
    assert_equal 2, w.counts[:completed], w.counts.inspect
  end

  # The same in batch commit mode: the callbacks of the whole batch run
  # after its COMMIT; one that raises must not make the worker give back
  # (or report as failed) jobs that were completed.
  def test_an_after_commit_that_raises_in_a_batch
    %w[ok1 raise2 ok3].each { |k| Attack2SaveJob.perform_later(queue, k) }
    w = aj_worker(batch: 10, commit: :batch)
    begin
      w.work_off
    rescue StandardError => e
      flunk "work_off raised #{e.class}: #{e.message.lines.first.strip}"
    end
    assert_equal %w[ok1 ok3 raise2], keys
    assert_empty aj_jobs
    assert_equal 3, w.counts[:completed], w.counts.inspect
    assert_equal 0, w.counts[:unlocked], "completed jobs are not given back: #{@log.string}"
  end

  # A job that disconnects the pool (code that forks, establish_connection):
  # its pinned connection is skipped by disconnect!'s checkin but removed
  # from the pool's list, and stays in the thread's cache; the worker's
  # with_connection then checks it in: the pool's available list holds a
  # connection the pool no longer knows (pool.connections omits it, so the
  # next disconnect! / fork hook never closes it, and the pool can hand
  # out more connections than its size).
  def test_disconnect_in_a_job_leaves_the_pool_consistent
    Attack2DisconnectJob.perform_later(queue)
    begin
      aj_worker.work_off
    rescue ActiveRecord::ConnectionNotEstablished
      nil # the job's session is gone: work_off says so
    end
    pool = ActiveRecord::Base.connection_pool
    available = pool.instance_variable_get(:@available).instance_variable_get(:@queue)
    unknown = available.reject { |c| pool.connections.include?(c) }
    assert_empty unknown, "connections in the pool's available list that the pool does not list"
  end
end

class Attack2ActiveRecordTest
  # Found through a real PgBouncer: lease mode is for transaction poolers,
  # where ActiveRecord's prepared statements (on unless database.yml says
  # prepared_statements: false) fail, or run another client's statement of
  # the same name.  A lease worker on ActiveRecord's pool says so when they
  # are on.
  def test_lease_mode_on_active_record_warns_of_prepared_statements
    RecordJob.perform_later(queue, "ps")
    assert_equal 1, aj_worker(lease: 30).work_off
    assert_match(/prepared_statements: false/, @log.string)
    assert_equal %w[ps], keys
  end
end
