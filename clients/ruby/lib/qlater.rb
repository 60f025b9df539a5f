# frozen_string_literal: true

# qlater: the Ruby client of the qlater PostgreSQL extension.
#
#   require "qlater"
#   QLater.connection = PG.connect(dbname: "app")
#
#   class ExportStations
#     include QLater::ProcessLater
#     ...
#   end
#   ExportStations.new("tenant-a").later(:call)
#
#   QLater::Worker.new(queues: ["ruby"], threads: 4).run
#
# Plain Ruby and the pg gem; ActiveRecord and ActiveJob when the application
# has them (QLater.connection then defaults to ActiveRecord's, and
# config.active_job.queue_adapter = :qlater works).  See clients/ruby/README.md.

require "pg"
require "json"
require_relative "qlater/version"

module QLater

  # The queue `later` uses when neither the call nor the class names one.
  DEFAULT_QUEUE = "ruby"

  # Base class of the errors this library raises itself.
  class Error < StandardError; end

  # A job names a handler this process refuses to run (not a class that
  # includes QLater::ProcessLater, a method that is not the class's own
  # public method, arguments in an unknown format).
  class UnsafeJob < Error; end

  @default_queue = DEFAULT_QUEUE
  @connection = nil
  @active_record_class = nil
  @active_record = nil

  class << self
    # The queue of `later` when neither the call nor the class sets one.
    attr_accessor :default_queue

    # Optional Logger (or anything with info/warn/error) for the worker.
    attr_accessor :logger

    # The connection `later` and `enqueue` write to: while a worker runs a
    # job, the worker thread's own connection (the job's transaction); else
    # the one set with QLater.connection=; else, when ActiveRecord is
    # loaded, the raw connection of QLater.active_record_class (inside
    # whatever ActiveRecord transaction is open on it: a rollback of
    # ActiveRecord::Base.transaction leaves no job).
    def connection
      Thread.current.thread_variable_get(:qlater_connection) || @connection ||
        active_record_connection ||
        raise(Error, "no connection: set QLater.connection = PG.connect(...), or load ActiveRecord")
    end

    # Sets the process-wide connection (a PG::Connection).  Not thread-safe
    # in itself: a PG::Connection must not be used by two threads at once;
    # give each thread its own with QLater.with_connection.  Leave it unset
    # in an ActiveRecord application.
    def connection=(conn)
      @connection = conn
    end

    # The ActiveRecord class whose connection qlater uses (enqueues, and
    # the worker's jobs): ActiveRecord::Base unless set (a Class or its
    # name), e.g. "JobsRecord" in an application with several databases.
    def active_record_class
      klass = @active_record_class || "ActiveRecord::Base"
      klass.is_a?(String) ? Object.const_get(klass) : klass
    end

    attr_writer :active_record_class

    # Is ActiveRecord loaded (and not turned off with QLater.active_record = false)?
    def active_record?
      @active_record != false && defined?(::ActiveRecord::Base) ? true : false
    end

    attr_writer :active_record

    # The PG::Connection under the ActiveRecord connection of this thread,
    # with any transaction ActiveRecord opened lazily sent to the server
    # (raw_connection does so), or nil without ActiveRecord.
    def active_record_connection
      return nil unless active_record?

      active_record_class.connection.raw_connection
    end

    # Runs the block with +conn+ as QLater.connection in this thread only.
    def with_connection(conn)
      previous = Thread.current.thread_variable_get(:qlater_connection)
      Thread.current.thread_variable_set(:qlater_connection, conn)
      yield conn
    ensure
      Thread.current.thread_variable_set(:qlater_connection, previous)
    end

    # The QLater::Job the worker runs in this thread, or nil outside a job.
    def current_job
      Thread.current.thread_variable_get(:qlater_job)
    end

    # A transaction on QLater.connection that nests: inside a transaction
    # already open (a job always runs in one) it is a savepoint, so a job's
    # code can use it whether it runs now or later.  Returns the block's
    # value; an exception rolls back (to the savepoint) and is re-raised.
    def transaction(conn = connection)
      if conn.transaction_status == PG::PQTRANS_IDLE
        conn.transaction { yield conn }
      else
        name = "qlater_sp_#{conn.object_id}_#{Thread.current.object_id}"
        conn.exec("SAVEPOINT #{name}")
        begin
          result = yield conn
        rescue Exception
          conn.exec("ROLLBACK TO SAVEPOINT #{name}")
          conn.exec("RELEASE SAVEPOINT #{name}")
          raise
        end
        conn.exec("RELEASE SAVEPOINT #{name}")
        result
      end
    end

    # Enqueues a call of an in-server SQL handler (a function registered
    # with qlater_register), or, with queue: an external queue, a job for
    # application consumers:
    #
    #   QLater.enqueue("export_stations", ["tenant-a"])
    #   QLater.enqueue("export_stations", { tenant: "tenant-a", format: "xlsx" },
    #                  run_at: Time.now + 3600, queue: "exports", priority: 10)
    #   QLater.enqueue("reindex", [42], key: "reindex:42")   # one waiting job per key
    #
    # +args+ is an Array (arguments by position) or a Hash (by parameter
    # name), sent as JSON as it is.  Options left out (or nil) take the
    # handler's registered defaults.  With +key:+, the job of the key that
    # waits (in the queue, of the connection's role) is returned instead of
    # a new one, and with +replace: true+ it takes these args, run_at and
    # priority.  Returns the job id.  Runs on QLater.connection (or
    # +connection:+), inside whatever transaction is open there: a rollback
    # leaves no job.
    def enqueue(handler, args = [], run_at: nil, queue: nil, priority: nil,
                max_attempts: nil, key: nil, replace: nil, connection: nil)
      raise ArgumentError, "args must be an Array or a Hash" unless args.is_a?(Array) || args.is_a?(Hash)
      raise ArgumentError, "replace: needs a key:" if replace && key.nil?

      conn = connection || self.connection
      params = [handler.to_s, JSON.generate(args)]
      sql = +"SELECT qlater_enqueue(handler => $1::text, args => $2::jsonb"
      { run_at: [run_at, "timestamptz"], queue: [queue, "text"],
        priority: [priority, "int"], max_attempts: [max_attempts, "int"],
        key: [key, "text"], replace: [replace ? true : nil, "boolean"] }.each do |name, (value, type)|
        next if value.nil?

        params << (name == :run_at ? time_param(value) : value.to_s)
        sql << ", #{name} => $#{params.size}::#{type}"
      end
      sql << ")"
      Integer(query(conn, sql, params).getvalue(0, 0))
    end

    # Runs a statement of qlater's own and returns its result with every
    # value as text, whatever type map the connection decodes results with
    # (ActiveRecord's decodes integers, booleans, ...).
    def query(conn, sql, params = [])
      result = conn.exec_params(sql, params)
      result.type_map = PG::TypeMapAllStrings.new
      result
    end

    # A Time (or anything with iso8601, or a string PostgreSQL reads) as a
    # timestamptz parameter.
    def time_param(value)
      if value.respond_to?(:iso8601)
        value.respond_to?(:utc) ? value.dup.utc.iso8601(6) : value.iso8601
      else
        value.to_s
      end
    end

    # A message on one line: libpq's and the server's span several ("...
    # failed: Connection refused\n\tIs the server running ..."), a log
    # line or a one-line error must not
    def one_line(text)
      text.to_s.strip.gsub(/\s*\n\s*/, " ")
    end

    def log(level, message)
      logger&.public_send(level, "qlater: #{message}")
    end
  end
end

require_relative "qlater/codec"
require_relative "qlater/process_later"
require_relative "qlater/job"
require_relative "qlater/connections"
require_relative "qlater/worker"

# ActiveJob's adapter, once ActiveJob::Base is loaded (now or later: its
# load hook), so that config.active_job.queue_adapter = :qlater finds it
if defined?(::ActiveJob::Base)
  require_relative "qlater/active_job"
else
  begin
    require "active_support/lazy_load_hooks"
    ActiveSupport.on_load(:active_job) { require "qlater/active_job" }
  rescue LoadError
    nil # no ActiveSupport, no ActiveJob
  end
end
