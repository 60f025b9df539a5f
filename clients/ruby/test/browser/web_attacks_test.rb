# frozen_string_literal: true

# QLater::Web under attack (Rack::Test, no browser): a hostile tenant whose
# queue, handler, schedule names, job arguments and errors are shown on the
# pages, and an attacker on the network side (CSRF, the authorize hook,
# malformed requests).  Run by test/t/191_dashboard_attacks.pl, which makes
# the hostile work (QLATER_WEB_ATTACKS=1); test/t/190_dashboard.pl, which
# runs test/browser/*_test.rb against other work, skips it.
#
# Checks whose comment begins with "BREAK:" fail on the dashboard as it was
# reviewed: they describe what should hold.

require "minitest/autorun"
require "json"
require "qlater/web"
require "rack/test"

if ENV["QLATER_WEB_ATTACKS"] == "1"
  module WebAttacks
    ALICE = ENV.fetch("DASH_ROLE", "alice")
    BOB = ENV.fetch("OTHER_ROLE", "bob")
    # made by 191_dashboard_attacks.pl
    Q_XSS = %("><svg onload=alert(2)>)
    H_XSS = %(<img src=x onerror=alert(1)>)
    S_XSS = %("><script>alert(5)</script>)
    PAYLOADS = [
      "<svg onload", "<img src=x", "<script>alert", "</script><script>", "<foreignObject",
      "<style>", "\"><svg", "\"><script", "javascript:alert(4)\"", "<a href=\"javascript"
    ].freeze

    def self.apps
      @apps ||= {
        "/qlater" => QLater::Web.new(connection: { user: ALICE }),
        "/bob" => QLater::Web.new(connection: { user: BOB }),
        "/closed" => QLater::Web.new(connection: { user: ALICE }, authorize: ->(_req) { false })
      }
    end
  end

  class WebAttacksTest < Minitest::Test
    include Rack::Test::Methods
    # test_zz_* runs last: it purges and retries alice's own dead jobs (the
    # bulk actions without a queue), which the other tests show
    i_suck_and_my_tests_are_order_dependent!

    def app
      @app ||= Rack::URLMap.new(WebAttacks.apps)
    end

    def db
      @db ||= PG.connect(user: WebAttacks::ALICE)
    end

    def bob
      @bob ||= PG.connect(user: WebAttacks::BOB)
    end

    def teardown
      @db&.close
      @bob&.close
    end

    def value(sql, params = [], conn: db)
      conn.exec_params(sql, params).getvalue(0, 0)
    end

    # A request whose exception (a 500 in production, the host's error page
    # with its stack trace) becomes a response 500 carrying the exception.
    def req(verb, path, params = {}, env = {})
      send(verb, path, params, env)
      last_response
    rescue StandardError => e
      Rack::MockResponse.new(500, {}, ["#{e.class}: #{e.message}\n#{e.backtrace.first(3).join("\n")}"])
    end

    def token(path = "/qlater/")
      get path
      last_response.body[/name="authenticity_token" value="([^"]+)"/, 1] or flunk "no token on #{path}"
    end

    def assert_client_error(resp, what)
      assert_includes 400..499, resp.status, "#{what}: a clear 4xx, got #{resp.status}: #{resp.body[0, 300]}"
      refute_match(/\.rb:\d+|PG::\w+Error|backtrace/, resp.body, "#{what}: no internals")
    end

    def flash_of(resp_body)
      resp_body[%r{<p class="flash (?:error|notice)" id="(?:flash|error)">(.*?)</p>}m, 1]
    end

    def bob_dead_id
      value("SELECT id FROM qlater_jobs WHERE state = 'dead' ORDER BY id LIMIT 1", conn: bob)
    end

    def hostile_id
      r = db.exec("SELECT id, state, queue FROM qlater_jobs WHERE handler LIKE '%onerror%' ORDER BY id LIMIT 1").first
      assert_equal %w[dead], [r&.fetch("state")], "the hostile job: #{r.inspect}"
      r["id"]
    end

    # ---- XSS ----

    def test_xss_hostile_names_args_errors_escaped_on_every_page
      id = hostile_id
      refute_nil id, "the hostile dead job exists"
      q = Rack::Utils.escape(WebAttacks::Q_XSS)
      pages = ["/qlater/", "/qlater/running", "/qlater/dead", "/qlater/dead?queue=#{q}", "/qlater/schedules",
               "/qlater/history", "/qlater/history?queue=#{q}", "/qlater/history?handler=%3Cimg",
               "/qlater/jobs/#{id}"]
      pages.each do |path|
        resp = req(:get, path)
        assert_equal 200, resp.status, path
        body = resp.body
        WebAttacks::PAYLOADS.each { |p| refute body.include?(p), "#{path}: raw #{p.inspect} in the HTML" }
        assert_equal 1, body.scan(/<script/i).size, "#{path}: the page's own script only"
        handlers = body.scan(/<[a-z][^>]*>/i).map { |tag| tag.gsub(/"[^"]*"/, '""') }.grep(/\son[a-z]+\s*=/i)
        assert_empty handlers, "#{path}: no event handler attribute"
        assert_match(/script-src 'self'/, resp.headers["content-security-policy"].to_s, path)
      end
      # the names do appear, escaped, where they belong
      body = req(:get, "/qlater/").body
      assert_includes body, Rack::Utils.escape_html(WebAttacks::Q_XSS)
      assert_includes req(:get, "/qlater/schedules").body, Rack::Utils.escape_html(WebAttacks::S_XSS)
      assert_includes req(:get, "/qlater/jobs/#{id}").body, Rack::Utils.escape_html(WebAttacks::H_XSS)
    end

    def test_xss_svg_chart_title_and_attributes
      body = req(:get, "/qlater/").body
      svgs = body.scan(%r{<svg\b.*?</svg>}m)
      refute_empty svgs
      svgs.each do |svg|
        refute_match(/<(?!\/?(?:svg|g|rect|title)\b)[a-z]/i, svg, "only the chart's own elements in an SVG")
      end
      assert(svgs.any? { |s| s.include?("<title>#{Rack::Utils.escape_html(WebAttacks::Q_XSS)}: outcomes") },
             "the hostile queue's chart title, escaped")
    end

    def test_xss_stats_json_is_json_not_html
      resp = req(:get, "/qlater/stats.json")
      assert_equal 200, resp.status
      assert_match %r{\Aapplication/json}, resp.headers["content-type"]
      assert_equal "nosniff", resp.headers["x-content-type-options"]
      queues = JSON.parse(resp.body).map { |r| r["queue"] }
      assert_includes queues, WebAttacks::Q_XSS
    end

    def test_xss_flash_echoes_server_error_escaped
      t = token
      resp = req(:post, "/qlater/queues/pause", "queue" => "<img src=x onerror=alert(9)>",
                                                 "authenticity_token" => t, "back" => "/")
      assert_equal 303, resp.status
      follow_redirect!
      f = flash_of(last_response.body)
      refute_nil f
      assert_includes f, "&lt;img src=x onerror=alert(9)&gt;"
      refute_includes last_response.body, "<img src=x"
    end

    def test_xss_back_cannot_leave_the_app
      t = token
      ["javascript:alert(1)", "//evil.example/", "/\\evil.example", "https://evil.example/", "/%0d%0aSet-Cookie:x=1",
       "\r\nLocation: //evil", " //evil.example"].each do |back|
        resp = req(:post, "/qlater/queues/resume", "queue" => "mail", "authenticity_token" => t, "back" => back)
        assert_equal 303, resp.status, back.inspect
        loc = resp.headers["location"]
        assert loc.start_with?("/qlater/"), "#{back.inspect}: stays in the app (#{loc})"
        refute_match(/[\r\n\\]/, loc, back.inspect)
      end
    end

    # ---- CSRF ----

    ACTION_PARAMS = {
      "/queues/pause" => { "queue" => "mail" },
      "/queues/resume" => { "queue" => "mail" },
      "/jobs/retry" => { "ids[]" => "1" },
      "/jobs/cancel" => { "ids[]" => "1" },
      "/dead/retry" => { "queue" => "broken" },
      "/dead/purge" => { "queue" => "broken" },
      "/schedules/active" => { "name" => "nightly", "active" => "false" }
    }.freeze

    # what alice and what bob see of queues, jobs and schedules
    def state_snapshot
      [db, bob].map { |conn| snapshot_of(conn) }.join("||")
    end

    def snapshot_of(conn)
      value("SELECT (SELECT string_agg(name || paused, ',' ORDER BY name) FROM qlater_queues) || '|' || " \
            "(SELECT string_agg(id || state, ',' ORDER BY id) FROM qlater_jobs) || '|' || " \
            "(SELECT string_agg(name || active, ',' ORDER BY name) FROM qlater_schedules)", conn: conn)
    end

    def test_csrf_every_action_needs_the_sessions_token
      before = state_snapshot
      other = Rack::Test::Session.new(Rack::MockSession.new(app))
      other.get "/qlater/"
      foreign = other.last_response.body[/name="authenticity_token" value="([^"]+)"/, 1]
      refute_nil foreign
      get "/qlater/" # a session of our own
      ACTION_PARAMS.each do |path, params|
        [nil, "", "x", foreign, "#{foreign}x"].each do |tok|
          p = tok.nil? ? params : params.merge("authenticity_token" => tok)
          resp = req(:post, "/qlater#{path}", p)
          assert_equal 403, resp.status, "#{path} with token #{tok.inspect}"
        end
        # the token in a header of another session, a JSON body, a GET, a HEAD
        assert_equal 403, req(:post, "/qlater#{path}", JSON.generate(params.merge("authenticity_token" => foreign)),
                              "CONTENT_TYPE" => "application/json").status, "#{path} JSON"
        assert_equal 403, req(:post, "/qlater#{path}", params, "HTTP_X_CSRF_TOKEN" => foreign).status, "#{path} header"
        refute_equal 303, req(:get, "/qlater#{path}", params).status, "#{path} GET"
        refute_equal 303, req(:head, "/qlater#{path}", params).status, "#{path} HEAD"
        refute_equal 303, req(:get, "/qlater#{path}", params.merge("_method" => "POST")).status, "#{path} _method"
        refute_equal 303, req(:options, "/qlater#{path}", params).status, "#{path} OPTIONS"
      end
      assert_equal before, state_snapshot, "nothing changed"
    end

    def test_csrf_foreign_origin_refused_even_with_token
      t = token
      before = state_snapshot
      ["https://evil.example", "null"].each do |origin|
        resp = req(:post, "/qlater/queues/pause", { "queue" => "mail", "authenticity_token" => t },
                   "HTTP_ORIGIN" => origin)
        assert_equal 403, resp.status, origin
      end
      assert_equal before, state_snapshot
    end

    def test_csrf_token_of_another_mount_is_refused
      # bob's dashboard mounted on the same site: its session's token does
      # not act on alice's
      t = token("/bob/")
      before = state_snapshot
      resp = req(:post, "/qlater/queues/pause", "queue" => "mail", "authenticity_token" => t)
      assert_equal 403, resp.status
      assert_equal before, state_snapshot
    end

    def test_two_mounts_on_one_site_keep_their_sessions
      # BREAK: every QLater::Web sets its cookie "qlater.session" with path
      # "/": two dashboards on one site (alice's at /qlater, bob's at /bob)
      # overwrite each other's session, so after a look at one, the other's
      # open pages' forms all fail with 403 (and their flash is lost).
      t = token("/qlater/")
      get "/bob/"
      resp = req(:post, "/qlater/queues/pause", "queue" => "mail", "authenticity_token" => t, "back" => "/")
      assert_equal 303, resp.status, "BREAK: alice's form refused after a visit to /bob (cookie path /)"
    ensure
      db.exec("SELECT qlater_resume_queue('mail')") rescue nil
    end

    def test_session_cookie_flags
      resp = req(:get, "/qlater/")
      cookie = resp.headers["set-cookie"].to_s
      assert_match(/qlater\.session=/, cookie)
      assert_match(/httponly/i, cookie)
      assert_match(/samesite=strict/i, cookie)
    end

    def test_session_cookie_is_secure_over_https
      # BREAK (hardening): served over HTTPS, the session cookie (the CSRF
      # token, the flash) lacks the Secure flag: the browser also sends it
      # over plain HTTP to the same host
      resp = req(:get, "https://example.org/qlater/")
      assert_match(/;\s*secure/i, resp.headers["set-cookie"].to_s, "BREAK: no Secure flag over https")
    end

    def test_refusals_carry_the_security_headers
      t = token
      [req(:post, "/qlater/queues/pause", "queue" => "mail"),
       req(:get, "/closed/"),
       req(:post, "/qlater/queues/pause", { "queue" => "mail", "authenticity_token" => t }, "HTTP_ORIGIN" => "https://evil.example"),
       req(:post, "/qlater/queues/resume", "queue" => "mail", "authenticity_token" => t, "back" => "/")].each do |resp|
        assert_includes [303, 403], resp.status
        assert_match(/frame-ancestors 'none'/, resp.headers["content-security-policy"].to_s, resp.status.to_s)
        assert_equal "nosniff", resp.headers["x-content-type-options"]
      end
    end

    # ---- the authorize hook ----

    def test_authorize_hook_gates_every_path
      ["/closed", "/closed/", "/closed/assets/qlater.js", "/closed/assets/qlater.css", "/closed/stats.json",
       "/closed/jobs/1", "/closed//", "/closed/%2e%2e/qlater/", "/closed/assets/..%2f..%2fweb.rb",
       "/closed/assets/%2e%2e/qlater.js", "/closed/nope", "/closed/dead/"].each do |path|
        %i[get head].each do |verb|
          assert_equal 403, req(verb, path).status, "#{verb} #{path}"
        end
        assert_equal 403, req(:post, path, "queue" => "mail").status, "post #{path}"
      end
    end

    def test_assets_no_traversal
      ["/qlater/assets/../../web.rb", "/qlater/assets/..%2f..%2fweb.rb", "/qlater/assets/%2e%2e/view.rb",
       "/qlater/assets/qlater.css/", "/qlater/assets/QLATER.CSS", "/qlater/assets/qlater.js%00.css",
       "/qlater/assets/views/layout.erb", "/qlater/assets/x.js"].each do |path|
        resp = req(:get, path)
        assert_equal 404, resp.status, path
        refute_includes resp.body, "require", path
      end
      assert_equal 200, req(:get, "/qlater/assets/qlater.js").status
    end

    # ---- one role and another's jobs ----

    def test_alice_does_not_see_bobs_jobs_through_search
      bid = bob_dead_id
      refute_nil bid
      resp = req(:get, "/qlater/jobs/#{bid}")
      assert_equal 404, resp.status
      assert_includes resp.body, 'id="not-found"'
      refute_includes resp.body, "bob failed"
      [{ "id" => bid }, { "queue" => "bobq" }, { "handler" => "bob_job" }, { "handler" => "" },
       { "handler" => "%" }, { "handler" => "' OR true --" }].each do |search|
        body = req(:get, "/qlater/history", search).body
        refute_includes body, "<code>bob_job", search.inspect
        refute_includes body, "bob failed", search.inspect
        refute_includes body, "<td>#{WebAttacks::BOB}</td>", search.inspect
      end
      body = req(:get, "/qlater/dead", "queue" => "bobq").body
      refute_includes body, "bob_job"
      refute_includes req(:get, "/qlater/dead").body, "bobq"
      refute_includes req(:get, "/qlater/schedules").body, "bobs"
      refute_includes JSON.parse(req(:get, "/qlater/stats.json").body).map { |r| r["queue"] }, "bobq"
    end

    def test_zz_alice_cannot_act_on_bobs_jobs_with_forged_forms
      bid = bob_dead_id
      refute_nil bid
      before = snapshot_of(bob)
      t = token
      [
        ["/jobs/retry", { "ids[]" => bid }],
        ["/jobs/cancel", { "ids[]" => bid }],
        ["/jobs/retry", { "ids" => [bid, bid] }],
        ["/dead/retry", { "queue" => "bobq" }],
        ["/dead/purge", { "queue" => "bobq" }],
        ["/dead/purge", {}],
        ["/dead/retry", {}],
        ["/queues/pause", { "queue" => "bobq" }],
        ["/schedules/active", { "name" => "bobs", "owner" => WebAttacks::BOB, "active" => "false" }],
        ["/schedules/active", { "name" => "bobs", "active" => "false" }]
      ].each do |path, params|
        resp = req(:post, "/qlater#{path}", params.merge("authenticity_token" => t, "back" => "/"))
        assert_equal 303, resp.status, "#{path} #{params.inspect}: #{resp.body[0, 200]}"
      end
      assert_equal "dead", value("SELECT state FROM qlater_jobs WHERE id = $1", [bid], conn: bob),
                   "bob's dead job stays dead"
      assert_equal "t", value("SELECT active FROM qlater_schedules WHERE name = 'bobs'", conn: bob),
                   "bob's schedule on"
      assert_equal "f", value("SELECT paused FROM qlater_queues WHERE name = 'bobq'", conn: bob), "bobq not paused"
      assert_equal before, snapshot_of(bob), "nothing of bob's changed"
    end

    def flash_after_post(path, params)
      t = token
      resp = req(:post, "/qlater#{path}", params.merge("authenticity_token" => t, "back" => "/"))
      assert_equal 303, resp.status, "#{path} #{params.inspect}"
      follow_redirect!
      flash_of(last_response.body)
    end

    # README (Security): another role's qlater_retry/qlater_cancel fails with
    # "permission denied for job N", which says nothing of the job; the
    # dashboard shows that and nothing more
    def test_actions_on_bobs_ids_say_nothing_of_his_jobs
      bid = bob_dead_id
      refute_nil bid
      %w[/jobs/retry /jobs/cancel].each do |path|
        assert_equal "permission denied for job #{bid}", flash_after_post(path, "ids[]" => bid), path
      end
      unknown = (value("SELECT max(id) FROM qlater_jobs", conn: bob).to_i + 100_000).to_s
      assert_equal "0 of 1 job(s) retried", flash_after_post("/jobs/retry", "ids[]" => unknown)
      [{ "name" => "bobs", "owner" => WebAttacks::BOB }, { "name" => "bobs" }].each do |p|
        f = flash_after_post("/schedules/active", p.merge("active" => "false")).to_s
        refute_empty f
        ["0 4", "bob_job", "[3]"].each { |x| refute_includes f, x, "#{p.inspect}: #{f}" }
      end
      assert_equal "t", value("SELECT active FROM qlater_schedules WHERE name = 'bobs'", conn: bob)
      assert_equal "dead", value("SELECT state FROM qlater_jobs WHERE id = $1", [bid], conn: bob)
    end

    # ---- robustness: bad input is a clear 4xx, never a 500 ----

    def test_bad_job_ids
      assert_client_error req(:get, "/qlater/jobs/99999999999999999999999"), "a huge id"
      assert_client_error req(:get, "/qlater/jobs/-1"), "a negative id"
      assert_client_error req(:get, "/qlater/jobs/1abc"), "not a number"
      assert_client_error req(:get, "/qlater/jobs/%31"), "an encoded digit"
      assert_equal 404, req(:get, "/qlater/jobs/0").status
    end

    def test_bad_history_searches
      [%w[id abc], ["from", "not a time"], ["to", "'; DROP TABLE x; --"], ["id", "1 OR 1=1"]].each do |k, v|
        resp = req(:get, "/qlater/history", k => v)
        assert_client_error resp, "#{k}=#{v}"
        assert_includes resp.body, 'id="error"'
      end
      resp = req(:get, "/qlater/history", "handler" => "x') OR true --", "queue" => "' OR 'a'='a")
      assert_equal 200, resp.status
      assert_equal "0", resp.body[/data-count="(\d+)"/, 1], "SQL metacharacters are text"
      assert_equal "t", value("SELECT to_regclass('qlater_history') IS NOT NULL")
    end

    def test_nul_byte_in_a_search_is_a_4xx
      # BREAK: a NUL byte in a search parameter reaches PG#exec_params,
      # which raises ArgumentError ("string contains null byte"), not a
      # PG::Error: an uncaught exception (500, the host's stack trace page)
      assert_client_error req(:get, "/qlater/history", "handler" => "a\0b"), "BREAK: history handler=%00"
    end

    def test_nul_byte_in_dead_queue_is_a_4xx
      # BREAK: same with /dead?queue=%00
      assert_client_error req(:get, "/qlater/dead", "queue" => "a\0b"), "BREAK: dead queue=a%00b"
    end

    def test_nul_byte_in_an_action_is_not_a_500
      # BREAK: same for an action: POST /queues/pause queue=a%00b raises
      t = token
      resp = req(:post, "/qlater/queues/pause", "queue" => "a\0b", "authenticity_token" => t, "back" => "/")
      assert_includes [303, 400], resp.status, "BREAK: POST queue=a%00b: #{resp.body[0, 200]}"
    end

    def test_invalid_utf8_in_a_search_is_a_4xx
      # BREAK: a search parameter that is not UTF-8 (handler=%FF%FE) raises
      # ArgumentError ("invalid byte sequence in UTF-8") in Web.blank's
      # strip: a 500
      resp = req(:get, "/qlater/history?handler=%FF%FE")
      assert_includes [200, 400], resp.status, "BREAK: handler=%FF%FE: #{resp.body[0, 200]}"
      resp = req(:get, "/qlater/dead?queue=%C3%28")
      assert_includes [200, 400], resp.status, "queue=%C3%28: #{resp.body[0, 200]}"
    end

    def test_malformed_query_string_is_a_4xx
      # BREAK: a query string Rack cannot parse (a bad %-escape) raises in
      # req.params (Rack::QueryParser::InvalidParameterError) outside any
      # rescue: a 500.  (The query string is set in the env: Rack::MockRequest
      # itself refuses to parse it.)
      assert_client_error req(:get, "/qlater/history", {}, "QUERY_STRING" => "handler=%"), "BREAK: GET handler=%"
    end

    def test_conflicting_param_types_are_a_4xx
      # BREAK: queue[]=1&queue[x]=2 raises Rack::QueryParser::ParameterTypeError
      # in req.params: a 500
      assert_client_error req(:get, "/qlater/dead", {}, "QUERY_STRING" => "queue[]=1&queue[x]=2"),
                          "BREAK: GET queue[]=1&queue[x]=2"
    end

    def test_malformed_post_body_is_a_4xx
      # a POST body with a bad %-escape: refused before any action (holds)
      t = token
      assert_client_error req(:post, "/qlater/queues/pause", {},
                              "CONTENT_TYPE" => "application/x-www-form-urlencoded",
                              :input => "queue=mail%&authenticity_token=#{Rack::Utils.escape(t)}"),
                          "POST body queue=mail%"
      assert_equal "f", value("SELECT paused FROM qlater_queues WHERE name = 'mail'")
    end

    def test_array_and_hash_params_in_actions_are_not_a_500
      # BREAK: queue[]=x or name[a]=b reach exec_params as an Array or Hash:
      # pg raises (TypeError, or encodes an Array as a PostgreSQL array
      # literal), not a PG::Error: a 500 where a 4xx or an error flash is due
      t = token
      [["/queues/pause", { "queue" => ["mail"] }],
       ["/queues/pause", { "queue" => { "value" => "mail" } }],
       ["/schedules/active", { "name" => { "a" => "b" }, "active" => "false" }],
       ["/dead/purge", { "queue" => ["broken"], "older_than" => ["1"] }]].each do |path, params|
        resp = req(:post, "/qlater#{path}", params.merge("authenticity_token" => t, "back" => "/"))
        assert_includes [303, 400], resp.status, "BREAK: #{path} #{params.inspect}: #{resp.body[0, 200]}"
      end
      assert_equal "f", value("SELECT paused FROM qlater_queues WHERE name = 'mail'")
    end

    def test_array_params_in_pages_are_not_a_500
      [["/qlater/history", "queue[]=mail"], ["/qlater/history", "id[]=1"], ["/qlater/dead", "queue[a]=b"]].each do |path, qs|
        resp = req(:get, "#{path}?#{qs}")
        assert_includes [200, 400], resp.status, "#{path}?#{qs}: #{resp.body[0, 200]}"
      end
    end

    def test_very_long_values
      resp = req(:get, "/qlater/history", "handler" => "<x>" * 30_000, "from" => "9" * 5000)
      assert_includes [200, 400], resp.status, resp.body[0, 200]
      refute_includes resp.body, "<x>"
      resp = req(:get, "/qlater/jobs/#{'9' * 5000}")
      assert_client_error resp, "a 5000-digit id"
    end

    def test_long_error_keeps_its_flash
      # BREAK: the flash lives in the session cookie; an error that names a
      # long value (here a 5000-byte queue name, "invalid queue name ...")
      # makes the cookie pass 4 KB: Rack::Session::Cookie drops it and the
      # page after the redirect says nothing of the failure
      t = token
      resp = req(:post, "/qlater/queues/pause", "queue" => "q" * 5000, "authenticity_token" => t, "back" => "/")
      assert_equal 303, resp.status
      follow_redirect!
      assert_equal 200, last_response.status
      refute_nil flash_of(last_response.body), "BREAK: the error of a long value is lost"
    end

    def test_bad_action_values_are_an_error_flash
      t = token
      [["/dead/retry", { "queue" => "broken", "older_than" => "1 day'; DROP TABLE qlater_jobs; --" }],
       ["/dead/purge", { "queue" => "broken", "older_than" => "forever" }],
       ["/jobs/retry", { "ids[]" => "9223372036854775807" }],
       ["/jobs/retry", { "ids[]" => "9999999999999999999" }],
       ["/jobs/cancel", { "ids[]" => "abc" }],
       ["/schedules/active", { "name" => "nightly", "active" => "maybe" }],
       ["/schedules/active", { "name" => "nightly" }],
       ["/queues/pause", {}]].each do |path, params|
        resp = req(:post, "/qlater#{path}", params.merge("authenticity_token" => t, "back" => "/"))
        assert_equal 303, resp.status, "#{path} #{params.inspect}: #{resp.body[0, 200]}"
        follow_redirect!
        assert_equal 200, last_response.status
        refute_match(/\.rb:\d+/, last_response.body)
      end
      assert_equal "t", value("SELECT to_regclass('qlater_jobs') IS NOT NULL")
      assert_equal "t", value("SELECT active FROM qlater_schedules WHERE name = 'nightly'"), "nightly still on"
    end

    def test_unknown_methods_and_paths
      assert_equal 404, req(:get, "/qlater/nope").status
      assert_equal 404, req(:get, "/qlater/dead/").status
      t = token
      assert_equal 404, req(:post, "/qlater/nope", "authenticity_token" => t).status
      assert_includes [403, 405], req(:put, "/qlater/queues/pause", "queue" => "mail", "authenticity_token" => t).status
      assert_includes [403, 405], req(:delete, "/qlater/jobs/1", "authenticity_token" => t).status
      resp = req(:get, "/qlater/nope")
      assert resp.headers["content-security-policy"], "a 404 has the security headers"
    end

    def test_connection_failure_is_not_a_stack_trace
      # BREAK: when the database cannot be reached, a page raises
      # PG::ConnectionBad out of the app (500, the host's error page): the
      # connect happens outside View#load's rescue
      broken = QLater::Web.new(connection: { host: "127.0.0.1", port: 1, user: WebAttacks::ALICE,
                                             connect_timeout: 2 })
      s = Rack::Test::Session.new(Rack::MockSession.new(broken))
      resp = begin
        s.get "/"
        s.last_response
      rescue StandardError => e
        Rack::MockResponse.new(500, {}, ["#{e.class}: #{e.message}"])
      end
      assert_includes 400..599, resp.status
      refute_equal 500, resp.status, "BREAK: a page raises when the database is down: #{resp.body[0, 200]}"
    end
  end
end
