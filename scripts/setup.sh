#!/usr/bin/env bash
# Create .venv and install planner with everything its commands and tests need. Idempotent: a stamp keyed
# on pyproject.toml skips the work when nothing changed. Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
[ "${1:-}" = "--test" ] && want_test=1
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=".venv/.planner-setup-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)-$want_test"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "planner: setting up .venv (one time)..." >&2
python -m pip install -q --upgrade pip >&2
# The CPU build of torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" >&2
python -m pip install -q -e ".[quant]" >&2
if [ "$want_test" = 1 ]; then
  python -m pip install -q -e ".[test,quant]" >&2
  # DeepSpeed builds against the installed torch.
  python -m pip install -q --no-build-isolation "deepspeed>=0.15" >&2
  # DeepSpeed JIT-compiles its CPU shared-memory communication op on first use (about 1.5 min); build it
  # once here so the first multi-rank test does not pay for it inside its timeout.
  python -c "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >&2 \
    || echo "planner: could not pre-build DeepSpeed's shm comm op; multi-rank tests will build it" >&2
fi
touch "$stamp"
