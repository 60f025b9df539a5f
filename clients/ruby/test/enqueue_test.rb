# frozen_string_literal: true

require "test_helper"

# QLater.enqueue for in-server SQL handlers (run by qlater's background
# workers inside the server).
class EnqueueTest < QLaterTest::Case
  def setup
    super
    conn.exec(<<~SQL)
      CREATE OR REPLACE FUNCTION rb_sql_touch(key text, note text DEFAULT 'none') RETURNS void
      LANGUAGE sql AS $$ INSERT INTO rb_done (queue, key, info) VALUES ('sql', key, note) $$;
      SELECT qlater_register('rb_sql_touch(text,text)');
    SQL
    @key = SecureRandom.hex(6)
  end

  def sql_done(key)
    conn.exec_params("SELECT info FROM rb_done WHERE queue = 'sql' AND key = $1", [key]).column_values(0)
  end

  def test_enqueue_runs_an_in_server_sql_handler
    id = QLater.enqueue("rb_sql_touch", [@key])
    assert_kind_of Integer, id
    wait_until(message: "the in-server worker") { sql_done(@key) == ["none"] }

    QLater.enqueue("rb_sql_touch", { key: "#{@key}-named", note: "xlsx" })
    wait_until(message: "named arguments") { sql_done("#{@key}-named") == ["xlsx"] }
  end

  def test_enqueue_options_and_rollback
    conn.exec("BEGIN")
    QLater.enqueue("rb_sql_touch", [@key], run_at: Time.now + 3600, priority: 5, max_attempts: 2)
    row = conn.exec_params("SELECT handler, queue, priority, max_attempts FROM qlater_jobs " \
                           "WHERE args->>0 = $1", [@key]).to_a
    assert_equal 1, row.size
    assert_match(/rb_sql_touch/, row[0]["handler"])
    assert_equal %w[default 5 2], row[0].values_at("queue", "priority", "max_attempts")
    conn.exec("ROLLBACK")
    assert_equal "0", value("SELECT count(*) FROM qlater_jobs WHERE args->>0 = $1", @key)
  end

  def test_enqueue_with_a_key
    later = Time.now + 3600
    id = QLater.enqueue("rb_sql_touch", [@key], run_at: later, key: "k-#{@key}")
    assert_equal id, QLater.enqueue("rb_sql_touch", [@key, "second"], run_at: later, key: "k-#{@key}"),
                 "the waiting job of the key is returned"
    assert_equal [[@key].to_json], keyed_args(id), "and left as it was"
    assert_equal id, QLater.enqueue("rb_sql_touch", [@key, "third"], run_at: later, priority: 3,
                                                                       key: "k-#{@key}", replace: true)
    assert_equal [[@key, "third"].to_json], keyed_args(id), "replace: takes the new args"
    assert_equal "3", value("SELECT priority FROM qlater_jobs WHERE id = $1", id)
    refute_equal id, QLater.enqueue("rb_sql_touch", [@key], run_at: later, key: "other-#{@key}"),
                 "another key is another job"
    assert_raises(ArgumentError) { QLater.enqueue("rb_sql_touch", [@key], replace: true) }
    assert_raises(PG::InvalidParameterValue) { QLater.enqueue("rb_sql_touch", [@key], key: "") }
  ensure
    conn.exec_params("SELECT qlater_cancel(id) FROM qlater_jobs WHERE key IN ($1, $2)",
                     ["k-#{@key}", "other-#{@key}"])
  end

  def keyed_args(id)
    conn.exec_params("SELECT args FROM qlater_jobs WHERE id = $1", [id]).column_values(0)
        .map { |a| JSON.parse(a).to_json }
  end

  def test_enqueue_of_an_unregistered_sql_handler_is_an_error
    error = assert_raises(PG::Error) { QLater.enqueue("rb_no_such_handler", []) }
    assert_match(/rb_no_such_handler/, error.message)
    assert_raises(ArgumentError) { QLater.enqueue("rb_sql_touch", "not json") }
  end
end
