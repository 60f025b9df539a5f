# frozen_string_literal: true

module QLater
  # Runs jobs of external queues: ProcessLater calls and ActiveJob jobs.
  #
  #   QLater::Worker.new(queues: ["ruby"], threads: 4).run   # until SIGTERM/SIGINT or #stop
  #   QLater::Worker.new(queues: ["ruby"]).work_off          # every ready job, then return
  #
  # Each thread claims jobs with qlater_lock on its connection (a session
  # claim: if the process dies, its claims are released with its sessions
  # and the jobs run again elsewhere) and runs each job in a transaction on
  # that same connection: the job's own writes (through QLater.connection,
  # or ActiveRecord when the worker uses ActiveRecord's pool) and
  # qlater_complete commit together.  A job that raises is rolled back and
  # recorded with qlater_fail (class, message, backtrace); it is retried with
  # backoff, and 'dead' after its max_attempts.
  #
  # Options:
  #   queues:        external queues to serve; earlier ones are tried first
  #   threads:       worker threads, one connection each (default 1)
  #   connect:       a Proc returning a new PG::Connection, a conninfo String
  #                  or a Hash for PG.connect; default: ActiveRecord's pool
  #                  when ActiveRecord is loaded (QLater.active_record_class),
  #                  else the parameters of QLater.connection, else libpq's
  #                  environment (PGHOST, ...)
  #   active_record: true / false to use ActiveRecord's pool or not
  #                  (default: when loaded and connect: is not given)
  #   poll_interval: seconds between claim attempts when no NOTIFY arrives
  #                  (default 1.0): jobs whose run_at comes later and jobs
  #                  enqueued while nobody listened are found this way
  #   batch:         jobs claimed at once per thread (default 1); claims not
  #                  started when the worker stops are given back
  #   commit:        :job (default): one transaction per job; :batch: the
  #                  jobs of one claim in one transaction, each in its own
  #                  savepoint (a failing job rolls back alone), completed
  #                  together with qlater_complete_many and one COMMIT
  #   lease:         claim in lease mode (seconds or an interval string) for
  #                  connections behind a transaction pooler; default nil
  #                  (session claims)
  #   listen:        where to LISTEN for wake-ups: a conninfo String, Hash or
  #                  Proc like connect:, or false to poll only; default: the
  #                  job connections' parameters in session mode, none
  #                  (polling) in lease mode, where a pooler would break
  #                  LISTEN: give a direct URL to the server here (in lease
  #                  mode the renewals then connect there too, not queued
  #                  behind the jobs' transactions in the pooler)
  #   logger:        a Logger (default QLater.logger): one line per job
  class Worker
    attr_reader :queues, :threads

    COMMIT_MODES = %i[job batch].freeze

    def initialize(queues: [QLater.default_queue], threads: 1, connect: nil, active_record: nil,
                   poll_interval: 1.0, batch: 1, commit: :job, lease: nil, listen: nil,
                   logger: QLater.logger)
      @queues = Array(queues).map(&:to_s)
      raise ArgumentError, "queues: at least one queue" if @queues.empty?
      raise ArgumentError, "threads: must be at least 1" unless threads.is_a?(Integer) && threads >= 1
      raise ArgumentError, "batch: must be between 1 and 1000" unless batch.is_a?(Integer) && batch.between?(1, 1000)
      raise ArgumentError, "commit: must be :job or :batch" unless COMMIT_MODES.include?(commit&.to_sym)

      @threads = threads
      @lease = lease.is_a?(Numeric) ? "#{lease} seconds" : lease
      active_record = connect.nil? && QLater.active_record? if active_record.nil?
      @connections = if active_record
                       ActiveRecordConnections.new(set_application_name: @lease.nil?)
                     else
                       Connections.new(connect || default_connect, set_application_name: @lease.nil?)
                     end
      @listen = listen.nil? ? (@lease ? false : :jobs) : listen
      @poll_interval = Float(poll_interval)
      @batch = batch
      @commit = commit.to_sym
      @logger = logger
      @stopping = false
      @lock = Mutex.new
      @counts = Hash.new(0)
      warn_prepared_statements if @lease && active_record
    end

    # Runs jobs until #stop, SIGTERM or SIGINT (when called on the main
    # thread, the worker traps both while it runs and restores the previous
    # handlers on return).  On stop, it claims nothing more, lets running
    # jobs finish, gives back claims not started, closes its connections and
    # returns the counts ({completed:, failed:, unlocked:}).
    def run
      @stopping = false
      previous = trap_signals
      @waker = Waker.new(self, listen_connections, @queues, @poll_interval) if @listen
      @heartbeat = Heartbeat.new(self, heartbeat_connections, @lease) if @lease
      log(:info, "worker started: queues #{@queues.join(',')}, #{@threads} thread(s), " \
                 "#{@lease ? "lease #{@lease}" : 'session claims'}, commit per #{@commit}")
      join(spawn_threads(:run))
      log(:info, "worker stopped")
      counts
    ensure
      @waker&.stop
      @waker = nil
      @heartbeat&.stop
      @heartbeat = nil
      restore_signals(previous) if previous
    end

    # Runs every job ready now in the queues (with +threads+ threads), then
    # returns the number of jobs run (completed or failed).  Jobs claimed
    # by other sessions are left to them.
    def work_off
      @stopping = false
      before = @counts[:completed] + @counts[:failed]
      @heartbeat = Heartbeat.new(self, heartbeat_connections, @lease) if @lease
      join(spawn_threads(:drain))
      @counts[:completed] + @counts[:failed] - before
    ensure
      @heartbeat&.stop
      @heartbeat = nil
    end

    # Asks the worker to stop (safe from any thread and from a trap).
    def stop
      @stopping = true
    end

    def stopping?
      @stopping
    end

    def counts
      @lock.synchronize { @counts.dup }
    end

    private

    # The Heartbeat renewing this worker's leases while it runs (lease mode)
    attr_reader :heartbeat

    # Lease mode is for transaction poolers, where ActiveRecord's prepared
    # statements break (PgBouncer before 1.21): say so when they are on
    def warn_prepared_statements
      config = @connections.klass.connection_db_config.configuration_hash
      return if [false, "false"].include?(config.fetch(:prepared_statements, true))

      log(:warn, "lease mode on ActiveRecord with prepared statements on: through a transaction-pooling " \
                 "PgBouncer (before 1.21) they fail, or run another client's statement of the same name; " \
                 "set prepared_statements: false in database.yml (?prepared_statements=false in a URL)")
    end

    def spawn_threads(mode)
      Array.new(@threads) do |i|
        Thread.new do
          Thread.current.name = "qlater-worker-#{i}"
          Thread.current.report_on_exception = false
          thread_main(mode)
        end
      end
    end

    # Waits for every thread; then raises the first error one of them raised.
    def join(threads)
      errors = threads.map do |t|
        t.join
        nil
      rescue Exception => e # rubocop:disable Lint/RescueException
        e
      end
      error = errors.compact.first
      raise error if error
    end

    # Errors of qlater_lock no retry can fix: the role may not consume the
    # queue, the queue is not external, qlater is not installed.  The worker
    # stops and raises them.
    # (PG::DataException: an argument PostgreSQL refuses, such as a lease
    # that is no interval.)
    FATAL_CLAIM_ERRORS = [PG::InsufficientPrivilege, PG::ObjectNotInPrerequisiteState,
                          PG::UndefinedFunction, PG::DataException, PG::UndefinedObject].freeze

    def thread_main(mode)
      state = {}
      until @stopping
        state[:phase] = :claim
        begin
          generation = @waker&.generation
          ran = @connections.with_link(state) { |link| cycle(link, state) }
          next if ran.positive?
          break if mode == :drain

          @waker ? @waker.wait(generation, @poll_interval) : pause(@poll_interval)
        rescue Exception => e # rubocop:disable Lint/RescueException
          fatal = !e.is_a?(StandardError) ||
                  (state[:phase] == :claim && FATAL_CLAIM_ERRORS.any? { |k| e.is_a?(k) })
          if mode == :drain || fatal
            stop
            raise
          end

          log(:error, "worker thread error: #{e.class}: #{QLater.one_line(e.message)}")
          @connections.discard(state)
          pause(@poll_interval)
        end
      end
    ensure
      @connections.release(state)
    end

    # One cycle on a connection: claim, run what was claimed, and give back
    # what was not run; returns the number of jobs claimed.  Whatever
    # happens, no session claim stays on the connection after it: if they
    # cannot be given back, the connection is closed.
    def cycle(link, state)
      jobs = claim(link.raw)
      return 0 if jobs.empty?

      state[:phase] = :run
      state[:held] = jobs.dup
      @heartbeat&.add(jobs)
      @commit == :batch ? run_batch(link, state) : jobs.each { |job| run_one(link, job, state) }
      give_back(link.raw, state[:held]) unless state[:held].empty?
      jobs.size
    rescue Exception # rubocop:disable Lint/RescueException
      unless state[:held].nil? || state[:held].empty?
        begin
          raise "connection lost" if link.in_transaction? || link.raw.status != PG::CONNECTION_OK

          give_back(link.raw, state[:held])
        rescue Exception # rubocop:disable Lint/RescueException
          @connections.discard(state, link)
          abandon(state[:held])
        end
      end
      raise
    ensure
      state.delete(:held)
      @heartbeat&.remove(jobs) if jobs
    end

    def default_connect
      base = QLater.instance_variable_get(:@connection)
      if base
        base.conninfo_hash.reject { |_, v| v.nil? || v.to_s.empty? }
      else
        -> { PG.connect(fallback_application_name: Connections::APPLICATION_NAME) }
      end
    end

    # The Connections the waker opens its LISTEN session with.
    def listen_connections
      @listen == :jobs ? @connections.listen_connections : Connections.new(@listen)
    end

    # The Connections the heartbeat renews leases from: a session of its
    # own, where the listener connects when listen: names a place (a direct
    # URL: behind a transaction pooler, a renewal through the pooler would
    # wait for a server session behind the jobs' own transactions)
    def heartbeat_connections
      @listen ? listen_connections : @connections.listen_connections
    end

    # Claims up to @batch jobs of the first queue that has some; reads only
    # the columns a Job keeps, row by row as arrays (no Hash per row).
    def claim(conn)
      columns = Job::COLUMNS.join(", ")
      @queues.each do |queue|
        rows = if @lease
                 QLater.query(conn, "SELECT #{columns} FROM qlater_lock($1, $2, $3::interval)",
                              [queue, @batch, @lease])
               else
                 QLater.query(conn, "SELECT #{columns} FROM qlater_lock($1, $2)", [queue, @batch])
               end
        return rows.values.map { |values| Job.from_values(values) } if rows.ntuples.positive?
      end
      []
    end

    def pause(seconds)
      deadline = now + seconds
      sleep([deadline - now, 0.2].min) while !@stopping && deadline > now
    end

    # Per-job commit: the job and qlater_complete in one transaction; a
    # failure rolls it back and is recorded on its own.  An exception that
    # comes after the COMMIT (an after_commit callback) leaves the job done.
    # A claim that is no longer ours (a lease that ran out: the server counts
    # it as a failed attempt at the next claim) is logged as lost.
    def run_one(link, job, state)
      return if @stopping

      started = now
      reached = false
      begin
        link.atomic do
          perform(link, job)
          complete(link.raw, [job])
          reached = true
        end
      rescue Exception => e # rubocop:disable Lint/RescueException -- a job's exception fails the job, whatever it is
        raise if link.lost? || link.in_transaction?

        finished(state, 1) # jobs run in claim order: this one is the first held
        if reached && still_there(link.raw, [job]).empty?
          done(job, started)
          log(:error, "job #{job.id}: after its commit: #{error_summary(e)}")
        elsif lost_claim { record_failure(link.raw, job, e) }
          lost(job, started)
        else
          failed(job, e, started)
        end
      else
        finished(state, 1)
        done(job, started)
      end
    end

    # Batch commit: every job of the claim in one transaction, each in its
    # own savepoint; the failures are recorded in it, the successes
    # completed with one qlater_complete_many, and all commit together.  If
    # that transaction does not commit (its COMMIT or its completion fails:
    # a deferred constraint, a lease that ran out), the claim's jobs run
    # again one by one, so that the one at fault fails alone.
    def run_batch(link, state)
      outcomes = []
      reached = false
      begin
        link.atomic do
          on_error = lambda do |job, error|
            raise error if link.lost?

            record_failure(link.raw, job, error)
            outcomes.last[2] = error
            stop if error.is_a?(SystemExit) || error.is_a?(SignalException)
          end
          link.each_isolated(state[:held], stop: -> { @stopping }, on_error: on_error) do |job|
            outcomes << [job, now, nil]
            perform(link, job)
          end
          done = outcomes.reject { |_, _, e| e }.map(&:first)
          complete(link.raw, done) unless done.empty?
          reached = true
        end
      rescue Exception => e # rubocop:disable Lint/RescueException
        raise if link.lost? || link.in_transaction?

        done = outcomes.reject { |_, _, err| err }.map(&:first)
        unless reached && still_there(link.raw, done).empty?
          log(:warn, "batch of #{outcomes.size} job(s) not committed (#{error_summary(e)}): running them one by one")
          state[:held].dup.each { |job| run_one(link, job, state) }
          return
        end
        log(:error, "jobs #{done.map(&:id).join(',')}: after their commit: #{error_summary(e)}")
      end
      finished(state, outcomes.size) # run in claim order, from the first
      outcomes.each do |job, started, error|
        error ? failed(job, error, started) : done(job, started)
      end
    end

    # The first n jobs held are finished: no claim left to give back, no
    # lease to renew.
    def finished(state, n)
      jobs = state[:held].shift(n) # (not in the call: &. would skip it without a heartbeat)
      @heartbeat&.remove(jobs)
    end

    # The jobs of the list still there (not completed), as seen now.
    def still_there(conn, jobs)
      return [] if jobs.empty?

      QLater.query(conn, "SELECT id FROM qlater_jobs WHERE id = ANY($1::bigint[])",
                   [array_literal(jobs.map(&:id))]).column_values(0).map(&:to_i)
    end

    # Runs the block; true if it raised because the claim is no longer this
    # worker's (in lease mode: the lease ran out, or the job was claimed
    # again), false if it ran.
    def lost_claim
      yield
      false
    rescue PG::ObjectNotInPrerequisiteState
      raise unless @lease

      true
    end

    def lost(job, started)
      count(:lost)
      log_job(:warn, job, started, "lost", "(its lease ran out: it counts as a failed attempt, " \
                                          "and runs again after its backoff)")
    end

    # Runs the job with QLater.connection and QLater.current_job set.
    def perform(link, job)
      QLater.with_connection(link.raw) do
        Thread.current.thread_variable_set(:qlater_job, job)
        job.perform
      ensure
        Thread.current.thread_variable_set(:qlater_job, nil)
      end
    end

    def complete(conn, jobs)
      if jobs.size == 1
        conn.exec_params("SELECT qlater_complete($1, $2::uuid)", [jobs[0].id, jobs[0].claim_token])
      else
        conn.exec_params("SELECT qlater_complete_many($1::bigint[], $2::uuid[])",
                         [array_literal(jobs.map(&:id)),
                          @lease ? array_literal(jobs.map(&:claim_token)) : nil])
      end
    end

    def array_literal(values)
      "{#{values.join(',')}}"
    end

    # Records a failed attempt: "Class: message" and 50 lines of backtrace,
    # as valid UTF-8 without NUL, whatever the exception makes of them.
    def record_failure(conn, job, error)
      text = error_summary(error)
      trace = begin
        error.backtrace
      rescue Exception # rubocop:disable Lint/RescueException
        nil
      end
      text += "\n#{trace.first(50).join("\n")}" if trace.is_a?(Array) && !trace.empty?
      conn.exec_params("SELECT qlater_fail($1, $2, NULL, $3::uuid)", [job.id, clean_text(text), job.claim_token])
    end

    # "Class: message" of an exception, even one whose class name or
    # message raises.
    def error_summary(error)
      klass = Module.instance_method(:name).bind_call(error.class) || "(an anonymous exception class)"
      message = begin
        error.message.to_s
      rescue Exception => e # rubocop:disable Lint/RescueException
        "(its message raised #{Module.instance_method(:name).bind_call(e.class)})"
      end
      clean_text("#{klass}: #{message}")
    end

    def clean_text(text)
      text = text.dup.force_encoding(Encoding::UTF_8)
      text = text.scrub unless text.valid_encoding?
      text.delete("\0")
    end

    def done(job, started)
      count(:completed)
      log_job(:info, job, started, "done")
    end

    def failed(job, error, started)
      count(:failed)
      last = job.attempts + 1 >= job.max_attempts.to_i
      log_job(:warn, job, started, last ? "dead" : "failed",
              "attempt=#{job.attempts + 1}/#{job.max_attempts} error=#{error_summary(error).inspect}")
      return unless error.is_a?(SystemExit) || error.is_a?(SignalException)

      log(:warn, "job #{job.id} raised #{error.class}: stopping the worker")
      stop
    end

    # The claims of a connection closed while it held them: a session
    # claim ended with the session; a lease holds on, and the heartbeat
    # gives it back from its own session.  Empties the list.
    def abandon(jobs)
      if @heartbeat
        @heartbeat.give_back(jobs)
      else
        jobs.each { |job| given_back(job, "(its connection was lost: the claim ended with the session)") }
      end
      jobs.clear
    end

    def given_back(job, extra = nil)
      count(:unlocked)
      log_job(:info, job, nil, "given back", extra)
    end

    # Gives back the claims of jobs not run, all in one statement, and
    # empties the list.
    def give_back(conn, jobs)
      conn.exec_params("SELECT qlater_unlock_many($1::bigint[], $2::uuid[])",
                       [array_literal(jobs.map(&:id)), @lease ? array_literal(jobs.map(&:claim_token)) : nil])
      @heartbeat&.remove(jobs)
      jobs.each { |job| given_back(job) }
      jobs.clear
    end

    def count(what)
      @lock.synchronize { @counts[what] += 1 }
    end

    def trap_signals
      return nil unless Thread.current == Thread.main

      %w[TERM INT].to_h { |sig| [sig, Signal.trap(sig) { stop }] }
    end

    def restore_signals(previous)
      previous.each { |sig, handler| Signal.trap(sig, handler || "DEFAULT") }
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # One line per job: id, class, queue, duration, outcome.
    def log_job(level, job, started, outcome, extra = nil)
      return unless @logger

      line = +"job=#{job.id} class=#{job.handler} queue=#{job.queue}"
      line << format(" duration=%.1fms", (now - started) * 1000) if started
      line << " outcome=#{outcome}"
      line << " #{extra}" if extra
      log(level, line)
    end

    public

    def log(level, message)
      @logger&.public_send(level, "qlater: #{message}")
    end

    # What became of a claim of a lost connection, given back by the
    # heartbeat (Heartbeat#give_back)
    def abandoned(job, outcome)
      case outcome
      when :given_back then given_back(job, "(its connection was lost)")
      when :gone then log_job(:info, job, nil, "gone", "(its connection was lost; the job is no longer " \
                                                     "there: its commit went through, or it was cancelled)")
      else
        count(:lost)
        log_job(:warn, job, nil, "lost", "(its connection was lost, and its claim is no longer this " \
                                         "worker's: its lease ran out, or a qlater_fail of it committed)")
      end
    end

    # Lease mode: renews the leases of the jobs the worker holds
    # (qlater_extend) every third of the lease, from a connection of its
    # own, so that a job longer than its lease keeps it; only a worker that
    # stopped renewing (dead, hung, cut off) loses its jobs to others.  It
    # also gives back the claims of a job connection that was lost (a
    # lease outlives its session), and says when a renewal waited longer
    # than the third of the lease it had.
    class Heartbeat
      # The shortest lease: the worker renews every third of it, and a beat
      # takes a round trip per job held.
      MIN_LEASE = 1.0

      # At most one "renewal took" warning in this many seconds
      SLOW_WARNING_EVERY = 60.0

      # How long a give-back waits for the job's row (the lost session may
      # still hold it, until the server notices its end); it is tried again
      # at the next beat, its lease renewed meanwhile
      GIVE_BACK_LOCK_TIMEOUT = "1s"

      # Raises ArgumentError for a lease that is no interval or shorter
      # than MIN_LEASE seconds (before any job is claimed).
      def initialize(worker, connections, lease)
        @worker = worker
        @connections = connections
        @lease = lease
        @held = {}
        @returning = {}
        @mutex = Mutex.new
        @stop = false
        @wake = false
        @warned_at = nil
        @warned_jobs = {}
        @conn = connections.connect
        seconds = begin
          Float(@conn.exec_params("SELECT extract(epoch FROM $1::interval)", [lease]).getvalue(0, 0))
        rescue PG::DataException => e
          @conn.close
          raise ArgumentError, "lease: #{lease.inspect} is not an interval (#{e.message.lines.first.strip})"
        end
        if seconds < MIN_LEASE
          @conn.close
          raise ArgumentError, "lease: at least #{MIN_LEASE.to_i} second, not #{lease.inspect} " \
                               "(the worker renews it every third of it)"
        end
        @interval = seconds / 3
        @thread = Thread.new { beat_loop }
        @thread.name = "qlater-heartbeat"
        @thread.report_on_exception = false
      end

      def add(jobs)
        @mutex.synchronize { jobs.each { |job| @held[job.id] = job } }
      end

      def remove(jobs)
        @mutex.synchronize do
          jobs.each do |job|
            @held.delete(job.id)
            @warned_jobs.delete(job.id)
          end
        end
      end

      # The ids of the jobs whose leases it renews
      def held_ids
        @mutex.synchronize { (@held.keys + @returning.keys).uniq }
      end

      # Claims of a lost job connection: given back at once (a beat comes
      # now), renewed until then
      def give_back(jobs)
        @mutex.synchronize { jobs.each { |job| @returning[job.id] = job } }
        @wake = true
      end

      def stop
        @stop = true
        @thread.join
      end

      private

      def beat_loop
        conn = @conn
        until @stop
          @wake = false
          begin
            conn ||= @connections.connect
            give_back_returning(conn)
            @mutex.synchronize { (@held.values + @returning.values).uniq(&:id) }.each { |job| extend_lease(conn, job) }
          rescue StandardError => e
            @worker.log(:warn, "lease renewal: #{e.class}: #{e.message.lines.first&.strip}")
            conn&.close unless conn.nil? || conn.finished?
            conn = nil
          end
          deadline = now + @interval
          sleep([deadline - now, 0.1].min) while !@stop && !@wake && now < deadline
        end
        # a last try for claims still to give back
        give_back_returning(conn ||= @connections.connect) unless @mutex.synchronize { @returning.empty? }
      rescue StandardError => e
        @worker.log(:warn, "lease give-back: #{e.class}: #{e.message.lines.first&.strip}")
      ensure
        conn&.close unless conn.nil? || conn.finished?
      end

      # Gives back each claim of a lost connection, in a transaction of its
      # own; one whose row is still locked waits for the next beat.  A job
      # gone meanwhile (its COMMIT went through before the connection was
      # lost, or it was cancelled) or whose lease ran out is left.
      def give_back_returning(conn)
        @mutex.synchronize { @returning.values }.each do |job|
          outcome = begin
            conn.transaction do
              conn.exec("SET LOCAL lock_timeout = '#{GIVE_BACK_LOCK_TIMEOUT}'")
              conn.exec_params("SELECT qlater_unlock($1, $2::uuid)", [job.id, job.claim_token])
            end
            :given_back
          rescue PG::LockNotAvailable
            next
          rescue PG::UndefinedObject
            :gone
          rescue PG::ObjectNotInPrerequisiteState
            :lapsed
          rescue PG::Error => e
            job_error(conn, job, "lease give-back", e)
            next
          end
          @mutex.synchronize do
            @returning.delete(job.id)
            @warned_jobs.delete(job.id)
          end
          @worker.abandoned(job, outcome)
        end
      end

      # A job finished meanwhile, or whose lease ran out already, is left.
      # A renewal that waited longer than the third of the lease it had is
      # logged (at most once a minute).
      def extend_lease(conn, job)
        started = now
        conn.exec_params("SELECT qlater_extend($1, $2::uuid, $3::interval)", [job.id, job.claim_token, @lease])
      rescue PG::UndefinedObject, PG::ObjectNotInPrerequisiteState
        nil
      rescue PG::Error => e
        job_error(conn, job, "lease renewal", e)
      ensure
        slow(job, now - started) if now - started > @interval
      end

      # An error of one job's renewal or give-back is that job's: logged
      # (once a job), tried again at the next beat, the other jobs' renewed
      # meanwhile.  A connection that broke is the beat's (reconnected).
      def job_error(conn, job, what, error)
        raise error if conn.finished? || conn.status != PG::CONNECTION_OK

        first = @mutex.synchronize { @warned_jobs[job.id] ? false : (@warned_jobs[job.id] = true) }
        return unless first

        @worker.log(:warn, "#{what} of job #{job.id}: #{error.class}: #{error.message.lines.first&.strip} " \
                           "(tried again at each beat)")
      end

      def slow(job, took)
        return if @warned_at && now - @warned_at < SLOW_WARNING_EVERY

        @warned_at = now
        @worker.log(:warn, format("lease renewal of job %d took %.1f s, more than a third of the lease " \
                                  "(%.1f s): its session waited (behind a transaction pooler, give the " \
                                  "worker a direct URL with --listen-url / listen:, or a pool larger than " \
                                  "its threads)", job.id, took, @interval))
      end

      def now
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end

    # Wakes the worker's idle threads when a NOTIFY for one of its queues
    # arrives: one LISTEN session per worker process (qlater_listen on each
    # queue), in a thread of its own, reconnecting after errors.
    class Waker
      def initialize(worker, connections, queues, poll_interval)
        @worker = worker
        @connections = connections
        @queues = queues
        @poll_interval = poll_interval
        @mutex = Mutex.new
        @cond = ConditionVariable.new
        @generation = 0
        @thread = Thread.new { listen_loop }
        @thread.name = "qlater-listener"
        @thread.report_on_exception = false
      end

      def generation
        @mutex.synchronize { @generation }
      end

      # Waits until a wake-up after +seen+, +timeout+ seconds, or a stop.
      def wait(seen, timeout)
        deadline = now + timeout
        @mutex.synchronize do
          while @generation == seen && !@worker.stopping?
            left = deadline - now
            break if left <= 0

            @cond.wait(@mutex, [left, 0.2].min)
          end
        end
      end

      def stop
        @thread.kill
        @thread.join
        @conn&.close unless @conn.nil? || @conn.finished?
      rescue PG::Error
        nil
      end

      private

      def wake
        @mutex.synchronize do
          @generation += 1
          @cond.broadcast
        end
      end

      def listen_loop
        until @worker.stopping?
          begin
            @conn ||= open
            wake if @conn.wait_for_notify(0.2)
          rescue StandardError => e
            @worker.log(:warn, "listener: #{e.class}: #{e.message.lines.first&.strip}; polling every #{@poll_interval}s")
            @conn&.close unless @conn.nil? || @conn.finished?
            @conn = nil
            sleep(@poll_interval)
          end
        end
      end

      def open
        conn = @connections.connect
        begin
          @queues.each do |queue|
            conn.exec_params("SELECT qlater_listen($1)", [queue])
          rescue PG::ConfigurationLimitExceeded => e
            @worker.log(:warn, "cannot listen for #{queue} (#{e.message.lines.first.strip}): polling")
          end
        rescue StandardError
          conn.close
          raise
        end
        wake # jobs may have come while no one listened
        conn
      end

      def now
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end
