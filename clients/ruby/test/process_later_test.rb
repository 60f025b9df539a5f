# frozen_string_literal: true

require "test_helper"

class ProcessLaterTest < QLaterTest::Case
  def test_later_in_a_rolled_back_transaction_leaves_no_job
    conn.exec("BEGIN")
    RecordKey.new("a").later
    assert_equal 1, jobs.size, "the job is visible inside the transaction"
    conn.exec("ROLLBACK")
    assert_empty jobs, "ROLLBACK leaves no job"

    assert_raises(RuntimeError) do
      conn.transaction do
        RecordKey.new("b").later
        raise "app error"
      end
    end
    assert_empty jobs, "an exception in the app's transaction rolls the job back"

    conn.transaction { RecordKey.new("c").later }
    assert_equal ["RecordKey"], jobs.map { |j| j["handler"] }
  end

  def test_now_and_later_run_the_same_code
    RecordKey.new("now").call
    assert_equal 1, Integer(value("SELECT count(*) FROM rb_done WHERE queue = 'now' AND key = 'now'"))
    conn.exec("DELETE FROM rb_done WHERE queue = 'now'")

    id = RecordKey.new("later").later(:call)
    assert_kind_of Integer, id
    assert_equal 1, worker.work_off
    assert_equal ["later"], done_keys
    assert_empty jobs, "a completed job is gone"
  end

  def test_plain_and_keyword_arguments_round_trip
    plain = { "name" => "x", "nested" => { "list" => [1, 2.5, nil, true, false, "é"] }, sym: :val }
    Echo.new(42, plain, format: "xlsx", options: { deep: [:a, { "b" => 1 }] }, extra: 2**70)
        .later(:record, "pos", { "plain" => 1 }, [:s], flag: true, when: "2024-01-02")
    assert_equal 1, worker.work_off
    got = Echo.received(conn, queue)
    assert_equal 42, got[:first]
    assert_equal plain, got[:plain], "a positional Hash comes back as a Hash (String and Symbol keys kept)"
    assert_equal "xlsx", got[:format], "keyword arguments come back as keywords"
    assert_equal({ deep: [:a, { "b" => 1 }] }, got[:options])
    assert_equal({ extra: 2**70 }, got[:rest])
    assert_equal ["pos", { "plain" => 1 }, [:s]], got[:args]
    assert_equal({ flag: true, when: "2024-01-02" }, got[:kwargs])
  end

  def test_json_format
    RecordKey.new("k", sleep: 0).later(:call, run_at: Time.now + 3600, priority: 7, max_attempts: 3)
    job = jobs.first
    assert_equal "RecordKey", job["handler"]
    assert_equal({ "qlater" => 1, "args" => ["k"], "kwargs" => { "sleep" => 0 }, "method" => "call",
                   "method_args" => [], "method_kwargs" => {} }, JSON.parse(job["args"]))
    assert_equal "7", job["priority"]
    assert_equal "3", job["max_attempts"]
    assert_in_delta Time.now + 3600, Time.parse(job["run_at"]), 60
    assert_equal 0, worker.work_off, "a job whose run_at is in the future is not run yet"
  end

  def test_later_with_a_key_runs_once
    id = RecordKey.new("once").later(:call, key: "record:once")
    assert_equal id, RecordKey.new("twice").later(:call, key: "record:once"),
                 "the waiting job of the key is returned"
    assert_equal id, RecordKey.new("last").later(:call, key: "record:once", replace: true),
                 "and with replace: too"
    assert_equal 1, jobs.size
    assert_equal "record:once", jobs.first["key"]
    assert_equal 1, worker.work_off
    assert_equal ["last"], done_keys, "one run, with the replaced call"
    refute_equal id, RecordKey.new("again").later(:call, key: "record:once"),
                 "once it ran, the key makes a new job"
  end

  def test_class_options_and_queue_choice
    klass = Class.new(RecordKey) { qlater_options priority: 3, max_attempts: 2 }
    Object.const_set(:RecordKeyWithOptions, klass)
    klass.new("x").later
    assert_equal %w[3 2], jobs.first.values_at("priority", "max_attempts")
    assert_equal "RecordKeyWithOptions", jobs.first["handler"]

    other = "#{queue}_b"
    conn.exec_params("SELECT qlater_create_queue($1, external => true)", [other])
    RecordKey.new("y").later(:call, queue: other, priority: 1)
    row = conn.exec_params("SELECT priority FROM qlater_jobs WHERE queue = $1", [other]).to_a
    assert_equal [{ "priority" => "1" }], row
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = $1", [other])
  ensure
    Object.send(:remove_const, :RecordKeyWithOptions) if Object.const_defined?(:RecordKeyWithOptions)
  end

  def test_values_that_are_not_json_are_refused_at_enqueue
    [Time.now, Object.new, 1.0 / 0, { 1 => 2 }, "a\0b", "\xff".b.force_encoding("UTF-8")].each do |bad|
      assert_raises(ArgumentError, bad.inspect) { RecordKey.new(bad).later }
    end
    assert_raises(ArgumentError) { RecordKey.new("k").later(:call, { "_qlater_sym" => "x" }) }
    assert_empty jobs
  end

  def test_only_public_methods_of_the_class_may_be_called_later
    %i[instance_eval send system initializer_arguments_x later to_s].each do |m|
      assert_raises(ArgumentError, m.to_s) { RecordKey.new("k").later(m) }
    end
    anon = Class.new { include QLater::ProcessLater }
    assert_raises(ArgumentError) { anon.new.later(:call) }
    assert_raises(NotImplementedError) do
      Class.new { include QLater::ProcessLater; def call = nil }.tap { |c| Object.const_set(:NoInitArgs, c) }.new.later
    end
    assert_empty jobs
  ensure
    Object.send(:remove_const, :NoInitArgs) if Object.const_defined?(:NoInitArgs)
  end

  def test_worker_refuses_unsafe_jobs_and_fails_them
    payload = { qlater: 1, args: [], kwargs: {}, method: "call", method_args: [], method_kwargs: {} }
    QLater.enqueue("NotAJob", payload, queue: queue, max_attempts: 1)
    QLater.enqueue("File", payload.merge(method: "delete", args: ["/tmp/x"]), queue: queue, max_attempts: 1)
    QLater.enqueue("RecordKey", payload.merge(args: ["k"], method: "instance_eval", method_args: ["1"]),
                   queue: queue, max_attempts: 1)
    QLater.enqueue("Kernel.exit", payload, queue: queue, max_attempts: 1)
    QLater.enqueue("RecordKey", { "args" => ["k"] }, queue: queue, max_attempts: 1)
    assert_equal 5, worker.work_off
    states = jobs.map { |j| j["state"] }
    assert_equal ["dead"] * 5, states
    jobs.each do |j|
      assert_match(/QLater::UnsafeJob/, JSON.parse(j["last_error"])["message"])
    end
    assert_empty done_keys
  end

  def test_the_job_runs_on_the_worker_connection_in_one_transaction
    RecordKey.new("k").later
    app_pid = conn.backend_pid
    worker.work_off
    pid = Integer(value("SELECT pid FROM rb_done WHERE queue = $1", queue))
    refute_equal app_pid, pid, "QLater.connection is the worker thread's connection while the job runs"
    assert_equal @conn, QLater.connection, "and the application's connection again afterwards"
  end
end
