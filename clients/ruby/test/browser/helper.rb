# frozen_string_literal: true

# Shared by the dashboard tests (test/browser/*_test.rb), run by
# test/t/190_dashboard.pl through test/run with
# QLATER_TEST_GLOB=test/browser/*_test.rb, against a cluster holding known
# work made by that file: roles DASH_ROLE (alice: queues mail, broken,
# broken2, slow, a schedule, done, dead and running jobs, one whose args and
# error are "<script>alert(1)</script>") and OTHER_ROLE (bob: queue bobq,
# done and dead jobs, a schedule).  Both are plain roles (no superuser, not
# qlater_admin).  libpq's environment names the server.
#
# Serves the dashboard with WEBrick on a loopback port:
#   /qlater  as DASH_ROLE          /bob     as OTHER_ROLE
#   /closed  its authorize hook always says no
#   /gated   its hook lets in a request with the cookie let_me_in=yes

require "minitest/autorun"
require "fileutils"
require "json"
require "qlater/web"
require "rack/handler/webrick"
require "rack/test"
require "selenium-webdriver"
require "tmpdir"

module DashboardTest
  DASH_ROLE = ENV.fetch("DASH_ROLE", "alice")
  OTHER_ROLE = ENV.fetch("OTHER_ROLE", "bob")
  SCREENSHOTS = ENV["QLATER_SCREENSHOT_DIR"] || Dir.mktmpdir("qlater-screens")
  SCRIPT = "<script>alert(1)</script>"

  def self.connect(role = DASH_ROLE)
    PG.connect(user: role)
  end

  # The apps the server mounts (also used by the Rack::Test checks).
  def self.apps
    @apps ||= {
      "/qlater" => QLater::Web.new(connection: { user: DASH_ROLE }),
      "/bob" => QLater::Web.new(connection: -> { PG.connect(user: OTHER_ROLE) }),
      "/closed" => QLater::Web.new(connection: { user: DASH_ROLE }, authorize: ->(_req) { false }),
      "/gated" => QLater::Web.new(connection: { user: DASH_ROLE },
                                  authorize: ->(req) { req.cookies["let_me_in"] == "yes" })
    }
  end

  # Starts WEBrick (Rack's handler, Debian's ruby-webrick) on 127.0.0.1 and
  # a free port, once; returns the base URL.
  def self.server
    @server ||= begin
      ready = Queue.new
      Thread.new do
        Rack::Handler::WEBrick.run(Rack::URLMap.new(apps), Host: "127.0.0.1", Port: 0,
                                   AccessLog: [], Logger: WEBrick::Log.new(File::NULL)) do |srv|
          ready << srv
        end
      end
      srv = ready.pop
      at_exit { srv.shutdown }
      "http://127.0.0.1:#{srv.listeners.first.addr[1]}"
    end
  end

  # Headless Chromium (Debian's chromium and chromium-driver), once.
  def self.driver
    @driver ||= begin
      Selenium::WebDriver::Chrome::Service.driver_path = ENV.fetch("CHROMEDRIVER", "/usr/bin/chromedriver")
      opts = Selenium::WebDriver::Chrome::Options.new
      opts.binary = ENV["CHROMIUM"] if ENV["CHROMIUM"]
      opts.add_argument("--headless=new")
      # Chromium refuses its sandbox to root; QLATER_CHROMIUM_NO_SANDBOX=1 for
      # machines without the user namespaces the sandbox needs
      opts.add_argument("--no-sandbox") if Process.uid.zero? || ENV["QLATER_CHROMIUM_NO_SANDBOX"] == "1"
      opts.add_argument("--disable-gpu")
      opts.add_argument("--disable-dev-shm-usage")
      opts.add_argument("--user-data-dir=#{Dir.mktmpdir('qlater-chromium')}")
      opts.add_argument("--window-size=1600,1000")
      d = Selenium::WebDriver.for(:chrome, options: opts)
      at_exit { d.quit }
      d
    end
  end
end

class DashboardCase < Minitest::Test
  def db
    @db ||= DashboardTest.connect
  end

  def teardown
    @db&.close
  end

  def rows(sql, params = [], conn: db)
    conn.exec_params(sql, params).to_a
  end

  def value(sql, params = [], conn: db)
    conn.exec_params(sql, params).getvalue(0, 0)
  end
end
