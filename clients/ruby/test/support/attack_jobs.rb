# frozen_string_literal: true

# Job classes of the attack tests (test/attack_*_test.rb): each one does
# what a careless application or a hostile row could make it do.

# Counts its runs in this process (its database writes roll back with the
# failure, so only an in-process counter shows how often it ran).
module AttackRunCounter
  def self.included(base)
    base.extend(ClassMethods)
  end

  module ClassMethods
    def runs
      @runs ||= 0
    end

    def ran!
      @runs = runs + 1
    end

    def reset_runs!
      @runs = 0
    end
  end
end

# A job that talks to a second database that is down: its own code raises
# PG::ConnectionBad, while the worker's connection is fine.
class AttackOtherDatabase
  include QLater::ProcessLater
  include AttackRunCounter

  def initializer_arguments = []

  def call
    self.class.ran!
    raise PG::ConnectionBad, "could not connect to server \"analytics-db\": Connection refused"
  end
end

# A job whose exception message is binary (ASCII-8BIT) with bytes that are
# not UTF-8, as a message that quotes raw bytes read from a file or socket.
class AttackBinaryMessage
  include QLater::ProcessLater
  include AttackRunCounter

  def initializer_arguments = []

  def call
    self.class.ran!
    raise ArgumentError, "bad header: \xFF\xFE\x00".b
  end
end

# An exception whose #message raises.
class AttackBadMessageError < StandardError
  def message
    raise NoMethodError, "undefined method `name' for nil:NilClass (in #message)"
  end
end

class AttackBadMessage
  include QLater::ProcessLater
  include AttackRunCounter

  def initializer_arguments = []

  def call
    self.class.ran!
    raise AttackBadMessageError
  end
end
