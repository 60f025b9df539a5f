# frozen_string_literal: true

# QLater::Web mounted in a Rails application (Debian's ruby-railties) as the
# README says: behind a routing constraint on the host's session, on
# ActiveRecord's connection (as the role the application connects as), the
# CSRF token kept in the host's session.

require_relative "helper"

RAILS_LOADED = begin
  require "rails"
  require "action_controller/railtie"
  require "active_record"
  true
rescue LoadError
  false
end

if RAILS_LOADED
  ActiveRecord::Base.logger = nil
  ActiveRecord::Base.establish_connection(
    adapter: "postgresql", host: ENV["PGHOST"], port: ENV["PGPORT"],
    database: ENV["PGDATABASE"], username: DashboardTest::DASH_ROLE, pool: 2
  )

  class DashboardRailsApp < Rails::Application
    config.load_defaults 6.1
    config.eager_load = false
    config.secret_key_base = "r" * 64
    config.logger = Logger.new(nil)
    config.hosts.clear
  end
  DashboardRailsApp.initialize!
  DashboardRailsApp.routes.draw do
    get "/login", to: lambda { |env|
      ActionDispatch::Request.new(env).session[:admin] = true
      [200, { "Content-Type" => "text/plain" }, ["signed in"]]
    }
    # the host's authentication: only its admins reach the dashboard
    constraints ->(req) { req.session[:admin] == true } do
      mount QLater::Web => "/qlater"
    end
  end
end

class RailsMountTest < DashboardCase
  include Rack::Test::Methods

  def app
    DashboardRailsApp
  end

  def setup
    skip "Debian's ruby-railties is not installed" unless RAILS_LOADED
  end

  def paused?(queue)
    value("SELECT paused FROM qlater_queues WHERE name = $1", [queue]) == "t"
  end

  def test_mounted_behind_a_constraint_on_activerecords_connection
    QLater::Web.connection = nil # ActiveRecord's pool
    get "/qlater/"
    assert_equal 404, last_response.status, "the constraint keeps strangers out"
    post "/qlater/queues/pause", "queue" => "mail"
    assert_equal 404, last_response.status
    refute paused?("mail")

    get "/login"
    assert_equal 200, last_response.status
    get "/qlater/"
    assert_equal 200, last_response.status
    assert_includes last_response.body, %(<b id="role">#{DashboardTest::DASH_ROLE}</b>)
    assert_includes last_response.body, %(href="&#x2F;qlater&#x2F;dead"), "links under the mount point"
    token = last_response.body[/name="authenticity_token" value="([^"]+)"/, 1]

    post "/qlater/queues/pause", "queue" => "mail"
    assert_equal 403, last_response.status, "no token"
    refute paused?("mail")
    post "/qlater/queues/pause", "queue" => "mail", "authenticity_token" => token, "back" => "/"
    assert_equal 303, last_response.status
    assert_equal "/qlater/", URI(last_response.location).path
    assert paused?("mail")
    follow_redirect!
    assert_includes last_response.body, "queue mail paused"
    post "/qlater/queues/resume", "queue" => "mail", "authenticity_token" => token
    refute paused?("mail")
  end
end
