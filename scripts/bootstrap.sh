#!/usr/bin/env bash
# Create .venv with Python 3.11 and install Coxswain with its pinned dependencies.
# Re-running is cheap: pip is skipped while pyproject.toml is unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.installed"

python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python="$candidate"
    break
  fi
done
if [[ -z "$python" ]]; then
  echo "bootstrap: ERROR: Python 3.11 is required (e.g. apt-get install python3.11 python3.11-venv)" >&2
  exit 1
fi

# The dashboard test drives Debian's chromium (browser downloads are not possible); install it as root when missing.
if [[ ! -x /usr/bin/chromium && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "bootstrap: chromium not installed; the dashboard test will skip" >&2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$python" -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" ]]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]"
  touch "$STAMP"
fi
