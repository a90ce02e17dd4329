#!/usr/bin/env bash
# The pure layers' tests (statement analysis, the remote transform, placements, the graph,
# the router) on every supported Python other than the default one that this machine has:
# python3.12 / python3.13 on PATH, or under ~/.pyenv/versions. Each gets its own environment
# (.venv-3.12, ...) with the runtime and the test tools at the lock's versions. A version
# that is not found is named and skipped; one that is found must pass.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/lock.txt
TESTS=(tests/lang tests/graph tests/routing)
default=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
for version in 3.11 3.12 3.13; do
  [ "$version" = "$default" ] && continue
  python=""
  # pyenv's own folder first: its shims on PATH answer for versions that are not selected.
  for candidate in $(ls -d "$HOME"/.pyenv/versions/"$version".*/bin/python 2>/dev/null | sort -V -r) \
                   "$(command -v "python$version" || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys, venv' >/dev/null 2>&1; then
      python=$candidate
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "Python $version: not found here, its tests are not run"
    continue
  fi
  venv=.venv-$version
  if [ ! -f "$venv/.installed" ] || [ "$venv/.installed" -ot "$LOCK" ] || [ "$venv/.installed" -ot pyproject.toml ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --constraint "$LOCK" --upgrade pip
    "$venv/bin/pip" install --quiet --constraint "$LOCK" -e . pytest pytest-timeout hypothesis
    touch "$venv/.installed"
  fi
  echo "Python $version ($python): ${TESTS[*]}"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
done
