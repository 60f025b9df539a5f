# frozen_string_literal: true

module QLater
  # Makes any service object run later: include it, define
  # initializer_arguments (the arguments that re-create the object), and
  # call obj.later(:method, ...) where you would call obj.method(...).
  #
  #   class ExportStations
  #     include QLater::ProcessLater
  #     qlater_options queue: "exports", priority: 10     # optional class defaults
  #
  #     def initialize(tenant, format: "csv") = (@tenant, @format = tenant, format)
  #     def initializer_arguments = [@tenant, { format: @format }]
  #     def call = ...
  #   end
  #
  #   ExportStations.new("tenant-a").call                     # now
  #   ExportStations.new("tenant-a", format: "xlsx").later    # later (:call)
  #   ExportStations.new("tenant-a").later(:call, run_at: Time.now + 3600, priority: 10)
  #   ExportStations.new("tenant-a").later(:call, key: "export:tenant-a")  # once, if it waits
  #
  # A last element of initializer_arguments that is a Hash with Symbol keys
  # is passed as keyword arguments when initialize takes keywords (as in
  # the example); any other Hash is passed as a plain positional Hash.
  module ProcessLater
    # Options of `later`; every other keyword goes to the method.
    LATER_OPTIONS = %i[run_at queue priority max_attempts key replace].freeze
    CLASS_OPTIONS = %i[queue priority max_attempts].freeze

    def self.included(base)
      base.extend(ClassMethods)
    end

    # May a job call +name+ on instances of +klass+?  Only public methods
    # written in Ruby by the class (or a module or superclass of it other
    # than Object's own ancestors and ProcessLater): a job's arguments come
    # from the database, and methods such as instance_eval or send must
    # never be reachable from there, not under another name either (an
    # alias keeps its original name: ActiveModel aliases send as
    # read_attribute_for_validation) nor through a method implemented in C.
    def self.callable?(klass, name)
      name = name.to_sym
      return false if name == :initialize
      return false unless klass.public_method_defined?(name)

      method = klass.instance_method(name)
      owner = method.owner
      return false if Object.ancestors.include?(owner) || owner == ProcessLater
      return false if method.source_location.nil? # C: send, eval, system, ... under any name

      original = method.original_name
      !(original == :initialize || BasicObject.method_defined?(original) || Object.method_defined?(original) ||
        Object.private_method_defined?(original))
    end

    module ClassMethods
      # Class defaults for `later`: queue, priority, max_attempts.  Inherited
      # by subclasses.
      def qlater_options(**opts)
        unknown = opts.keys - CLASS_OPTIONS
        raise ArgumentError, "unknown qlater option(s): #{unknown.join(', ')}" unless unknown.empty?

        @qlater_options = (@qlater_options || {}).merge(opts)
      end

      # Shorthand for qlater_options(queue: name).
      def qlater_queue(name)
        qlater_options(queue: name)
      end

      # The class defaults, with those of superclasses.
      def qlater_defaults
        inherited = superclass.respond_to?(:qlater_defaults) ? superclass.qlater_defaults : {}
        inherited.merge(@qlater_options || {})
      end

      # Does initialize take keyword arguments?
      def qlater_initialize_takes_keywords?
        instance_method(:initialize).parameters.any? { |type, _| %i[key keyreq keyrest].include?(type) }
      end
    end

    # The arguments of initialize that re-create this object in the worker.
    def initializer_arguments
      raise NotImplementedError,
            "#{self.class} includes QLater::ProcessLater but does not define initializer_arguments"
    end

    # Enqueues a call of +method+ (a public method of this class) with
    # +method_args+ and +method_kwargs+ on QLater.connection, in whatever
    # transaction is open there.  Options: run_at (Time), queue, priority,
    # max_attempts; nil takes the class defaults (qlater_options), then
    # QLater.default_queue and the queue's defaults.  key: makes it a unique
    # job: the job of the key that waits is returned instead of a new one
    # (with replace: true, it takes this call, run_at and priority).
    # Returns the job id.
    def later(method = :call, *method_args, run_at: nil, queue: nil, priority: nil,
              max_attempts: nil, key: nil, replace: nil, **method_kwargs)
      klass = self.class
      name = klass.name
      if name.nil? || (Object.const_get(name) rescue nil) != klass
        raise ArgumentError, "#{klass.inspect} has no constant name the worker can resolve"
      end
      unless ProcessLater.callable?(klass, method)
        raise ArgumentError, "#{name}##{method} is not a public method of #{name} a job may call"
      end

      args = initializer_arguments
      raise TypeError, "#{name}#initializer_arguments must return an Array" unless args.is_a?(Array)

      args = args.dup
      kwargs = {}
      if args.last.is_a?(Hash) && args.last.each_key.all?(Symbol) && klass.qlater_initialize_takes_keywords?
        kwargs = args.pop
      end
      payload = Codec.dump_call(args: args, kwargs: kwargs, method: method,
                                method_args: method_args, method_kwargs: method_kwargs)
      defaults = klass.qlater_defaults
      QLater.enqueue(name, payload,
                     run_at: run_at,
                     queue: queue || defaults[:queue] || QLater.default_queue,
                     priority: priority || defaults[:priority],
                     max_attempts: max_attempts || defaults[:max_attempts],
                     key: key, replace: replace)
    end
  end
end
