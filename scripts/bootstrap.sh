#!/usr/bin/env bash
# Create .venv with Python 3.11 and install Coxswain with its pinned dependencies.
# Re-running is cheap: pip is skipped while pyproject.toml is unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.installed"

# The interpreter: COXSWAIN_PYTHON if set; else the distribution's /usr/bin/python3.11 when it can
# make a venv, because Debian builds it with profile-guided and link-time optimisation and links
# libpython in statically, while a default pyenv build has neither: on it the simulator reads its
# input 1.7x and replays it 1.2 to 1.4x faster (docs/simulator.md); else the first Python 3.11 on
# PATH.
is_usable() {
  "$1" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1
}
if [[ -n "${COXSWAIN_PYTHON:-}" ]] && ! is_usable "$COXSWAIN_PYTHON"; then
  echo "bootstrap: ERROR: COXSWAIN_PYTHON=$COXSWAIN_PYTHON is not a Python 3.11 that can make a venv" >&2
  exit 1
fi
python=""
for candidate in ${COXSWAIN_PYTHON:-} /usr/bin/python3.11 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && is_usable "$candidate"; then
    python="$("$candidate" -c 'import sys; print(sys.executable)')"  # through any shim
    break
  fi
done
if [[ -z "$python" ]]; then
  echo "bootstrap: ERROR: Python 3.11 with venv is required (e.g. apt-get install python3.11 python3.11-venv)" >&2
  exit 1
fi

# A venv made by another interpreter (an older checkout's, or before COXSWAIN_PYTHON changed) is
# made again, so everyone runs on the interpreter chosen above.
if [[ -f "$VENV/pyvenv.cfg" ]] && ! grep -qx "home = $(dirname "$python")" "$VENV/pyvenv.cfg"; then
  echo "bootstrap: recreating .venv with $python" >&2
  rm -rf "$VENV"
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
