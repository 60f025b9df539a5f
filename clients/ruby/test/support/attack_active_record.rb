# frozen_string_literal: true

# ActiveRecord / ActiveModel classes of the attack tests.
require_relative "active_record_setup"
require_relative "attack_jobs"

# A model whose after_commit has an effect outside the database (an email,
# a webhook, a push to another queue): recorded here, in the process.
class AttackNotifiedRecord < ActiveRecord::Base
  self.table_name = "rb_aj"

  class << self
    def notified
      @notified ||= []
    end
  end

  after_commit { self.class.notified << key }
end

# Saves a record (whose after_commit notifies), then fails.
class AttackNotifyThenFailJob < ApplicationJob
  def perform(queue, key)
    AttackNotifiedRecord.create!(queue: queue, key: key)
    raise "fails after the save"
  end
end

# Saves a record and succeeds (the control case).
class AttackNotifyJob < ApplicationJob
  def perform(queue, key)
    AttackNotifiedRecord.create!(queue: queue, key: key)
  end
end

# A service object written the common Rails way: a form/service object with
# ActiveModel::Model (attributes, validations) that runs later.  Its only
# intended job method is #call.
class AttackSignupService
  include ActiveModel::Model
  include QLater::ProcessLater

  attr_accessor :email

  def initializer_arguments = [{ "email" => email }]

  def call
    QLater.connection.exec_params("INSERT INTO rb_done (queue, key) VALUES ($1, $2)",
                                  [QLater.current_job.queue, "signup #{email}"])
  end
end

# Careless job code: hands its connection back to the pool mid-job (as a
# library that "cleans up connections" does), then lets another thread
# use the pool (a Thread.new in the job, or another worker thread).
class AttackReleaseConnectionJob < ApplicationJob
  def perform(queue)
    pool = ActiveRecord::Base.connection_pool
    mine = QLater.connection # the worker's PG::Connection, holding the claim
    pool.release_connection
    available = pool.connections.any? { |c| c.instance_variable_get(:@connection).equal?(mine) && !c.in_use? }
    RbAj.create!(queue: queue, key: "released", info: available.to_s)
  end
end

# A class that is an ActiveJob class for Ruby, but not the handler.
class AttackNotAJob
  def self.execute(*) = raise("AttackNotAJob must never run")
end

# Exits the process from a job (SystemExit).
class AttackExitJob < ApplicationJob
  def perform(queue)
    RbAj.create!(queue: queue, key: "before exit")
    exit 3
  end
end

# Rescues an SQL error without a savepoint: the transaction is aborted.
class AttackAbortedJob < ApplicationJob
  def perform(queue)
    RbAj.create!(queue: queue, key: "aborted")
    begin
      RbAj.connection.execute("SELECT 1/0")
    rescue ActiveRecord::StatementInvalid
      nil
    end
  end
end

# A job that COMMITs and ROLLBACKs the worker's transaction through raw SQL.
class AttackRawRollbackJob < ApplicationJob
  def perform(queue)
    RbAj.create!(queue: queue, key: "rolled back by raw SQL")
    RbAj.connection.execute("ROLLBACK")
    RbAj.create!(queue: queue, key: "after raw rollback")
  end
end
