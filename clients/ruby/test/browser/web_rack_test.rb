# frozen_string_literal: true

# QLater::Web through Rack::Test (no browser): CSRF, the authorize hook,
# escaping in the HTML as sent, headers, the config.ru example.

require_relative "helper"

class WebRackTest < DashboardCase
  include Rack::Test::Methods

  def app
    @app || DashboardTest.apps["/qlater"]
  end

  def token_from(body)
    body[/name="authenticity_token" value="([^"]+)"/, 1]
  end

  def paused?(queue)
    value("SELECT paused FROM qlater_queues WHERE name = $1", [queue]) == "t"
  end

  def test_post_without_token_is_refused
    refute paused?("mail")
    post "/queues/pause", "queue" => "mail"
    assert_equal 403, last_response.status
    refute paused?("mail"), "a POST without a token changed nothing"
    # another session's token is refused too
    other = Rack::Test::Session.new(Rack::MockSession.new(app))
    other.get "/"
    token = token_from(other.last_response.body)
    refute_nil token
    post "/queues/pause", "queue" => "mail", "authenticity_token" => token
    assert_equal 403, last_response.status
    refute paused?("mail")
  end

  def test_post_with_token_acts_and_redirects_back
    get "/"
    token = token_from(last_response.body)
    post "/queues/pause", "queue" => "mail", "authenticity_token" => token, "back" => "/"
    assert_equal 303, last_response.status
    assert paused?("mail")
    post "/queues/resume", "queue" => "mail", "authenticity_token" => token,
                           "back" => "//evil.example/x"
    assert_equal 303, last_response.status
    assert_equal "/", URI(last_response.location).path, "back leaves the app? no: to its root"
    refute paused?("mail")
    # a GET never acts
    get "/queues/pause", "queue" => "mail"
    assert_equal 404, last_response.status
    refute paused?("mail")
  end

  def test_an_error_of_the_server_is_shown_escaped
    get "/"
    token = token_from(last_response.body)
    # bob's queue: alice may not pause it; the server says why
    post "/queues/pause", "queue" => "bobq", "authenticity_token" => token, "back" => "/"
    follow_redirect!
    assert_equal "must be owner of queue &quot;bobq&quot;",
                 last_response.body[%r{<p class="flash error" id="flash">(.*?)</p>}, 1]
    get "/history", "from" => "<b>not a time"
    assert_equal 400, last_response.status
    error = last_response.body[%r{<p class="flash error" id="error">(.*?)</p>}, 1]
    assert_equal "invalid input syntax for type timestamp with time zone: &quot;&lt;b&gt;not a time&quot;", error
    refute last_response.body.include?("<b>not a time"), "the error as sent is escaped"
  end

  def test_script_in_args_and_error_is_escaped_in_the_html
    id = value("SELECT id FROM qlater_jobs WHERE args::text LIKE '%<script>%'")
    refute_nil id
    %W[/dead /history /jobs/#{id}].each do |path|
      get path
      assert_equal 200, last_response.status, path
      body = last_response.body
      assert body.match?(%r{&lt;script&gt;alert\(1\)&lt;(&#x2F;|/)script&gt;}), "#{path}: the script as text"
      refute body.include?("<script>alert"), "#{path}: no script from the job"
      assert_equal 1, body.scan(/<script/).size, "#{path}: the page's own script only"
    end
  end

  def test_headers_keep_the_page_to_itself
    get "/"
    csp = last_response.headers["content-security-policy"]
    assert_match(/script-src 'self'/, csp)
    assert_match(/frame-ancestors 'none'/, csp)
    assert_equal "nosniff", last_response.headers["x-content-type-options"]
    get "/assets/qlater.js"
    assert_equal 200, last_response.status
    get "/assets/..%2F..%2Fweb.rb"
    assert_equal 404, last_response.status
  end

  def test_the_authorize_hook_gates_pages_assets_and_actions
    closed = Rack::Test::Session.new(Rack::MockSession.new(DashboardTest.apps["/closed"]))
    ["/", "/dead", "/history", "/jobs/1", "/stats.json", "/assets/qlater.css"].each do |path|
      closed.get path
      assert_equal 403, closed.last_response.status, path
      assert_equal "Forbidden", closed.last_response.body, path
    end
    closed.post "/queues/pause", "queue" => "mail"
    assert_equal 403, closed.last_response.status
    refute paused?("mail")
    gated = Rack::Test::Session.new(Rack::MockSession.new(DashboardTest.apps["/gated"]))
    gated.get "/"
    assert_equal 403, gated.last_response.status
    gated.set_cookie "let_me_in=yes"
    gated.get "/"
    assert_equal 200, gated.last_response.status
  end

  def test_config_ru_example
    ru = File.expand_path("../../examples/dashboard/config.ru", __dir__)
    env = { "QLATER_DASHBOARD_URL" => "user=#{DashboardTest::DASH_ROLE}",
            "QLATER_DASHBOARD_PASSWORD" => "s3cret", "QLATER_DASHBOARD_SECRET" => "x" * 64 }
    saved = env.keys.to_h { |k| [k, ENV[k]] }
    env.each { |k, v| ENV[k] = v }
    @app = Rack::Builder.parse_file(ru).then { |a| a.is_a?(Array) ? a.first : a }
    get "/"
    assert_equal 401, last_response.status
    basic_authorize "admin", "wrong"
    get "/"
    assert_equal 401, last_response.status
    basic_authorize "admin", "s3cret"
    get "/"
    assert_equal 200, last_response.status
    assert_includes last_response.body, %(<b id="role">#{DashboardTest::DASH_ROLE}</b>)
  ensure
    saved&.each { |k, v| ENV[k] = v }
    QLater::Web.connection = nil
    QLater::Web.authorize(nil)
  end
end
