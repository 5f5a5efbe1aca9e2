"""Writing and reading the files a user names on the command line: the one place that does it safely.

``write_atomic`` writes a file the user named (``estimate --csv``, ``report -o``, ``validate`` reports): only a
new file or an existing regular file, never through or over a symbolic link, never over a directory, device
node, FIFO or socket, and never over a file the same command reads (``inputs``, compared by identity, so
another spelling of the path or a hard link is caught too). The text goes to a temporary file in the same
directory, is flushed to disk and renamed over the target, so a reader sees the old file or the new one and a
failure leaves the old file as it was and no temporary file behind. A replaced file keeps its permissions.

``check_output_file`` is the same check alone, for commands that want to refuse before long work.
``read_small_regular`` reads a file planner wrote itself (a marker) without following a link, blocking on a
FIFO or reading without bound. Every refusal is a PlannerError of one sentence.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from planner.errors import PlannerError

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """'a regular file', 'a symbolic link', 'a FIFO (named pipe)', ... for an ``lstat`` mode."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PlannerError(f"cannot inspect {str(path)!r}: {exc.strerror or exc}.") from None


def _same_file(a: os.stat_result, path: Path) -> bool:
    try:
        b = os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_output_file(
    path: str | os.PathLike, *, flag: str, inputs: Mapping[str, str | os.PathLike | None] | None = None
) -> Path:
    """Refuse (PlannerError) unless ``path`` is a new file or an existing regular file that is no input.

    ``inputs`` maps a description (``"the model config"``) to a path the command reads; ``None`` paths are
    skipped. Returns ``path`` as a Path.
    """
    if not str(path).strip():
        raise PlannerError(f"{flag} must name a file, got an empty path.")
    path = Path(path).expanduser()
    shown = str(path)
    st = _lstat(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = kind_of(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            raise PlannerError(
                f"{flag} {shown!r} is a symbolic link; planner neither writes through nor replaces links, so give "
                "the path of a new or regular file."
            )
        raise PlannerError(
            f"{flag} {shown!r} is {what}, not a regular file; planner writes only new or regular files, so choose "
            "another path."
        )
    if st is not None:
        for description, source in (inputs or {}).items():
            if source is not None and str(source) and _same_file(st, Path(source)):
                raise PlannerError(
                    f"{flag} {shown!r} is an input of this command ({description}); writing there would destroy "
                    "it, so choose another path."
                )
    try:
        parent_is_dir = stat.S_ISDIR(os.stat(path.parent).st_mode)
    except OSError:
        parent_is_dir = True  # missing: write_atomic creates it or says so
    if not parent_is_dir:
        raise PlannerError(f"{flag} {shown!r}: {str(path.parent)!r} is not a directory.")
    return path


def write_atomic(
    path: str | os.PathLike,
    data: str | bytes,
    *,
    flag: str,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
    make_parents: bool = False,
) -> int:
    """Check ``path`` (see ``check_output_file``) and write ``data`` to it atomically; returns the bytes written.

    Without ``make_parents`` a missing parent directory is refused; with it, it is created.
    """
    path = check_output_file(path, flag=flag, inputs=inputs)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        if not make_parents:
            raise PlannerError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist.")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PlannerError(f"cannot create the directory of {flag} {str(path)!r}: {exc.strerror or exc}.") from None
    old = _lstat(path)
    if old is not None:
        mode = stat.S_IMODE(old.st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        check_output_file(path, flag=flag, inputs=inputs)  # nothing took its place meanwhile
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise PlannerError(f"cannot write {flag} {str(path)!r}: {exc.strerror or exc}.") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    _fsync_dir(parent)
    return len(raw)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems cannot open a directory, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_small_regular(path: str | os.PathLike, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not a link, FIFO, device, ...) of at most ``max_bytes``;
    None otherwise or when it cannot be read. Never blocks on a FIFO and never reads more than ``max_bytes``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return data if len(data) <= max_bytes else None
    except OSError:
        return None
    finally:
        os.close(fd)


def sha256_of_regular(path: str | os.PathLike, max_bytes: int) -> str | None:
    """SHA-256 of a regular file of at most ``max_bytes`` (see ``read_small_regular``), else None."""
    data = read_small_regular(path, max_bytes)
    return None if data is None else hashlib.sha256(data).hexdigest()
