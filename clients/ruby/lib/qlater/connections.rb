# frozen_string_literal: true

module QLater
  # Where a worker's threads get their database connections, and how a job's
  # transaction and its savepoints are opened on them.  Two kinds:
  #
  # - Connections: plain PG::Connection objects, one per worker thread, kept
  #   for the thread's life (made again after a connection error).
  # - ActiveRecordConnections: the connection pool of an ActiveRecord class.
  #   A thread takes a connection from the pool for one cycle (claim, run,
  #   commit) and keeps it, pinned, until every claim of that cycle is
  #   completed, failed or given back: a session claim never goes back to
  #   the pool while held.  A cycle runs inside Rails.application.executor
  #   when Rails is loaded, as every unit of work in a Rails app should.
  #
  # Both hand out a Link: the raw PG::Connection (qlater's own statements)
  # and #atomic, a transaction at the top level or a savepoint within one.
  class Connections
    APPLICATION_NAME = "qlater-worker"

    # connect: a Proc returning a PG::Connection, a conninfo String (or URL)
    # or a Hash for PG.connect.
    def initialize(connect, set_application_name: true)
      @connect = connect
      @set_application_name = set_application_name
    end

    # Opens a new PG::Connection (application_name "qlater-worker" unless
    # the parameters set one).
    def connect
      conn = case @connect
             when Proc then @connect.call
             when String then PG.connect(with_fallback_name(PG::Connection.conninfo_parse(@connect)
                                                              .to_h { |o| [o[:keyword].to_sym, o[:val]] }
                                                              .compact))
             when Hash then PG.connect(with_fallback_name(@connect))
             else raise ArgumentError, "connect: must be a Proc, a conninfo String or a Hash"
             end
      Connections.name_session(conn) if @set_application_name
      conn
    end

    # Where the listener connects: the same parameters.
    def listen_connections
      self
    end

    # Runs the block with this thread's Link; +state+ is the thread's own
    # Hash (keeps its connection between cycles).
    def with_link(state)
      state[:link] ||= Link.new(connect)
      yield state[:link]
    end

    # Drops the thread's connection (after an error, or a claim that could
    # not be given back: the server then releases every claim of the session).
    def discard(state, _link = nil)
      state.delete(:link)&.close
    end

    def release(state)
      discard(state)
    end

    # Sets application_name on a session that has none but the pg gem's
    # fallback (the program's path: ActiveRecord's connections have it):
    # a name from the parameters, PGAPPNAME or a SET of the user's stays.
    # The session's name is read at each call (no round trip): a reconnect
    # or a DISCARD ALL puts the fallback back.
    def self.name_session(conn, name = APPLICATION_NAME)
      current = conn.parameter_status("application_name").to_s
      return if current == name

      # [a name given as a parameter, the fallback as the server shows it]:
      # a connection's parameters stay the same across a reset
      given, fallback = conn.instance_variable_get(:@qlater_given_names) ||
                        conn.instance_variable_set(:@qlater_given_names, given_names(conn))
      return unless given.empty?
      return unless current.empty? || current == fallback

      conn.exec("SET application_name = #{conn.escape_literal(name)}")
    end

    def self.given_names(conn)
      info = conn.conninfo_hash
      [info[:application_name].to_s, as_the_server_shows(info[:fallback_application_name].to_s)]
    end

    # application_name as the server keeps it: a byte that is not printable
    # ASCII becomes "?" (a program path "/tmp/josé/x" is "/tmp/jos??/x")
    def self.as_the_server_shows(name)
      name.b.gsub(/[^\x20-\x7e]/n, "?")
    end

    private

    def with_fallback_name(params)
      { fallback_application_name: APPLICATION_NAME }.merge(params.transform_keys(&:to_sym))
    end

    # A plain connection: transactions with BEGIN / SAVEPOINT.
    class Link
      attr_reader :raw

      def initialize(raw)
        @raw = raw
        @depth = 0
      end

      # A transaction (or, inside one, a savepoint): committed when the
      # block returns, rolled back when it raises (and the error re-raised).
      # A top-level block that leaves the transaction aborted raises
      # QLater::Error; one that ended the transaction itself (COMMIT) is
      # taken as done.
      def atomic
        top = @depth.zero?
        name = "qlater_#{@depth}"
        @raw.exec(top ? "BEGIN" : "SAVEPOINT #{name}")
        @depth += 1
        begin
          result = yield
          if @raw.transaction_status == PG::PQTRANS_INERROR
            raise Error, "the job left its transaction aborted (an SQL error rescued without a savepoint?)"
          end
        rescue Exception # rubocop:disable Lint/RescueException
          @depth -= 1
          undo(top, name)
          raise
        end
        @depth -= 1
        if top
          @raw.exec("COMMIT") unless @raw.transaction_status == PG::PQTRANS_IDLE
        else
          @raw.exec("RELEASE SAVEPOINT #{name}")
        end
        result
      end

      # Inside a transaction: yields each item in a savepoint of its own; an
      # exception (or a transaction left aborted) rolls back that item's work
      # and is passed to on_error (still inside the transaction, kept);
      # stops early when stop.call is true.  One round trip per item: the
      # release of one savepoint and the next one's start go together, and
      # the last savepoint ends with the transaction.
      def each_isolated(items, stop:, on_error:)
        name = "qlater_each"
        @raw.exec("SAVEPOINT #{name}")
        items.each_with_index do |item, i|
          break if stop.call

          begin
            yield item
            if @raw.transaction_status == PG::PQTRANS_INERROR
              raise Error, "the job left its transaction aborted (an SQL error rescued without a savepoint?)"
            end
          rescue Exception => e # rubocop:disable Lint/RescueException
            raise if @raw.status != PG::CONNECTION_OK

            @raw.exec("ROLLBACK TO SAVEPOINT #{name}")
            on_error.call(item, e)
          end
          @raw.exec("RELEASE SAVEPOINT #{name}; SAVEPOINT #{name}") if i < items.size - 1
        end
      end

      def in_transaction?
        @raw.transaction_status != PG::PQTRANS_IDLE
      end

      # Is the session gone?  Decided from the connection, not from the
      # class of an exception: a job's own PG::ConnectionBad (another
      # database) is a failure of the job.
      def lost?
        @raw.finished? || @raw.status != PG::CONNECTION_OK
      end

      def close
        @raw.close unless @raw.finished?
      rescue PG::Error
        nil
      end

      private

      def undo(top, name)
        return if @raw.finished? || @raw.status != PG::CONNECTION_OK

        if top
          @raw.exec("ROLLBACK") unless @raw.transaction_status == PG::PQTRANS_IDLE
        elsif @raw.transaction_status != PG::PQTRANS_IDLE
          @raw.exec("ROLLBACK TO SAVEPOINT #{name}")
          @raw.exec("RELEASE SAVEPOINT #{name}")
        end
      end
    end
  end

  # The connection pool of an ActiveRecord class (QLater.active_record_class
  # unless given).
  class ActiveRecordConnections
    def initialize(klass = QLater.active_record_class, set_application_name: true)
      @klass = klass
      @set_application_name = set_application_name
      JobTransactions.install
      PinnedConnections.install
    end

    # A connection that holds a worker's claims is pinned to its thread:
    # release_connection (also called by clear_active_connections!, as the
    # Rails executor and some job code do) and checkin leave it alone, so
    # that it never goes back to the pool, or to another thread, with the
    # claims and the job's open transaction.
    module PinnedConnections
      def self.install
        pool = ::ActiveRecord::ConnectionAdapters::ConnectionPool
        return if pool <= self

        unless pool.method_defined?(:release_connection) && pool.method_defined?(:checkin) &&
               pool.private_method_defined?(:connection_cache_key)
          raise Error, "this ActiveRecord's connection pool is not the one qlater knows (6.1)"
        end

        pool.prepend(self)
      end

      def self.pin(conn, pinned)
        conn.instance_variable_set(:@qlater_pinned, pinned)
      end

      def self.pinned?(conn)
        conn&.instance_variable_get(:@qlater_pinned) ? true : false
      end

      def release_connection(owner_thread = Thread.current)
        return if PinnedConnections.pinned?(@thread_cached_conns[connection_cache_key(owner_thread)])

        super
      end

      def checkin(conn)
        return if PinnedConnections.pinned?(conn)

        super
      end
    end

    # A job's transaction is opened joinable: false, so that the job's own
    # transaction blocks are savepoints of their own, as when the code runs
    # outside a job.  ActiveRecord runs the after_commit callbacks of a
    # transaction nested in a non-joinable one when that nested transaction
    # ends (so do transactional tests): inside a job, before the job's
    # COMMIT, even for records the job's failure then rolls back.  Marked
    # job transactions make their nested ones pass their records up
    # instead, to the job's transaction, whose real COMMIT runs them.
    module JobTransactions
      def self.install
        manager = ::ActiveRecord::ConnectionAdapters::TransactionManager
        return if manager <= self

        unless manager.private_method_defined?(:initialize) && manager.method_defined?(:begin_transaction)
          raise Error, "this ActiveRecord's transactions are not the ones qlater knows (6.1)"
        end

        manager.prepend(self)
      end

      # Marks the transaction just begun as a job's.
      def self.mark(transaction)
        transaction.instance_variable_set(:@qlater_job, true)
      end

      def begin_transaction(*args, **kwargs)
        transaction = super
        if @stack[0...-1].any? { |t| t.instance_variable_get(:@qlater_job) } &&
           transaction.instance_variable_defined?(:@run_commit_callbacks)
          transaction.instance_variable_set(:@run_commit_callbacks, false)
        end
        transaction
      end
    end

    attr_reader :klass

    def pool
      @klass.connection_pool
    end

    # One cycle: inside the Rails executor (when Rails is loaded), with this
    # thread's connection of the pool, given back to the pool after the block.
    def with_link(_state, &block)
      executor_wrap do
        pool.with_connection do |ar|
          PinnedConnections.pin(ar, true)
          begin
            Connections.name_session(ar.raw_connection) if @set_application_name
            block.call(Link.new(ar))
          ensure
            PinnedConnections.pin(ar, false)
          end
        end
      end
    end

    # A connection that holds claims it could not give back is closed (the
    # server releases them with the session); the pool reconnects it when
    # next checked out.
    def discard(_state, link = nil)
      link&.close
    end

    def release(_state); end

    # Plain connections with the pool's parameters (for the listener: a
    # session of its own, outside the pool).  Read here, on the calling
    # thread, with the connection it may hold already.
    def listen_connections
      params = pool.with_connection { |ar| ar.raw_connection.conninfo_hash }
      # the listener's fallback name is the worker's own, not the program's
      Connections.new(params.reject { |k, v| k == :fallback_application_name || v.nil? || v.to_s.empty? })
    end

    def executor_wrap(&block)
      if defined?(::Rails) && ::Rails.respond_to?(:application) && ::Rails.application
        ::Rails.application.executor.wrap(&block)
      else
        yield
      end
    end

    # An ActiveRecord connection: transactions with ActiveRecord's own API,
    # so that the job's records, their after_commit callbacks and its own
    # transaction blocks behave as they do outside a job.
    class Link
      def initialize(ar)
        @ar = ar
      end

      # The PG::Connection under it; any transaction ActiveRecord opened
      # lazily is sent to the server first.
      def raw
        @ar.raw_connection
      end

      # A transaction opened joinable: false (inside one, a savepoint), so
      # that the job's own `transaction { raise ActiveRecord::Rollback }`
      # rolls back its own block only.  An ActiveRecord::Rollback that
      # reaches this block is an error of the job, as it would be when the
      # code runs outside a transaction.
      def atomic
        rolled_back = nil
        top = !@ar.transaction_open?
        result = @ar.transaction(requires_new: true, joinable: false) do
          JobTransactions.mark(@ar.current_transaction) if top
          yield
        rescue ::ActiveRecord::Rollback => e
          rolled_back = e
          raise
        end
        raise Error, "ActiveRecord::Rollback raised outside a transaction block" if rolled_back

        result
      end

      # Inside a transaction: yields each item in a savepoint of its own,
      # ActiveRecord's (so that the records of a rolled-back item get no
      # after_commit); an exception rolls that item back and is passed to
      # on_error; stops early when stop.call is true.
      def each_isolated(items, stop:, on_error:)
        items.each do |item|
          break if stop.call

          begin
            atomic { yield item }
          rescue Exception => e # rubocop:disable Lint/RescueException
            raise if lost?

            on_error.call(item, e)
          end
        end
      end

      def in_transaction?
        @ar.transaction_open?
      end

      def lost?
        raw = @ar.instance_variable_get(:@connection) # without materializing anything
        raw.nil? || raw.finished? || raw.status != PG::CONNECTION_OK
      end

      def close
        @ar.disconnect!
      rescue StandardError
        nil
      end
    end
  end
end
