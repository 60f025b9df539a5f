# frozen_string_literal: true

require "test_helper"

# The dashboard's own connections name their sessions qlater-web: the pg
# gem's fallback name (the program's path) is no name the user gave.
class WebSessionTest < QLaterTest::Case
  def test_its_own_sessions_are_named_qlater_web
    begin
      require "qlater/web"
      require "rack/mock"
    rescue LoadError => e
      skip "rack is not installed: #{e.message}"
    end
    # (PGAPPNAME, which the TAP harness sets, would name the session)
    saved = ENV.delete("PGAPPNAME")
    web = QLater::Web.new(connection: {})
    status, = web.call(Rack::MockRequest.env_for("/"))
    assert_equal 200, status
    names = conn.exec("SELECT application_name FROM pg_stat_activity " \
                      "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()").column_values(0)
    assert_includes names, "qlater-web"
  ensure
    ENV["PGAPPNAME"] = saved if saved
    # its idle sessions end with the test: others count the named sessions
    web&.instance_variable_get(:@pool)&.each(&:close)
  end
end
