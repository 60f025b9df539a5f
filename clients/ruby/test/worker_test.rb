# frozen_string_literal: true

require "test_helper"
require "rbconfig"

class WorkerTest < QLaterTest::Case
  def test_failures_retry_then_end_dead
    Boom.new("b1").later(:call, max_attempts: 2)
    assert_equal 1, worker.work_off
    job = jobs.first
    assert_equal "pending", job["state"]
    assert_equal "1", job["attempts"]
    message = JSON.parse(job["last_error"])["message"]
    assert_match(/\ARuntimeError: boom b1\n/, message, "class and message")
    assert_match(/support\/jobs\.rb:\d+:in `call'/, message, "and the backtrace")
    assert_operator Time.parse(job["run_at"]), :>, Time.now + 2, "retried after a backoff"
    assert_empty done_keys, "the failed job's writes are rolled back"

    assert_equal 0, worker.work_off, "not before its run_at"
    make_ready!
    assert_equal 1, worker.work_off
    job = jobs.first
    assert_equal "dead", job["state"], "dead after max_attempts"
    assert_equal "2", job["attempts"]
    assert_empty done_keys
  end

  def test_batch_commit_runs_a_claim_in_one_transaction_and_a_failure_rolls_back_alone
    conn.transaction do
      RecordTxid.new("a").later
      Boom.new("boom").later
      RecordTxid.new("b").later
      SwallowSqlError.new("aborted").later
      RecordTxid.new("c").later
    end
    w = worker(batch: 10, commit: :batch)
    assert_equal 5, w.work_off
    assert_equal({ completed: 3, failed: 2 }, w.counts.slice(:completed, :failed))
    assert_equal %w[a b c], done_keys, "the failed jobs' writes are rolled back, the others kept"
    assert_equal 1, Integer(value("SELECT count(DISTINCT info) FROM rb_done WHERE queue = $1", queue)),
                 "one transaction"
    left = jobs
    assert_equal %w[Boom SwallowSqlError], left.map { |j| j["handler"] }
    assert(left.all? { |j| j["attempts"] == "1" }, "each failure recorded")
    assert_match(/left its transaction aborted/, JSON.parse(left[1]["last_error"])["message"])
  end

  def test_four_threads_run_2000_jobs_each_exactly_once
    conn.transaction do
      2000.times { |i| RecordKey.new(format("%04d", i)).later }
    end
    w = worker(threads: 4, poll_interval: 0.5)
    runner = Thread.new { w.run }
    wait_until(timeout: 120, message: "2000 jobs") { done_count == 2000 || !runner.alive? }
    w.stop
    counts = runner.value
    assert_equal 2000, counts[:completed]
    assert_equal 0, counts[:failed], "a job run twice would fail on the primary key"
    assert_equal (0...2000).map { |i| format("%04d", i) }, done_keys
    assert_empty jobs
    pids = Integer(value("SELECT count(DISTINCT pid) FROM rb_done WHERE queue = $1", queue))
    assert_equal 4, pids, "all four threads (connections) ran jobs"
  end

  def test_notify_wakes_an_idle_worker
    w = worker(poll_interval: 60)
    runner = Thread.new { w.run }
    sleep 0.5 # the worker is listening and waiting
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    RecordKey.new("wake").later
    wait_until(timeout: 10, message: "the notified worker") { done_count == 1 }
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    assert_operator elapsed, :<, 5, "woken by NOTIFY, not by the 60 s poll"
  ensure
    w&.stop
    runner&.join
  end

  def test_work_off_runs_ready_jobs_and_returns
    5.times { |i| RecordKey.new("r#{i}").later }
    RecordKey.new("future").later(:call, run_at: Time.now + 3600)
    assert_equal 5, worker(threads: 2).work_off
    assert_equal %w[r0 r1 r2 r3 r4], done_keys
    assert_equal ["pending"], jobs.map { |j| j["state"] }
    assert_equal 0, worker.work_off
  end

  def test_lease_mode
    RecordKey.new("leased").later
    assert_equal 1, worker(lease: 60).work_off
    assert_equal ["leased"], done_keys
    assert_empty jobs

    Boom.new("b").later(:call, max_attempts: 1)
    assert_equal 1, worker(lease: "5 minutes").work_off
    assert_equal ["dead"], jobs.map { |j| j["state"] }
  end

  def test_qlater_transaction_nests_as_a_savepoint_in_a_job
    Nested.new("n").later
    assert_equal 1, worker.work_off
    assert_equal %w[n n-recovered], done_keys
    assert_empty jobs
  end

  def test_a_granted_consumer_role_runs_jobs_enqueued_by_another
    conn.exec(<<~SQL)
      DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rb_consumer') THEN CREATE ROLE rb_consumer LOGIN; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rb_stranger') THEN CREATE ROLE rb_stranger LOGIN; END IF;
      END $$;
      GRANT SELECT, INSERT ON rb_done TO rb_consumer, rb_stranger;
    SQL
    conn.exec_params("SELECT qlater_grant_queue($1, 'rb_consumer')", [queue])
    RecordKey.new("granted").later

    stranger = worker(connect: -> { PG.connect(user: "rb_stranger") })
    error = assert_raises(PG::InsufficientPrivilege, "a role without the grant runs nothing") { stranger.work_off }
    assert_match(/permission denied for queue/, error.message)
    error = assert_raises(PG::InsufficientPrivilege, "run gives up at once too") { stranger.run }
    assert_equal ["pending"], jobs.map { |j| j["state"] }

    assert_equal 1, worker(connect: -> { PG.connect(user: "rb_consumer") }).work_off
    assert_equal ["granted"], done_keys
    assert_empty jobs
  end

  def test_a_queue_that_is_not_external_stops_the_worker
    w = QLater::Worker.new(queues: ["rb_never_declared"], connect: -> { QLaterTest.connect })
    error = assert_raises(PG::ObjectNotInPrerequisiteState) { w.run }
    assert_match(/not an external queue/, error.message)
  end

  def spawn_worker(batch: 1)
    lib = File.join(QLaterTest::ROOT, "lib")
    test = File.join(QLaterTest::ROOT, "test")
    out_r, out_w = IO.pipe
    pid = Process.spawn(RbConfig.ruby, "-I", lib, "-I", test,
                        File.join(test, "support", "worker_process.rb"), queue, batch.to_s,
                        out: out_w)
    out_w.close
    [pid, out_r]
  end

  def test_a_worker_killed_with_sigkill_loses_nothing
    conn.transaction do
      100.times { |i| RecordKey.new(format("%03d", i), sleep: 0.02).later(:call, max_attempts: 1) }
    end
    pid, out = spawn_worker
    wait_until(timeout: 30, message: "the worker subprocess to run jobs") { done_count >= 10 }
    wait_until(timeout: 10, message: "a job claimed by the subprocess") do
      jobs.any? { |j| j["state"] == "running" }
    end
    Process.kill(:KILL, pid)
    Process.wait(pid)
    out.close
    killed_at = done_count
    assert_operator killed_at, :<, 100, "killed mid-run"

    # the killed session's claims are released when the server sees it gone
    wait_until(timeout: 30, message: "every job, by another worker") do
      worker.work_off
      jobs.empty?
    end
    assert_equal (0...100).map { |i| format("%03d", i) }, done_keys, "every job done exactly once"
  end

  def test_sigterm_finishes_the_running_job_and_gives_back_the_rest
    conn.transaction do
      20.times { |i| RecordKey.new(format("%02d", i), sleep: 0.3).later }
    end
    pid, out = spawn_worker(batch: 5)
    wait_until(timeout: 30, message: "the first job") { done_count >= 1 }
    Process.kill(:TERM, pid)
    _, status = Timeout.timeout(30) { Process.wait2(pid) }
    assert status.success?, "the worker exits cleanly (#{status.inspect})"
    counts = JSON.parse(out.read)
    out.close
    assert_operator counts["unlocked"], :>=, 1, "claims not started were given back: #{counts}"
    assert_equal done_count, counts["completed"]
    left = jobs
    assert_equal 20 - done_count, left.size
    assert(left.all? { |j| j["state"] == "pending" && j["attempts"] == "0" && j["last_error"].nil? },
           "the rest are pending and untouched")
    assert_equal 20 - done_count, worker(threads: 2).work_off
    assert_equal 20, done_count
  end
end
