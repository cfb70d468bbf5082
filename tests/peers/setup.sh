#!/usr/bin/env bash
# Installs the real peers the end-to-end tests drive, into tests/peers/
# (gitignored): a Python venv (.venv) from requirements.txt and npm tools
# (node_modules) from package.json. Debian packages (chromium) are .ci/run's
# job (apt-get). Safe to run again: it only adds what is missing.
#
# A peer that cannot be installed is reported here, loudly, and the tests
# that need it skip with a message naming it (tests/src/lib.rs, `peers`);
# they never skip silently. `tests/peers/.installed` lists what is in place.
set -uo pipefail
cd "$(dirname "$0")"
ok=()
failed=()

if [ -s requirements.txt ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || failed+=("python venv")
  fi
  if [ -x .venv/bin/python ]; then
    if .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt; then
      ok+=(python)
    else
      failed+=("python packages (requirements.txt)")
    fi
  fi
fi

if [ -f package.json ]; then
  if command -v npm >/dev/null; then
    if npm install --no-audit --no-fund --loglevel=error >/dev/null; then
      ok+=(npm)
    else
      failed+=("npm packages (package.json)")
    fi
  else
    failed+=("npm (not on PATH)")
  fi
fi

if command -v chromium >/dev/null; then ok+=(chromium); fi

printf '%s\n' "${ok[@]}" > .installed
echo "peers installed: ${ok[*]:-none}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "WARNING: could not install: ${failed[*]}; the tests that need them will skip, saying so" >&2
fi
exit 0
