#!/usr/bin/env bash
# One entry point for a fresh Debian machine (run as root):
#   ./dev.sh demo [ARGS]   install everything, then run `openprepay demo`
#   ./dev.sh test [ARGS]   install everything the tests need, start it, run lint and pytest
#   ./dev.sh setup         only install
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# The demo needs only Python with venv; the tests need the servers too.
need_venv() {
  if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "==> apt-get install python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends python3-venv >/dev/null 2>&1 || {
      apt-get update >/dev/null && apt-get install -y --no-install-recommends python3-venv >/dev/null
    }
  fi
}

need_apt() {
  local missing=()
  command -v influxd >/dev/null || missing+=(influxdb)
  command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
  # The partition test drops an instance's packets to PostgreSQL in a network namespace.
  command -v nft >/dev/null || missing+=(nftables)
  # The printed bills are checked in a real browser (print to PDF), with Chinese glyphs.
  command -v chromium >/dev/null || missing+=(chromium)
  fc-list :lang=zh 2>/dev/null | grep -q . || missing+=(fonts-wqy-microhei)
  "$PY" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
      apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    }
  fi
}

python_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  echo "==> pip install -e .[test]"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
}

node_env() {
  if [ -f tests/interop/package.json ]; then
    echo "==> npm install (tests/interop)"
    (cd tests/interop && npm install --no-audit --no-fund --silent >/dev/null)
  fi
}

postgres_up() {
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "==> starting PostgreSQL"
    local cluster
    cluster=$(ls /etc/postgresql 2>/dev/null | head -n1)
    if [ -n "$cluster" ]; then
      pg_ctlcluster --skip-systemctl-redirect "$cluster" main start || true
    fi
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
}

case "${1:-}" in
  setup)
    need_apt; python_env; node_env ;;
  demo)
    shift; need_venv; python_env; exec "$VENV/bin/openprepay" demo "$@" ;;
  test)
    shift
    need_apt; python_env; node_env; postgres_up
    echo "==> ruff"
    "$VENV/bin/ruff" check .
    echo "==> pytest"
    # Three workers, one test file each at a time (module fixtures stay in one process):
    # most tests wait on sockets, servers and subprocesses, so 3 beat 2 on two cores.
    exec "$VENV/bin/pytest" -n "${OPENPREPAY_TEST_WORKERS:-3}" --dist loadfile "$@" ;;
  *)
    echo "usage: ./dev.sh demo|test|setup [ARGS]" >&2; exit 2 ;;
esac
