#!/usr/bin/env bash
# Track releases (issue 13): what the newest releases of torch, transformers, accelerate, peft, bitsandbytes
# and DeepSpeed change for planner, against the versions it was validated with (requirements/lock.txt).
#
# Builds a separate venv (default .venv-drift; .venv is never touched beyond scripts/setup.sh) with the newest
# releases of those six and the lock's pins for everything else (a pin the newest releases cannot take is let
# go, and said), then runs the same checks in the locked .venv and in it:
#   - the tests that compare with real CPU measurements or real library objects (tests/test_activations.py,
#     tests/test_peak.py, tests/test_lora_qlora.py) and tests/test_validate.py's fast tests;
#   - the CI validation matrix, as `planner validate --suite cpu` (the cells and bounds of
#     tests/test_validate.py::test_ci_matrix_meets_the_issue_5_bounds, with a per-cell CSV to compare);
# and prints (a) the versions that differ from the lock, (b) the tests, cells and categories that moved.
#
# torch: the newest *CPU* build this machine's package sources offer (PyTorch's CPU wheels carry "+cpu");
# the Linux torch wheels on PyPI are CUDA builds (multi-GB, nvidia-* dependencies), so torch stays at the
# lock's version when no newer CPU build can be had, and the output says so.
#
# Usage: bash scripts/drift.sh [--venv DIR] [--out DIR] [--jobs N (default 1: reproducible per-cell bytes)]
# Output goes to stdout and DIR/drift.txt (default test-artifacts/drift). Exit status: 0 when nothing moved,
# 3 when a test, cell or category moved, other codes on failure. A re-run with the same versions reuses the
# validation profiles (cached per library versions under DIR/cache) and only re-runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-drift
OUT=test-artifacts/drift
# One profiling worker: a worker process runs its cells in turn, and a cell's "other" bytes depend on the cells
# the same process ran before it (with the same versions, one QLoRA cell measured 256 B of "other" in the
# matrix and 1,532 B profiled alone); with two workers the cells each gets change from run to run and look like
# drift.
JOBS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "drift.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
LOCK=requirements/lock.txt
TRACKED="torch transformers accelerate peft bitsandbytes deepspeed"
HARNESS="pytest pytest-timeout hypothesis ruff playwright"
PY=${PYTHON:-python3}
mkdir -p "$OUT/lock" "$OUT/newest"
log() { echo "drift: $*" >&2; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# ---- the locked venv
bash scripts/setup.sh --test

# ---- the drift venv
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
DPIP="$VENV/bin/python -m pip"
$DPIP install -q -c "$LOCK" --upgrade pip setuptools >&2

lock_torch=$(sed -n 's/^torch==//p' "$LOCK")
# Newest CPU build: the highest "+cpu" version pip can see (index and find-links), if above the lock's.
cpu_torch=$($DPIP index versions torch 2>/dev/null | sed -n 's/^Available versions: //p' | tr ',' '\n' \
  | tr -d ' ' | grep '+cpu$' | sort -V | tail -1 || true)
newest_any=$($DPIP index versions torch 2>/dev/null | sed -n 's/^torch (\(.*\))$/\1/p' || true)
torch_note="torch: newest release ${newest_any:-unknown}"
if [ -n "$cpu_torch" ] && [ "$(printf '%s\n%s\n' "$lock_torch" "${cpu_torch%+cpu}" | sort -V | tail -1)" != "$lock_torch" ]; then
  torch_spec="torch==${cpu_torch%+cpu}"
  torch_note="$torch_note; newest CPU build here $cpu_torch, used"
else
  torch_spec="torch==$lock_torch"
  torch_note="$torch_note (a CUDA build where newer than $lock_torch); newest CPU build here ${cpu_torch:-none}: torch stays at the lock's $lock_torch"
fi
caps=$(cat /etc/xdg/pip/constraints.txt 2>/dev/null | grep -i '^torch[<>=!~ ]' | tr '\n' ' ' || true)
[ -n "$caps" ] && torch_note="$torch_note; this machine's pip config caps: $caps"
log "$torch_note"

# Constraints: the lock less the six tracked packages; torch at the chosen CPU build.
cons="$OUT/constraints-drift.txt"
grep -v -i -E "^($(echo "$TRACKED" | tr ' ' '|'))==" "$LOCK" > "$cons"
echo "$torch_spec" >> "$cons"
install_newest() {
  $DPIP install -q -c "$1" "$torch_spec" >&2 &&
  $DPIP install -q -c "$1" --upgrade -e ".[test,quant]" transformers accelerate peft bitsandbytes >&2 &&
  $DPIP install -q -c "$1" --upgrade --no-build-isolation deepspeed >&2
}
pins_note="everything else at the lock's pins"
if ! install_newest "$cons"; then
  # The newest releases need newer dependencies than the lock's: keep only the test harness and torch pinned.
  grep -i -E "^($(echo "$HARNESS" | tr ' ' '|'))==" "$LOCK" > "$cons"
  echo "$torch_spec" >> "$cons"
  pins_note="the lock's other pins could not hold (see above); only the test harness and torch are pinned"
  log "$pins_note"
  install_newest "$cons"
fi
# DeepSpeed's JIT ops build under TORCH_EXTENSIONS_DIR; a venv of its own keeps the two venvs from rebuilding
# each other's op (the build file names each venv's source path) and from waiting on each other's build lock.
DRIFT_EXT="$(cd "$VENV" && pwd)/torch_extensions"
TORCH_EXTENSIONS_DIR="$DRIFT_EXT" "$VENV/bin/python" -c "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 \
  || log "could not pre-build DeepSpeed's shm comm op in $VENV; multi-rank cells will build it"
$DPIP freeze --all --exclude-editable > "$OUT/newest/freeze.txt"
.venv/bin/python -m pip freeze --all --exclude-editable > "$OUT/lock/freeze.txt"
# The newest release of each tracked package against what pip installed (pip falls back to an older release
# when the newest needs something this machine's package sources lack or the lock's pins exclude: say why).
releases=""
for pkg in $TRACKED; do
  newest=$($DPIP index versions "$pkg" 2>/dev/null | sed -n "s/^$pkg (\(.*\))$/\1/p" || true)
  have=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || echo "-")
  if [ -n "$newest" ] && [ "$newest" != "${have%+cpu}" ] && [ "$pkg" != torch ]; then
    why=$($DPIP install --dry-run -q -c "$cons" "$pkg==$newest" 2>&1 | grep '^ERROR' | grep -v ResolutionImpossible | tail -1 || true)
    releases="$releases
$pkg: newest release $newest, installed $have: pip cannot install $newest here (${why:-see pip install --dry-run $pkg==$newest})"
  fi
done
[ -n "$releases" ] && log "${releases#?}"

# ---- the same checks in both venvs
TESTS=(tests/test_activations.py tests/test_peak.py tests/test_lora_qlora.py tests/test_validate.py
       --deselect tests/test_validate.py::test_ci_matrix_meets_the_issue_5_bounds
       --deselect tests/test_validate.py::test_random_shapes_meet_the_same_bounds)
for side in lock newest; do
  if [ "$side" = lock ]; then py=.venv/bin/python; else py="$VENV/bin/python"; export TORCH_EXTENSIONS_DIR="$DRIFT_EXT"; fi
  log "$side: tests ($($py -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
  started=$SECONDS
  $py -m pytest -q -p no:cacheprovider --junitxml="$OUT/$side/junit.xml" "${TESTS[@]}" \
    > "$OUT/$side/pytest.txt" 2>&1 || true
  tail -1 "$OUT/$side/pytest.txt" >&2
  log "$side: planner validate --suite cpu (CI matrix)"
  $py -m planner validate --suite cpu --jobs "$JOBS" --out "$OUT/$side" --cache "$OUT/cache" --no-progress \
    > "$OUT/$side/validate.txt" 2>&1 || true
  grep -E "^validated|^error" "$OUT/$side/validate.txt" >&2 || tail -3 "$OUT/$side/validate.txt" >&2
  log "$side: $((SECONDS - started)) s"
done

# ---- compare
{
  echo "planner release drift, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "locked venv: .venv ($LOCK); newest venv: $VENV (newest $TRACKED; $pins_note)"
  echo "$torch_note"
  [ -n "$releases" ] && echo "${releases#?}"
  echo
  rc=0
  .venv/bin/python -m planner.validate.drift --lock "$LOCK" --freeze "$OUT/newest/freeze.txt" \
    --lock-dir "$OUT/lock" --new-dir "$OUT/newest" || rc=$?
  echo
  echo "details: $OUT/{lock,newest}/{pytest.txt,validate.txt,accuracy-ci.md,accuracy-ci.csv}"
  exit $rc
} | tee "$OUT/drift.txt" && exit 0 || exit "${PIPESTATUS[0]}"
