"""Output paths: ttpa-ray writes, resumes and replaces only what it wrote itself.

A directory ttpa-ray created holds a marker file, `.ttpa-ray-out` (JSON: command and UTC
time); a file it wrote has a marker beside it, `.<name>.ttpa-ray-out`, holding the file's
size and mtime, so a file the user edited since is no longer ours. Three ways to write:

- `claim_out_dir`: stages that write into a directory (construct, sample, train, ...).
  Missing or empty: created and marked. Ours: used as is (the stage resumes or replaces
  its own files). Non-empty without a marker: `OutDirError`; with `overwrite`, the stage
  writes its files into it beside the user's (same names replaced, nothing deleted), and
  no marker is written, so the directory never becomes ours.
- `replacing_dir`: outputs replaced as a whole (score's Parquet directories). The new
  contents go to a temporary sibling, renamed into place at the end; an old directory of
  ours is then removed. A directory we did not write is never deleted: refused, or with
  `overwrite` moved aside to `<name>.replaced-<UTC time>`.
- `replacing_file`: single files (export, manifests, Serve configs). Temp sibling, then
  rename; an existing file we did not write is replaced only with `overwrite`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ttpa_ray.atomic import fresh_sibling, write_json_atomic
from ttpa_ray.storage import is_uri

log = logging.getLogger("ttpa_ray")
MARKER = ".ttpa-ray-out"


class OutDirError(ValueError):
    """An output path holds data ttpa-ray did not write: printed as one line, exit 2."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def is_ours(path: str | os.PathLike[str], legacy: tuple[str, ...] = ()) -> bool:
    """Whether directory `path` holds our marker, or one of `legacy` (files that an
    older ttpa-ray wrote there before markers existed, e.g. a run dir's `pipeline.json`)."""
    p = Path(path)
    return (p / MARKER).is_file() or any((p / name).exists() for name in legacy)


def _state(path: Path, legacy: tuple[str, ...] = ()) -> str:
    """missing | empty | ours | foreign (a non-empty directory without marker) | file."""
    if not path.exists() and not path.is_symlink():
        return "missing"
    if not path.is_dir():
        return "file"
    if is_ours(path, legacy):
        return "ours"
    return "foreign" if any(path.iterdir()) else "empty"


def write_marker(path: str | os.PathLike[str], command: str) -> None:
    """Mark directory `path` as written by ttpa-ray `command`."""
    write_json_atomic(Path(path) / MARKER, {"command": command, "created": _now()})


def claim_out_dir(
    path: str | os.PathLike[str],
    command: str,
    *,
    overwrite: bool = False,
    legacy: tuple[str, ...] = (),
) -> None:
    """Make `path` the output directory of `command` (see the module docstring).

    URIs (`s3://`, `file://`, ...) are left to the caller: nothing is checked. Raises
    `OutDirError` for a file at `path`, or a non-empty directory without our marker
    (or a `legacy` file) unless `overwrite`.
    """
    if is_uri(path):
        return
    p = Path(path)
    state = _state(p, legacy)
    if state == "file":
        raise OutDirError(f"{p} exists and is not a directory; choose another output directory")
    if state == "foreign":
        if not overwrite:
            raise OutDirError(
                f"{p} is not empty and was not written by ttpa-ray (no {MARKER} in it); "
                "choose another output directory, or pass --overwrite to write into it "
                "(nothing in it is deleted; files named like the outputs are replaced)"
            )
        log.warning("%s: writing into a directory ttpa-ray did not create (--overwrite)", p)
        return
    p.mkdir(parents=True, exist_ok=True)
    if not (p / MARKER).is_file():
        write_marker(p, command)


def _aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
        n += 1
    return aside


def check_replaceable(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Raise `OutDirError` unless `replacing_dir(path)` may put a new directory there:
    missing, empty or ours; anything else only with `overwrite` (it is moved aside)."""
    p = Path(path)
    state = _state(p)
    if state in ("foreign", "file") and not overwrite:
        what = (
            "is a file" if state == "file" else f"holds files ttpa-ray did not write (no {MARKER})"
        )
        raise OutDirError(
            f"{p} {what}; choose another output path, or pass --overwrite to move it aside "
            f"to {p.name}.replaced-<time> (nothing is deleted)"
        )


@contextmanager
def replacing_dir(
    path: str | os.PathLike[str], command: str, *, overwrite: bool = False
) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; when the block ends without error it is
    marked and renamed to `path`. An old `path` of ours (or an empty one) is removed after
    the new one is in place; another one only with `overwrite`, and then moved aside,
    never deleted. On error the temporary directory is removed and `path` is untouched."""
    p = Path(path)
    check_replaceable(p, overwrite=overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_sibling(p, "tmp", directory=True)
    try:
        yield tmp
        write_marker(tmp, command)
        check_replaceable(p, overwrite=overwrite)  # again: the run may have taken hours
        state = _state(p)
        if state == "missing":
            os.rename(tmp, p)
        elif state in ("empty", "ours"):
            old = fresh_sibling(p, "old", directory=True)
            os.rename(p, old)  # renaming over the empty placeholder `old`
            os.rename(tmp, p)
            shutil.rmtree(old)
        else:
            aside = _aside(p)
            os.rename(p, aside)
            os.rename(tmp, p)
            log.warning("%s was not written by ttpa-ray: moved aside to %s", p, aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _file_marker(path: Path) -> Path:
    return path.with_name(f".{path.name}{MARKER}")


def file_is_ours(path: str | os.PathLike[str]) -> bool:
    """Whether file `path` is as ttpa-ray last wrote it (its marker's size and mtime match)."""
    p = Path(path)
    try:
        mark = json.loads(_file_marker(p).read_text())
        st = p.stat()
    except (OSError, ValueError):
        return False
    return isinstance(mark, dict) and [mark.get("size"), mark.get("mtime_ns")] == [
        st.st_size,
        st.st_mtime_ns,
    ]


def check_file_writable(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Raise `OutDirError` if `path` is a directory, or a file ttpa-ray did not write
    (unless `overwrite`)."""
    p = Path(path)
    if p.is_dir():
        raise OutDirError(f"{p} is a directory; expected a file path")
    if p.exists() and not overwrite and not file_is_ours(p):
        raise OutDirError(
            f"{p} exists and was not written by ttpa-ray; choose another path, "
            "or pass --overwrite to replace it"
        )


@contextmanager
def replacing_file(
    path: str | os.PathLike[str], command: str, *, overwrite: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling file (same suffix) to write; when the block ends without
    error it replaces `path` and a marker records it. `path` must be missing or ours,
    any other file only with `overwrite`. On error `path` is untouched."""
    p = Path(path)
    check_file_writable(p, overwrite=overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_sibling(p, "tmp", directory=False)
    try:
        yield tmp
        check_file_writable(p, overwrite=overwrite)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    st = p.stat()
    write_json_atomic(
        _file_marker(p),
        {"command": command, "created": _now(), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
    )
