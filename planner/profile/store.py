"""Profile directories: atomic publication and ``load_profile``. Imports neither torch nor pandas eagerly.

A profile directory holds ``meta.json`` (every input, versions, hardware), ``summary.json`` (status,
per-rank peaks by category and phase; written last, it lists every other file with its size and SHA-256),
``timeline.parquet`` (one row per allocation event of every rank) and, for CUDA runs, the raw memory
snapshots and NVML samples. The directory is assembled under a hidden temporary name next to its target
and renamed into place in one step, so an interrupted write never leaves a directory that loads as valid;
``load_profile`` checks the listed sizes and hashes, so a truncated file is caught too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.profile.attribution import CATEGORIES, PeakBreakdown

SCHEMA = 1
STATUSES = ("ok", "oom", "failed", "interrupted")
_PEAK_KEYS = ("allocated_bytes", "t_ns", "step", "micro_batch", "phase", "by_category", "detail")


@dataclass(frozen=True)
class RankProfile:
    rank: int
    status: str
    message: str
    steps_completed: int
    steady_state: bool
    peak: PeakBreakdown | None  # the steady-state allocated peak and what was alive at it
    phases: dict[str, PeakBreakdown]
    cuda: dict[str, Any] | None  # memory_stats / NVML figures of a CUDA run
    identity: dict[str, Any]  # facts read off the tensors (param storage bytes, parameter counts)


@dataclass(frozen=True)
class Profile:
    path: Path
    status: str
    message: str
    device: str
    num_ranks: int
    ranks: tuple[RankProfile, ...]
    meta: dict[str, Any] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)

    def model_spec(self):
        from planner.models import spec_from_config

        m = self.meta["model"]
        return spec_from_config(m["config"], m["name"], m.get("source", "profile"))

    def train_spec(self):
        from planner.specs import train_spec_from_dict

        return train_spec_from_dict(self.meta["train"])

    def cpu_kernels(self, rank: int = 0):
        """The CPU kind rank ``rank`` ran on, with oneDNN's workspaces for its estimate's matmuls
        (planner/estimate/step/cpu_kernels.py); None for a GPU profile. A CPU profile recorded before the kind was
        (issue 13) ran on the AVX2 path the first accuracy table was measured on: ``cpu_kernels.LEGACY``."""
        from planner.estimate.step.cpu_kernels import LEGACY, CpuKernels

        if self.device != "cpu":
            return None
        for r in self.summary.get("ranks", []):
            if isinstance(r, dict) and r.get("rank") == rank and isinstance(r.get("cpu_kernels"), dict):
                return CpuKernels.from_dict(r["cpu_kernels"])
        return LEGACY

    def timeline(self):
        """Every allocation event of every rank (pandas DataFrame)."""
        import pandas as pd

        return pd.read_parquet(self.path / "timeline.parquet")


# ---------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def staging_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.partial-{os.getpid()}"


# Every name a profile directory holds (assemble() and the recorders): --force replaces nothing else.
PROFILE_FILES = frozenset({"meta.json", "summary.json", "timeline.parquet", "launcher.log"})
_PROFILE_RANK_FILE = re.compile(r"(snapshot-rank\d+\.pickle|nvml-rank\d+\.parquet)")


def _foreign_entry(final: Path) -> str | None:
    """The first entry of ``final`` that a planner profile never holds (a name outside the profile's files, or
    one of its names that is not a regular file); None for an empty directory or a profile. --force must not
    delete a user's data because it happens to sit beside a ``meta.json``."""
    try:
        entries = sorted(final.iterdir())
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    for entry in entries:
        name = entry.name
        if name not in PROFILE_FILES and not _PROFILE_RANK_FILE.fullmatch(name):
            return f"it holds {name!r}, which no profile has"
        try:
            regular = stat.S_ISREG(os.lstat(entry).st_mode)
        except OSError:
            regular = False
        if not regular:
            return f"its {name!r} is not a regular file"
    return None


def check_target(final: Path, force: bool) -> None:
    if final.exists() and not final.is_dir():
        raise PlannerError(f"--out {str(final)!r} exists and is not a directory.")
    if final.exists() and not force:
        raise PlannerError(f"--out {str(final)!r} already exists; pass --force to replace it.")
    why = _foreign_entry(final) if final.exists() else None
    if why is not None:
        raise PlannerError(
            f"--out {str(final)!r} is not a planner profile ({why}); --force replaces only an empty directory or "
            "an earlier profile, so choose another --out."
        )


def assemble(
    staging: Path,
    meta: dict,
    ranks: list[dict],
    status: str,
    message: str,
    num_ranks: int,
    extra_files: list[str] | None = None,
) -> dict:
    """Merge per-rank outputs under ``staging/ranks`` into the final layout and write summary.json last."""
    import pandas as pd

    rank_dir = staging / "ranks"
    frames = []
    files: list[str] = list(extra_files or [])
    for r in ranks:
        for name in r.pop("files", []):
            src = rank_dir / name
            if name.startswith("timeline-rank") and src.exists():
                frames.append(pd.read_parquet(src))
            elif src.exists():
                os.replace(src, staging / name)
                files.append(name)
    if frames:
        timeline = pd.concat(frames, ignore_index=True)
        for c in ("phase", "category", "origin"):
            timeline[c] = timeline[c].astype("category")
    else:
        timeline = pd.DataFrame(
            {c: pd.Series(dtype="int64") for c in ("t_ns", "step", "micro_batch", "alloc_id", "delta_bytes",
                                                   "allocated_bytes", "rank")}
            | {c: pd.Series(dtype="category") for c in ("phase", "category", "origin")}
        )
    timeline.to_parquet(staging / "timeline.parquet", compression="zstd", index=False)
    files.append("timeline.parquet")
    if rank_dir.exists():
        shutil.rmtree(rank_dir)
    write_json_atomic(staging / "meta.json", meta)
    files.append("meta.json")
    summary = {
        "schema": SCHEMA,
        "complete": True,
        "status": status,
        "message": message,
        "device": meta.get("device", ""),
        "num_ranks": num_ranks,
        "steps": meta.get("steps"),
        "steps_completed": min((r.get("steps_completed", 0) for r in ranks), default=0),
        "steps_recorded": min((r.get("steps_recorded", 0) for r in ranks), default=0),
        "ranks": sorted(ranks, key=lambda r: r["rank"]),
        "files": {name: {"bytes": (staging / name).stat().st_size, "sha256": _sha256(staging / name)}
                  for name in sorted(files)},
    }  # fmt: skip
    write_json_atomic(staging / "summary.json", summary)
    return summary


def publish(staging: Path, final: Path, force: bool) -> None:
    """Rename the assembled directory into place (replacing an old profile only with force)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        check_target(final, force)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


# ---------------------------------------------------------------- loading


def _bad(path: Path, why: str) -> PlannerError:
    return PlannerError(f"{str(path)!r} is not a valid profile directory: {why}.")


def _peak(path: Path, d: Any, where: str) -> PeakBreakdown:
    if not isinstance(d, dict) or any(k not in d for k in _PEAK_KEYS):
        raise _bad(path, f"{where} lacks one of {', '.join(_PEAK_KEYS)}")
    by_cat = d["by_category"]
    if not isinstance(by_cat, dict) or set(by_cat) != set(CATEGORIES) or not all(
        isinstance(v, int) for v in by_cat.values()
    ):
        raise _bad(path, f"{where} has no integer bytes for each of {', '.join(CATEGORIES)}")
    if not isinstance(d["allocated_bytes"], int) or sum(by_cat.values()) != d["allocated_bytes"]:
        raise _bad(path, f"{where}: the categories do not add up to allocated_bytes")
    return PeakBreakdown(**{k: d[k] for k in _PEAK_KEYS})


def _rank(path: Path, d: Any) -> RankProfile:
    if not isinstance(d, dict):
        raise _bad(path, "a rank entry is not an object")
    try:
        rank = int(d["rank"])
        status = d["status"]
        where = f"rank {rank}"
        peak = _peak(path, d["peak"], f"{where} peak") if d.get("peak") is not None else None
        phases = {k: _peak(path, v, f"{where} phase {k}") for k, v in (d.get("phases") or {}).items()}
        if status not in STATUSES:
            raise _bad(path, f"rank {rank} has status {status!r}, not one of {', '.join(STATUSES)}")
        return RankProfile(
            rank=rank,
            status=status,
            message=str(d.get("message", "")),
            steps_completed=int(d.get("steps_completed", 0)),
            steady_state=bool(d.get("steady_state", False)),
            peak=peak,
            phases=phases,
            cuda=d.get("cuda"),
            identity=dict(d.get("identity") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"a rank entry is malformed ({type(exc).__name__}: {exc})") from None


def load_profile(path: str | os.PathLike) -> Profile:
    """Load and check a profile directory; anything malformed raises PlannerError with one sentence."""
    path = Path(path)
    if not path.is_dir():
        raise PlannerError(f"profile {str(path)!r} does not exist or is not a directory.")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise _bad(path, "it has no summary.json (the run never finished writing it, or this is not a profile)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"summary.json cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(summary, dict) or summary.get("schema") != SCHEMA or summary.get("complete") is not True:
        raise _bad(path, f"summary.json is not a complete schema-{SCHEMA} profile summary")
    if summary.get("status") not in STATUSES:
        raise _bad(path, f"its status {summary.get('status')!r} is not one of {', '.join(STATUSES)}")
    files = summary.get("files")
    if not isinstance(files, dict) or "meta.json" not in files or "timeline.parquet" not in files:
        raise _bad(path, "summary.json does not list meta.json and timeline.parquet")
    for name, info in sorted(files.items()):
        f = path / name
        if not f.is_file():
            raise _bad(path, f"{name} is missing")
        if not isinstance(info, dict) or f.stat().st_size != info.get("bytes") or _sha256(f) != info.get("sha256"):
            raise _bad(path, f"{name} does not match the size and hash recorded in summary.json (truncated or edited)")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"meta.json cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict) or not isinstance(meta.get("train"), dict):
        raise _bad(path, "meta.json lacks the model and train inputs")
    if not isinstance(meta["model"].get("config"), dict):
        raise _bad(path, "meta.json lacks the model's config dict")
    ranks_raw = summary.get("ranks")
    if not isinstance(ranks_raw, list) or not ranks_raw:
        raise _bad(path, "summary.json has no ranks")
    ranks = tuple(_rank(path, r) for r in ranks_raw)
    num_ranks = summary.get("num_ranks")
    if not isinstance(num_ranks, int) or num_ranks != len(ranks):
        raise _bad(path, f"summary.json lists {len(ranks)} ranks but num_ranks is {num_ranks!r}")
    return Profile(
        path=path,
        status=summary["status"],
        message=str(summary.get("message", "")),
        device=str(summary.get("device", "")),
        num_ranks=num_ranks,
        ranks=ranks,
        meta=meta,
        summary=summary,
    )
