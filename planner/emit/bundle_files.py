"""Writing a run bundle all or nothing, and the marker that says which files planner wrote.

``write_files`` writes a bundle's files and the marker ``.planner-bundle.json``, which records the SHA-256 of
every file planner wrote (bundle.py renders the files and re-exports these names). The rules:

- A new directory is assembled under a temporary name beside the target and renamed into place.
- An existing directory that is empty or holds a bundle planner wrote (a valid marker) is updated; one that
  holds anything else needs ``force``, and even then only the bundle's own file names are written.
- A file planner wrote and the user edited since (its hash no longer matches the marker), or a file at a
  bundle name planner did not write, is never overwritten without ``force`` and never deleted: a re-run that
  would do either is refused. A file of the previous bundle that the new plan lacks (``ds_config.json``) is
  removed only when it is still exactly what planner wrote.
- The marker counts only when it is a small regular file (not a link, FIFO or device) that lists nothing
  but bundle file names; anything else is no marker.
- An update is staged in a temporary directory inside the target, the files it replaces are kept aside,
  and the new files are renamed in with the marker last; a failure at any step puts every old file back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from planner import __version__
from planner.emit.sample_data import SAMPLE_DATASET
from planner.errors import PlannerError
from planner.safe_write import read_small_regular, sha256_of_regular

MARKER = ".planner-bundle.json"
MARKER_FORMAT = 2  # 1: {"files": [names]}; 2: {"files": {name: sha256}}
MARKER_MAX_BYTES = 64 * 1024
FILE_MAX_BYTES = 64 * 2**20  # a bundle file larger than this is not one planner wrote
EXECUTABLE = ("launch.sh", "train.py")
# Every name a bundle can hold: write_files never writes, replaces or removes anything else.
BUNDLE_FILES = frozenset({"PLAN.md", "accelerate_config.yaml", "ds_config.json", "launch.sh", "model_config.json",
                          "plan.json", "train.py", SAMPLE_DATASET})  # fmt: skip
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_marker(directory: Path) -> dict[str, str | None] | None:
    """What the marker in ``directory`` records, ``{name: sha256}`` (None hashes from a format-1 marker); None
    when there is no valid marker: not a small regular file, not JSON, or naming a file no bundle has."""
    raw = read_small_regular(directory / MARKER, MARKER_MAX_BYTES)
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, list):
        recorded: dict[str, str | None] = {f: None for f in files if isinstance(f, str)}
        if len(recorded) != len(files):
            return None
    elif isinstance(files, dict):
        recorded = dict(files)
        if not all(isinstance(h, str) and _SHA256.fullmatch(h) for h in recorded.values()):
            return None
    else:
        return None
    if not set(recorded) <= BUNDLE_FILES:
        return None
    return recorded



def _write_new(path: Path, text: str) -> None:
    with open(path, "x", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    path.chmod(0o755 if path.name in EXECUTABLE else 0o644)


def _plural(names: list[str]) -> str:
    return ", ".join(names)


def write_files(files: dict[str, str], out_dir: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Write ``files`` into ``out_dir`` with the ownership rules of the module doc; returns the written paths."""
    if not str(out_dir).strip():
        raise PlannerError("--out must name a directory, got an empty path.")
    unknown = sorted(set(files) - BUNDLE_FILES)
    if unknown:
        raise PlannerError(f"{_plural(unknown)} is not a bundle file name; a bundle holds {_plural(sorted(BUNDLE_FILES))}.")
    target = Path(out_dir).expanduser()
    if target.exists() and not target.is_dir():
        raise PlannerError(f"--out {str(target)!r} is a file, not a directory; choose a directory path.")
    hashes = {name: _sha256(text) for name, text in files.items()}
    if not target.exists():
        _write_new_directory(files, hashes, target)
    else:
        _update_directory(files, hashes, target, force)
    return sorted(target / name for name in files)


def _marker_text(hashes: dict[str, str]) -> str:
    return json.dumps(
        {"files": dict(sorted(hashes.items())), "format": MARKER_FORMAT, "planner_version": __version__}, indent=2
    ) + "\n"


def _write_new_directory(files: dict[str, str], hashes: dict[str, str], target: Path) -> None:
    """Assemble the bundle under a temporary name beside ``target`` and rename it into place: all at once."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise PlannerError(f"cannot create --out directory {str(target)!r}: {exc.strerror or exc}.") from None
    try:
        for name, text in {**files, MARKER: _marker_text(hashes)}.items():
            _write_new(staging / name, text)
        staging.chmod(0o755)
        os.rename(staging, target)
    except OSError as exc:
        raise PlannerError(f"cannot write the bundle into {str(target)!r}: {exc.strerror or exc}.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _update_directory(files: dict[str, str], hashes: dict[str, str], target: Path, force: bool) -> None:
    """Update the bundle in the existing directory ``target``: check ownership, stage, swap, roll back."""
    shown = str(target)
    try:
        entries = {p.name: os.lstat(p) for p in target.iterdir()}
    except OSError as exc:
        raise PlannerError(f"cannot read --out directory {shown!r}: {exc.strerror or exc}.") from None
    recorded = read_marker(target) if MARKER in entries else None
    if entries and recorded is None and not force:
        raise PlannerError(
            f"--out directory {shown!r} is not empty and was not written by planner; "
            "choose a new or empty directory, or pass --force to write the bundle files into it."
        )
    recorded = recorded or {}
    for name in sorted({*files, MARKER} & set(entries)):
        if stat.S_ISDIR(entries[name].st_mode):
            raise PlannerError(f"--out {shown!r} holds a directory named {name!r}, where the bundle writes a file; "
                               "move it away or choose another --out.")  # fmt: skip

    def planners(name: str) -> bool:
        """Still exactly what planner wrote (or what it is about to write)."""
        if not stat.S_ISREG(entries[name].st_mode):
            return False
        current = sha256_of_regular(target / name, FILE_MAX_BYTES)
        return current is not None and current in (recorded.get(name), hashes.get(name))

    overwrite_user = [n for n in sorted(files) if n in entries and not planners(n)]
    stale = [n for n in sorted(set(recorded) - set(files)) if n in entries]
    remove = [n for n in stale if planners(n)]
    keep_user = [n for n in stale if n not in remove]
    if (overwrite_user or keep_user) and not force:
        raise PlannerError(
            f"--out {shown!r}: {_plural(overwrite_user + keep_user)} changed since planner wrote "
            f"{'them' if len(overwrite_user + keep_user) > 1 else 'it'} (or planner did not write "
            f"{'them' if len(overwrite_user + keep_user) > 1 else 'it'}); pass --force to overwrite the bundle's "
            "files anyway (planner never deletes a changed file), or choose another --out."
        )
    # keep_user (changed files the new plan lacks) stay, and leave the marker: they are the user's now.
    _swap_in(files, hashes, target, remove)


def _swap_in(files: dict[str, str], hashes: dict[str, str], target: Path, remove: list[str]) -> None:
    """Stage the files inside ``target``, then rename them in (the marker last), keeping every replaced or
    removed file aside; on any failure put the old files back, so the directory is the old bundle."""
    shown = str(target)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".planner-bundle-", suffix=".tmp", dir=target))
    except OSError as exc:
        raise PlannerError(f"cannot write the bundle into {shown!r}: {exc.strerror or exc}.") from None
    aside = staging / ".previous"
    try:
        aside.mkdir()
        for name, text in files.items():
            _write_new(staging / name, text)
        _write_new(staging / MARKER, _marker_text(hashes))
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PlannerError(f"cannot write the bundle into {shown!r}: {exc.strerror or exc}.") from None
    done: list[tuple[str, bool]] = []  # (name, an old file is aside) for every change made to target
    steps = [*(("put", n) for n in sorted(files)), *(("remove", n) for n in remove), ("put", MARKER)]
    try:
        for op, name in steps:
            dst = target / name
            if op == "remove":
                os.replace(dst, aside / name)
                done.append((name, True))
            elif not os.path.lexists(dst):
                os.replace(staging / name, dst)
                done.append((name, False))
            else:
                try:  # a hard link keeps the old file aside with no moment where the name is missing
                    os.link(dst, aside / name, follow_symlinks=False)
                except OSError:
                    os.replace(dst, aside / name)
                    done.append((name, True))
                    os.replace(staging / name, dst)
                else:
                    os.replace(staging / name, dst)
                    done.append((name, True))
    except OSError as exc:
        failed = []
        for name, had_old in reversed(done):
            try:
                if had_old:
                    os.replace(aside / name, target / name)
                else:
                    os.unlink(target / name)
            except OSError:
                failed.append(name)
        if failed:  # keep the staging directory: the old files are in it
            raise PlannerError(
                f"cannot write the bundle into {shown!r} ({exc.strerror or exc}) nor put back {_plural(failed)}; "
                f"the previous files are in {str(aside)!r}."
            ) from None
        shutil.rmtree(staging, ignore_errors=True)
        raise PlannerError(
            f"cannot write the bundle into {shown!r}: {exc.strerror or exc}; the previous bundle was left as it was."
        ) from None
    shutil.rmtree(staging, ignore_errors=True)


__all__ = ["BUNDLE_FILES", "EXECUTABLE", "FILE_MAX_BYTES", "MARKER", "MARKER_FORMAT", "MARKER_MAX_BYTES", "read_marker",
           "write_files"]
