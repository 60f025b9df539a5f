# frozen_string_literal: true

require "active_job"
require "qlater" unless defined?(QLater::Worker)

module QLater
  # What the ActiveJob adapter needs beyond QLater.enqueue: the rule that
  # maps ActiveJob queue names to qlater queues, and their declaration.
  #
  # An ActiveJob queue "name" is the qlater external queue
  # QLater::ActiveJob.queue_prefix + name ("aj_default", "aj_mailers", ...):
  # ActiveJob's "default" never lands in qlater's in-server 'default', whose
  # jobs are SQL functions.  Such a queue must exist, external, before the
  # first job goes into it (QLater::ActiveJob.declare_queues, or the SQL
  # qlater_create_queue('aj_default', external => true) in a migration);
  # the adapter checks once per queue and process and raises
  # QLater::Error, saying how, otherwise.  It must also belong to the
  # connection's role (or a role it is a member of): a queue of that name
  # another role made first would let that role read the application's
  # jobs and feed it jobs of its own.
  module ActiveJob
    DEFAULT_PREFIX = "aj_"
    QLATER_DEFAULT = "default" # qlater's in-server queue of SQL jobs

    @queue_prefix = DEFAULT_PREFIX
    @known = {}
    @known_lock = Mutex.new

    class << self
      attr_reader :queue_prefix

      def queue_prefix=(prefix)
        @queue_prefix = prefix.to_s
        forget_queues
      end

      # The qlater queue of an ActiveJob queue name.
      def queue_for(active_job_queue)
        "#{queue_prefix}#{active_job_queue}"
      end

      # Creates the external qlater queues of these ActiveJob queue names
      # (those that do not exist yet), owned by the connection's role, and
      # returns their qlater names.  Raises QLater::Error for a name taken by
      # an in-server queue.
      def declare_queues(*active_job_queues, connection: QLater.connection)
        active_job_queues.flatten.map do |name|
          queue = queue_for(name)
          case queue_kind(connection, queue)
          when nil then connection.exec_params("SELECT qlater_create_queue($1, external => true)", [queue])
          when :in_server then raise Error, in_server_message(queue, name)
          when :foreign then raise Error, foreign_message(connection, queue, name)
          end
          queue
        end
      end

      # Raises QLater::Error unless +queue+ is an external queue (cached
      # once seen so).
      def check_queue!(connection, queue, active_job_queue)
        return if @known_lock.synchronize { @known[queue] }

        case queue_kind(connection, queue)
        when :external then @known_lock.synchronize { @known[queue] = true }
        when :in_server then raise Error, in_server_message(queue, active_job_queue)
        when :foreign then raise Error, foreign_message(connection, queue, active_job_queue)
        else
          raise Error, "qlater queue \"#{queue}\" of ActiveJob queue \"#{active_job_queue}\" does not exist; " \
                       "declare it once: QLater::ActiveJob.declare_queues(#{active_job_queue.to_s.inspect}) " \
                       "or SELECT qlater_create_queue('#{queue}', external => true)"
        end
      end

      def forget_queues
        @known_lock.synchronize { @known.clear }
      end

      private

      # Is queue q's owner the current role or a role it is a member of?
      # Membership itself, walked through pg_auth_members: a superuser
      # "has" every role (pg_has_role), but a queue another role made is
      # not the application's for that.
      OURS = "(q.owner = current_user OR q.owner IN (WITH RECURSIVE m(id) AS (" \
             "SELECT oid FROM pg_roles WHERE rolname = current_user UNION " \
             "SELECT a.roleid FROM pg_auth_members a JOIN m ON a.member = m.id) " \
             "SELECT r.rolname FROM pg_roles r JOIN m ON r.oid = m.id))"

      # nil (no such queue), :in_server, :foreign (another role's) or :external.
      # qlater's own 'default' is in-server even before its first job
      # writes its row: ActiveJob never declares or uses it.
      def queue_kind(connection, queue)
        return :in_server if queue == QLATER_DEFAULT

        row = QLater.query(connection, "SELECT external, #{OURS} AS ours FROM qlater_queues q WHERE name = $1",
                           [queue]).first
        return nil unless row
        return :in_server unless row["external"] == "t"

        row["ours"] == "t" ? :external : :foreign
      end

      def foreign_message(connection, queue, active_job_queue)
        owner = QLater.query(connection, "SELECT owner FROM qlater_queues WHERE name = $1", [queue]).getvalue(0, 0)
        "qlater queue \"#{queue}\" of ActiveJob queue \"#{active_job_queue}\" is owned by role \"#{owner}\", " \
          "not by this connection's role or a role it is a member of: its owner would see and feed " \
          "the application's jobs; have it dropped or handed over " \
          "(qlater_alter_queue('#{queue}', owner => ...)), or set QLater::ActiveJob.queue_prefix"
      end

      # Turning qlater's own 'default' external would hand the SQL jobs
      # every role enqueues there to external consumers: only the prefix.
      def in_server_message(queue, active_job_queue)
        way = if queue == QLATER_DEFAULT
                "set QLater::ActiveJob.queue_prefix (default #{DEFAULT_PREFIX.inspect}); qlater's own " \
                  "\"default\" queue stays in-server"
              else
                "SELECT qlater_alter_queue('#{queue}', external => true), or set QLater::ActiveJob.queue_prefix"
              end
        "qlater queue \"#{queue}\" of ActiveJob queue \"#{active_job_queue}\" is an in-server queue " \
          "(its jobs are SQL functions); ActiveJob needs an external one: #{way}"
      end
    end
  end
end

module ActiveJob
  module QueueAdapters
    # config.active_job.queue_adapter = :qlater
    #
    # perform_later enqueues on QLater.connection (ActiveRecord's, inside
    # the caller's ActiveRecord transaction: a rollback leaves no job) into
    # the external queue QLater::ActiveJob.queue_for(job.queue_name); the
    # handler is the job's class and the args its serialized form.
    # set(wait:, wait_until:) is run_at, set(priority:) qlater's priority
    # (lower runs first), a class's qlater_max_attempts its max_attempts.
    # qlater-worker (QLater::Worker) runs the jobs.
    class QlaterAdapter
      def enqueue(job)
        enqueue_at(job, nil)
      end

      def enqueue_at(job, timestamp)
        connection = QLater.connection
        queue = QLater::ActiveJob.queue_for(job.queue_name)
        QLater::ActiveJob.check_queue!(connection, queue, job.queue_name)
        id = QLater.enqueue(job.class.name, job.serialize,
                            queue: queue, priority: job.priority,
                            run_at: timestamp && Time.at(timestamp),
                            max_attempts: job.class.qlater_max_attempts,
                            connection: connection)
        job.provider_job_id = id
      end
    end
  end

  class Base
    # qlater's max_attempts of this class's jobs (nil: the queue's default):
    # how many times qlater runs one job whose exception escapes perform.
    class_attribute :qlater_max_attempts, instance_accessor: false, default: nil
  end
end
