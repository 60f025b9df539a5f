# test/lib.sh: shared by test/run and test/demo (sourced, not run).
#
# Installs what building and testing qlater needs (Debian packages), builds
# and installs the extension, and picks an unprivileged user to run
# PostgreSQL as: PostgreSQL refuses to run as root.

set -euo pipefail

QL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=${PG_MAJOR:-15}
# QL_PG_BIN: another (relocated) PostgreSQL installation, for development
PG_BIN=${QL_PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}
export PATH="$PG_BIN:$PATH"

# as_root CMD...: run a command as root (directly, or through sudo)
as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	else
		sudo "$@"
	fi
}

# ensure_packages PKG...: apt-get install the packages that are missing
ensure_packages() {
	local missing=()
	local p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
			missing+=("$p")
		fi
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "== installing: ${missing[*]}"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

# the packages every command needs
ensure_base_packages() {
	ensure_packages make gcc libc6-dev rsync \
		"postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" \
		postgresql-client-common libipc-run-perl "$@"
	# Debian's postgresql package starts a cluster of its own: leave it be,
	# our clusters use their own ports and folders.
}

# build_and_install: compile (warnings are errors) and install the extension
build_and_install() {
	echo "== building and installing qlater"
	make -C "$QL_ROOT" -s clean >/dev/null
	make -C "$QL_ROOT" -s WERROR=1 PG_CONFIG="$PG_BIN/pg_config"
	as_root make -C "$QL_ROOT" -s install PG_CONFIG="$PG_BIN/pg_config" >/dev/null
}

# pick_run_user: set RUN_USER to an unprivileged user (created if needed)
pick_run_user() {
	if [ "$(id -u)" = 0 ]; then
		RUN_USER=qlater
		if ! id "$RUN_USER" >/dev/null 2>&1; then
			useradd --system --create-home --shell /bin/bash "$RUN_USER"
		fi
	else
		RUN_USER=$(id -un)
	fi
}

# run_as_user CMD: run a shell command line as RUN_USER
run_as_user() {
	if [ "$(id -u)" = 0 ]; then
		su "$RUN_USER" -s /bin/bash -c "export PATH='$PATH'; $1"
	else
		bash -c "$1"
	fi
}

# copy_tree DIR: a copy of the source tree that RUN_USER may write to
copy_tree() {
	local dir=$1
	rm -rf "$dir"
	mkdir -p "$dir"
	rsync -a --exclude .git --exclude tmp_check --exclude results \
		--exclude demo "$QL_ROOT"/ "$dir"/
	if [ "$(id -u)" = 0 ]; then
		chown -R "$RUN_USER" "$dir"
	fi
}
