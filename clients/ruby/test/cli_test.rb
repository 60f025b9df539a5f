# frozen_string_literal: true

require "test_helper"
require "open3"
require "rbconfig"
require "tmpdir"
require_relative "support/active_record_setup"

# qlater-worker, the command: the executable of the installed gem (or of
# exe/ with QLATER_TEST_SOURCE=1).
class CLITest < QLaterTest::Case
  SUPPORT = File.join(QLaterTest::ROOT, "test", "support")

  def command(*args)
    [RbConfig.ruby, ENV.fetch("QLATER_TEST_WORKER"), *args]
  end

  # Runs qlater-worker to its end: [stdout, stderr, status]; one still
  # running after 60 s is killed and the test fails.
  def run_worker(*args, chdir: Dir.pwd, env: {})
    Open3.popen3(env, *command(*args), chdir: chdir) do |stdin, stdout, stderr, waiter|
      stdin.close
      out = Thread.new { stdout.read }
      err = Thread.new { stderr.read }
      unless waiter.join(60)
        Process.kill(:KILL, waiter.pid)
        flunk "qlater-worker #{args.join(' ')} still ran after 60 s: #{err.value}"
      end
      [out.value, err.value, waiter.value]
    end
  end

  # Starts qlater-worker; yields [pid, stdout reader]; SIGTERMs it at the end
  # and returns [output, status].
  def with_worker(*args, chdir: Dir.pwd, env: {})
    out_r, out_w = IO.pipe
    pid = Process.spawn(env, *command(*args), chdir: chdir, out: out_w, err: out_w)
    out_w.close
    output = +""
    reader = Thread.new { output << out_r.read }
    yield pid, output
    Process.kill(:TERM, pid)
    _, status = Timeout.timeout(60) { Process.wait2(pid) }
    reader.join
    [output, status]
  ensure
    if pid && status.nil?
      Process.kill(:KILL, pid) rescue nil # rubocop:disable Style/RescueModifier
      Process.wait(pid) rescue nil # rubocop:disable Style/RescueModifier
    end
  end

  def test_configuration_errors_exit_non_zero_with_a_clear_message
    _, err, status = run_worker
    assert_equal 2, status.exitstatus
    assert_match(/qlater-worker: --queues is required/, err)

    _, err, status = run_worker("--queues", "x", "--frobnicate")
    assert_equal 2, status.exitstatus
    assert_match(/invalid option: --frobnicate/, err)

    _, err, status = run_worker("--queues", "x", "--threads", "0")
    assert_equal 2, status.exitstatus
    assert_match(/--threads must be at least 1/, err)

    _, err, status = run_worker("--queues", "x", "--require", "/nonexistent/jobs.rb")
    assert_equal 2, status.exitstatus
    assert_match(%r{cannot load /nonexistent/jobs\.rb}, err)

    _, err, status = run_worker("--queues", "x", "--database-url", "postgresql:///no_such_database_here?host=#{ENV['PGHOST']}&port=#{ENV['PGPORT']}")
    assert_equal 2, status.exitstatus
    assert_match(/cannot connect: .*no_such_database_here/, err)

    Dir.mktmpdir do |dir|
      broken = File.join(dir, "broken.rb")
      File.write(broken, "raise ArgumentError, 'the app cannot start'\n")
      _, err, status = run_worker("--queues", "x", "--require", broken)
      assert_equal 2, status.exitstatus
      assert_match(/loading .*broken\.rb raised ArgumentError: the app cannot start\n    .*broken\.rb:1/, err)
    end

    # libpq's message of several lines, on one
    _, err, status = run_worker("--queues", "x", "--database-url", "postgresql://127.0.0.1:1/x?connect_timeout=5")
    assert_equal 2, status.exitstatus, err
    assert_match(/\Aqlater-worker: cannot connect: .*Connection refused/, err)
    assert_equal 1, err.lines.size, err

    # qlater there, but its schema not on the search_path
    _, err, status = run_worker("--queues", "x", "--database-url",
                                "postgresql:///#{ENV['PGDATABASE']}?host=#{ENV['PGHOST']}&port=#{ENV['PGPORT']}" \
                                "&options=-csearch_path%3Dpg_catalog")
    assert_equal 2, status.exitstatus, err
    assert_match(/qlater-worker: the qlater extension is in schema "public", which is not first on the search_path/, err)

    # the search_path finds another qlater_lock first: still not qlater's
    conn.exec("CREATE SCHEMA IF NOT EXISTS rb_shadow")
    conn.exec("CREATE OR REPLACE FUNCTION rb_shadow.qlater_lock(text, integer DEFAULT 1, interval DEFAULT NULL) " \
              "RETURNS SETOF qlater_jobs LANGUAGE sql AS 'SELECT * FROM public.qlater_jobs WHERE false'")
    begin
      _, err, status = run_worker("--queues", "x", "--database-url",
                                  "postgresql:///#{ENV['PGDATABASE']}?host=#{ENV['PGHOST']}&port=#{ENV['PGPORT']}" \
                                  "&options=-csearch_path%3Drb_shadow,public")
    ensure
      conn.exec("DROP SCHEMA rb_shadow CASCADE")
    end
    assert_equal 2, status.exitstatus, err
    assert_match(/qlater-worker: the qlater extension is in schema "public", which is not first on the search_path/,
                 err)

    Dir.mktmpdir do |dir|
      # out of reach while the code loads: one line
      dead = File.join(dir, "dead.rb")
      File.write(dead, "PG.connect('postgresql:///no_such_database_here?host=#{ENV['PGHOST']}&port=#{ENV['PGPORT']}')\n")
      _, err, status = run_worker("--queues", "x", "--require", dead)
      assert_equal 2, status.exitstatus, err
      assert_match(/\Aqlater-worker: cannot connect: .*no_such_database_here/, err)
      assert_equal 1, err.lines.size, err
      # a configuration without an adapter is no database out of reach
      bad = File.join(dir, "no_adapter.rb")
      File.write(bad, "require 'active_record'\nActiveRecord::Base.establish_connection({})\n")
      _, err, status = run_worker("--queues", "x", "--require", bad)
      assert_equal 2, status.exitstatus, err
      assert_match(/loading .*no_adapter\.rb raised ActiveRecord::AdapterNotSpecified/, err)
    end

    # a database without the extension: say how to install it
    _, err, status = run_worker("--queues", "x", "--database-url",
                                "postgresql:///template1?host=#{ENV['PGHOST']}&port=#{ENV['PGPORT']}")
    assert_equal 2, status.exitstatus, err
    assert_match(/qlater-worker: the qlater extension is not installed in database "template1"/, err)
    assert_match(/CREATE EXTENSION qlater/, err)

    out, _, status = run_worker("--version")
    assert status.success?
    assert_equal "qlater-worker #{QLater::VERSION}\n", out
  end

  def test_it_runs_jobs_logs_a_line_each_names_itself_and_stops_on_sigterm
    conn.transaction { 5.times { |i| RecordKey.new("k#{i}").later } }
    Boom.new("b").later(:call)
    # (PGAPPNAME, which the TAP harness sets, would name the sessions)
    output, status = with_worker("--queues", queue, "--threads", "2", "--require", File.join(SUPPORT, "jobs.rb"),
                                 env: { "PGAPPNAME" => nil }) do
      wait_until(timeout: 60, message: "the jobs") { done_count == 5 && jobs.all? { |j| j["attempts"] == "1" } }
      names = conn.exec("SELECT DISTINCT application_name FROM pg_stat_activity " \
                        "WHERE application_name LIKE 'qlater%' AND backend_type = 'client backend'").column_values(0)
      assert_equal ["qlater-worker"], names
    end
    assert_equal 0, status.exitstatus, output
    done = output.lines.grep(/job=\d+ class=RecordKey queue=#{queue} duration=[\d.]+ms outcome=done$/)
    assert_equal 5, done.size, output
    assert_match(/job=\d+ class=Boom queue=#{queue} duration=[\d.]+ms outcome=failed attempt=1\/25 error="RuntimeError: boom b"/, output)
    assert_match(/worker stopped/, output)
  end

  def test_sigterm_gives_back_claimed_jobs_and_exits_zero
    conn.transaction { 10.times { |i| RecordKey.new(format("%02d", i), sleep: 0.5).later } }
    output, status = with_worker("--queues", queue, "--batch", "10", "--require", File.join(SUPPORT, "jobs.rb")) do
      wait_until(timeout: 30, message: "the first job") { jobs.count { |j| j["state"] == "running" } == 10 }
    end
    assert_equal 0, status.exitstatus, output
    left = jobs
    assert_equal 10 - done_count, left.size
    assert_operator left.size, :>=, 1
    assert(left.all? { |j| j["state"] == "pending" && j["attempts"] == "0" }, "given back untouched")
    assert_equal left.size, output.lines.grep(/outcome=given back/).size, output
  end

  def test_in_a_rails_apps_root_it_loads_the_app
    skip "Debian's ruby-railties is not installed" unless rails_available?

    conn.exec("SELECT qlater_create_queue('aj_default', external => true) " \
              "WHERE NOT EXISTS (SELECT FROM qlater_queues WHERE name = 'aj_default')")
    Dir.mktmpdir("qlater-rails") do |app|
      write_rails_app(app)
      env = { "RAILS_ENV" => "development" }
      enqueue = "RailsRecordJob.perform_later(#{queue.inspect}, 'from rails'); " \
                "ActiveRecord::Base.transaction { RailsRecordJob.perform_later(#{queue.inspect}, 'no'); " \
                "raise ActiveRecord::Rollback }"
      _, err, status = Timeout.timeout(60) do
        Open3.capture3(env, RbConfig.ruby, "-e", "require './config/environment'; #{enqueue}", chdir: app)
      end
      assert status.success?, err
      # (PGAPPNAME, which the TAP harness sets, would name the sessions)
      output, status = with_worker("--queues", "aj_default", chdir: app, env: env.merge("PGAPPNAME" => nil)) do
        wait_until(timeout: 60, message: "the Rails job") do
          value("SELECT count(*) FROM rb_aj WHERE queue = $1", queue) == "1"
        end
        # ActiveRecord's sessions too, not the pg gem's fallback (the program's path)
        wait_until(timeout: 30, message: "the worker's sessions named qlater-worker") do
          conn.exec("SELECT DISTINCT application_name FROM pg_stat_activity " \
                    "WHERE application_name LIKE '%qlater%' AND backend_type = 'client backend' " \
                    "AND pid <> pg_backend_pid()").column_values(0) == ["qlater-worker"]
        end
      end
      assert_equal 0, status.exitstatus, output
      assert_equal "executor true", value("SELECT info FROM rb_aj WHERE queue = $1 AND key = 'from rails'", queue)
      assert_match(/job=\d+ class=RailsRecordJob queue=aj_default duration=[\d.]+ms outcome=done/, output)
    end
  ensure
    conn.exec("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'aj_default'")
  end

  # In a Rails app's root the worker connects through ActiveRecord, whose
  # errors are not PG::Error: a database out of reach is still a
  # configuration error, one line and exit status 2, no backtrace
  def test_in_a_rails_apps_root_a_database_out_of_reach_exits_2
    skip "Debian's ruby-railties is not installed" unless rails_available?

    Dir.mktmpdir("qlater-rails") do |app|
      write_rails_app(app)
      _, err, status = run_worker_on_a_missing_database(app)
      assert_equal 2, status.exitstatus, err
      assert_match(/\Aqlater-worker: cannot connect: .*no_such_database_here/, err)
      refute_match(/\.rb:\d+:in /, err, "no backtrace")
    end
  end

  # The application's code may use the database while it loads: a database
  # out of reach then is the same configuration error, not a backtrace
  def test_in_a_rails_apps_root_a_database_out_of_reach_while_loading_exits_2
    skip "Debian's ruby-railties is not installed" unless rails_available?

    Dir.mktmpdir("qlater-rails") do |app|
      write_rails_app(app)
      File.write(File.join(app, "app/models/zone.rb"), <<~RUBY)
        class Zone < ApplicationRecord
          self.table_name = "rb_aj"
          NOW = connection.select_value("SELECT now()")
        end
      RUBY
      _, err, status = run_worker_on_a_missing_database(app)
      assert_equal 2, status.exitstatus, err
      assert_match(/\Aqlater-worker: cannot connect: .*no_such_database_here/, err)
      assert_equal 1, err.lines.size, err
    end
  end

  # qlater-worker in the Rails app's root, its --database-url a database
  # that does not exist
  def run_worker_on_a_missing_database(app)
    run_worker("--queues", "aj_default", "--database-url",
               "postgresql:///no_such_database_here?host=#{ENV['PGHOST']}&port=#{ENV['PGPORT']}",
               chdir: app, env: { "RAILS_ENV" => "development" })
  end

  def rails_available?
    system(RbConfig.ruby, "-e", "require 'rails'", out: File::NULL, err: File::NULL)
  end

  def write_rails_app(app)
    files = {
      "config/application.rb" => <<~RUBY,
        require "rails"
        require "active_record/railtie"
        require "active_job/railtie"
        require "qlater"

        module QlaterTestApp
          class Application < Rails::Application
            config.load_defaults 6.1
            config.eager_load = false
            config.secret_key_base = "#{'x' * 64}"
            config.logger = Logger.new(nil)
            config.active_job.queue_adapter = :qlater
          end
        end
      RUBY
      "config/environment.rb" => <<~RUBY,
        require_relative "application"
        Rails.application.initialize!
      RUBY
      "config/database.yml" => <<~YAML,
        development:
          adapter: postgresql
          host: <%= ENV["PGHOST"] %>
          port: <%= ENV["PGPORT"] %>
          database: <%= ENV["PGDATABASE"] %>
          username: <%= ENV["PGUSER"] %>
          pool: 5
      YAML
      "app/models/application_record.rb" => <<~RUBY,
        class ApplicationRecord < ActiveRecord::Base
          self.abstract_class = true
        end
      RUBY
      "app/models/rb_aj.rb" => <<~RUBY,
        class RbAj < ApplicationRecord
          self.table_name = "rb_aj"
        end
      RUBY
      "app/jobs/rails_record_job.rb" => <<~RUBY
        class RailsRecordJob < ActiveJob::Base
          def perform(queue, key)
            RbAj.create!(queue: queue, key: key,
                         info: "executor \#{Rails.application.executor.active?}")
          end
        end
      RUBY
    }
    files.each do |path, text|
      FileUtils.mkdir_p(File.join(app, File.dirname(path)))
      File.write(File.join(app, path), text)
    end
  end
end
