# frozen_string_literal: true

require "test_helper"
require_relative "support/attack_jobs"

# Poison jobs: a job whose failure the worker cannot record, or whose row
# it cannot even read, must still end as a failed attempt (then 'dead'),
# not be given back and claimed again forever without counting, and must
# not keep the queue's other jobs from running.
class AttackPoisonTest < QLaterTest::Case
  # Runs a worker (run mode, as qlater-worker does) for +seconds+.
  def run_for(seconds, **opts)
    w = worker(poll_interval: 0.1, **opts)
    runner = Thread.new { w.run }
    sleep seconds
    w.stop
    runner.join(30)
    w
  end

  def enqueue_raw(handler, args_json, priority: nil)
    sql = +"SELECT qlater_enqueue($1, $2::jsonb, queue => $3"
    sql << ", priority => #{Integer(priority)}" if priority
    Integer(value("#{sql})", handler, args_json, queue))
  end

  def call_json(method = "call")
    JSON.generate("qlater" => 1, "args" => [], "kwargs" => {}, "method" => method,
                  "method_args" => [], "method_kwargs" => {})
  end

  def job(id)
    conn.exec_params("SELECT * FROM qlater_jobs WHERE id = $1", [id]).first
  end

  # A job that uses a second database (down) raises PG::ConnectionBad from
  # its own code.  The worker takes it for the loss of its own connection:
  # it gives the claim back without recording an attempt, and claims it
  # again after poll_interval, forever: no backoff, never 'dead'.
  def test_a_job_raising_connection_bad_from_another_database_is_a_failed_attempt
    AttackOtherDatabase.reset_runs!
    id = AttackOtherDatabase.new.later(:call, max_attempts: 3)
    run_for(2)
    row = job(id)
    assert_equal 1, AttackOtherDatabase.runs,
                 "run once, then qlater's backoff (attempts^4 + 3 s) holds it back; it ran " \
                 "#{AttackOtherDatabase.runs} times in 2 s"
    assert_equal "1", row["attempts"], "a failed attempt is recorded"
    assert_match(/analytics-db/, JSON.parse(row["last_error"].to_s)["message"].to_s)
  end

  # An exception message with bytes that are not UTF-8 (a binary String):
  # qlater_fail refuses the text (invalid byte sequence), the failure is
  # not recorded, the job is given back and run again every poll, forever.
  def test_an_exception_with_a_binary_message_is_recorded
    AttackBinaryMessage.reset_runs!
    id = AttackBinaryMessage.new.later(:call, max_attempts: 3)
    run_for(2)
    row = job(id)
    assert_equal 1, AttackBinaryMessage.runs, "ran #{AttackBinaryMessage.runs} times in 2 s"
    assert_equal "1", row["attempts"], "a failed attempt is recorded"
  end

  # An exception whose #message raises: same loop.
  def test_an_exception_whose_message_raises_is_recorded
    AttackBadMessage.reset_runs!
    id = AttackBadMessage.new.later(:call, max_attempts: 3)
    run_for(2)
    row = job(id)
    assert_equal 1, AttackBadMessage.runs, "ran #{AttackBadMessage.runs} times in 2 s"
    assert_equal "1", row["attempts"], "a failed attempt is recorded"
  end

  # A row written by another program (any role with 'enqueue' on the
  # queue) with args nested deeper than the worker reads (500; JSON.parse allows 100 by default):
  # Job.from_row raises inside the claim, the session is dropped, the job
  # is claimed again at once, forever, and, being first in the queue's
  # order, keeps every other job of the queue from running.
  def test_a_row_nested_too_deep_for_json_parse_does_not_block_the_queue
    deep = "#{'[' * 1000}#{']' * 1000}"
    poison = enqueue_raw("RecordKey",
                         %({"qlater": 1, "args": [#{deep}], "kwargs": {}, "method": "call", "method_args": [], "method_kwargs": {}}),
                         priority: 0)
    RecordKey.new("neighbour").later
    run_for(2)
    assert_equal ["neighbour"], done_keys, "the queue's other job ran"
    row = job(poison)
    refute_equal "running", row["state"], "the poison row is not left claimed"
    assert_equal "1", row["attempts"], "it failed once (UnsafeJob), as a row in an unknown format does"
  end
end
