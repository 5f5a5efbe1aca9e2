#!/usr/bin/env bash
# Run the whole test suite from a fresh checkout: sets up .venv (with test extras, DeepSpeed) and the
# headless Chromium used by the report's browser tests, then runs ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2 \
      || echo "planner: could not install chromium; browser tests will fail in CI" >&2
  else
    echo "planner: /usr/bin/chromium is missing; install Debian's chromium for the browser tests" >&2
  fi
fi
. .venv/bin/activate
ruff check planner tests benchmarks examples
exec python -m pytest -q -p no:cacheprovider "$@"
