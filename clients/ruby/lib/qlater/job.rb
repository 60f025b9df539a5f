# frozen_string_literal: true

module QLater
  # A job claimed by a worker (a row of qlater_lock).  args is the parsed
  # JSON; claim_token is set in lease mode only.
  Job = Struct.new(:id, :queue, :handler, :args, :priority, :run_at, :attempts,
                   :max_attempts, :role, :claim_token, :unreadable, keyword_init: true) do
    # A job of a qlater_lock row (a Hash of column names to text).
    def self.from_row(row)
      from_values(row.values_at(*self::COLUMNS))
    end

    # A job of the text values of a qlater_lock row's COLUMNS, in their
    # order.  Args that cannot be read (JSON nested deeper than
    # MAX_NESTING) make a job whose perform raises UnsafeJob: it fails like
    # any other, and holds up nothing.
    def self.from_values(values)
      id, queue, handler, text, priority, run_at, attempts, max_attempts, role, token = values
      args, unreadable = begin
        [JSON.parse(text, max_nesting: MAX_NESTING), nil]
      rescue JSON::JSONError, SystemStackError => e
        [nil, "#{e.class}: #{e.message[0, 200]}"]
      end
      new(id: Integer(id), queue: queue, handler: handler, args: args, priority: priority&.to_i,
          run_at: run_at, attempts: attempts.to_i, max_attempts: max_attempts&.to_i, role: role,
          claim_token: token, unreadable: unreadable)
    end

    MAX_NESTING = 500

    # Runs the job: an ActiveJob job through ActiveJob::Base.execute, a
    # ProcessLater call by re-creating the object and calling the method.
    # Only classes that include QLater::ProcessLater (and only their own
    # public methods) or ActiveJob classes are run.
    def perform
      raise UnsafeJob, "job #{id}: args cannot be read (#{unreadable})" if unreadable

      klass = self.class.resolve(handler)
      return perform_active_job(klass) if self.class.active_job_class?(klass)

      call = Codec.load_call(args)
      unless ProcessLater.callable?(klass, call[:method])
        raise UnsafeJob, "#{handler}##{call[:method]} is not a public method of #{handler} a job may call"
      end

      obj = klass.new(*call[:args], **call[:kwargs])
      obj.public_send(call[:method], *call[:method_args], **call[:method_kwargs])
    end

    CLASS_NAME = /\A(?:::)?[A-Z]\w*(?:::[A-Z]\w*)*\z/.freeze

    # The class a handler name names, if it is a class that includes
    # QLater::ProcessLater or an ActiveJob class; UnsafeJob otherwise.
    def self.resolve(name)
      raise UnsafeJob, "handler #{name.inspect} is not a Ruby class name" unless CLASS_NAME.match?(name)

      klass = begin
        Object.const_get(name)
      rescue NameError
        raise UnsafeJob, "handler #{name} is not defined in this worker"
      end
      unless klass.is_a?(Class) && (klass.include?(ProcessLater) || active_job_class?(klass))
        raise UnsafeJob, "handler #{name} is not a class that includes QLater::ProcessLater or an ActiveJob class"
      end

      klass
    end

    def self.active_job_class?(klass)
      defined?(::ActiveJob::Base) && klass < ::ActiveJob::Base ? true : false
    end

    private

    # The row's args are the job's serialized form; its job_class must be
    # the handler, so that a row cannot make ActiveJob load another class.
    def perform_active_job(klass)
      unless args.is_a?(Hash) && args["job_class"] == handler
        raise UnsafeJob, "job #{id}: args are not an ActiveJob job of class #{handler}"
      end

      data = args.merge("provider_job_id" => id)
      data["executions"] = data["executions"].to_i
      ::ActiveJob::Base.execute(data)
      klass
    end
  end

  # The columns of qlater_lock a worker reads, in the order Job.from_values
  # takes them.
  Job::COLUMNS = %w[id queue handler args priority run_at attempts max_attempts role claim_token].freeze
end
