# frozen_string_literal: true

require "test_helper"
require_relative "support/active_record_setup"

# A hostile tenant of the same database (a role of its own, no superuser)
# against an application's ActiveJob queues.
class AttackTenantTest < QLaterTest::Case
  APP = "attack_app"
  TENANT = "attack_tenant"

  def setup
    super
    [APP, TENANT].each do |role|
      conn.exec("DO $$ BEGIN CREATE ROLE #{role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    end
    @app = PG.connect(user: APP)
    @tenant = PG.connect(user: TENANT)
    [@app, @tenant].each { |c| c.exec("SET client_min_messages = warning") }
    @prefix = "#{queue}_"
    QLater::ActiveJob.queue_prefix = @prefix
  end

  def teardown
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue LIKE $1", ["#{@prefix}%"])
    @app&.close
    @tenant&.close
    QLater::ActiveJob.queue_prefix = QLater::ActiveJob::DEFAULT_PREFIX
    super
  end

  # The tenant creates the application's queue name first (before the
  # app's migration, or after the app dropped it), external, and grants
  # the application's role 'enqueue' and 'consume'.  declare_queues (and
  # the adapter's check) only ask whether the queue is external: they take
  # the tenant's queue as the app's own.  From then on the tenant, its
  # owner, sees every job's arguments (tokens, e-mail addresses), can
  # cancel or pause them, and enqueues rows of its choice that the app's
  # workers run.
  def test_declare_queues_refuses_a_queue_another_role_owns
    squatted = "#{@prefix}default"
    @tenant.exec_params("SELECT qlater_create_queue($1, external => true)", [squatted])
    @tenant.exec_params("SELECT qlater_grant_queue($1, $2, 'enqueue')", [squatted, APP])
    @tenant.exec_params("SELECT qlater_grant_queue($1, $2, 'consume')", [squatted, APP])

    declared = begin
      QLater::ActiveJob.declare_queues("default", connection: @app)
    rescue QLater::Error => e
      e
    end
    owner = @app.exec_params("SELECT owner FROM qlater_queues WHERE name = $1", [squatted]).getvalue(0, 0)
    if declared.is_a?(Array)
      # it passed: show what it leads to
      QLater.connection = @app
      RecordJob.perform_later("secret-reset-token-#{queue}", "x")
      seen = @tenant.exec_params("SELECT args::text FROM qlater_jobs WHERE queue = $1", [squatted]).column_values(0)
      flunk "declare_queues accepted #{squatted.inspect}, owned by #{owner} (not #{APP}); " \
            "the tenant then reads the app's jobs: #{seen.inspect[0, 200]}"
    end
    assert_match(/owned by|owner/, declared.message)
  end
end
