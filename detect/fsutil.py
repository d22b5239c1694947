"""Writing files so that nothing is lost: one atomic-write helper, and run-folder naming.

Every file the product writes (annotations and their fixes, checkpoints, predictions,
reports, the demo data) goes through :func:`atomic_open` / :func:`write_atomic`:

* the data is written to a fresh temporary file in the destination's folder (created with
  ``O_EXCL | O_NOFOLLOW``, so no existing file or link is ever opened for writing), flushed
  and ``fsync``-ed;
* it is then renamed over the destination. A rename replaces a symbolic link at the
  destination by the new file; it never writes through the link to its target;
* a crash, a full disk or Ctrl-C before the rename leaves the destination as it was and
  removes the temporary file.

So a reader sees the old file or the new one, never half of one. An existing regular
file keeps its permission bits; a new file gets the usual ones (0666 less the umask).

:func:`unique_folder` gives ``parent/name``, or ``name2``, ``name3``... when that exists and is
not empty: runs and prediction folders are never overwritten.

This module imports nothing from the rest of the project.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_open", "unique_folder", "write_atomic"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None, fsync: bool = True
) -> Iterator[IO]:
    """Open a temporary file to write; on a clean exit it replaces ``path`` atomically.

    Args:
        path: the destination; its folder is created if missing.
        mode: ``"wb"`` or ``"w"`` (text, with ``encoding``, default UTF-8).
        fsync: flush the data to disk before the rename (and the folder after it), so a
            power cut leaves the old or the new file, not an empty one.

    Raises:
        OSError: the folder cannot be written; nothing was changed.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
        keep_mode: int | None = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None
    except FileNotFoundError:
        keep_mode = None
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_folder(folder)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (see :func:`atomic_open`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unique_folder(parent: str | os.PathLike[str], name: str) -> Path:
    """``parent/name``, or ``parent/name2``, ``name3``... when that exists and is not empty."""
    parent = Path(parent)
    folder = parent / name
    n = 2
    while folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        folder = parent / f"{name}{n}"
        n += 1
    return folder
