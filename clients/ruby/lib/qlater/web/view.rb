# frozen_string_literal: true

module QLater
  class Web
    # What one page shows: the rows its SQL returned, read by the page's
    # template (lib/qlater/web/views/NAME.erb), and the helpers the
    # templates use.  Everything a template prints goes through h (HTML
    # escaping): job arguments, errors, names, are the tenants' text.
    class View
      attr_reader :req, :status, :error

      def initialize(req)
        @req = req
        @status = 200
        @flash = req.session.delete("qlater.flash") || {}
      end

      def evaluate(erb)
        erb.result(binding)
      end

      # Reads what page +name+ shows.  A query the server refuses (a bad
      # time in a search, a permission) shows its error on the page.
      def load(db, name, **args)
        @page = name
        @role = db.value("SELECT current_user")
        send("load_#{name}", db, **args)
      rescue PG::Error => e
        @status = 400
        @error = Web.error_message(e)
      end

      # ---- queues: qlater_queue_stats, and outcomes per minute from qlater_history ----

      def load_queues(db)
        @queues = db.rows(<<~SQL)
          SELECT queue, owner, external, paused, ready, scheduled, running, dead,
                 oldest_ready_age, done_total, failed_total, dead_total, timeout_total,
                 crashed_total, cancelled_total, purged_total, wait_p50, wait_p95, wait_p99,
                 run_p50, run_p95, run_p99, stats_since, counted_at
            FROM qlater_queue_stats ORDER BY queue NULLS LAST
        SQL
        @last_minute = db.value("SELECT extract(epoch FROM date_trunc('minute', now()))::bigint").to_i
        @per_minute = Hash.new { |hash, k| hash[k] = {} }
        db.rows(<<~SQL, [@last_minute, FAILURES.join(",")]).each do |r|
          SELECT queue, extract(epoch FROM date_trunc('minute', finished_at))::bigint AS minute,
                 count(*) FILTER (WHERE outcome = 'done') AS done,
                 count(*) FILTER (WHERE outcome = ANY (string_to_array($2, ','))) AS failures
            FROM qlater_history
           WHERE finished_at >= to_timestamp($1) - interval '59 minutes'
           GROUP BY 1, 2
        SQL
          @per_minute[r["queue"]][r["minute"].to_i] = [r["done"].to_i, r["failures"].to_i]
        end
      end

      # ---- running: qlater_running (or, on a schema without it, qlater_jobs) ----

      def load_running(db)
        @running_view = db.exists?("qlater_running")
        @running = if @running_view
                     db.rows("SELECT id, queue, handler, role, attempt, pid, kind, started_at, runtime, " \
                             "lease_until FROM qlater_running ORDER BY started_at, id")
                   else
                     db.rows("SELECT id, queue, handler, role, attempts, locked_by AS pid " \
                             "FROM qlater_jobs WHERE state = 'running' ORDER BY id")
                   end
      end

      # ---- dead: qlater_jobs in state 'dead' ----

      def load_dead(db)
        @queue = Web.blank(req.params["queue"])
        @dead = db.rows(<<~SQL, [@queue, DEAD_LIMIT])
          SELECT id, queue, handler, role, args, attempts, max_attempts,
                 last_error ->> 'message' AS error, last_error ->> 'sqlstate' AS sqlstate,
                 last_error ->> 'at' AS died_at, enqueued_at
            FROM qlater_jobs WHERE state = 'dead' AND ($1::text IS NULL OR queue = $1)
           ORDER BY id LIMIT $2
        SQL
        @dead_queues = db.rows("SELECT queue, count(*) AS dead FROM qlater_jobs WHERE state = 'dead' " \
                               "GROUP BY queue ORDER BY queue")
        @retry_dead = db.function?("qlater_retry_dead")
      end

      # ---- schedules: qlater_schedules ----

      def load_schedules(db)
        @schedules = db.rows(<<~SQL)
          SELECT name, owner, schedule, timezone, handler, args, queue, last_tick, next_tick,
                 active, skipped_ticks, overlap
            FROM qlater_schedules ORDER BY owner, name
        SQL
      end

      # ---- history: qlater_history, searched ----

      HISTORY_FILTERS = {
        "id" => "id = $%d::bigint",
        "handler" => "strpos(handler, $%d) > 0",
        "queue" => "queue = $%d",
        "outcome" => "outcome = $%d",
        "from" => "finished_at >= $%d::timestamptz",
        "to" => "finished_at < $%d::timestamptz"
      }.freeze

      def load_history(db)
        @search = HISTORY_FILTERS.keys.to_h { |k| [k, Web.blank(req.params[k])] }
        where = []
        params = []
        @search.each do |k, v|
          next if v.nil?

          params << v
          where << format(HISTORY_FILTERS[k], params.size)
        end
        cond = where.empty? ? "" : "WHERE #{where.join(' AND ')}"
        @history_count = db.value("SELECT count(*) FROM qlater_history #{cond}", params).to_i
        @history = db.rows("SELECT id, queue, handler, role, args, enqueued_at, run_at, started_at, " \
                           "finished_at, runtime, attempt, outcome, error ->> 'message' AS error " \
                           "FROM qlater_history #{cond} ORDER BY finished_at DESC, id DESC " \
                           "LIMIT #{HISTORY_LIMIT}", params)
        @history_queues = db.rows("SELECT name FROM qlater_queues ORDER BY name").map { |r| r["name"] }
      end

      # ---- a job: qlater_job_status, qlater_jobs and its attempts in qlater_history ----

      def load_job(db, id:)
        @id = id
        @job = db.rows("SELECT * FROM qlater_job_status($1::bigint)", [id]).first
        @live = db.rows("SELECT id, args, attempts, max_attempts, priority, last_error, state, " \
                        "timeout, locked_by FROM qlater_jobs WHERE id = $1::bigint", [id]).first
        @attempts = db.rows("SELECT attempt, outcome, run_at, started_at, finished_at, runtime, args, " \
                            "error ->> 'sqlstate' AS sqlstate, error ->> 'message' AS error, " \
                            "error ->> 'detail' AS detail, error ->> 'context' AS context " \
                            "FROM qlater_history WHERE id = $1::bigint ORDER BY finished_at, attempt", [id])
        @status = 404 if @job.nil? || @job["state"].nil?
      end

      # ---- helpers of the templates ----

      def h(value)
        Rack::Utils.escape_html(value.to_s)
      end

      # A path of the app, under where it is mounted.
      def url(path, query = nil)
        q = query&.compact
        q = nil if q&.empty?
        h(req.script_name + path + (q ? "?#{Rack::Utils.build_query(q)}" : ""))
      end

      # The hidden fields of every form: the CSRF token and where to go back.
      def form_fields(back = nil)
        back ||= req.fullpath.delete_prefix(req.script_name)
        token = Rack::Protection::AuthenticityToken.token(req.session)
        %(<input type="hidden" name="authenticity_token" value="#{h(token)}">) +
          %(<input type="hidden" name="back" value="#{h(back)}">)
      end

      # A POST button: one action, its parameters as hidden fields.
      def button(path, label, params = {}, css: nil, confirm: nil)
        fields = params.map { |k, v| %(<input type="hidden" name="#{h(k)}" value="#{h(v)}">) }.join
        %(<form class="inline" method="post" action="#{url(path)}">#{form_fields}#{fields}) +
          %(<button type="submit"#{css ? %( class="#{h(css)}") : ''}#{confirm ? %( data-confirm="#{h(confirm)}") : ''}>) +
          %(#{h(label)}</button></form>)
      end

      # A timestamp or an interval as the server wrote it, without its
      # fractions of a second.
      def t(value)
        value.nil? ? "" : h(value.sub(/(\d\d:\d\d:\d\d)\.\d+/, '\1'))
      end

      # An interval as the server wrote it ("00:00:01.234567", "2 days
      # 01:00:00"), shorter: "1.23 s", "4.5 ms"; an hour or more as written.
      def dur(value)
        return "" if value.nil?

        m = value.match(/\A(\d\d):(\d\d):(\d\d(?:\.\d+)?)\z/) or return t(value)
        secs = m[1].to_i * 3600 + m[2].to_i * 60 + m[3].to_f
        text = if secs < 1 then format("%.3g ms", secs * 1000)
               elsif secs < 60 then format("%.3g s", secs)
               elsif secs < 3600 then format("%d min %d s", secs / 60, secs % 60)
               else value.sub(/\.\d+/, "")
               end
        %(<span title="#{h(value)}">#{h(text)}</span>)
      end

      def nav(path, label, page)
        %(<a href="#{url(path)}"#{@page == page ? ' class="current"' : ''}>#{h(label)}</a>)
      end

      def job_link(id)
        %(<a href="#{url("/jobs/#{id.to_i}")}">#{h(id)}</a>)
      end

      # Done and failed outcomes per minute over the last hour: an SVG bar
      # chart, drawn here (no script, nothing loaded).
      def outcome_chart(queue)
        data = @per_minute.fetch(queue, {})
        minutes = (0..59).map { |i| @last_minute - (59 - i) * 60 }
        max = [minutes.map { |m| data.fetch(m, [0, 0]).sum }.max, 1].max
        width = 300
        height = 60
        bar = width / 60.0
        rects = minutes.each_with_index.map do |m, i|
          done, failures = data.fetch(m, [0, 0])
          hd = (done * height.to_f / max).round(2)
          hf = (failures * height.to_f / max).round(2)
          label = "#{Time.at(m).utc.strftime('%H:%M')} UTC: #{done} done, #{failures} failed"
          x = (i * bar).round(2)
          %(<g data-minute="#{m}" data-done="#{done}" data-failures="#{failures}"><title>#{h(label)}</title>) +
            %(<rect class="done" x="#{x}" y="#{(height - hd).round(2)}" width="#{(bar - 1).round(2)}" height="#{hd}"/>) +
            %(<rect class="failed" x="#{x}" y="#{(height - hd - hf).round(2)}" width="#{(bar - 1).round(2)}" height="#{hf}"/></g>)
        end
        totals = data.values.transpose.map(&:sum)
        %(<svg class="chart" viewBox="0 0 #{width} #{height}" width="#{width}" height="#{height}" role="img" ) +
          %(data-chart="outcomes" data-done="#{totals[0] || 0}" data-failures="#{totals[1] || 0}">) +
          %(<title>#{h("#{queue || 'other queues'}: outcomes per minute, last hour (max #{max})")}</title>) +
          rects.join + %(</svg>)
      end

      def flash
        @flash
      end
    end
  end
end
