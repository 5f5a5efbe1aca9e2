#!/usr/bin/env bash
# Create .venv and install planner with everything its commands and tests need, at the exact versions of
# requirements/lock.txt (pip constraints on every install: the versions the README's accuracy was measured
# with; pyproject.toml keeps the ranges). Idempotent: a stamp keyed on pyproject.toml, this script and the
# lock skips the work when nothing changed; a changed lock re-installs (pip moves every package to its pin).
# Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
[ "${1:-}" = "--test" ] && want_test=1
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
LOCK=requirements/lock.txt
stamp=".venv/.planner-setup-$(sha1sum pyproject.toml scripts/setup.sh "$LOCK" | sha1sum | cut -c1-12)-$want_test"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "planner: setting up .venv (one time)..." >&2
python -m pip install -q -c "$LOCK" --upgrade pip setuptools >&2
# torch first, at the lock's CPU build: an unconstrained torch would pull a multi-GB CUDA build.
python -m pip install -q -c "$LOCK" torch >&2
python -m pip install -q -c "$LOCK" -e ".[quant]" >&2
if [ "$want_test" = 1 ]; then
  python -m pip install -q -c "$LOCK" -e ".[test,quant]" >&2
  # torchtune's chunked cross-entropy (--loss chunked-ce) is profiled with its own loss file; its dependencies
  # (torchao, torchdata, datasets, ...) are not needed for that: no deps.
  python -m pip install -q -c "$LOCK" --no-deps torchtune >&2
  # TRL: the SFT, DPO and GRPO trainers the profiler runs (planner profile -- COMMAND, --task).
  python -m pip install -q -c "$LOCK" trl >&2
  # DeepSpeed builds against the installed torch (hence no build isolation), at the lock's version too.
  python -m pip install -q -c "$LOCK" --no-build-isolation deepspeed >&2
  # DeepSpeed JIT-compiles its CPU shared-memory communication op on first use (about 1.5 min); build it
  # once here so the first multi-rank test does not pay for it inside its timeout.
  # torch's FileBaton waits forever on a `lock` left by a build that was killed; a build takes about 1.5 min,
  # so a lock older than 15 min has no holder.
  find "${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}" -name lock -mmin +15 -delete 2>/dev/null || true
  timeout 900 python -c "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >&2 \
    || echo "planner: could not pre-build DeepSpeed's shm comm op; multi-rank tests will build it" >&2
fi
# The editable install leaves planner's own modules uncompiled, and with PYTHONDONTWRITEBYTECODE set (as on CI
# machines) every run would compile them again: a fifth of a cold `planner estimate`. Stale files are harmless
# (Python checks each source's mtime and recompiles in memory).
python -m compileall -q planner >&2
touch "$stamp"
