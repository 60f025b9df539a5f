# frozen_string_literal: true

# The dashboard in headless Chromium (selenium-webdriver): each page against
# what SQL says, as the same role; the actions through the page; escaping;
# roles; the authorize hook.  A screenshot of each page goes to
# QLATER_SCREENSHOT_DIR.  The tests act in order (pauses, retries, purges).

require_relative "helper"

class DashboardBrowserTest < DashboardCase
  i_suck_and_my_tests_are_order_dependent!

  STALE = Selenium::WebDriver::Error::StaleElementReferenceError

  def driver
    DashboardTest.driver
  end

  def base
    DashboardTest.server
  end

  def visit(path, mount: "/qlater")
    driver.navigate.to("#{base}#{mount}#{path}")
  end

  def shot(name)
    FileUtils.mkdir_p(DashboardTest::SCREENSHOTS)
    driver.save_screenshot(File.join(DashboardTest::SCREENSHOTS, "#{name}.png"))
  end

  def wait_until(timeout: 15, &block)
    Selenium::WebDriver::Wait.new(timeout: timeout, interval: 0.1,
                                  ignore: [Selenium::WebDriver::Error::NoSuchElementError]).until(&block)
  end

  def css(selector, from: driver)
    from.find_element(css: selector)
  end

  def all(selector, from: driver)
    from.find_elements(css: selector)
  end

  # Clicks a button that posts a form (accepting its confirmation dialog
  # if it asks) and waits for the page the redirect leads to.
  def submit(button, confirm: false)
    html = css("html")
    button.click
    if confirm
      wait_until { driver.switch_to.alert }.accept
    end
    wait_until do
      html.tag_name
      false
    rescue STALE
      true
    end
    css("body")
  end

  def ids_shown(selector)
    all("#{selector} tbody tr[data-id]").map { |tr| tr.attribute("data-id") }.sort_by(&:to_i)
  end

  def job_id(args_like, conn: db)
    value("SELECT id FROM qlater_history WHERE args::text LIKE $1 ORDER BY id LIMIT 1", [args_like], conn: conn) ||
      value("SELECT id FROM qlater_jobs WHERE args::text LIKE $1 ORDER BY id LIMIT 1", [args_like], conn: conn)
  end

  def job_state(id)
    value("SELECT state FROM qlater_job_status($1)", [id])
  end

  QUEUE_COLUMNS = %w[owner ready scheduled running dead done_total failed_total dead_total timeout_total
                     crashed_total cancelled_total purged_total].freeze

  # Every number of the queues table against qlater_queue_stats, read as
  # the dashboard's role just after the page.
  def assert_queues_match
    visit "/"
    shown = all("#queues tbody tr").to_h do |tr|
      [tr.attribute("data-queue"), all("td[data-col]", from: tr).to_h { |td| [td.attribute("data-col"), td.text] }]
    end
    sql = rows("SELECT * FROM qlater_queue_stats").to_h { |r| [r["queue"].to_s, r] }
    assert_equal sql.keys.sort, shown.keys.sort
    sql.each do |queue, r|
      QUEUE_COLUMNS.each { |c| assert_equal r[c].to_s, shown[queue][c], "#{queue}.#{c}" }
      assert_equal r["paused"] == "t", shown[queue]["queue"].include?("paused"), "#{queue} paused"
    end
    shown
  end

  def test_01_queues_page_matches_qlater_queue_stats
    shown = assert_queues_match
    assert_equal "5", shown.fetch("mail")["done_total"], "the known work: 5 jobs done in mail"
    assert_equal "1", shown.fetch("mail")["scheduled"]
    assert_equal "1", shown.fetch("slow")["running"]
    refute shown.key?("bobq"), "bob's queue is not alice's to see"

    # outcomes per minute, from the history
    all("section.queue-charts").each do |sec|
      queue = sec.attribute("data-queue")
      chart = css("svg[data-chart=outcomes]", from: sec)
      done, failures = rows(<<~SQL, [queue]).first.values_at("done", "failures")
        SELECT count(*) FILTER (WHERE outcome = 'done') AS done,
               count(*) FILTER (WHERE outcome IN ('failed', 'dead', 'timeout', 'crashed')) AS failures
          FROM qlater_history
         WHERE queue = $1 AND finished_at >= date_trunc('minute', now()) - interval '59 minutes'
      SQL
      assert_equal done, chart.attribute("data-done"), "#{queue}: done in the last hour"
      assert_equal failures, chart.attribute("data-failures"), "#{queue}: failures in the last hour"
      bars = all("g[data-minute]", from: chart).sum { |g| g.attribute("data-done").to_i }
      assert_equal done.to_i, bars, "#{queue}: the bars add up"
    end
    # depth and lag, sampled by the page
    depth = value("SELECT ready + scheduled + running FROM qlater_queue_stats WHERE queue = 'mail'")
    live = css("svg.live[data-series=depth][data-queue=mail]")
    wait_until { live.attribute("data-samples").to_i >= 1 }
    assert_equal depth, live.attribute("data-last")
    assert_equal 1, all("svg.live[data-series=depth][data-queue=mail] polyline").size
    shot "queues"
  end

  def test_02_running_page
    visit "/running"
    sql = if value("SELECT to_regclass('qlater_running')")
            rows("SELECT id FROM qlater_running")
          else
            rows("SELECT id FROM qlater_jobs WHERE state = 'running'")
          end.map { |r| r["id"] }.sort_by(&:to_i)
    refute_empty sql, "the known work has a job running"
    assert_equal sql, ids_shown("#running")
    shot "running"
  end

  def test_03_dead_page_shows_the_script_as_text
    visit "/dead"
    dead = rows("SELECT id FROM qlater_jobs WHERE state = 'dead'").map { |r| r["id"] }.sort_by(&:to_i)
    assert_equal 9, dead.size, "the known work: 9 dead jobs of alice"
    assert_equal dead, ids_shown("#dead")
    per_queue = rows("SELECT queue, count(*) FROM qlater_jobs WHERE state = 'dead' GROUP BY 1")
                .to_h { |r| [r["queue"], r["count"]] }
    shown = all("#dead-queues tbody tr").to_h { |tr| [tr.attribute("data-queue"), css("td[data-col=dead]", from: tr).text] }
    assert_equal per_queue, shown

    id = job_id("%<script>%")
    row = css("#dead tr[data-id='#{id}']")
    assert_equal DashboardTest::SCRIPT, css("td.error .message", from: row).text
    assert_includes css("td.args", from: row).text, DashboardTest::SCRIPT
    assert_raises(Selenium::WebDriver::Error::NoSuchAlertError) { driver.switch_to.alert }
    assert_equal 1, driver.execute_script("return document.scripts.length"), "no script but the page's own"
    shot "dead"
  end

  def test_04_job_page_with_its_attempts
    id = job_id("%<script>%")
    visit "/jobs/#{id}"
    assert_equal job_state(id), css("#state").text
    attempts = rows("SELECT attempt, outcome FROM qlater_history WHERE id = $1 ORDER BY finished_at", [id])
    refute_empty attempts
    shown = all("#attempts tbody tr").map { |tr| [tr.attribute("data-attempt"), css(".outcome", from: tr).text] }
    assert_equal attempts.map(&:values), shown
    assert_includes css("#args").text, DashboardTest::SCRIPT
    assert_includes css("#last-error").text, DashboardTest::SCRIPT
    assert_equal DashboardTest::SCRIPT, css("#attempts td.error .message").text
    assert_raises(Selenium::WebDriver::Error::NoSuchAlertError) { driver.switch_to.alert }
    shot "job"
  end

  def test_05_schedules_and_their_switch
    visit "/schedules"
    sql = rows("SELECT name, owner, active, last_tick, next_tick, skipped_ticks FROM qlater_schedules ORDER BY name")
    assert_equal ["nightly"], sql.map { |r| r["name"] }
    shown = all("#schedules tbody tr").map do |tr|
      all("td[data-col]", from: tr).to_h { |td| [td.attribute("data-col"), td.text] }
    end
    assert_equal sql.size, shown.size
    sql.zip(shown).each do |r, s|
      assert_equal r["name"], s["name"]
      assert_equal r["active"] == "t" ? "on" : "off", s["active"]
      assert_equal r["next_tick"].sub(/\.\d+/, ""), s["next_tick"]
      assert_equal r["last_tick"].to_s.sub(/\.\d+/, ""), s["last_tick"]
      assert_equal r["skipped_ticks"], s["skipped_ticks"]
    end
    shot "schedules"
    submit(css("tr[data-name=nightly] button.switch-off"))
    assert_equal "f", value("SELECT active FROM qlater_schedules WHERE name = 'nightly'")
    assert_equal "off", css("tr[data-name=nightly] td[data-col=active]").text
    assert_match(/switched off/, css("#flash").text)
    submit(css("tr[data-name=nightly] button.switch-on"))
    assert_equal "t", value("SELECT active FROM qlater_schedules WHERE name = 'nightly'")
    assert_equal "on", css("tr[data-name=nightly] td[data-col=active]").text
  end

  def search(fields)
    visit "/history"
    fields.each do |name, v|
      el = css("#search [name=#{name}]")
      if el.tag_name == "select"
        Selenium::WebDriver::Support::Select.new(el).select_by(:text, v)
      else
        el.clear
        el.send_keys(v)
      end
    end
    submit(css("#search-button"))
    [css("#history-count").attribute("data-count"), all("#history tbody tr")]
  end

  def test_06_history_search
    visit "/history"
    assert_equal value("SELECT count(*) FROM qlater_history"), css("#history-count").attribute("data-count")

    count, trs = search("outcome" => "dead")
    assert_equal value("SELECT count(*) FROM qlater_history WHERE outcome = 'dead'"), count
    assert_equal ["dead"], trs.map { |tr| tr.attribute("data-outcome") }.uniq

    count, = search("handler" => "fail_job")
    assert_equal value("SELECT count(*) FROM qlater_history WHERE strpos(handler, 'fail_job') > 0"), count

    id = job_id("%<script>%")
    count, trs = search("id" => id)
    assert_equal value("SELECT count(*) FROM qlater_history WHERE id = $1", [id]), count
    assert_equal [id], trs.map { |tr| tr.attribute("data-id") }.uniq

    from, to = rows("SELECT (now() - interval '1 hour')::text AS f, (now() + interval '1 hour')::text AS t").first.values
    count, = search("queue" => "mail", "from" => from, "to" => to)
    assert_equal "5", count
    count, = search("queue" => "mail", "from" => to)
    assert_equal "0", count
    search("outcome" => "dead", "handler" => "fail")
    shot "history"
  end

  def test_07_a_role_sees_only_its_own
    bob = DashboardTest.connect(DashboardTest::OTHER_ROLE)
    bob_ids = rows("SELECT id FROM qlater_history UNION SELECT id FROM qlater_jobs", conn: bob).map { |r| r["id"] }
    bob_dead = rows("SELECT id FROM qlater_jobs WHERE state = 'dead'", conn: bob).map { |r| r["id"] }
    assert_equal 1, bob_dead.size
    visit "/dead"
    assert_empty ids_shown("#dead") & bob_ids
    visit "/history"
    assert_empty ids_shown("#history") & bob_ids
    refute_includes css("main").text, "bob failed"
    visit "/jobs/#{bob_dead.first}"
    assert css("#not-found").displayed?
    refute_includes css("main").text, "bob failed"

    visit "/dead", mount: "/bob"
    assert_equal DashboardTest::OTHER_ROLE, css("#role").text
    assert_equal bob_dead, ids_shown("#dead")
    assert_equal "bob failed -1", css("#dead td.error .message").text
    shot "bob-dead"
  ensure
    bob&.close
  end

  def test_08_pause_and_resume
    visit "/"
    submit(css("tr[data-queue=mail] button.pause"))
    assert_equal "t", value("SELECT paused FROM qlater_queues WHERE name = 'mail'")
    assert_includes css("tr[data-queue=mail] td[data-col=queue]").text, "paused"
    assert_match(/mail paused/, css("#flash").text)
    submit(css("tr[data-queue=mail] button.resume"))
    assert_equal "f", value("SELECT paused FROM qlater_queues WHERE name = 'mail'")
    refute_includes css("tr[data-queue=mail] td[data-col=queue]").text, "paused"
  end

  def test_09_a_post_without_token_is_refused
    visit "/"
    status = driver.execute_async_script(<<~JS, "#{base}/qlater/queues/pause")
      var done = arguments[arguments.length - 1];
      fetch(arguments[0], { method: "POST", credentials: "same-origin",
                            headers: { "Content-Type": "application/x-www-form-urlencoded" },
                            body: "queue=mail", redirect: "manual" })
        .then(function (r) { done(r.status); }, function (e) { done(String(e)); });
    JS
    assert_equal 403, status
    assert_equal "f", value("SELECT paused FROM qlater_queues WHERE name = 'mail'")
  end

  def test_10_retry_one
    id = job_id("%boom 1%")
    assert_equal "dead", job_state(id)
    visit "/dead"
    submit(css("#dead tr[data-id='#{id}'] button.retry-one"))
    assert_equal "pending", job_state(id), "retried, and waiting in its paused queue"
    assert_match(/1 of 1 job\(s\) retried/, css("#flash").text)
    refute_includes ids_shown("#dead"), id
  end

  def test_11_retry_selected
    ids = [job_id("%boom 2%"), job_id("%boom 3%")]
    visit "/dead"
    ids.each { |id| css("#dead tr[data-id='#{id}'] input[type=checkbox]").click }
    submit(css("#retry-selected"))
    assert_equal %w[pending pending], ids.map { |id| job_state(id) }
    assert_match(/2 of 2 job\(s\) retried/, css("#flash").text)
    assert_equal "dead", job_state(job_id("%<script>%")), "not selected, not retried"
  end

  def test_12_remove_one
    id = job_id("%boom 4%")
    visit "/dead"
    submit(css("#dead tr[data-id='#{id}'] button.remove-one"), confirm: true)
    assert_equal "cancelled", job_state(id)
    refute_includes ids_shown("#dead"), id
  end

  def test_13_purge_a_queue
    assert_equal "2", value("SELECT count(*) FROM qlater_jobs WHERE state = 'dead' AND queue = 'broken2'")
    visit "/dead"
    submit(css("#dead-queues tr[data-queue=broken2] button.purge-all"), confirm: true)
    assert_match(/2 dead job\(s\) purged/, css("#flash").text)
    assert_equal "0", value("SELECT count(*) FROM qlater_jobs WHERE state = 'dead' AND queue = 'broken2'")
    assert_equal "2", value("SELECT count(*) FROM qlater_history WHERE queue = 'broken2' AND outcome = 'purged'")
    assert_empty all("#dead-queues tr[data-queue=broken2]")
  end

  def test_14_retry_a_queue
    visit "/dead"
    unless value("SELECT count(*) FROM pg_proc WHERE proname = 'qlater_retry_dead'").to_i.positive?
      assert_empty all("#dead-queues button.retry-all"), "no button without qlater_retry_dead"
      skip "qlater_retry_dead is not in this schema"
    end
    ids = rows("SELECT id FROM qlater_jobs WHERE state = 'dead' AND queue = 'broken3'").map { |r| r["id"] }
    assert_equal 2, ids.size
    submit(css("#dead-queues tr[data-queue=broken3] button.retry-all"))
    assert_match(/2 dead job\(s\) retried/, css("#flash").text)
    assert_equal %w[pending pending], ids.map { |id| job_state(id) }
  end

  def test_15_the_authorize_hook
    visit "/", mount: "/closed"
    assert_equal "Forbidden", css("body").text
    visit "/dead", mount: "/gated"
    assert_equal "Forbidden", css("body").text
    driver.manage.add_cookie(name: "let_me_in", value: "yes")
    visit "/dead", mount: "/gated"
    assert_equal DashboardTest::DASH_ROLE, css("#role").text
  ensure
    driver.manage.delete_cookie("let_me_in")
  end

  def test_16_queues_page_after_the_actions
    shown = assert_queues_match
    assert_equal "2", shown.fetch("broken2")["purged_total"]
    assert_equal "1", shown.fetch("broken2")["cancelled_total"]
  end
end
