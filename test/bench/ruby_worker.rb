# frozen_string_literal: true

# test/bench/ruby_worker.rb QUEUE N THREADS BATCH COMMIT
#
# One drain of N no-op Ruby jobs (BenchNoop, enqueued here with
# qlater_enqueue_many into the external queue QUEUE) by QLater::Worker with
# THREADS threads, claims of BATCH jobs, COMMIT per "job" or "batch";
# prints "jobs/s <rate> <seconds>" (the clock runs around work_off only).
# libpq's environment names the server; run with -I clients/ruby/lib.

require "qlater"
require "json"

# The no-op job.
class BenchNoop
  include QLater::ProcessLater

  def initialize(i) = (@i = i)
  def initializer_arguments = [@i]
  def call; end
end

queue, n, threads, batch, commit = ARGV
n = Integer(n)
conn = PG.connect
waiting = Integer(conn.exec_params("SELECT count(*) FROM qlater_jobs WHERE queue = $1", [queue]).getvalue(0, 0))
abort "ruby worker: queue #{queue} holds #{waiting} jobs already" unless waiting.zero?
args = Array.new(n) do |i|
  { "qlater" => 1, "args" => [i], "kwargs" => {}, "method" => "call", "method_args" => [], "method_kwargs" => {} }
end
conn.exec_params("SELECT count(*) FROM qlater_enqueue_many('BenchNoop', $1::jsonb, queue => $2)",
                 [JSON.generate(args), queue])
conn.exec("VACUUM ANALYZE qlater_job")
conn.exec("CHECKPOINT")
worker = QLater::Worker.new(queues: [queue], threads: Integer(threads), batch: Integer(batch),
                            commit: commit.to_sym, connect: -> { PG.connect })
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
done = worker.work_off
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
left = Integer(conn.exec_params("SELECT count(*) FROM qlater_jobs WHERE queue = $1", [queue]).getvalue(0, 0))
abort "ruby worker: #{done} jobs run, #{left} left, of #{n}" unless done == n && left.zero?
puts format("jobs/s %.1f %.3f", n / elapsed, elapsed)
