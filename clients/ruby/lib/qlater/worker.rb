# frozen_string_literal: true

module QLater
  # Runs ProcessLater jobs of external queues.
  #
  #   QLater::Worker.new(queues: ["ruby"], threads: 4).run   # until SIGTERM/SIGINT or #stop
  #   QLater::Worker.new(queues: ["ruby"]).work_off          # every ready job, then return
  #
  # Each thread has its own connection (made with +connect+), claims jobs
  # with qlater_lock (a session claim: if the process dies, its claims are
  # released with its sessions and the jobs run again elsewhere), and runs
  # each job in one transaction on that connection: the job's own writes
  # through QLater.connection and qlater_complete commit together.  A job
  # that raises is rolled back and recorded with qlater_fail (class,
  # message, backtrace); it is retried with backoff, and 'dead' after its
  # max_attempts.
  #
  # Options:
  #   queues:        external queues to serve; earlier ones are tried first
  #   threads:       worker threads, one connection each (default 1)
  #   connect:       a Proc returning a new PG::Connection, a conninfo String
  #                  or a Hash for PG.connect; default: the parameters of
  #                  QLater.connection, or libpq's environment (PGHOST, ...)
  #   poll_interval: seconds between claim attempts when no NOTIFY arrives
  #                  (default 1.0): jobs whose run_at comes later and jobs
  #                  enqueued while nobody listened are found this way
  #   batch:         jobs claimed at once per thread (default 1); claims not
  #                  started when the worker stops are given back
  #   lease:         claim in lease mode (seconds or an interval string) for
  #                  connections behind a transaction pooler; default nil
  #                  (session claims)
  #   logger:        a Logger (default QLater.logger)
  class Worker
    attr_reader :queues, :threads

    def initialize(queues: [QLater.default_queue], threads: 1, connect: nil, poll_interval: 1.0,
                   batch: 1, lease: nil, logger: QLater.logger)
      @queues = Array(queues).map(&:to_s)
      raise ArgumentError, "queues: at least one queue" if @queues.empty?
      raise ArgumentError, "threads: must be at least 1" unless threads.is_a?(Integer) && threads >= 1
      raise ArgumentError, "batch: must be at least 1" unless batch.is_a?(Integer) && batch >= 1

      @threads = threads
      @connect = connect || default_connect
      @poll_interval = Float(poll_interval)
      @batch = batch
      @lease = lease.is_a?(Numeric) ? "#{lease} seconds" : lease
      @logger = logger
      @stopping = false
      @lock = Mutex.new
      @counts = Hash.new(0)
    end

    # Runs jobs until #stop, SIGTERM or SIGINT (when called on the main
    # thread, the worker traps both while it runs and restores the previous
    # handlers on return).  On stop, it claims nothing more, lets running
    # jobs finish, gives back claims not started, closes its connections and
    # returns the counts ({completed:, failed:, unlocked:}).
    def run
      @stopping = false
      previous = trap_signals
      log(:info, "worker started: queues #{@queues.join(',')}, #{@threads} thread(s)")
      join(spawn_threads(:run))
      log(:info, "worker stopped")
      counts
    ensure
      restore_signals(previous) if previous
    end

    # Runs every job ready now in the queues (with +threads+ threads), then
    # returns the number of jobs run (completed or failed).  Jobs claimed
    # by other sessions are left to them.
    def work_off
      @stopping = false
      before = @counts[:completed] + @counts[:failed]
      join(spawn_threads(:drain))
      @counts[:completed] + @counts[:failed] - before
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

    # Errors of qlater_listen or qlater_lock no retry can fix: the role may
    # not consume the queue, the queue is not external, qlater is not
    # installed.  The worker stops and raises them.
    FATAL_CLAIM_ERRORS = [PG::InsufficientPrivilege, PG::ObjectNotInPrerequisiteState,
                          PG::UndefinedFunction, PG::InvalidParameterValue, PG::UndefinedObject].freeze

    def thread_main(mode)
      conn = nil
      until @stopping
        phase = :claim
        begin
          conn ||= open_connection(listen: mode == :run)
          jobs = claim(conn)
          phase = :run
          if jobs.empty?
            break if mode == :drain

            wait_for_notify(conn)
            next
          end
          jobs.each_with_index do |job, i|
            if @stopping
              give_back(conn, jobs[i..])
              break
            end
            run_job(conn, job)
          end
        rescue StandardError => e
          if mode == :drain || (phase == :claim && FATAL_CLAIM_ERRORS.any? { |k| e.is_a?(k) })
            stop
            raise
          end

          log(:error, "worker thread error: #{e.class}: #{e.message}")
          if conn && (conn.finished? || conn.status != PG::CONNECTION_OK)
            close(conn)
            conn = nil
          end
          pause(@poll_interval)
        end
      end
    ensure
      close(conn) if conn
    end

    def default_connect
      base = QLater.instance_variable_get(:@connection)
      if base
        params = base.conninfo_hash.reject { |_, v| v.nil? || v.to_s.empty? }
        -> { PG.connect(params) }
      else
        -> { PG.connect }
      end
    end

    def open_connection(listen:)
      conn = case @connect
             when Proc then @connect.call
             when String, Hash then PG.connect(@connect)
             else raise ArgumentError, "connect: must be a Proc, a conninfo String or a Hash"
             end
      begin
        @queues.each { |q| listen(conn, q) } if listen
      rescue StandardError
        close(conn)
        raise
      end
      conn
    end

    def listen(conn, queue)
      conn.exec_params("SELECT qlater_listen($1)", [queue])
    rescue PG::ConfigurationLimitExceeded => e
      # too many listening sessions: this one polls
      log(:warn, "cannot listen for #{queue} (#{e.message.lines.first.strip}): polling every #{@poll_interval}s")
    end

    def close(conn)
      conn.close unless conn.finished?
    rescue PG::Error
      nil
    end

    def claim(conn)
      @queues.each do |queue|
        rows = if @lease
                 conn.exec_params("SELECT * FROM qlater_lock($1, $2, $3::interval)", [queue, @batch, @lease])
               else
                 conn.exec_params("SELECT * FROM qlater_lock($1, $2)", [queue, @batch])
               end
        return rows.map { |row| Job.from_row(row) } if rows.ntuples.positive?
      end
      []
    end

    # Waits for a NOTIFY (any of this session's channels) or poll_interval,
    # in short slices so that #stop is noticed soon.
    def wait_for_notify(conn)
      deadline = now + @poll_interval
      until @stopping
        left = deadline - now
        break if left <= 0
        break if conn.wait_for_notify([left, 0.2].min)
      end
    end

    def pause(seconds)
      deadline = now + seconds
      sleep([deadline - now, 0.2].min) while !@stopping && deadline > now
    end

    def run_job(conn, job)
      conn.exec("BEGIN")
      begin
        QLater.with_connection(conn) do
          Thread.current.thread_variable_set(:qlater_job, job)
          job.perform
        ensure
          Thread.current.thread_variable_set(:qlater_job, nil)
        end
        finish(conn, job)
        count(:completed)
        log(:info, "job #{job.id} #{job.handler} done")
      rescue Exception => e # rubocop:disable Lint/RescueException -- a job's exception fails the job, whatever it is
        raise if e.is_a?(PG::ConnectionBad) || e.is_a?(PG::UnableToSend)

        rollback(conn)
        fail_job(conn, job, e)
        if e.is_a?(SystemExit) || e.is_a?(SignalException)
          log(:warn, "job #{job.id} raised #{e.class}: stopping the worker")
          stop
        end
      end
    end

    def finish(conn, job)
      case conn.transaction_status
      when PG::PQTRANS_INTRANS
        complete(conn, job)
        conn.exec("COMMIT")
      when PG::PQTRANS_INERROR
        raise Error, "the job left its transaction aborted (an SQL error rescued without a savepoint?)"
      else
        # The job ended the worker's transaction itself (COMMIT); its writes
        # are committed: complete the job on its own.
        log(:warn, "job #{job.id} ended the worker's transaction; use QLater.transaction in jobs")
        complete(conn, job)
      end
    end

    def rollback(conn)
      conn.exec("ROLLBACK") unless conn.transaction_status == PG::PQTRANS_IDLE
    end

    def complete(conn, job)
      conn.exec_params("SELECT qlater_complete($1, $2::uuid)", [job.id, job.claim_token])
    end

    def fail_job(conn, job, error)
      text = "#{error.class}: #{error.message}"
      trace = error.backtrace
      text += "\n#{trace.first(50).join("\n")}" if trace && !trace.empty?
      text = text.scrub.delete("\0")
      conn.exec_params("SELECT qlater_fail($1, $2, NULL, $3::uuid)", [job.id, text, job.claim_token])
      count(:failed)
      log(:warn, "job #{job.id} #{job.handler} failed (attempt #{job.attempts + 1}/#{job.max_attempts}): " \
                 "#{error.class}: #{error.message}")
    end

    def give_back(conn, jobs)
      jobs.each do |job|
        conn.exec_params("SELECT qlater_unlock($1, $2::uuid)", [job.id, job.claim_token])
        count(:unlocked)
      end
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

    def log(level, message)
      @logger&.public_send(level, "qlater: #{message}")
    end
  end
end
