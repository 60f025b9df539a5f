# frozen_string_literal: true

require "test_helper"
require_relative "support/active_record_setup"

# Second attack round on the ActiveJob queue ownership check
# (pg_has_role(owner, 'USAGE')).
class Attack2TenantTest < QLaterTest::Case
  SUPER_APP = "attack2_super_app"
  TENANT = "attack_tenant"

  def setup
    super
    conn.exec("DO $$ BEGIN CREATE ROLE #{SUPER_APP} LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    conn.exec("DO $$ BEGIN CREATE ROLE #{TENANT} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    @app = PG.connect(user: SUPER_APP)
    @tenant = PG.connect(user: TENANT)
    [@app, @tenant].each { |c| c.exec("SET client_min_messages = warning") }
    @prefix = "#{queue}_"
    QLater::ActiveJob.queue_prefix = @prefix
  end

  def teardown
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue LIKE $1", ["#{@prefix}%"])
    conn.exec_params("SELECT qlater_drop_queue(name) FROM qlater_queues WHERE name LIKE $1", ["#{@prefix}%"]) rescue nil # rubocop:disable Style/RescueModifier
    @app&.close
    @tenant&.close
    QLater::ActiveJob.queue_prefix = QLater::ActiveJob::DEFAULT_PREFIX
    super
  end

  # An application that connects as a superuser (development, many small
  # deployments, and the role this suite itself runs as): pg_has_role is
  # true for a superuser and every role, so a queue the tenant made first
  # passes the check as the application's own, and the tenant, its owner,
  # reads the application's jobs.  The check should ask whether the owner
  # is the connection's role or one it belongs to (pg_auth_members), not
  # whether it may use that role's privileges.
  def test_a_superuser_application_refuses_a_queue_another_role_owns
    squatted = "#{@prefix}default"
    @tenant.exec_params("SELECT qlater_create_queue($1, external => true)", [squatted])
    declared = begin
      QLater::ActiveJob.declare_queues("default", connection: @app)
    rescue QLater::Error => e
      e
    end
    if declared.is_a?(Array)
      QLater.connection = @app
      RecordJob.perform_later("secret-reset-token-#{queue}", "x")
      seen = @tenant.exec_params("SELECT args::text FROM qlater_jobs WHERE queue = $1", [squatted]).column_values(0)
      flunk "declare_queues (as a superuser) accepted #{squatted.inspect}, owned by #{TENANT}; " \
            "the tenant reads the app's jobs: #{seen.inspect[0, 160]}"
    end
    assert_match(/owned by/, declared.message)
  end
end
