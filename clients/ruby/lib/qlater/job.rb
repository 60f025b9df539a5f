# frozen_string_literal: true

module QLater
  # A job claimed by a worker (a row of qlater_lock).  args is the parsed
  # JSON; claim_token is set in lease mode only.
  Job = Struct.new(:id, :queue, :handler, :args, :priority, :run_at, :attempts,
                   :max_attempts, :role, :claim_token, keyword_init: true) do
    def self.from_row(row)
      new(id: Integer(row["id"]),
          queue: row["queue"],
          handler: row["handler"],
          args: JSON.parse(row["args"]),
          priority: row["priority"]&.to_i,
          run_at: row["run_at"],
          attempts: row["attempts"].to_i,
          max_attempts: row["max_attempts"]&.to_i,
          role: row["role"],
          claim_token: row["claim_token"])
    end

    # Re-creates the object and calls the method.  Only classes that include
    # QLater::ProcessLater, and only their own public methods, are run.
    def perform
      klass = self.class.resolve(handler)
      call = Codec.load_call(args)
      unless ProcessLater.callable?(klass, call[:method])
        raise UnsafeJob, "#{handler}##{call[:method]} is not a public method of #{handler} a job may call"
      end

      obj = klass.new(*call[:args], **call[:kwargs])
      obj.public_send(call[:method], *call[:method_args], **call[:method_kwargs])
    end

    CLASS_NAME = /\A(?:::)?[A-Z]\w*(?:::[A-Z]\w*)*\z/.freeze

    # The class a handler name names, if it is a class that includes
    # QLater::ProcessLater; UnsafeJob otherwise.
    def self.resolve(name)
      raise UnsafeJob, "handler #{name.inspect} is not a Ruby class name" unless CLASS_NAME.match?(name)

      klass = begin
        Object.const_get(name)
      rescue NameError
        raise UnsafeJob, "handler #{name} is not defined in this worker"
      end
      unless klass.is_a?(Class) && klass.include?(ProcessLater)
        raise UnsafeJob, "handler #{name} is not a class that includes QLater::ProcessLater"
      end

      klass
    end
  end
end
