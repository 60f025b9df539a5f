# frozen_string_literal: true

require_relative "lib/qlater/version"

Gem::Specification.new do |spec|
  spec.name = "qlater"
  spec.version = QLater::VERSION
  spec.summary = "Ruby client of qlater, durable background jobs inside PostgreSQL"
  spec.description = <<~TEXT
    Enqueue jobs in your own transaction and run them later, in PostgreSQL's
    own workers or in your application's: call a service object now (.call)
    or later (.later(:call)), with no wrapper class. Needs the qlater
    PostgreSQL extension.
  TEXT
  spec.authors = ["The qlater developers"]
  spec.license = "PostgreSQL"
  spec.homepage = "https://github.com/qlater/qlater"
  spec.required_ruby_version = ">= 2.7"
  spec.files = Dir["lib/**/*.rb"] + Dir["lib/qlater/web/{views,assets}/*"] +
               ["exe/qlater-worker", "README.md", "LICENSE"]
  spec.bindir = "exe"
  spec.executables = ["qlater-worker"]
  spec.require_paths = ["lib"]
  spec.add_runtime_dependency "pg", "~> 1.1"
  # ActiveRecord, ActiveJob (the adapter), Rails (the executor), and rack
  # with rack-protection (the dashboard, QLater::Web) are used
  # when the application loads them: no dependency on them here.
end
