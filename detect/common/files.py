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

:func:`write_new` writes a file that must not exist yet (backups): it never replaces or
follows anything already there. :func:`unique_folder` claims ``parent/name``, or ``name2``,
``name3``... when that exists, by creating it atomically: runs and prediction folders are
never overwritten, nor shared by two runs started at once. A process killed mid-write leaves its hidden temporary file behind;
:func:`remove_stale_temps` clears those of a file before it is written again.

Reading: :func:`read_regular` reads only regular files (a FIFO named ``x.xml`` would block a
reader forever; a device could stream without end).

This module imports nothing from the rest of the project.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Iterator

__all__ = [
    "atomic_open",
    "check_target",
    "check_writable",
    "folder_problem",
    "is_inside",
    "is_regular",
    "output_problem",
    "outputs_problem",
    "place_file",
    "read_regular",
    "remove_stale_temps",
    "unique_folder",
    "unverified",
    "write_atomic",
    "write_new",
]

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
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    except OSError as exc:
        raise _named(exc, tmp, path) from None
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            raise _named(exc, tmp, path) from None
        raise
    if fsync:
        _fsync_folder(folder)


def _named(exc: OSError, tmp: Path, path: Path) -> OSError:
    """``exc`` naming the destination, not the hidden temporary file (which the user never
    asked for), so a message built from ``exc.filename`` names the file that was not written."""
    named = type(exc)(exc.errno, exc.strerror or str(exc), str(path)) if exc.errno else exc
    return named


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (see :func:`atomic_open`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)
    return Path(path)


# A temporary name is ".NAME.RANDOM.tmp". NAME is the destination's name cut to this many
# bytes, so that any legal name (up to 255 bytes) still gives a legal temporary name.
_TEMP_NAME_BYTES = 96


def _temp_prefix(path: Path) -> str:
    """``.NAME`` of :func:`_temp_name`: the start of the destination's name, at most
    :data:`_TEMP_NAME_BYTES` bytes (cut at a character boundary)."""
    raw = os.fsencode(path.name)
    if len(raw) > _TEMP_NAME_BYTES:
        raw = raw[:_TEMP_NAME_BYTES]
        while raw:
            try:
                raw.decode("utf-8")
                break
            except UnicodeDecodeError:
                raw = raw[:-1]
    return "." + os.fsdecode(raw)


def _temp_name(path: Path) -> Path:
    return path.parent / f"{_temp_prefix(path)}.{secrets.token_hex(6)}.tmp"


def remove_stale_temps(path: str | os.PathLike[str]) -> int:
    """Remove temporary files :func:`atomic_open` left for ``path`` when a process was killed
    mid-write; returns how many. Call it only when no other process writes ``path``."""
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f"{glob_escape(_temp_prefix(path))}.*.tmp"):
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(tmp).st_mode):
                os.unlink(tmp)
                removed += 1
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob wildcards made literal."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_new(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path``, which must not exist: written to a temporary file, then
    hard-linked into place, which fails rather than replace (or follow) anything there.

    Raises:
        FileExistsError: ``path`` exists (as a file, a link, anything).
    """
    path = Path(path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_folder(path.parent)
    return path


def is_regular(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file (following a symbolic link)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file.

    Raises:
        OSError: it cannot be read, or it is not a regular file (``strerror`` says which).
    """
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a folder)", str(path))
        return fh.read()


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Make sure ``folder`` exists (creating it) and a file can be created in it.

    Raises:
        OSError: it is a file, cannot be created, or is not writable (``strerror`` says which).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OSError(errno.ENOTDIR, "it is a file, not a folder", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    probe = _temp_name(folder / "write-test")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    os.close(fd)
    os.unlink(probe)
    return folder


def check_target(path: str | os.PathLike[str]) -> Path:
    """Make sure a file can be written at ``path`` (by :func:`atomic_open`) before the work
    that produces it is done; creates nothing that stays.

    Raises:
        OSError: ``path`` is a folder, a folder above it is a file, or the nearest existing
            folder above it cannot be written (read-only, no permission); ``strerror`` says
            which and ``filename`` names the culprit.
    """
    path = Path(path)
    if path.is_dir():
        raise OSError(errno.EISDIR, "it is a folder, not a file", str(path))
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OSError(errno.ENOTDIR, "it is a file, not a folder", str(folder))
    probe = _temp_name(folder / "write-test")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create a file there ({exc.strerror})", str(folder)) from None
    os.close(fd)
    os.unlink(probe)
    return path


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
    """Claim ``parent/name``, or ``parent/name2``, ``name3``... when that exists, by creating
    it, and return it.

    The claim is ``os.mkdir``, which the file system makes atomic: of two runs started at the
    same moment with the same folder, one creates ``name`` and the other gets ``FileExistsError``
    and moves on to ``name2``; no two processes ever hold one folder. (An existing folder, even
    an empty one, is never taken over: seeing it empty and using it would not be atomic.)
    ``parent`` is created when missing.

    Raises:
        OSError: ``parent`` cannot be created or written (read-only, full, under a file).
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        folder = parent / (name if n == 1 else f"{name}{n}")
        try:
            os.mkdir(folder)
        except FileExistsError:
            n += 1
            continue
        return folder


def output_problem(path: str | os.PathLike[str], overwrite: bool = False) -> str | None:
    """What stops a command from writing its output file ``path``, in a few words for a
    one-line error, or None when it can be written. Called before the work starts, so a
    run of minutes never ends in an output it cannot write.

    The one rule of every output file a command writes: an existing file is replaced only
    with ``overwrite`` (``--overwrite``); a folder, a file where a folder should be, or a
    folder that cannot be written is never usable.
    """
    path = Path(path)
    if path.is_dir():
        return f"{path}: it is a folder; name a file"
    if os.path.lexists(path) and not overwrite:
        return f"{path}: exists; pass --overwrite to replace it, or name another file"
    try:
        check_target(path)
    except OSError as exc:
        return f"{exc.filename or path}: {exc.strerror or exc}"
    return None


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, links resolved (for paths that may
    not exist yet, their nearest existing folder decides)."""
    a, b = Path(path).resolve(), Path(folder).resolve()
    return a == b or b in a.parents


LINK_MODES = ("link", "copy", "symlink")
"""How a converted dataset holds its images: ``link`` a hard link (a second name of the
same file: every tool, zip and upload reads it as a file) where source and destination
share a file system, else a copy; ``copy`` always a copy; ``symlink`` an absolute symbolic
link (on request: it breaks when the dataset moves to another machine)."""


def place_file(source: str | os.PathLike[str], target: str | os.PathLike[str], mode: str = "link") -> str:
    """Make ``target`` hold the file ``source`` (see :data:`LINK_MODES`); returns how
    (``link``, ``copy`` or ``symlink``). ``target`` must not exist: nothing is replaced.

    Raises:
        OSError: it cannot be made (``filename`` names ``target``).
    """
    if mode not in LINK_MODES:
        raise ValueError(f"mode must be one of {LINK_MODES}, got {mode!r}")
    source, target = Path(source).resolve(), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        os.symlink(source, target)
        return "symlink"
    if mode == "link":
        try:
            os.link(source, target)
            return "link"
        except OSError as exc:
            # Another file system (EXDEV), or one without hard links (EPERM, ENOTSUP): copy.
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EACCES):
                raise
    import shutil

    shutil.copyfile(source, target)
    return "copy"


def outputs_problem(overwrite: bool, *options: tuple[str, str | os.PathLike[str] | None]) -> str | None:
    """The first :func:`output_problem` among a command's ``(option, path)`` outputs (paths
    that are None are not asked for), as ``"--json PATH: why"``; None when all can be written."""
    for option, path in options:
        if path is not None and path != "":
            problem = output_problem(path, overwrite)
            if problem is not None:
                return f"{option} {problem}"
    return None


def folder_problem(path: str | os.PathLike[str], overwrite: bool = False, *,
                   apart_from: str | os.PathLike[str] | None = None) -> str | None:
    """What stops a command from writing its files into the folder ``path``, or None.
    The folder rule beside :func:`output_problem`'s: a folder that already holds files is
    written into only with ``overwrite``; a file in its place, a folder that cannot be
    created or written, and (``apart_from``) a folder that is or lies inside the user's
    data, or holds it, are refused."""
    path = Path(path)
    if apart_from is not None and (is_inside(path, apart_from) or is_inside(apart_from, path)):
        return f"{path}: is, holds or lies inside {apart_from}; pick a folder outside it"
    if os.path.lexists(path) and not path.is_dir():
        return f"{path}: it is a file, not a folder"
    if path.is_dir() and not overwrite and any(path.iterdir()):
        return f"{path}: holds files already; pass --overwrite to write into it, or name a new folder"
    try:
        check_target(path / "x")
    except OSError as exc:
        return f"{exc.filename or path}: {exc.strerror or exc}"
    return None


def unverified(path: str | os.PathLike[str], before: tuple | None) -> str:
    """After a command was stopped between writing ``path`` and checking it: removes the
    unchecked file when there was none before (``before``: the ``(inode, mtime_ns, size)``
    of the earlier file, None when absent) and says what is on disk now."""
    path = Path(path)
    try:
        st = os.stat(path)
        now: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        now = None
    if now == before:
        return "nothing was written" + (" (the earlier file is unchanged)" if before else "")
    if before is None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return f"{path} was written but not checked, so it was removed; nothing was written"
    return f"{path} was replaced but not checked; run the export again with --overwrite to check it"
