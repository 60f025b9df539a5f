# frozen_string_literal: true

require "test_helper"
require "open3"
require "rbconfig"

# qlater-worker given what an operator mistypes.
class AttackCLITest < QLaterTest::Case
  # Runs qlater-worker for at most +seconds+; [output, status or nil if it
  # was still running (then killed)].
  def run_briefly(*args, seconds: 10)
    cmd = [RbConfig.ruby, ENV.fetch("QLATER_TEST_WORKER"), *args]
    Open3.popen2e(*cmd) do |stdin, out, thread|
      stdin.close
      reader = Thread.new { out.read }
      unless thread.join(seconds)
        Process.kill(:KILL, thread.pid)
        thread.join
        return [reader.value, nil]
      end
      [reader.value, thread.value]
    end
  end

  # README: "A configuration error ... exits 2 with a message on stderr".
  # An --lease that PostgreSQL cannot read as an interval is not checked:
  # the worker starts, logs "worker started ... lease banana", and every
  # claim fails with PG::InvalidDatetimeFormat, logged once a second,
  # forever: a worker that looks alive and never runs a job.
  def test_an_invalid_lease_is_a_configuration_error
    output, status = run_briefly("--queues", queue, "--lease", "banana", seconds: 8)
    refute_nil status, "still running after 8 s:\n#{output[0, 600]}"
    assert_equal 2, status.exitstatus, output
    assert_match(/lease/i, output)
  end
end
