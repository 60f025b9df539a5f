# frozen_string_literal: true

# ActiveRecord and ActiveJob (Debian's ruby-activerecord, ruby-activejob)
# on the test database (libpq's environment), and the ActiveJob classes of
# the tests; loaded by the tests and by the worker subprocesses.

require "logger"
require "active_record"
require "active_job"
require "qlater"

ActiveRecord::Base.logger = nil
ActiveJob::Base.logger = Logger.new(nil)
ActiveRecord::Base.establish_connection(
  adapter: "postgresql", host: ENV["PGHOST"], port: ENV["PGPORT"],
  database: ENV["PGDATABASE"], username: ENV["PGUSER"], pool: 12,
  variables: { client_min_messages: "warning" }
)
ActiveJob::Base.queue_adapter = :qlater

ActiveRecord::Base.connection.execute(<<~SQL)
  CREATE TABLE IF NOT EXISTS rb_aj (
      id    bigserial PRIMARY KEY,
      queue text NOT NULL,
      key   text NOT NULL,
      pid   int NOT NULL DEFAULT pg_backend_pid(),
      info  text,
      UNIQUE (queue, key));
SQL

# A row per run: the unique key makes a second run of a job fail.
class RbAj < ActiveRecord::Base
  self.table_name = "rb_aj"
end

# A second class with a pool of its own (an application with several
# databases names the one qlater uses: QLater.active_record_class).
class OtherRecord < ActiveRecord::Base
  self.abstract_class = true
end
OtherRecord.establish_connection(ActiveRecord::Base.connection_db_config.configuration_hash)

class ApplicationJob < ActiveJob::Base; end

# Writes a row, then sleeps.
class RecordJob < ApplicationJob
  def perform(queue, key, pause = 0)
    RbAj.create!(queue: queue, key: key)
    sleep(pause) if pause.positive?
  end
end

# Records what the job sees of its connection: the advisory locks its own
# session holds (the claim of the job), whether a transaction is open,
# which pool's connection that is.
class PinnedJob < ApplicationJob
  def perform(queue)
    conn = QLater.active_record_class.connection
    held = conn.select_value("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' " \
                             "AND pid = pg_backend_pid() AND granted")
    RbAj.create!(queue: queue, key: "pinned",
                 info: [held, conn.transaction_open?, QLater.active_record_class.name,
                        QLater.connection.backend_pid == conn.raw_connection.backend_pid].join(" "))
  end
end

class Flaky < StandardError; end

# Raises Flaky until its execution number reaches succeed_at; retry_on
# enqueues the next execution.
class RetryJob < ApplicationJob
  retry_on Flaky, wait: 0, attempts: 3
  self.qlater_max_attempts = 2

  def perform(queue, succeed_at)
    RbAj.create!(queue: queue, key: "run#{executions}")
    raise Flaky, "flaky #{executions}" if executions < succeed_at
  end
end

class DiscardJob < ApplicationJob
  discard_on Flaky

  def perform(queue)
    raise Flaky, "discard me #{queue}"
  end
end

# Its own transaction block rolls back alone.
class NestedRollbackJob < ApplicationJob
  def perform(queue)
    RbAj.create!(queue: queue, key: "outer")
    RbAj.transaction do
      RbAj.create!(queue: queue, key: "inner")
      raise ActiveRecord::Rollback
    end
  end
end

# ActiveRecord::Rollback outside any block of its own: an error.
class TopRollbackJob < ApplicationJob
  def perform(queue)
    RbAj.create!(queue: queue, key: "top")
    raise ActiveRecord::Rollback
  end
end

# Fails on every run, after a write (rolled back with the failure).
class BoomJob < ApplicationJob
  def perform(queue, key)
    RbAj.create!(queue: queue, key: key)
    raise "boom #{key}" unless key.start_with?("ok")
  end
end
