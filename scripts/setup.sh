#!/usr/bin/env bash
# Create or refresh the project environment in .venv from the project's own pinned files.
# Idempotent: a second run with unchanged pins only checks a stamp and returns in a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
  echo "PriorCLIP needs Python 3.11 (found: $("$PY" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2; exit 1; }
with_browser=0
for arg in "$@"; do
  case "$arg" in
    --with-browser) with_browser=1 ;;
    *) echo "usage: scripts/setup.sh [--with-browser]" >&2; exit 2 ;;
  esac
done
stamp=".venv/.priorclip-setup"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  if [ "$with_browser" = 1 ]; then bash scripts/setup_browser.sh; fi
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "[setup] installing pinned dependencies into .venv (first run: a few minutes)" >&2
.venv/bin/python -m pip install -q --upgrade "pip>=24" >&2
.venv/bin/python -m pip install -q -r requirements.lock >&2
.venv/bin/python -m pip install -q --no-deps -e . >&2
echo "$want" > "$stamp"
if [ "$with_browser" = 1 ]; then bash scripts/setup_browser.sh; fi
echo "[setup] environment ready: .venv" >&2
