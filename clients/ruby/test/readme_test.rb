# frozen_string_literal: true

require "test_helper"
require "open3"
require "rbconfig"
require "tmpdir"

# The README's first example runs as written: its SQL, then its Ruby in a
# process of its own (libpq's environment), then qlater-worker as shown.
class ReadmeTest < Minitest::Test
  README = File.read(File.join(QLaterTest::ROOT, "README.md"))

  def pattern_section
    README[/^## The pattern\n(.*?)^## /m, 1] or flunk "no section 'The pattern' in README.md"
  end

  def blocks(lang)
    pattern_section.scan(/^```#{lang}\n(.*?)^```$/m).map(&:first)
  end

  def setup
    @conn = QLaterTest.connect
    @conn.exec("DO $$BEGIN CREATE ROLE app_worker; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    cleanup
  end

  def teardown
    cleanup
    @conn.close
  end

  def cleanup
    @conn.exec("SELECT qlater_cancel(id) FROM qlater_jobs WHERE queue = 'exports_rb'")
    @conn.exec("SELECT qlater_drop_queue('exports_rb') FROM qlater_queues WHERE name = 'exports_rb'")
  end

  def test_the_first_example_runs_as_written
    sql, = blocks("sql")
    ruby, = blocks("ruby")
    shell, = blocks("sh")
    refute_nil sql
    refute_nil ruby
    @conn.exec(sql)
    out, err, status = Open3.capture3(RbConfig.ruby, "-e", ruby)
    assert status.success?, err
    assert_equal "exporting tenant-a as csv\n", out, "called now"
    args = @conn.exec("SELECT handler, args, run_at > now() + interval '50 minutes' AS later, priority " \
                      "FROM qlater_jobs WHERE queue = 'exports_rb' ORDER BY id").to_a
    assert_equal 2, args.size, "two calls enqueued"
    assert_equal %w[ExportStations ExportStations], args.map { |a| a["handler"] }
    assert_equal "xlsx", JSON.parse(args[0]["args"])["kwargs"]["format"]
    assert_equal %w[f t], args.map { |a| a["later"] }
    assert_equal "10", args[1]["priority"]

    # the worker command as shown, with the example's class in a file
    assert_match(/\Aqlater-worker --queues exports_rb --require (\S+) --threads 4\n\z/, shell)
    Dir.mktmpdir("qlater-readme") do |dir|
      file = File.join(dir, "export_stations.rb")
      File.write(file, ruby[/\A.*?^end\n/m])
      @conn.exec("UPDATE qlater_job SET run_at = now() WHERE queue = 'exports_rb'")
      argv = shell.split
      argv[argv.index("--require") + 1] = file
      out_r, out_w = IO.pipe
      pid = Process.spawn(RbConfig.ruby, ENV.fetch("QLATER_TEST_WORKER"), *argv.drop(1), out: out_w, err: out_w)
      out_w.close
      deadline = Time.now + 60
      sleep 0.1 until @conn.exec("SELECT count(*) FROM qlater_jobs WHERE queue = 'exports_rb'").getvalue(0, 0) == "0" ||
                      Time.now > deadline
      Process.kill(:TERM, pid)
      Process.wait(pid)
      output = out_r.read
      assert_match(/exporting tenant-a as xlsx/, output)
      assert_match(/exporting tenant-a as csv/, output)
      assert_equal 2, output.scan(/outcome=done/).size, output
    end
  end
end
