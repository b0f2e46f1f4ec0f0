"""Atomic local file writes and tolerant marker reads.

A marker (`_SUCCESS`, `counts.json`, a manifest, a cache key) is written to a temporary
sibling, fsynced and renamed into place, so a reader sees the old file or the whole new
one, never a torn one (SIGKILL, full disk, power loss). A marker that still cannot be read
(written by an older version, or by hand) means "not done": `read_json_marker` warns with
its path and returns None, and the caller redoes the work instead of stopping the run.
State that cannot be redone (`pipeline.json`) is read with `read_json`, which raises a
ValueError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("ttpa_ray")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` when the block ends: a temporary sibling,
    fsynced, renamed into place, then the directory fsynced. If the block raises, `path`
    keeps its old content and the temporary file is removed. The new file gets the usual
    mode (0666 less the umask)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_sibling(out)
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(out.parent)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write `data` (a str as UTF-8) to `path` through `atomic_file`; returns the path."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as f:
        f.write(raw)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, **dumps: Any) -> Path:
    """`write_atomic` of `json.dumps(obj, **dumps)` (serialised before anything is written)."""
    return write_atomic(path, json.dumps(obj, **dumps))


def read_json_marker(path: str | os.PathLike[str]) -> Any | None:
    """The JSON in `path`; None when it is missing, or unreadable (a warning names it)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("%s: unreadable (%s); treating it as not done", p, e)
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        log.warning("%s: not valid JSON (%s); treating it as not done", p, e)
        return None


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON in `path`, for state that cannot be redone: FileNotFoundError when it is
    missing, ValueError naming the file when it cannot be read or parsed."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise ValueError(f"{p}: unreadable ({type(e).__name__}: {e})") from e


def fresh_sibling(path: Path, kind: str = "tmp", *, directory: bool = False) -> Path:
    """A new hidden sibling of `path`, `.<name>.<kind>-XXXXXXXX<suffix>` (an empty file, or
    a directory), created exclusively (the name is ours) with the default permissions.
    Not `tempfile`: it creates 0600/0700 entries, and a manifest in a shared run dir must
    stay readable by the group as it was with `write_text`."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{kind}-{os.urandom(4).hex()}{path.suffix}")
        try:
            if directory:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def _fsync_dir(path: Path) -> None:
    # the rename is durable only once the directory entry is on disk; some filesystems
    # (and non-Linux systems) cannot fsync a directory, which is not worth failing for
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
