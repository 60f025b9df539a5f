# frozen_string_literal: true

# The qlater dashboard on its own:
#
#   QLATER_DASHBOARD_URL=postgres://qlater_dashboard@localhost/app \
#   QLATER_DASHBOARD_PASSWORD=... QLATER_DASHBOARD_SECRET=$(openssl rand -hex 64) \
#     rackup -o 127.0.0.1 -p 9292 config.ru
#
# It acts as the role of QLATER_DASHBOARD_URL: that role sees and changes
# what SQL lets it (its own jobs; every role's if it is a member of
# qlater_admin).  Every request needs the password (HTTP basic auth);
# serve it over TLS (behind a proxy) beyond localhost.

require "qlater/web"

QLater::Web.connection = ENV.fetch("QLATER_DASHBOARD_URL")
# the session cookie (CSRF tokens) stays valid across restarts and processes
QLater::Web.session_secret = ENV["QLATER_DASHBOARD_SECRET"]

password = ENV.fetch("QLATER_DASHBOARD_PASSWORD")
QLater::Web.authorize do |req|
  auth = Rack::Auth::Basic::Request.new(req.env)
  auth.provided? && auth.basic? &&
    Rack::Utils.secure_compare(auth.credentials.last.to_s, password)
end

# the hook says no with a bare 403; ask the browser for the password first
use Rack::Auth::Basic, "qlater" do |_user, given|
  Rack::Utils.secure_compare(given.to_s, password)
end

run QLater::Web
