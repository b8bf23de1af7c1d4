#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback, for the tests of the transactional outbox.
#
#   bash scripts/postgres.sh start [OWNER_PID]   # prints: <SQLAlchemy URL> <data dir>
#   bash scripts/postgres.sh stop DATA_DIR
#   bash scripts/postgres.sh install             # only install the server if missing
#
# `start` installs Debian's postgresql package when the machine has no server binaries (as root,
# with apt-get, waiting up to 10 minutes for the dpkg lock another apt or dpkg holds), creates a
# new cluster under .cache/pg/ (trust auth, user and database "freedom"),
# and starts it on a free 127.0.0.1 port. Run as root, the server runs as the `postgres` user,
# since PostgreSQL refuses to run as root. Each `start` makes its own cluster, so test sessions
# running at the same time do not share one. A cluster whose owner process (OWNER_PID, by default
# the caller) has died without stopping it is stopped and deleted by the next `start`.
set -euo pipefail
cd "$(dirname "$0")/.."

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      echo "$d"; return 0
    fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

install_server() {
  if [ "$(id -u)" != 0 ]; then
    echo "postgres.sh: no PostgreSQL server binaries (initdb, pg_ctl) on this machine, and not root to install them;" \
         "install Debian's postgresql package (apt-get install postgresql)" >&2
    exit 1
  fi
  echo "postgres.sh: installing PostgreSQL (apt-get install postgresql)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends postgresql >&2
}

as_server_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

reap_orphans() {
  local dir owner
  for dir in .cache/pg/run-* /tmp/freedom-pg-*; do
    [ -f "$dir/owner.pid" ] || continue
    owner=$(cat "$dir/owner.pid")
    if ! kill -0 "$owner" 2>/dev/null; then
      echo "postgres.sh: removing the cluster of dead process $owner ($dir)" >&2
      stop "$dir"
    fi
  done
}

start() {
  local owner=${1:-$PPID}
  local bindir
  bindir=$(find_bindir) || { install_server; bindir=$(find_bindir); }
  mkdir -p .cache/pg
  reap_orphans
  local data
  data=$(mktemp -d "$PWD/.cache/pg/run-XXXXXX")
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$data"
    if ! runuser -u postgres -- test -w "$data"; then
      # The checkout is not reachable by the postgres user: keep the cluster in /tmp instead.
      rmdir "$data"
      data=$(mktemp -d /tmp/freedom-pg-XXXXXX)
      chown postgres "$data"
    fi
  fi
  echo "$owner" >"$data/owner.pid"
  as_server_user "$bindir/initdb" -D "$data/db" -U freedom --auth=trust -E UTF8 --no-sync >"$data/initdb.log" 2>&1 \
    || { cat "$data/initdb.log" >&2; exit 1; }
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_server_user "$bindir/pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $data -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$data/server.log" >&2; exit 1; }
  as_server_user "$bindir/psql" -h 127.0.0.1 -p "$port" -U freedom -d postgres -q -c "CREATE DATABASE freedom" >/dev/null
  echo "postgresql+psycopg://freedom@127.0.0.1:$port/freedom $data"
}

stop() {
  local data=${1:?usage: postgres.sh stop DATA_DIR}
  local bindir
  bindir=$(find_bindir)
  if [ -f "$data/db/postmaster.pid" ]; then
    as_server_user "$bindir/pg_ctl" -D "$data/db" -m fast -w -t 30 stop >/dev/null || true
  fi
  rm -rf "$data"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  install) find_bindir >/dev/null || { install_server; find_bindir >/dev/null; } ;;
  *) echo "usage: postgres.sh start [OWNER_PID] | stop DATA_DIR | install" >&2; exit 2 ;;
esac
