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

# QLater::Connections.name_session, which names the worker's and the
# dashboard's sessions: a name the user gave is kept, however given; the pg
# gem's fallback (the program's path) is replaced, again after a reconnect.
class NameSessionTest < QLaterTest::Case
  def name_of(conn)
    conn.exec("SELECT current_setting('application_name')").getvalue(0, 0)
  end

  # (PGAPPNAME, which the TAP harness sets, would name the sessions)
  def setup
    super
    @saved_appname = ENV.delete("PGAPPNAME")
  end

  def teardown
    ENV["PGAPPNAME"] = @saved_appname if @saved_appname
    @c&.close unless @c&.finished?
    super
  end

  # a connection closed with the test
  def connect(**params)
    @c = PG.connect(**params)
  end

  def test_a_name_set_by_the_user_is_kept
    c = connect
    c.exec("SET application_name = 'billing-worker'") # a connect Proc, ActiveRecord's variables:
    QLater::Connections.name_session(c)
    assert_equal "billing-worker", name_of(c)
    c.close
    c = connect(application_name: "from-params")
    QLater::Connections.name_session(c)
    assert_equal "from-params", name_of(c)
  end

  # the server shows a program path's non-ASCII bytes as "?": still the fallback
  def test_a_fallback_with_non_ascii_bytes_is_replaced
    c = connect(fallback_application_name: "/tmp/jos\u00e9/qlater-worker")
    assert_equal "/tmp/jos??/qlater-worker", name_of(c)
    QLater::Connections.name_session(c)
    assert_equal "qlater-worker", name_of(c)
  end

  # a name given as a parameter is the user's, even one equal to the fallback
  def test_a_given_name_equal_to_the_fallback_is_kept
    c = connect(application_name: "my-program", fallback_application_name: "my-program")
    QLater::Connections.name_session(c)
    assert_equal "my-program", name_of(c)
  end

  def test_the_fallback_name_is_replaced_again_after_a_reconnect
    c = connect(fallback_application_name: "/usr/bin/some-program")
    assert_equal "/usr/bin/some-program", name_of(c)
    QLater::Connections.name_session(c)
    assert_equal "qlater-worker", name_of(c)
    c.reset # ActiveRecord's reconnect! reuses the PG::Connection
    assert_equal "/usr/bin/some-program", name_of(c)
    QLater::Connections.name_session(c)
    assert_equal "qlater-worker", name_of(c)
    c.exec("DISCARD ALL") # connection.reset!
    QLater::Connections.name_session(c)
    assert_equal "qlater-worker", name_of(c)
  end
end
