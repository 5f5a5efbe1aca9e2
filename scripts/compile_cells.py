"""Profile the --compile cells (planner.validate.matrix.COMPILE_CELLS) and their eager twins and write a report.

The estimate of a compiled run is eager's (an upper bound, planner/estimate/compile_note.py), so these cells are
kept out of the bounded matrix; this reports how far below that estimate inductor lands. Compiling takes minutes
per cell on CPU. Usage: python scripts/compile_cells.py OUT_DIR [CACHE_DIR]  (run it again with
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 and another OUT_DIR and CACHE_DIR for the AVX2 path).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from planner.validate.matrix import COMPILE_CELLS
from planner.validate.run import run_cells


def main(out: Path, cache: Path) -> None:
    cells = [c for compiled in COMPILE_CELLS for c in (dataclasses.replace(compiled, compile=False), compiled)]
    run_cells(cells, out_dir=out, stem="compile", cache_dir=cache, title="planner: --compile against eager's estimate",
              command="python scripts/compile_cells.py", matrix=f"{len(cells)} cells (compile and eager twins)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path("profiles/validation-compile"))
