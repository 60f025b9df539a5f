# frozen_string_literal: true

# QLater::Web: the qlater dashboard, a Rack app.
#
#   # config/routes.rb (Rails), behind the host app's authentication
#   authenticate :user, ->(user) { user.admin? } do   # Devise
#     mount QLater::Web => "/qlater"
#   end
#
#   # config.ru (standalone: rackup)
#   require "qlater/web"
#   QLater::Web.connection = ENV.fetch("QLATER_DASHBOARD_URL")
#   QLater::Web.authorize { |req| ... }
#   run QLater::Web
#
# It shows what qlater's SQL views show and acts through its SQL functions
# only (qlater_queue_stats, qlater_history, qlater_jobs, qlater_schedules,
# qlater_running, qlater_pause_queue, qlater_retry, ...), as the database
# role it connects with: a role sees and changes exactly what SQL lets it.
# Every action is a POST carrying a CSRF token (rack-protection); every page
# and action first asks the authorize hook.  See clients/ruby/README.md.

require "erb"
require "json"
require "securerandom"
require "rack"
require "rack/protection"
require "qlater"

module QLater
  class Web
    VIEWS = File.expand_path("web/views", __dir__)
    ASSETS = File.expand_path("web/assets", __dir__)
    ASSET_TYPES = { "qlater.css" => "text/css", "qlater.js" => "text/javascript" }.freeze
    OUTCOMES = %w[done failed dead timeout crashed cancelled purged].freeze
    FAILURES = %w[failed dead timeout crashed].freeze
    HISTORY_LIMIT = 200
    DEAD_LIMIT = 500
    # Headers of every answer: no inline script runs (the page's script is
    # its own file), nothing is loaded from elsewhere, no framing.
    SECURITY_HEADERS = {
      "content-security-policy" => "default-src 'none'; script-src 'self'; style-src 'self'; " \
                                   "img-src 'self' data:; connect-src 'self'; form-action 'self'; " \
                                   "frame-ancestors 'none'; base-uri 'none'",
      "x-content-type-options" => "nosniff",
      "referrer-policy" => "same-origin",
      "cache-control" => "no-store"
    }.freeze

    class << self
      # Where the default app (QLater::Web used as a Rack app) connects: a
      # connection URL or conninfo String, a Hash for PG.connect, or a Proc
      # returning a new PG::Connection.  Unset: ActiveRecord's connection
      # pool (QLater.active_record_class) when ActiveRecord is loaded.
      attr_reader :connection

      # Secret of the session cookie the app sets when the host gives it no
      # session (standalone); random per process unless set (set it when
      # several processes serve the dashboard).
      attr_reader :session_secret

      def session_secret=(secret)
        @session_secret = secret
        @default = nil
      end

      # The hook that gates every page and action: called with the
      # Rack::Request, it lets the request through when it returns true
      # (else a bare 403).  A block, or any callable; nil removes it.
      # Unset: every request goes through (mount the app behind the host's
      # authentication, or set this).
      def authorize(callable = nil, &block)
        @authorize = callable || block
        @default = nil
      end

      def authorize_hook
        @authorize
      end

      def connection=(source)
        @connection = source
        @default = nil
      end

      # The Rack interface of the class itself: `mount QLater::Web => ...`,
      # `run QLater::Web`.
      def call(env)
        default.call(env)
      end

      def default
        @default ||= new
      end
    end

    # connection: as QLater::Web.connection; authorize: a callable taking
    # the Rack::Request (as QLater::Web.authorize's block).
    def initialize(connection: self.class.connection, authorize: self.class.authorize_hook,
                   session_secret: self.class.session_secret)
      @source = connection
      @authorize = authorize
      @pool = []
      @pool_lock = Mutex.new
      @templates = {}
      app = Rack::Protection::AuthenticityToken.new(method(:dispatch), authenticity_param: "authenticity_token")
      app = Rack::Protection::HttpOrigin.new(app)
      @protected = app
      # Our own session (standalone): its cookie is the mount's alone (two
      # dashboards on one site keep theirs), Secure over HTTPS, and coded
      # as JSON (never Marshal)
      per_mount = lambda do |env|
        if (opts = env["rack.session.options"])
          opts[:path] = env["SCRIPT_NAME"].to_s.empty? ? "/" : env["SCRIPT_NAME"]
          opts[:secure] = Rack::Request.new(env).ssl?
        end
        app.call(env)
      end
      @with_session = Rack::Session::Cookie.new(
        per_mount, key: "qlater.session", secret: session_secret || SecureRandom.hex(64),
                   httponly: true, same_site: :strict,
                   coder: Rack::Session::Cookie::Base64::JSON.new
      )
    end

    def call(env)
      req = Rack::Request.new(env)
      return plain(403, "Forbidden") unless authorized?(req)
      return plain(400, "Bad Request: malformed parameters") unless params_ok?(req)

      status, headers, body = (env["rack.session"] ? @protected : @with_session).call(env)
      [status, SECURITY_HEADERS.merge(headers), body]
    rescue PG::ConnectionBad
      plain(503, "Service Unavailable: the dashboard cannot reach its database")
    end

    private

    def authorized?(req)
      @authorize.nil? || @authorize.call(req) ? true : false
    end

    # Whether the request's parameters parse, and every value is text a
    # server takes: valid UTF-8 without NUL bytes
    def params_ok?(req)
      valid = lambda do |v|
        case v
        when String then v.dup.force_encoding(Encoding::UTF_8).valid_encoding? && !v.include?("\0")
        when Array then v.all?(&valid)
        when Hash then v.all? { |k, x| valid.call(k) && valid.call(x) }
        else true
        end
      end
      valid.call(req.params)
    rescue Rack::QueryParser::InvalidParameterError, Rack::QueryParser::ParameterTypeError,
           ArgumentError, EOFError
      false
    end

    # ---- routing ----

    def dispatch(env)
      req = Rack::Request.new(env)
      path = req.path_info.empty? ? "/" : req.path_info
      if req.get? || req.head?
        case path
        when "/" then page(req, :queues)
        when "/running" then page(req, :running)
        when "/dead" then page(req, :dead)
        when "/schedules" then page(req, :schedules)
        when "/history" then page(req, :history)
        when %r{\A/jobs/(\d+)\z} then page(req, :job, id: Regexp.last_match(1))
        when "/stats.json" then stats_json
        when %r{\A/assets/([a-z]+\.(?:css|js))\z} then asset(Regexp.last_match(1))
        else plain(404, "Not Found")
        end
      elsif req.post?
        action(req, path)
      else
        plain(405, "Method Not Allowed")
      end
    end

    # ---- actions: each one SQL function, as the connected role ----

    ACTIONS = {
      "/queues/pause" => ->(db, p) { db.call("SELECT qlater_pause_queue($1)", [p["queue"]]); "queue #{p['queue']} paused" },
      "/queues/resume" => ->(db, p) { db.call("SELECT qlater_resume_queue($1)", [p["queue"]]); "queue #{p['queue']} resumed" },
      "/jobs/retry" => lambda { |db, p|
        n = ids(p).count { |id| db.value("SELECT qlater_retry($1::bigint)", [id]) == "t" }
        "#{n} of #{ids(p).size} job(s) retried"
      },
      "/jobs/cancel" => lambda { |db, p|
        n = ids(p).count { |id| db.value("SELECT qlater_cancel($1::bigint)", [id]) == "t" }
        "#{n} of #{ids(p).size} job(s) removed"
      },
      "/dead/retry" => lambda { |db, p|
        n = db.value("SELECT qlater_retry_dead($1, coalesce($2, '0')::interval)", [blank(p["queue"]), blank(p["older_than"])])
        "#{n} dead job(s) retried"
      },
      "/dead/purge" => lambda { |db, p|
        n = db.value("SELECT qlater_purge_dead($1, coalesce($2, '0')::interval)", [blank(p["queue"]), blank(p["older_than"])])
        "#{n} dead job(s) purged"
      },
      "/schedules/active" => lambda { |db, p|
        db.call("SELECT qlater_alter_schedule($1, active => $2::boolean, owner => NULLIF($3, current_user::text))",
                [p["name"], p["active"], p["owner"]])
        "schedule #{p['name']} switched #{p['active'] == 'true' ? 'on' : 'off'}"
      }
    }.freeze

    def self.ids(params)
      Array(params["ids"]).map(&:to_s).grep(/\A\d{1,19}\z/)
    end

    # The primary message of a server error (what psql shows after ERROR:).
    def self.error_message(err)
      err.result&.error_field(PG::Result::PG_DIAG_MESSAGE_PRIMARY) || err.message
    end

    def self.blank(value)
      value.nil? || value.to_s.strip.empty? ? nil : value.to_s
    end

    def action(req, path)
      act = ACTIONS[path] or return plain(404, "Not Found")
      flash = begin
        with_db { |db| { "notice" => act.call(db, req.params) } }
      rescue PG::ConnectionBad
        raise
      rescue PG::Error => e
        { "error" => Web.error_message(e) }
      end
      req.session["qlater.flash"] = flash
      back = req.params["back"].to_s
      back = "/" unless back.match?(%r{\A/[A-Za-z0-9/_.?=&%+:-]*\z}) && !back.start_with?("//")
      [303, { "location" => req.script_name + back, "content-type" => "text/plain" }, []]
    end

    # ---- pages ----

    def page(req, name, **args)
      view = View.new(req)
      with_db { |db| view.load(db, name, **args) }
      html = render(:layout, view) { render(name, view) }
      [view.status, { "content-type" => "text/html; charset=utf-8" }, [html]]
    end

    def stats_json
      rows = with_db { |db| db.rows("SELECT queue, ready, scheduled, running, dead, paused, " \
                                    "extract(epoch FROM oldest_ready_age) AS lag, counted_at FROM qlater_queue_stats ORDER BY queue") }
      [200, { "content-type" => "application/json" }, [JSON.generate(rows)]]
    end

    def asset(name)
      type = ASSET_TYPES[name] or return plain(404, "Not Found")
      [200, { "content-type" => "#{type}; charset=utf-8" }, [File.read(File.join(ASSETS, name))]]
    end

    def plain(status, text)
      [status, SECURITY_HEADERS.merge("content-type" => "text/plain; charset=utf-8"), [text]]
    end

    # The page's template evaluated in its View (the layout yields the page).
    def render(name, view, &block)
      erb = @templates[name] ||= ERB.new(File.read(File.join(VIEWS, "#{name}.erb")), trim_mode: "-")
      view.evaluate(erb, &block)
    end

    # ---- the connection ----

    # Runs the block with a Db on a connection: one of the app's own (kept
    # in a small pool), or ActiveRecord's for the time of the block.
    def with_db
      if @source.nil?
        raise Error, "QLater::Web: no connection: set QLater::Web.connection, or load ActiveRecord" unless QLater.active_record?

        return QLater.active_record_class.connection_pool.with_connection { |c| yield Db.new(c.raw_connection) }
      end
      conn = @pool_lock.synchronize { @pool.pop } || connect
      begin
        result = yield Db.new(conn)
      rescue StandardError
        conn.close unless conn.finished? || conn.transaction_status == PG::PQTRANS_IDLE
        raise
      ensure
        unless conn.finished? || conn.transaction_status != PG::PQTRANS_IDLE
          @pool_lock.synchronize { @pool.size < 4 ? @pool.push(conn) : conn.close }
        end
      end
      result
    end

    def connect
      conn = case @source
             when Proc then @source.call
             when Hash then PG.connect(@source)
             else PG.connect(@source.to_s)
             end
      Connections.name_session(conn, "qlater-web")
      conn
    end

    # The queries of the pages and actions: parameters always bound; values
    # as the server's text, whatever type map the connection has
    # (ActiveRecord's decodes times and numbers).
    class Db
      TEXT = PG::TypeMapAllStrings.new

      def initialize(conn)
        @conn = conn
      end

      def rows(sql, params = [])
        exec(sql, params).to_a
      end

      def value(sql, params = [])
        exec(sql, params).getvalue(0, 0)
      end

      def call(sql, params = [])
        exec(sql, params)
        nil
      end

      private

      def exec(sql, params)
        result = @conn.exec_params(sql, params, 0, TEXT)
        result.type_map = TEXT
        result
      end

      public

      def exists?(relation)
        !value("SELECT to_regclass($1)", [relation]).nil?
      end

      def function?(name)
        value("SELECT EXISTS (SELECT FROM pg_proc WHERE proname = $1 AND pg_function_is_visible(oid))",
              [name]) == "t"
      end
    end
  end
end

require_relative "web/view"
