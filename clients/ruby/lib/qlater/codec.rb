# frozen_string_literal: true

module QLater
  # The JSON of a ProcessLater job and the Ruby values it can carry.
  #
  # A job's args (jsonb) is an object:
  #
  #   {"qlater": 1,                     format version
  #    "args":   ["tenant-a"],          initializer positional arguments
  #    "kwargs": {"format": "xlsx"},    initializer keyword arguments
  #    "method": "call",                public method to call
  #    "method_args":   [],             its positional arguments
  #    "method_kwargs": {}}             its keyword arguments
  #
  # "kwargs" and "method_kwargs" keys always come back as Symbols (keyword
  # arguments).  Values: nil, true, false, Integer, Float (finite), String
  # (valid UTF-8, no NUL) come back as they went; Array and Hash nest.  A
  # Hash with String keys comes back as it went; Symbol keys and Symbol
  # values are tagged so they come back as Symbols:
  #
  #   {a: 1, "b" => :c}  =>  {"a": 1, "b": {"_qlater_sym": "c"}, "_qlater_sym_keys": ["a"]}
  #
  # Anything else (Time, Date, BigDecimal, objects, Hash keys of other
  # types) is refused when the job is enqueued: pass a String
  # (time.iso8601) or an id and load the object in the job.
  module Codec
    VERSION = 1
    SYM = "_qlater_sym"
    SYM_KEYS = "_qlater_sym_keys"

    module_function

    # The args JSON (a Hash, not yet a string) of a call.
    def dump_call(args:, kwargs:, method:, method_args:, method_kwargs:)
      {
        "qlater" => VERSION,
        "args" => dump_value(args),
        "kwargs" => dump_kwargs(kwargs),
        "method" => method.to_s,
        "method_args" => dump_value(method_args),
        "method_kwargs" => dump_kwargs(method_kwargs)
      }
    end

    # A call from the args JSON (already parsed): a Hash with :args,
    # :kwargs, :method, :method_args, :method_kwargs.
    def load_call(json)
      unless json.is_a?(Hash) && json["qlater"] == VERSION && json["method"].is_a?(String)
        raise UnsafeJob, "job arguments are not a qlater Ruby call (format #{VERSION}): #{JSON.generate(json)[0, 200]}"
      end

      {
        args: load_array(json.fetch("args", []), "args"),
        kwargs: load_kwargs(json.fetch("kwargs", {}), "kwargs"),
        method: json["method"],
        method_args: load_array(json.fetch("method_args", []), "method_args"),
        method_kwargs: load_kwargs(json.fetch("method_kwargs", {}), "method_kwargs")
      }
    end

    def dump_kwargs(kwargs)
      kwargs.each_with_object({}) do |(k, v), h|
        raise ArgumentError, "qlater: keyword #{k.inspect} is not a Symbol" unless k.is_a?(Symbol)

        h[k.to_s] = dump_value(v)
      end
    end

    def dump_value(value)
      case value
      when nil, true, false, Integer
        value
      when Float
        raise ArgumentError, "qlater: #{value} cannot be passed as JSON" unless value.finite?

        value
      when String
        dump_string(value)
      when Symbol
        { SYM => dump_string(value.to_s) }
      when Array
        value.map { |v| dump_value(v) }
      when Hash
        dump_hash(value)
      else
        raise ArgumentError,
              "qlater: cannot pass a #{value.class} to a job (JSON types, Symbols, Arrays " \
              "and Hashes only; pass a String or an id instead)"
      end
    end

    def dump_string(s)
      s = s.encode(Encoding::UTF_8) unless s.encoding == Encoding::UTF_8 || s.ascii_only?
      raise ArgumentError, "qlater: string is not valid UTF-8: #{s.inspect[0, 60]}" unless s.valid_encoding?
      raise ArgumentError, "qlater: strings cannot contain NUL (jsonb refuses it)" if s.include?("\0")

      s
    rescue EncodingError => e
      raise ArgumentError, "qlater: #{e.message}"
    end

    def dump_hash(hash)
      out = {}
      sym_keys = []
      hash.each do |k, v|
        case k
        when String
          raise ArgumentError, "qlater: hash key #{k.inspect} is reserved" if k.start_with?("_qlater_")
        when Symbol
          raise ArgumentError, "qlater: hash key #{k.inspect} is reserved" if k.to_s.start_with?("_qlater_")
          raise ArgumentError, "qlater: hash has both #{k.inspect} and #{k.to_s.inspect}" if hash.key?(k.to_s)

          sym_keys << k.to_s
        else
          raise ArgumentError, "qlater: hash key #{k.inspect} is neither a String nor a Symbol"
        end
        out[dump_string(k.to_s)] = dump_value(v)
      end
      out[SYM_KEYS] = sym_keys unless sym_keys.empty?
      out
    end

    def load_array(value, what)
      raise UnsafeJob, "job #{what} is not a JSON array" unless value.is_a?(Array)

      load_value(value)
    end

    def load_kwargs(value, what)
      raise UnsafeJob, "job #{what} is not a JSON object" unless value.is_a?(Hash)

      value.each_with_object({}) { |(k, v), h| h[k.to_sym] = load_value(v) }
    end

    def load_value(value)
      case value
      when Array
        value.map { |v| load_value(v) }
      when Hash
        load_hash(value)
      else
        value
      end
    end

    def load_hash(hash)
      if hash.size == 1 && hash.key?(SYM)
        raise UnsafeJob, "bad tagged symbol in job arguments" unless hash[SYM].is_a?(String)

        return hash[SYM].to_sym
      end
      sym_keys = hash.fetch(SYM_KEYS, [])
      raise UnsafeJob, "bad #{SYM_KEYS} in job arguments" unless sym_keys.is_a?(Array)

      symbolic = sym_keys.to_h { |k| [k, true] }
      hash.each_with_object({}) do |(k, v), h|
        next if k == SYM_KEYS

        h[symbolic[k] ? k.to_sym : k] = load_value(v)
      end
    end
  end
end
