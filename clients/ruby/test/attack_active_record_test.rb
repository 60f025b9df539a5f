# frozen_string_literal: true

require "test_helper"
require "tmpdir"
require_relative "support/attack_active_record"

# Attacks on the worker on ActiveRecord's pool and on ProcessLater classes
# written the Rails way.
class AttackActiveRecordTest < QLaterTest::Case
  def setup
    super
    QLater.connection = nil
    @prefix = "#{queue}_"
    QLater::ActiveJob.queue_prefix = @prefix
    @aj_queue = QLater::ActiveJob.declare_queues("default").first
    AttackNotifiedRecord.notified.clear
  end

  def teardown
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue LIKE $1", ["#{@prefix}%"])
    QLater::ActiveJob.queue_prefix = QLater::ActiveJob::DEFAULT_PREFIX
    super
  end

  def aj_jobs
    conn.exec_params("SELECT * FROM qlater_jobs WHERE queue = $1 ORDER BY id", [@aj_queue]).to_a
  end

  # README: "after_commit callbacks run after the job's commit".  The job's
  # transaction is opened joinable: false, and ActiveRecord runs the
  # after_commit callbacks of records saved inside a non-joinable
  # transaction when their own (savepoint) transaction is released: before
  # the job commits (the mechanism Rails' transactional tests use).  A job
  # that fails after a save has sent its "committed" notification for a
  # record that is rolled back, and sends it again on each retry.
  def test_after_commit_does_not_run_for_a_job_that_rolls_back
    AttackNotifyThenFailJob.perform_later(queue, "ghost")
    assert_equal 1, QLater::Worker.new(queues: [@aj_queue]).work_off
    assert_equal "1", aj_jobs.first["attempts"], "the job failed"
    assert_nil RbAj.find_by(queue: queue, key: "ghost"), "its record is rolled back"
    assert_empty AttackNotifiedRecord.notified, "no after_commit for a record that never committed"
  end

  def test_after_commit_runs_once_the_job_committed
    AttackNotifyJob.perform_later(queue, "real")
    seen = nil
    AttackNotifiedRecord.class_eval do
      after_commit :attack_probe
      define_method(:attack_probe) do
        # is the job's transaction (and its qlater_complete) committed yet?
        seen = QLater.current_job.nil? ? :after_job : :inside_job
      end
    end
    assert_equal 1, QLater::Worker.new(queues: [@aj_queue]).work_off
    assert_equal ["real"], AttackNotifiedRecord.notified
    assert_equal :after_job, seen, "after_commit runs after the job's COMMIT, not inside the job"
  ensure
    AttackNotifiedRecord.skip_callback(:commit, :after, :attack_probe) rescue nil # rubocop:disable Style/RescueModifier
  end

  # README: "methods every object has (send, instance_eval, ...) are
  # refused, here and again by the worker".  ActiveModel::Validations
  # (in every ActiveModel::Model and ActiveRecord class) defines
  # read_attribute_for_validation as an alias of send: a public method,
  # owned by a module that is not one of Object's ancestors.  A row that
  # any role with 'enqueue' on the queue writes runs any Ruby in the worker.
  def test_a_row_cannot_reach_send_through_an_activemodel_alias
    Dir.mktmpdir do |dir|
      marker = File.join(dir, "pwned")
      args = { "qlater" => 1, "args" => [{}], "kwargs" => {},
               "method" => "read_attribute_for_validation",
               "method_args" => [{ "_qlater_sym" => "eval" }, "File.write(#{marker.inspect}, Process.uid.to_s)"],
               "method_kwargs" => {} }
      conn.exec_params("SELECT qlater_enqueue('AttackSignupService', $1::jsonb, queue => $2)",
                       [JSON.generate(args), queue])
      assert_equal 1, worker.work_off
      refute File.exist?(marker), "the row ran Ruby code of its choice in the worker (eval through send)"
      assert_match(/UnsafeJob/, JSON.parse(jobs.first["last_error"].to_s)["message"].to_s)
    end
  end

  # A row nested deeper than JSON.parse allows, in ActiveRecord mode: the
  # claim is taken on a pooled connection, Job.from_row raises, and the
  # connection goes back to the pool still holding the session claim (the
  # worker's error path only discards a connection it has a Link for).
  def test_an_unreadable_row_leaves_no_claim_on_a_pooled_connection
    deep = "#{'[' * 1000}#{']' * 1000}"
    id = Integer(value("SELECT qlater_enqueue('RecordJob', $1::jsonb, queue => $2)",
                       %({"job_class": "RecordJob", "arguments": [#{deep}]}), @aj_queue))
    w = QLater::Worker.new(queues: [@aj_queue], poll_interval: 0.1)
    runner = Thread.new { w.run }
    sleep 1.5
    w.stop
    runner.join(30)
    state, = conn.exec_params("SELECT state, locked_by FROM qlater_jobs WHERE id = $1", [id]).values.first
    refute_equal "running", state, "the worker stopped: none of its claims may be held any more " \
                                   "(a pooled connection of this process holds it)"
  end
end

class AttackActiveRecordTest
  # A job that gives its connection back to the pool mid-job: the
  # connection, with the job's session claim and its open transaction, is
  # in the pool's available list; the next thread to check one out gets it
  # (the pool hands out the last one checked in).  ActiveRecord's
  # connection monitor, held by the job's transaction block, then blocks
  # that thread until the job commits (a Thread.new in the job that waits
  # for it deadlocks).  README: "a session claim never goes back to the
  # pool while held".
  def test_a_connection_released_mid_job_does_not_carry_the_claim_to_another_thread
    AttackReleaseConnectionJob.perform_later(queue)
    QLater::Worker.new(queues: [@aj_queue]).work_off
    row = RbAj.find_by(queue: queue, key: "released")
    skip "the job failed: #{aj_jobs.first&.fetch('last_error')}" unless row
    assert_equal "false", row.info, "the job's connection, holding its claim, was available in the pool"
  end

  # Rows another role writes into a queue the worker consumes: none of
  # them may run anything but a ProcessLater call or the ActiveJob class
  # named both as handler and as job_class.
  def test_forged_rows_are_refused
    call = ->(m, margs = []) { JSON.generate("qlater" => 1, "args" => [], "kwargs" => {}, "method" => m, "method_args" => margs, "method_kwargs" => {}) }
    rows = [
      ["Kernel", call.("system", ["true"])],
      ["::File", call.("call")],
      ["Object", call.("instance_eval", ["1"])],
      ["ActiveJob::Base", JSON.generate("job_class" => "ActiveJob::Base", "arguments" => [])],
      ["ApplicationJob", JSON.generate("job_class" => "ApplicationJob", "arguments" => [])],
      ["RecordJob", JSON.generate("job_class" => "AttackNotAJob", "arguments" => [queue, "forged"])],
      ["AttackNotAJob", JSON.generate("job_class" => "AttackNotAJob", "arguments" => [])],
      ["RecordKey", call.("send", [{ "_qlater_sym" => "system" }, "true"])],
      ["RecordKey", call.("instance_eval", ["raise 'ran'"])],
      ["RecordKey", call.("initialize", ["x"])],
      ["RecordKey", call.("later")],
      ["RecordKey", "[1, 2]"],
      ["NotAJob", call.("call")],
      ["Attack Spaces", call.("call")],
      ["recordkey", call.("call")]
    ]
    rows.each do |handler, args|
      conn.exec_params("SELECT qlater_enqueue($1, $2::jsonb, queue => $3, max_attempts => 1)", [handler, args, queue])
    end
    assert_equal rows.size, worker.work_off
    left = jobs
    assert_equal rows.size, left.size
    left.each do |j|
      assert_equal "dead", j["state"], j["handler"]
      msg = JSON.parse(j["last_error"])["message"]
      assert_match(/\A(QLater::UnsafeJob|NotImplementedError)/, msg, "#{j['handler']} #{j['args']}")
    end
    assert_empty RbAj.where(queue: queue).pluck(:key)
  end
end
