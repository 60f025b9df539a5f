# frozen_string_literal: true

# Job classes of the tests (also loaded by the worker subprocesses).

# Records a key in rb_done, in the job's transaction: the primary key makes
# a second run of the same job fail, so "every job once" is checkable.
class RecordKey
  include QLater::ProcessLater

  def initialize(key, sleep: 0)
    @key = key
    @sleep = sleep
  end

  def initializer_arguments = [@key, { sleep: @sleep }]

  def call
    job = QLater.current_job
    QLater.connection.exec_params("INSERT INTO rb_done (queue, key) VALUES ($1, $2)",
                                  [job ? job.queue : "now", @key])
    sleep(@sleep) if @sleep.positive?
  end
end

# Records how it was built and called (inspect strings of what it got).
class Echo
  include QLater::ProcessLater

  def initialize(first, plain, format:, options: nil, **rest)
    @first = first
    @plain = plain
    @format = format
    @options = options
    @rest = rest
  end

  def initializer_arguments = [@first, @plain, { format: @format, options: @options, **@rest }]

  def record(*args, **kwargs)
    got = { first: @first, plain: @plain, format: @format, options: @options, rest: @rest,
            args: args, kwargs: kwargs }
    QLater.connection.exec_params("INSERT INTO rb_done (queue, key, info) VALUES ($1, $2, $3)",
                                  [QLater.current_job.queue, "echo", Marshal.dump(got).unpack1("H*")])
  end

  def self.received(conn, queue)
    hex = conn.exec_params("SELECT info FROM rb_done WHERE queue = $1 AND key = 'echo'", [queue]).getvalue(0, 0)
    Marshal.load([hex].pack("H*")) # rubocop:disable Security/MarshalLoad -- test data it wrote itself
  end
end

# Writes, then raises: the write must be rolled back with the failure.
class Boom
  include QLater::ProcessLater

  def initialize(key) = (@key = key)
  def initializer_arguments = [@key]

  def call
    QLater.connection.exec_params("INSERT INTO rb_done (queue, key) VALUES ($1, $2)",
                                  [QLater.current_job.queue, @key])
    raise "boom #{@key}"
  end
end

# A class the worker must refuse to run: it does not include ProcessLater.
class NotAJob
  def initialize(*) = nil
  def call = raise("NotAJob must never run")
end

# Uses QLater.transaction (a savepoint inside the worker's transaction) and
# recovers from an SQL error in a nested one.
class Nested
  include QLater::ProcessLater

  def initialize(key) = (@key = key)
  def initializer_arguments = [@key]

  def call
    queue = QLater.current_job ? QLater.current_job.queue : "now"
    insert = ->(key) { QLater.connection.exec_params("INSERT INTO rb_done (queue, key) VALUES ($1, $2)", [queue, key]) }
    QLater.transaction { insert.call(@key) }
    begin
      QLater.transaction { insert.call(@key) }
    rescue PG::UniqueViolation
      insert.call("#{@key}-recovered")
    end
  end
end

# Rescues an SQL error without a savepoint: the transaction is left aborted.
class SwallowSqlError
  include QLater::ProcessLater

  def initialize(key) = (@key = key)
  def initializer_arguments = [@key]

  def call
    QLater.connection.exec("SELECT 1/0")
  rescue PG::DivisionByZero
    nil
  end
end

# Records the id of its top-level transaction (txid_current() is the
# top-level one, savepoints or not).
class RecordTxid
  include QLater::ProcessLater

  def initialize(key) = (@key = key)
  def initializer_arguments = [@key]

  def call
    QLater.connection.exec_params("INSERT INTO rb_done (queue, key, info) VALUES ($1, $2, txid_current()::text)",
                                  [QLater.current_job.queue, @key])
  end
end
