#!/usr/bin/env bash
# Make sure a PostgreSQL is reachable and the project database exists; print its DATABASE_URL.
# Order: $DATABASE_URL, else 127.0.0.1:5432, else a project-local cluster under .pgdata/
# (started from Debian's PostgreSQL binaries, installed if missing). Messages go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LOCAL_PORT=54329

say() { echo "postgres: $*" >&2; }

# Connect to the server's maintenance database and create the target database if missing.
ensure_db() {
  "$PY" - "$1" <<'PYEOF'
import sys
import dj_database_url
import psycopg
from psycopg import sql

cfg = dj_database_url.parse(sys.argv[1])
kw = dict(host=cfg["HOST"] or None, port=cfg["PORT"] or None, user=cfg["USER"] or None,
          password=cfg["PASSWORD"] or None, connect_timeout=3, autocommit=True)
try:
    conn = psycopg.connect(dbname="postgres", **kw)
except psycopg.OperationalError as exc:
    print(f"postgres: cannot connect: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
with conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cfg["NAME"]]).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cfg["NAME"])))
        print(f"postgres: created database {cfg['NAME']}", file=sys.stderr)
PYEOF
}

if [ -n "${DATABASE_URL:-}" ]; then
  ensure_db "$DATABASE_URL" || { say "DATABASE_URL is set but not reachable"; exit 1; }
  echo "$DATABASE_URL"; exit 0
fi

default_url="postgres://postgres@127.0.0.1:5432/reviews"
if ensure_db "$default_url" 2>/dev/null; then
  echo "$default_url"; exit 0
fi

local_url="postgres://postgres@127.0.0.1:${LOCAL_PORT}/reviews"
if ensure_db "$local_url" 2>/dev/null; then
  echo "$local_url"; exit 0
fi

say "nothing on 127.0.0.1:5432; starting a project-local cluster in .pgdata/ on port ${LOCAL_PORT}"
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's postgresql package"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  else
    say "no PostgreSQL found: set DATABASE_URL or install PostgreSQL (apt-get install postgresql)"
    exit 1
  fi
fi
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi  # initdb refuses to run as root
mkdir -p .pgdata
[ "$(id -u)" = 0 ] && chown postgres .pgdata
if [ ! -f .pgdata/PG_VERSION ]; then
  "${as_pg[@]}" "$bindir/initdb" -D .pgdata -U postgres --auth=trust >&2
fi
"${as_pg[@]}" "$bindir/pg_ctl" -D .pgdata -l .pgdata/server.log -w \
  -o "-p ${LOCAL_PORT} -c listen_addresses=127.0.0.1 -k /tmp" start >&2
ensure_db "$local_url"
echo "$local_url"
