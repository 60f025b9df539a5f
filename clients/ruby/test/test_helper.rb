# frozen_string_literal: true

# Shared setup of the qlater Ruby client tests.  They need a server with
# qlater preloaded and CREATE EXTENSION qlater done in the database that
# libpq's environment names (PGHOST, PGPORT, PGDATABASE, PGUSER), as a role
# that may create tables, functions and queues (the TAP wrapper
# test/t/100_ruby.pl uses the bootstrap superuser).

require "minitest/autorun"
require "securerandom"
require "time"
require "timeout"
require "qlater"
require_relative "support/jobs"

module QLaterTest
  ROOT = File.expand_path("..", __dir__)

  def self.connect
    conn = PG.connect
    conn.exec("SET client_min_messages = warning")
    conn
  end

  # Tables the test jobs write to (created once per run).
  def self.schema!
    conn = connect
    conn.exec(<<~SQL)
      CREATE TABLE IF NOT EXISTS rb_done (
          queue text NOT NULL,
          key   text NOT NULL,
          pid   int NOT NULL DEFAULT pg_backend_pid(),
          info  text,
          PRIMARY KEY (queue, key));
    SQL
  ensure
    conn&.close
  end
  schema!

  # Each test gets its own connection (QLater.connection) and its own
  # external queue, so tests never see each other's jobs.
  class Case < Minitest::Test
    attr_reader :conn, :queue

    def setup
      @conn = QLaterTest.connect
      QLater.connection = @conn
      @queue = "rb_#{name.sub(/\Atest_/, '')[0, 30]}_#{SecureRandom.hex(3)}"
      @conn.exec_params("SELECT qlater_create_queue($1, external => true)", [@queue])
      QLater.default_queue = @queue
    end

    def teardown
      @conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = $1", [@queue])
      @conn.close
      QLater.connection = nil
      QLater.default_queue = QLater::DEFAULT_QUEUE
    end

    def worker(**opts)
      QLater::Worker.new(queues: [@queue], connect: -> { QLaterTest.connect }, **opts)
    end

    def value(sql, *params)
      @conn.exec_params(sql, params).getvalue(0, 0)
    end

    def jobs
      @conn.exec_params("SELECT * FROM qlater_jobs WHERE queue = $1 ORDER BY id", [@queue]).to_a
    end

    def done_keys
      @conn.exec_params("SELECT key FROM rb_done WHERE queue = $1 ORDER BY key", [@queue]).column_values(0)
    end

    def done_count
      Integer(value("SELECT count(*) FROM rb_done WHERE queue = $1", @queue))
    end

    # Makes this queue's pending jobs ready now (skips the retry backoff).
    def make_ready!
      @conn.exec_params("UPDATE qlater_job SET run_at = now() WHERE queue = $1", [@queue])
    end

    def wait_until(timeout: 30, message: "condition")
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      until yield
        flunk "timed out after #{timeout}s waiting for #{message}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        sleep 0.05
      end
    end
  end
end
