#!/usr/bin/env bash
# Install what the browser test of the search page needs (tests/search/test_browser.py):
# Debian's chromium (Playwright's own browser downloads are not used: they need a host we cannot
# reach) and the `playwright` Python package in .venv, which drives that chromium over CDP.
# Idempotent: with both present it only checks and returns.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"
if [ ! -x /usr/bin/chromium ]; then
  echo "[setup_browser] installing chromium with apt-get" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
fi
PY=".venv/bin/python"
[ -x "$PY" ] || { echo "[setup_browser] .venv missing: run scripts/setup.sh first" >&2; exit 1; }
if ! "$PY" -c "import playwright" >/dev/null 2>&1; then
  echo "[setup_browser] installing playwright==$PLAYWRIGHT_VERSION into .venv" >&2
  "$PY" -m pip install -q "playwright==$PLAYWRIGHT_VERSION" >&2
fi
echo "[setup_browser] ready: /usr/bin/chromium $(/usr/bin/chromium --version 2>/dev/null | head -1), playwright $("$PY" -c 'import importlib.metadata as m; print(m.version("playwright"))')" >&2
