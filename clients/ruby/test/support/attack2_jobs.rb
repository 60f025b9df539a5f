# frozen_string_literal: true

# ProcessLater classes of the second attack round.

# Its lease runs out while it runs, as when the worker is cut off from the
# server for longer than the lease (the lease is set in the past from a
# session of its own; qlater_extend refuses a lease that ran out).
class Attack2LapseJob
  include QLater::ProcessLater

  def initialize(key) = (@key = key)
  def initializer_arguments = [@key]

  def call
    job = QLater.current_job
    QLater.connection.exec_params("INSERT INTO rb_done (queue, key) VALUES ($1, $2)", [job.queue, @key])
    other = PG.connect
    other.exec_params("UPDATE qlater_job SET lease_until = now() - interval '1 second' WHERE id = $1", [job.id])
    other.close
  end
end

# Exceptions of odd kinds, raised from a job (or its initialize).
class Attack2OddError < StandardError
  # An exception class whose name cannot be printed (a class with its own
  # to_s: a proxy, a generated class).
  def self.to_s = raise("no name for you")
  def self.name = to_s
  def self.inspect = to_s
end

class Attack2Odd
  include QLater::ProcessLater

  def initialize(kind)
    @kind = kind
    raise ArgumentError, "bad in initialize" if kind == "initialize"
  end

  def initializer_arguments = [@kind]

  def call
    QLater.connection.exec_params("INSERT INTO rb_done (queue, key) VALUES ($1, $2)",
                                  [QLater.current_job.queue, @kind])
    case @kind
    when "stack" then recurse(0)
    when "memory" then raise NoMemoryError, "failed to allocate memory"
    when "timeout" then Timeout.timeout(0.05) { sleep 1 }
    when "odd_class" then raise Attack2OddError, "plain message"
    when "interrupt" then raise Interrupt
    end
  end

  private

  def recurse(n) = recurse(n + 1) + 1
end
