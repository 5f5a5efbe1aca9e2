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
# CPU kernels allocate differently by CPU kind (planner/estimate/step/cpu_kernels.py): the tests that compare the
# estimator with a real CPU run (marker cpu_kernels) run again on every other kernel path this machine reaches.
# ONEDNN_MAX_CPU_ISA=AVX2 keeps bf16 matmuls off oneDNN; ATEN_CPU_CAPABILITY=avx2 holds ATen's own kernels to AVX2.
native=$(python -c "import torch; print(torch.backends.cpu.get_cpu_capability(), bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))")
echo "planner: CPU kernel path: ATen ${native% *}, oneDNN bf16 ${native#* } ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))" >&2
if [ $# -eq 0 ] && [ "$native" != "AVX2 False" ]; then
  python -m pytest -q -p no:cacheprovider --durations=40
  echo "planner: the cpu_kernels tests again on the AVX2 path (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)" >&2
  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 exec python -m pytest -q -p no:cacheprovider -m cpu_kernels
fi
exec python -m pytest -q -p no:cacheprovider "$@"
