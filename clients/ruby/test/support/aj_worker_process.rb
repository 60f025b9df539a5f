# frozen_string_literal: true

# An ActiveRecord worker in its own process, for the SIGKILL test:
#   ruby -Ilib -Itest test/support/aj_worker_process.rb QUEUE
require_relative "active_record_setup"

$stdout.sync = true
counts = QLater::Worker.new(queues: [ARGV[0]], poll_interval: 0.2).run
puts JSON.generate(counts)
