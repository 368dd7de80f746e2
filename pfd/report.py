"""Reports: atomic JSON / JSONL writing and plain-text tables."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["append_jsonl", "atomic_write", "check_writable", "format_table", "map_label", "pfd_bar_label", "progress_range",
           "to_jsonable", "write_json"]


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, tuples and non-finite floats into JSON-safe values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int = 2) -> Path:
    """Write ``data`` as JSON atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous file (or none), never a truncated one.
    """
    path = Path(path)
    text = json.dumps(to_jsonable(data), indent=indent, sort_keys=False) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def _file_target(path: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """``path`` and its folder, checked: the folder exists and ``path`` is not itself a folder."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{name}: folder {str(parent)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is a folder, expected a file name")
    return path, parent


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The permission bits a written file gets: those of the file it replaces, else 0666 minus the
    process umask (what ``open(path, "w")`` would give)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temporary binary file in the folder of ``path``, fsync, then rename
    it onto ``path``. A crash or an exception in ``write`` leaves the previous file (or none) and
    no temporary file behind. The file keeps the permission bits of the file it replaces; a new
    file gets 0666 minus the umask, like any file the user creates.
    """
    path, parent = _file_target(path, "path")
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # mkstemp makes 0600; a result file gets the mode any new file would get
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def check_writable(path: str | os.PathLike[str], name: str = "path") -> Path:
    """Fail early, with a message naming ``name``, unless a file can be written at ``path``.

    Checks that the folder exists, that ``path`` is not a folder, that an existing file can be
    opened for appending (nothing is written to it) and that a file can be created in the folder
    (by creating and removing an empty temporary file). Call it before a long computation whose
    result goes to ``path``.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> check_writable(os.path.join(folder, "out.json"), "--out").name
    'out.json'
    >>> check_writable(os.path.join(folder, "missing", "out.json"), "--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --out: folder '...missing' does not exist
    """
    path, parent = _file_target(path, name)
    try:
        if path.exists():
            with open(path, "ab"):
                pass
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ValueError(f"{name}: {str(path)!r} is not writable ({exc.strerror or exc})") from None
    return path


def append_jsonl(path: str | os.PathLike[str], record: Any) -> None:
    """Append one JSON line with a single ``write`` on an O_APPEND descriptor, then fsync.

    Earlier lines are never rewritten, so a crash can at worst leave one incomplete last line,
    which readers skip.
    """
    line = (json.dumps(to_jsonable(record)) + "\n").encode("utf-8")
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # the umask applies
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, floatfmt: str = ".4g") -> str:
    """A plain-text table of ``rows`` (dicts) with the given column order."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    num = [all(_numeric(row[i]) for row in cells) for i in range(len(columns))]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if nm else v.ljust(w) for v, w, nm in zip(vals, widths, num, strict=True)).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _numeric(s: str) -> bool:
    try:
        float(s.replace("±", "").split()[0])
        return True
    except (ValueError, IndexError):
        return s == "-"


def progress_range(n: int, desc: str, progress: bool = True) -> Iterable[int]:
    """``range(n)`` with a tqdm progress bar on stderr (none when ``progress`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, unit="step", disable=not progress, leave=False, file=sys.stderr)


def map_label(m: Any, width: int = 24) -> str:
    """A short label of a map for progress bars: its ``label`` (``pfd score``'s ``--student``), its
    ``name`` (a path shortened to its last part), else its type.

    >>> import pfd
    >>> map_label(pfd.DiffusionMap(lambda x, s: x, name="runs/ddpm-cifar10"))
    'ddpm-cifar10'
    """
    label = getattr(m, "label", None)
    if isinstance(label, str) and label:
        return label.lstrip("-")
    name = getattr(m, "name", None)
    if not isinstance(name, str) or not name:
        name = getattr(m, "__qualname__", None) or type(m).__name__
    name = name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or name
    return name if len(name) <= width else name[: width - 1] + "…"


def pfd_bar_label(a: Any, b: Any) -> str:
    """``"PFD <a> vs <b>"``: the label of pfd.distance's progress bar."""
    return f"PFD {map_label(a)} vs {map_label(b)}"
