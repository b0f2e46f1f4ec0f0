"""Run dirs and models on shared storage: local paths, NFS mounts, or pyarrow URIs.

A path (local disk, or NFS/EFS/Filestore mounted at the same place on every node) is
used as is. A URI (`s3://`, `gs://`, `hdfs://`, `file://` — whatever
`pyarrow.fs.FileSystem.from_uri` knows) works through two mechanisms:

- `StagedRun`: the driver works in a local mirror of the run dir; it pulls finished
  stages (resume) and pushes each stage's outputs when the stage ends.
- `local_path(uri)`: a worker on any node that needs a model dir downloads it once per
  node into a cache and loads from there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "TTPA_CACHE_DIR"
COMPLETE = ".ttpa-complete"


def is_uri(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """`base/part/...` for a path or a URI."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def _fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)  # type: ignore[no-any-return]
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise ValueError(f"storage: cannot open {uri}: {e}") from None


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def upload(local: str | Path, uri: str) -> None:
    """Copy a local file or directory tree to `uri` (overwriting)."""
    import pyarrow.fs as pafs

    local = Path(local)
    fs, path = _fs(uri)
    if local.is_dir():
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(local), path, destination_filesystem=fs)
    else:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(local), path, destination_filesystem=fs)


def download(uri: str, local: str | Path) -> bool:
    """Copy `uri` (a file or a tree) to `local`; False when it does not exist."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return False
    local = Path(local)
    if info.type == pafs.FileType.Directory:
        local.mkdir(parents=True, exist_ok=True)
    else:
        local.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs)
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "ttpa-ray-cache")


def local_path(path: str | os.PathLike[str]) -> str:
    """A local directory holding `path`: itself if local, else a per-node cached download.

    Concurrent actors on one node download once (a file lock); a half-finished download
    (killed actor) is redone, since only a complete one carries the marker file.
    """
    if not is_uri(path):
        return str(path)
    uri = str(path).rstrip("/")
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = cache_root() / f"{key}-{uri.rsplit('/', 1)[-1]}"
    with _locked(cache_root() / f"{key}.lock"):
        if not (dest / COMPLETE).exists():
            shutil.rmtree(dest, ignore_errors=True)
            if not download(uri, dest):
                raise FileNotFoundError(f"storage: {uri} does not exist")
            (dest / COMPLETE).write_text(uri)
    return str(dest)


class StagedRun:
    """A run dir at a URI, mirrored in a local staging dir on the driver.

    `pull(stages)` brings the recorded state and those stages' outputs down (each stage
    once: the pipeline pulls what a stage reads right before running it, so a resumed
    run fetches only what it still needs); `push(stage)` uploads a finished stage with
    the run's state files. Ray Train's own storage (`<stage>/ray/`) and what `written`
    names for a stage (rank 0's export) are written to the URI by the workers and not
    uploaded again.
    """

    STATE_FILES = ("pipeline.json", "cluster")

    def __init__(self, uri: str, staging: str | Path | None = None) -> None:
        self.uri = uri.rstrip("/")
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.local = Path(staging) if staging else cache_root() / "runs" / key
        self.current: set[str] = set()  # stages whose local copy is up to date
        # per stage, entries its workers already wrote to the URI themselves
        self.written: dict[str, set[str]] = {}

    def remote(self, rel: str) -> str:
        return join(self.uri, rel)

    def pull(self, stages: tuple[str, ...]) -> None:
        self.local.mkdir(parents=True, exist_ok=True)
        for name in self.STATE_FILES:
            download(self.remote(name), self.local / name)
        for name in stages:
            if name not in self.current:
                self._pull_stage(name)
                self.current.add(name)

    def _pull_stage(self, stage: str) -> None:
        import pyarrow.fs as pafs

        fs, root = _fs(self.remote(stage))
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            return
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
            if info.base_name != "ray":
                download(
                    self.remote(f"{stage}/{info.base_name}"), self.local / stage / info.base_name
                )

    def push(self, stage: str | None = None) -> None:
        if stage is not None:
            self.current.add(stage)
        if stage is not None and (self.local / stage).is_dir():
            skip = {"ray", *self.written.get(stage, ())}
            for item in (self.local / stage).iterdir():
                if item.name not in skip:
                    upload(item, self.remote(f"{stage}/{item.name}"))
        for name in self.STATE_FILES:
            if (self.local / name).exists():
                upload(self.local / name, self.remote(name))
