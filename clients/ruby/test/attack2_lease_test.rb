# frozen_string_literal: true

require "test_helper"
require "stringio"
require_relative "support/attack2_jobs"

# Second attack round on lease mode and its heartbeat.
class Attack2LeaseTest < QLaterTest::Case
  def lease_worker(**opts)
    worker(logger: Logger.new(@log = StringIO.new), **opts)
  end

  # A job whose lease ran out while it ran (the worker cut off for longer
  # than the lease): its qlater_complete fails (lease has run out), and so
  # do the worker's qlater_fail and qlater_unlock_many with the same token;
  # the exception of the last escapes the cycle, and work_off raises
  # PG::ObjectNotInPrerequisiteState: one lapsed job ends the drain (run
  # logs a "worker thread error" and drops the connection), and the job's
  # outcome is neither logged nor counted.  The server counts the lapse
  # as a failed attempt at the next claim.
  def test_a_lapsed_lease_is_reported_as_the_job_s_outcome
    Attack2LapseJob.new("lapsed").later
    RecordKey.new("next").later
    w = lease_worker(lease: 60)
    begin
      w.work_off
    rescue StandardError => e
      flunk "work_off raised #{e.class}: #{e.message.lines.first.strip}"
    end
    assert_equal %w[next], done_keys, "the lapsed job's write rolled back; the next job ran"
    assert_match(/lapsed|lease/i, @log.string.lines.grep(/job=#{jobs.first['id']}/).join, "its outcome is logged")
  end

  # README: "The worker renews the leases it holds every third of the
  # lease ... so a job may run longer than the lease".  The heartbeat
  # sleeps at least 0.1 s between beats: a lease of 50 ms (a positive
  # interval: accepted) runs out between beats, and a job of 0.6 s loses
  # it while its worker is alive and well.
  def test_a_short_lease_is_renewed_or_refused
    RecordKey.new("slow", sleep: 0.6).later
    w = nil
    begin
      w = lease_worker(lease: "50 milliseconds")
      w.work_off
    rescue ArgumentError, QLater::Error
      return pass # refused as too short: fine
    rescue StandardError => e
      flunk "work_off raised #{e.class}: #{e.message.lines.first.strip}"
    end
    assert_equal %w[slow], done_keys, "the job kept its lease and completed"
    assert_empty jobs
  end
end

class Attack2LeaseTest
  # Stop mid-batch (batch commit, lease mode): the jobs run commit
  # together, the others are given back at once (no lease left to run out).
  def test_stop_mid_batch_commit_gives_back_the_rest
    5.times { |i| RecordKey.new("b#{i}", sleep: 0.3).later }
    w = lease_worker(lease: 30, batch: 10, commit: :batch, poll_interval: 0.1)
    runner = Thread.new { w.run }
    wait_until(message: "the batch runs") { jobs.any? { |j| j["state"] == "running" } }
    sleep 0.4
    w.stop
    counts = runner.value
    assert_equal done_count, counts[:completed]
    assert_equal 5, counts[:completed] + counts[:unlocked], counts.inspect
    assert(jobs.none? { |j| j["state"] == "running" }, jobs.map { |j| j["state"] }.inspect)
    assert(jobs.all? { |j| j["attempts"] == "0" })
  end
end
