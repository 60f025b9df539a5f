# frozen_string_literal: true

module QLater
  # The version of the gem (the extension's SQL version is its own: see
  # qlater.control).
  VERSION = "0.2.0"
end
