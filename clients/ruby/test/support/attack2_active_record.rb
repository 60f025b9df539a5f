# frozen_string_literal: true

# ActiveRecord classes and jobs of the second attack round (on the fixes of
# the first: after_commit after the job's COMMIT, pinned connections).
require_relative "attack_active_record"

# A record whose callbacks are counted per key, in the process: after_commit
# (an email, a webhook), after_rollback.  A key starting with "raise" makes
# its after_commit raise, as a failing webhook call does.
class Attack2Record < ActiveRecord::Base
  self.table_name = "rb_aj"

  class << self
    def committed = (@committed ||= [])
    def rolled_back = (@rolled_back ||= [])

    def reset!
      committed.clear
      rolled_back.clear
    end
  end

  after_commit do
    self.class.committed << key
    raise "after_commit of #{key} failed (a webhook down)" if key.start_with?("raise")
  end
  after_rollback { self.class.rolled_back << key }
end

# Saves a record; fails after it when the key says so.
class Attack2SaveJob < ApplicationJob
  def perform(queue, key)
    Attack2Record.create!(queue: queue, key: key)
    raise "job #{key} fails after its save" if key.start_with?("fail")
  end
end

# Saves a record, then one in its own transaction(requires_new: true)
# that raises (rescued): the inner one is rolled back, the outer commits.
class Attack2RequiresNewJob < ApplicationJob
  def perform(queue)
    Attack2Record.create!(queue: queue, key: "outer")
    begin
      Attack2Record.transaction(requires_new: true) do
        Attack2Record.create!(queue: queue, key: "inner")
        raise "inner fails"
      end
    rescue RuntimeError
      nil
    end
  end
end

# Disconnects the pool, as code does before it forks (or as
# establish_connection does to the pool it replaces).
class Attack2DisconnectJob < ApplicationJob
  def perform(queue)
    ActiveRecord::Base.connection_pool.disconnect!
    Attack2Record.create!(queue: queue, key: "after disconnect")
  end
end
