# frozen_string_literal: true

# A worker in its own process, for the SIGKILL and SIGTERM tests:
#   ruby -Ilib -Itest test/support/worker_process.rb QUEUE [BATCH]
# Prints its counts as JSON when it stops.

require "qlater"
require_relative "jobs"

$stdout.sync = true
queue, batch = ARGV
worker = QLater::Worker.new(queues: [queue], batch: Integer(batch || 1), poll_interval: 0.2,
                            connect: -> { PG.connect })
counts = worker.run
puts JSON.generate(counts)
