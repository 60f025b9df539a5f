# frozen_string_literal: true

require "optparse"
require "logger"

module QLater
  # qlater-worker: runs a QLater::Worker from the command line.
  #
  #   qlater-worker --queues aj_default,ruby --threads 4
  #
  # In a Rails application's root (config/environment.rb exists) it loads
  # the application, so jobs use ActiveRecord's connection from
  # config/database.yml; elsewhere --require loads the code of the jobs and
  # the worker connects with --database-url or libpq's environment.
  class CLI
    # A configuration error: printed, exit status 2.
    class ConfigError < StandardError; end

    LEVELS = %w[debug info warn error].freeze

    def self.start(argv = ARGV, out: $stdout, err: $stderr)
      new(out: out, err: err).start(argv)
    end

    def initialize(out:, err:)
      @out = out
      @err = err
    end

    # Returns the exit status.
    def start(argv)
      options = parse(argv)
      return 0 if options[:exit]

      prepare(options)
      worker = build_worker(options)
      worker.run
      0
    rescue ConfigError, OptionParser::ParseError => e
      @err.puts "qlater-worker: #{e.message}"
      2
    rescue PG::Error => e
      # what no retry can fix: a queue the role may not consume, not external
      @err.puts "qlater-worker: #{e.message.strip}"
      1
    end

    private

    def parse(argv)
      options = { queues: nil, threads: 1, requires: [], log_level: "info", batch: 1, commit: "job",
                  poll_interval: 1.0 }
      parser = OptionParser.new do |o|
        o.banner = "Usage: qlater-worker --queues QUEUE[,QUEUE...] [options]"
        o.separator ""
        o.separator "Runs the jobs of qlater external queues (ProcessLater calls and ActiveJob jobs)."
        o.separator "In a Rails app's root it loads the app (config/environment.rb) and uses its database."
        o.separator ""
        o.on("-q", "--queues LIST", "external queues to serve, comma-separated, first ones first " \
                                    "(ActiveJob's queue \"default\" is qlater's \"aj_default\")") do |v|
          options[:queues] = v.split(",").map(&:strip).reject(&:empty?)
        end
        o.on("-t", "--threads N", Integer, "worker threads, one connection each (default 1)") { |v| options[:threads] = v }
        o.on("-r", "--require FILE", "load FILE first (the code of the jobs); repeatable; " \
                                     "default in a Rails app: config/environment.rb") { |v| options[:requires] << v }
        o.on("-d", "--database-url URL", "the database (else DATABASE_URL, config/database.yml or PGHOST, ...)") do |v|
          options[:database_url] = v
        end
        o.on("--lease INTERVAL", "claim in lease mode (e.g. '5 minutes'), for connections through a " \
                                 "transaction pooler") { |v| options[:lease] = v }
        o.on("--listen-url URL", "a direct connection for LISTEN and lease renewals (lease mode polls without it)") do |v|
          options[:listen_url] = v
        end
        o.on("--batch N", Integer, "jobs claimed at once per thread (default 1)") { |v| options[:batch] = v }
        o.on("--commit MODE", %w[job batch], "job: one transaction per job (default); batch: the jobs of " \
                                             "a claim in one, each in a savepoint") { |v| options[:commit] = v }
        o.on("--poll-interval SECONDS", Float, "poll when no wake-up comes (default 1)") { |v| options[:poll_interval] = v }
        o.on("-l", "--log-level LEVEL", LEVELS, "debug, info (default: one line per job), warn, error") do |v|
          options[:log_level] = v
        end
        o.on("-v", "--version", "print the version") do
          @out.puts "qlater-worker #{QLater::VERSION}"
          options[:exit] = true
        end
        o.on("-h", "--help", "this help") do
          @out.puts o
          options[:exit] = true
        end
      end
      rest = parser.parse(argv)
      raise ConfigError, "unexpected argument #{rest.first.inspect} (see --help)" unless rest.empty?
      return options if options[:exit]
      raise ConfigError, "--queues is required (see --help)" if options[:queues].nil? || options[:queues].empty?
      raise ConfigError, "--threads must be at least 1" if options[:threads] < 1
      raise ConfigError, "--batch must be between 1 and 1000" unless options[:batch].between?(1, 1000)
      raise ConfigError, "--poll-interval must be positive" unless options[:poll_interval].positive?

      options
    end

    # Loads the application: --database-url becomes DATABASE_URL (which
    # Rails and ActiveRecord read too), then the files to require.
    def prepare(options)
      ENV["DATABASE_URL"] = options[:database_url] if options[:database_url]
      requires = options[:requires]
      requires = ["./config/environment.rb"] if requires.empty? && File.exist?("config/environment.rb")
      requires.each do |file|
        path = File.expand_path(file)
        raise ConfigError, "cannot load #{file}: no such file" unless File.exist?(path) || File.exist?("#{path}.rb")

        loading(file) { require path }
      end
      # a Rails app loads its code lazily: the job classes must be there
      eager_load if defined?(::Rails) && ::Rails.respond_to?(:application) && ::Rails.application
      QLater.logger = logger(options[:log_level])
    end

    def eager_load
      loading("the application's code") { ::Rails.application.eager_load! }
    end

    # Loads code (what): its error is a configuration error, with its
    # trace; the app's code may use the database as it loads, and a
    # database out of reach then is just that, on one line.
    def loading(what)
      yield
    rescue ScriptError, StandardError => e
      raise ConfigError, cannot_connect(e) if unreachable?(e)

      trace = (e.backtrace || []).first(15).map { |l| "\n    #{l}" }.join
      raise ConfigError, "loading #{what} raised #{e.class}: #{e.message}#{trace}"
    end

    def logger(level)
      log = Logger.new(@out)
      @out.sync = true if @out.respond_to?(:sync=)
      log.level = Logger.const_get(level.upcase)
      log.formatter = proc { |sev, time, _, msg| "#{time.utc.strftime('%FT%T.%3NZ')} #{sev} #{msg}\n" }
      log
    end

    def build_worker(options)
      worker_options = { queues: options[:queues], threads: options[:threads], batch: options[:batch],
                         commit: options[:commit].to_sym, lease: options[:lease],
                         poll_interval: options[:poll_interval], logger: QLater.logger }
      worker_options[:listen] = options[:listen_url] if options[:listen_url]
      if QLater.active_record?
        check_pool(options[:threads])
      else
        worker_options[:connect] = options[:database_url] || ENV["DATABASE_URL"] || {}
      end
      check_connection(worker_options)
      QLater::Worker.new(**worker_options)
    rescue ArgumentError => e
      raise ConfigError, e.message
    end

    # Each thread needs a connection of the pool (and the listener one).
    def check_pool(threads)
      size = QLater.active_record_class.connection_pool.size
      return if size >= threads + 1

      raise ConfigError, "the connection pool of #{QLater.active_record_class} has #{size} connection(s), " \
                         "fewer than --threads #{threads} + 1 (the listener): set pool: in config/database.yml"
    end

    # Fails early, with the server's message, when the database is out of
    # reach (ActiveRecord raises errors of its own for that), and when its
    # qlater is missing or not on the search_path.
    def check_connection(worker_options)
      conn = begin
        if QLater.active_record?
          QLater.active_record_class.connection.raw_connection
        else
          Connections.new(worker_options[:connect], set_application_name: worker_options[:lease].nil?).connect
        end
      rescue StandardError => e
        raise unless connection_error?(e)

        raise ConfigError, cannot_connect(e)
      end
      check_extension(conn)
      check_lease(conn, worker_options[:lease]) if worker_options[:lease]
      if QLater.active_record?
        # a session of the pool, named as the worker's are (not in lease
        # mode: a pooler's server sessions are not ours), back to the pool
        Connections.name_session(conn) unless worker_options[:lease]
        QLater.active_record_class.connection_pool.release_connection
      else
        conn.close
      end
    rescue PG::Error => e
      raise ConfigError, cannot_connect(e)
    end

    # Any error of the pg gem or of ActiveRecord while connecting.
    def connection_error?(error)
      error.is_a?(PG::Error) ||
        (defined?(::ActiveRecord::ActiveRecordError) && error.is_a?(::ActiveRecord::ActiveRecordError))
    end

    # The errors that say the database is out of reach, whatever the code
    # was doing (ActiveRecord's by name: some are not in every version).
    UNREACHABLE = %w[ConnectionNotEstablished NoDatabaseError DatabaseConnectionError].freeze

    def unreachable?(error)
      return true if error.is_a?(PG::ConnectionBad)

      defined?(::ActiveRecord) && UNREACHABLE.any? do |name|
        ::ActiveRecord.const_defined?(name, false) && error.is_a?(::ActiveRecord.const_get(name, false))
      end
    end

    def cannot_connect(error)
      "cannot connect: #{QLater.one_line(error.message)}"
    end

    # qlater's own qlater_lock must be the one the search_path finds.
    def check_extension(conn)
      row = begin
        conn.exec(<<~SQL).first
          SELECT current_database() AS db, n.nspname AS schema,
                 pg_catalog.has_schema_privilege(n.oid, 'USAGE') AS usage,
                 pg_catalog.to_regprocedure('qlater_lock(text, integer, interval)') AS found,
                 (SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
                   WHERE p.pronamespace = n.oid AND p.proname = 'qlater_lock'
                     AND p.proargtypes = '25 23 1186'::pg_catalog.oidvector) AS ours
            FROM (SELECT 1) one
            LEFT JOIN pg_catalog.pg_extension e ON e.extname = 'qlater'
            LEFT JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
        SQL
      rescue PG::InsufficientPrivilege
        return # catalogs hidden from the role: its first call says what is wrong
      end
      return if row["schema"] && row["found"] && row["found"].to_s == row["ours"].to_s

      raise ConfigError, extension_message(row)
    end

    def extension_message(row)
      db = row["db"]
      schema = row["schema"]
      if schema.nil?
        "the qlater extension is not installed in database \"#{db}\": run CREATE EXTENSION qlater in it " \
          "(as a superuser), or point the worker at the database that has it (--database-url)"
      elsif ![true, "t"].include?(row["usage"])
        "the worker's role may not use schema \"#{schema}\", where the qlater extension is, in database " \
          "\"#{db}\": GRANT USAGE ON SCHEMA #{schema} TO the role"
      else
        "the qlater extension is in schema \"#{schema}\", which is not first on the search_path of the " \
          "worker's sessions in database \"#{db}\" (or another qlater_lock comes before it): put it first " \
          "(ALTER ROLE ... SET search_path), or set it in the URL (options=-csearch_path%3D#{[schema, "public"].uniq.join(",")})"
      end
    end

    def check_lease(conn, lease)
      long = conn.exec_params("SELECT $1::interval >= interval '1 second'", [lease]).getvalue(0, 0)
      raise ConfigError, "--lease must be at least 1 second, not #{lease.inspect}" unless [true, "t"].include?(long)
    rescue PG::DataException => e
      raise ConfigError, "--lease #{lease.inspect} is not an interval (#{e.message.lines.first.strip})"
    end
  end
end
