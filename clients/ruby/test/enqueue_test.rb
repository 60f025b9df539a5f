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

  def test_enqueue_of_an_unregistered_sql_handler_is_an_error
    error = assert_raises(PG::Error) { QLater.enqueue("rb_no_such_handler", []) }
    assert_match(/rb_no_such_handler/, error.message)
    assert_raises(ArgumentError) { QLater.enqueue("rb_sql_touch", "not json") }
  end
end
