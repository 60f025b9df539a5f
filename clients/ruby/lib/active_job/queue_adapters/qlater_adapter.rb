# frozen_string_literal: true

# Where ActiveJob looks for the adapter of
# config.active_job.queue_adapter = :qlater.
require "qlater/active_job"
