# frozen_string_literal: true

require "test_helper"
require "open3"
require "tmpdir"

# The gem as an application gets it: a Gemfile line with path:, as the
# README shows, then bundle exec.
class GemTest < Minitest::Test
  def test_a_gemfile_path_line_works
    Dir.mktmpdir("qlater-bundle") do |dir|
      File.write(File.join(dir, "Gemfile"), <<~GEMFILE)
        source "https://rubygems.org"
        gem "qlater", path: #{QLaterTest::ROOT.inspect}
      GEMFILE
      env = { "BUNDLE_USER_HOME" => File.join(dir, ".bundle-home"), "BUNDLE_APP_CONFIG" => File.join(dir, ".bundle"),
              "BUNDLE_GEMFILE" => File.join(dir, "Gemfile"), "RUBYLIB" => nil }
      out, err, status = Open3.capture3(env, "bundle", "install", "--local", chdir: dir)
      assert status.success?, "bundle install: #{out}#{err}"
      out, err, status = Open3.capture3(env, "bundle", "exec", "ruby", "-e",
                                        'require "qlater"; print QLater::VERSION, " ", $LOADED_FEATURES.grep(/qlater\.rb/).first',
                                        chdir: dir)
      assert status.success?, err
      assert_equal "#{QLater::VERSION} #{File.join(QLaterTest::ROOT, 'lib', 'qlater.rb')}", out
      out, err, status = Open3.capture3(env, "bundle", "exec", "qlater-worker", "--version", chdir: dir)
      assert status.success?, err
      assert_equal "qlater-worker #{QLater::VERSION}\n", out
    end
  end
end
