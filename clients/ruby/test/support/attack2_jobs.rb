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
