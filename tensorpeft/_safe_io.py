"""Careful file I/O: bounded reads of untrusted files, atomic saves of one file or of a whole directory.

Shared by :mod:`tensorpeft.nn` (adapter files) and :mod:`tensorpeft.experiments` (results), hence a leaf of
the package root.

Reading (:func:`read_capped`, :func:`parse_json`): a file is opened once and must be a regular file (a
directory, a device such as ``/dev/zero``, a FIFO or a socket is refused, and so is a symlink loop); at most
``cap + 1`` bytes are read. JSON is parsed strictly: no ``NaN``/``Infinity`` constants, no number that only
fits as an infinite float (``1e999``), at most :data:`MAX_JSON_DEPTH` levels of nesting.

Saving one file (:func:`write_file_atomic`): the bytes are written, fsynced, to a fresh hidden sibling
``.<name>.tensorpeft-file-<pid>-<random>`` that then replaces the file in one ``os.replace``; a failure
removes the sibling, so the old file is kept whole and no temporary is left behind.

Saving a directory (:func:`write_directory_atomic`): the files are written, fsynced, into a fresh hidden sibling
directory ``.<name>.tensorpeft-new-<pid>-<random>`` together with hard links (or copies) of every other file
the user keeps in the target directory; that directory then takes the target's place in one step. On Linux
``renameat2(RENAME_EXCHANGE)`` swaps the two directories atomically (the old one, now under the hidden name,
is removed afterwards); a target that does not exist yet is a plain ``rename``. Where the exchange is not
supported the swap is journalled: ``.<name>.tensorpeft-swap.json`` records both hidden names before the
target is renamed aside and the new directory renamed into place, and the next save or load of that target
finishes an interrupted swap (or rolls back one that had not begun). Hidden siblings left by a save that was
killed (their process id is no longer alive) are removed by the next save.

A directory that cannot be swapped as a whole (a mount point, a writable directory under a read-only
parent) is saved in place instead: the files are staged in ``<target>/.tensorpeft-stage-<pid>-<random>/``,
a ``MANIFEST.json`` written last commits them, and they are renamed into place one by one; a save killed
after the commit is finished by the next save or load, one killed before it is discarded. Only the
standard library is used here, so the crash tests can run this module in a bare subprocess.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import secrets
import shutil
import stat
import sys
from pathlib import Path

__all__ = [
    "MAX_JSON_DEPTH",
    "fresh_sibling",
    "fsync_dir",
    "parse_json",
    "read_capped",
    "recover",
    "write_directory_atomic",
    "write_file_atomic",
]

MAX_JSON_DEPTH = 64
TAG = ".tensorpeft-"
_STALE = re.compile(r"(new|old|journal)-(\d+)-[0-9a-f]+")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class ExchangeUnsupportedError(OSError):
    """``renameat2(RENAME_EXCHANGE)`` is not available on this platform or file system."""


class _NoSwapError(Exception):
    """The target cannot be swapped as a whole (a mount point, a read-only parent): stage inside it."""


_CANNOT_SWAP = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EBUSY, errno.EXDEV)
_STAGE = re.compile(re.escape(TAG) + r"stage-(\d+)-[0-9a-f]+")
_MANIFEST = "MANIFEST.json"


# ---------------------------------------------------------------------------------------------- reading
def read_capped(file: str | os.PathLike, cap: int) -> bytes:
    """Read a regular file of at most ``cap`` bytes, opening it once.

    Parameters
    ----------
    file : str or PathLike
        The file; a symlink to a regular file is followed.
    cap : int
        Largest accepted size in bytes; at most ``cap + 1`` bytes are ever read.

    Returns
    -------
    bytes
        The whole content.

    Raises
    ------
    FileNotFoundError
        If ``file`` does not exist (the caller words the message).
    ValueError
        If it is not a regular file, is a symlink loop, cannot be read, exceeds ``cap`` or changes while read.
    """
    _require_regular(file, _stat(file))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(file, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{file} cannot be opened: {exc.strerror or exc}.") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())  # the file actually opened, not the name checked above
        _require_regular(file, info)
        if info.st_size > cap:
            raise ValueError(f"{file} has {info.st_size:,d} bytes, more than the limit of {cap:,d} bytes for it.")
        try:
            data = fh.read(info.st_size + 1)
        except OSError as exc:
            raise ValueError(f"{file} cannot be read: {exc.strerror or exc}.") from None
    if len(data) != info.st_size:
        raise ValueError(f"{file} changed size while it was read ({info.st_size:,d} -> {len(data):,d}+ bytes).")
    return data


def _stat(file) -> os.stat_result:
    try:
        return os.stat(file)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{file} is a symlink loop, not a regular file.") from None
        raise ValueError(f"{file} cannot be read: {exc.strerror or exc}.") from None


def _require_regular(file, info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
    raise ValueError(f"{file} must be a regular file, but it is {kind}.")


def parse_json(data: bytes, file) -> object:
    """Parse ``data`` (the content of ``file``) as strict JSON.

    Raises
    ------
    ValueError
        Naming ``file`` (and the field, for non-finite numbers and too deep nesting) if the text is not
        UTF-8, not JSON, uses ``NaN``/``Infinity`` or a number too large for a float, or nests deeper than
        :data:`MAX_JSON_DEPTH`.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file} is not UTF-8 text: {exc}.") from None
    try:
        value = json.loads(text, parse_constant=float)
    except RecursionError:
        raise ValueError(f"{file} nests JSON more than {MAX_JSON_DEPTH} levels deep.") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise ValueError(f"{file} is not valid JSON: {exc}.") from None
    _check_tree(value, file)
    return value


def _check_tree(value, file) -> None:
    """Walk the parsed JSON iteratively: bounded depth and finite numbers, naming the field."""
    todo = [(value, "", 0)]
    while todo:
        item, where, depth = todo.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"{file} nests JSON more than {MAX_JSON_DEPTH} levels deep (at `{where[:80]}...`).")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(
                f"field `{where or '<top>'}` of {file} is {item!r} (NaN, Infinity or a number too large for "
                "a float); expected a finite number."
            )
        if isinstance(item, dict):
            todo.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            todo.extend((v, f"{where}[{k}]", depth + 1) for k, v in enumerate(item))


# ---------------------------------------------------------------------------------------------- saving
def write_file_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Make the file ``path`` hold ``data`` in one atomic step: the old content or the new, never a mix.

    Parameters
    ----------
    path : str or PathLike
        The file to write (its directory must exist; a symlink is followed).
    data : bytes
        The complete new content.

    Returns
    -------
    Path
        The file written (``path`` with symlinks resolved).

    Raises
    ------
    OSError
        From the file system; ``path`` then still holds its previous content and no temporary file is left.
    """
    target = Path(os.path.realpath(os.fspath(path)))
    tmp = fresh_sibling(target, "file")
    try:
        _write_file(tmp, data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return target


def write_directory_atomic(directory: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Make ``directory`` hold ``files`` (and the other files it had) in one atomic step.

    Parameters
    ----------
    directory : str or PathLike
        The target directory (created with its parents if needed; a symlink to a directory is followed).
    files : dict[str, bytes]
        Plain file names and their contents; they replace files of the same names.

    Raises
    ------
    ValueError
        If ``directory`` exists and is not a directory.
    OSError
        From the file system; the target then still holds its previous content.
    """
    target = Path(os.path.realpath(os.fspath(directory)))
    if os.path.lexists(target) and not target.is_dir():
        raise ValueError(f"`path`={str(directory)!r} exists and is not a directory.")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    remove_stale(target)
    try:
        _save_by_swap(target, files)
    except _NoSwapError:
        _save_in_place(target, files)


def _save_by_swap(target: Path, files: dict[str, bytes]) -> None:
    try:
        new = fresh_sibling(target, "new", make_dir=True)
    except OSError as exc:
        if target.is_dir() and exc.errno in _CANNOT_SWAP:
            raise _NoSwapError from exc  # e.g. a read-only parent of a writable directory
        raise
    try:
        if target.is_dir():
            _keep_other_files(target, new, files)
        for name, data in files.items():
            _write_file(new / name, data)
        fsync_dir(new)
        cwd = _cwd()
        _swap_in(new, target)
        if cwd is not None and (cwd == str(target) or cwd.startswith(str(target) + os.sep)):
            os.chdir(cwd)  # the process sat in the old directory: follow the path into the new one
    finally:
        if os.path.lexists(new):
            shutil.rmtree(new, ignore_errors=True)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def fresh_sibling(target: Path, kind: str, make_dir: bool = False) -> Path:
    """A new hidden sibling of ``target`` in the naming :func:`remove_stale` cleans up (created if ``make_dir``)."""
    while True:
        path = target.parent / f".{target.name}{TAG}{kind}-{os.getpid()}-{secrets.token_hex(6)}"
        if not make_dir:
            if not os.path.lexists(path):
                return path
            continue
        try:
            os.mkdir(path)  # mode 0o777 minus the umask, like any directory the user makes
            return path
        except FileExistsError:
            continue


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries to disk (after a rename into it); a no-op off POSIX."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _keep_other_files(old: Path, new: Path, files: dict[str, bytes]) -> None:
    """Hard-link (or copy) every entry of ``old`` except ``files`` and old-style temporaries into ``new``."""
    os.chmod(new, stat.S_IMODE(os.stat(old).st_mode))
    for entry in os.scandir(old):
        name = entry.name
        if name in files or any(name.startswith(f".{f}.") and name.endswith(".tmp") for f in files):
            continue  # replaced, or a temporary of a save killed before atomic directory saves
        if _STAGE.fullmatch(name):
            continue  # an in-place save of another live process
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, new / name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, new / name)


def _swap_in(new: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.rename(new, target)
        fsync_dir(target.parent)
        return
    try:
        _exchange(new, target)
    except ExchangeUnsupportedError:
        _journalled_swap(new, target)
        return
    except OSError as exc:
        if exc.errno in _CANNOT_SWAP:
            raise _NoSwapError from exc
        raise
    fsync_dir(target.parent)
    shutil.rmtree(new)  # the old directory, now under the hidden name


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; ExchangeUnsupportedError where unavailable."""
    renameat2 = _renameat2()
    if renameat2 is None:
        raise ExchangeUnsupportedError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        raise ExchangeUnsupportedError(code, os.strerror(code))
    raise OSError(code, os.strerror(code), str(b))


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _journal(target: Path) -> Path:
    return target.parent / f".{target.name}{TAG}swap.json"


def _journalled_swap(new: Path, target: Path) -> None:
    old = fresh_sibling(target, "old")
    tmp = fresh_sibling(target, "journal")
    _write_file(tmp, json.dumps({"pid": os.getpid(), "new": new.name, "old": old.name}).encode())
    os.replace(tmp, _journal(target))
    fsync_dir(target.parent)
    try:
        os.rename(target, old)
    except OSError as exc:
        os.remove(_journal(target))
        if exc.errno in _CANNOT_SWAP:
            raise _NoSwapError from exc
        raise
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # roll back at once; a kill here is rolled forward by recover()
        os.remove(_journal(target))
        raise
    fsync_dir(target.parent)
    os.remove(_journal(target))
    fsync_dir(target.parent)
    shutil.rmtree(old)


def _save_in_place(target: Path, files: dict[str, bytes]) -> None:
    """Where the directory cannot be swapped: stage the files inside it, commit with a manifest, move them."""
    stage = target / f"{TAG}stage-{os.getpid()}-{secrets.token_hex(6)}"
    os.mkdir(stage)
    try:
        for name, data in files.items():
            _write_file(stage / name, data)
        fsync_dir(stage)
        _write_file(stage / _MANIFEST, json.dumps(sorted(files)).encode())  # the commit point
        fsync_dir(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _roll_forward(stage, target)  # if this fails, the next process's save or load finishes it


def _roll_forward(stage: Path, target: Path) -> None:
    names = parse_json(read_capped(stage / _MANIFEST, 1 << 16), stage / _MANIFEST)
    if not isinstance(names, list):
        raise ValueError(f"{stage / _MANIFEST} is not a list of names")
    for name in names:
        plain = isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and os.sep not in name
        if plain and os.path.lexists(stage / name):
            os.replace(stage / name, target / name)
    fsync_dir(target)
    shutil.rmtree(stage)


def _recover_in_place(target: Path) -> None:
    for entry in os.scandir(target):
        match = _STAGE.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False) or _alive(int(match.group(1))):
            continue
        try:
            if not os.path.lexists(Path(entry.path) / _MANIFEST):
                raise ValueError("never committed")
            _roll_forward(Path(entry.path), target)
        except ValueError:
            shutil.rmtree(entry.path, ignore_errors=True)


def recover(target: str | os.PathLike) -> None:
    """Finish (or roll back) a save of ``target`` that was killed, if any.

    A journalled swap whose new directory is complete but not yet in place is moved in; when the
    target is still in place, the swap had not begun (or had ended) and the leftovers are removed.
    An in-place save (where the directory cannot be swapped) that had committed its manifest is
    finished, one that had not is removed. Saves still running in another live process are left alone.
    """
    target = Path(target)
    _recover_journal(target)
    if target.is_dir():
        _recover_in_place(target)


def _recover_journal(target: Path) -> None:
    journal = _journal(target)
    if not os.path.lexists(journal):
        return
    try:
        entry = parse_json(read_capped(journal, 4096), journal)
        new, old = (_hidden_sibling(target, entry[k]) for k in ("new", "old"))
        pid = entry["pid"]
    except (ValueError, KeyError, TypeError):
        os.remove(journal)  # not a journal this module wrote: nothing to finish
        return
    if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        return
    if not os.path.lexists(target):
        if new.is_dir():
            os.rename(new, target)
        elif old.is_dir():
            os.rename(old, target)
        fsync_dir(target.parent)
    for leftover in (new, old):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
    os.remove(journal)
    fsync_dir(target.parent)


def _hidden_sibling(target: Path, name) -> Path:
    if not isinstance(name, str) or not name.startswith(f".{target.name}{TAG}") or "/" in name or os.sep in name:
        raise ValueError(f"not a hidden sibling of {target}: {name!r}")
    return target.parent / name


def remove_stale(target: str | os.PathLike) -> list[str]:
    """Remove the hidden siblings of ``target`` left by saves whose process is gone; return their names."""
    target = Path(target)
    prefix = f".{target.name}{TAG}"
    removed = []
    for entry in os.scandir(target.parent):
        match = _STALE.fullmatch(entry.name[len(prefix) :]) if entry.name.startswith(prefix) else None
        if match is None or _alive(int(match.group(2))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.remove(entry.path)
        removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a save in progress in another thread of this process
    if os.name != "posix":
        return False  # no side-effect-free probe (os.kill(pid, 0) terminates on Windows): treat as stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
