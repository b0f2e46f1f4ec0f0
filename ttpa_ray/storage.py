"""Run dirs and models on shared storage: local paths, NFS mounts, or pyarrow URIs.

A path (local disk, or NFS/EFS/Filestore mounted at the same place on every node) is
used as is. A URI (`s3://`, `gs://`, `hdfs://`, `file://` — whatever
`pyarrow.fs.FileSystem.from_uri` knows) works through two mechanisms:

- `StagedRun`: the driver works in a local mirror of the run dir; it pulls finished
  stages (resume) and pushes each stage's outputs when the stage ends.
- `local_path(uri)`: a worker on any node that needs a model dir downloads it once per
  node into a cache and loads from there.

The cache (`cache_root`) is private to the user: `$TTPA_CACHE_DIR`, else
`$XDG_CACHE_HOME/ttpa-ray`, else `~/.cache/ttpa-ray`, created 0700 and refused when
another user owns it or others may write to it (they could plant a model to be loaded).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
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
    """Copy a local file or directory tree to `uri` (overwriting).

    A file reaches a local (`file://`) target whole or not at all: copied to a temporary
    sibling, then renamed. An object store's put is atomic already. A tree is copied
    file by file (a killed upload leaves part of it; the stage is pushed again)."""
    import pyarrow.fs as pafs

    local = Path(local)
    fs, path = _fs(uri)
    if local.is_dir():
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(local), path, destination_filesystem=fs)
        return
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    if fs.type_name != "local":
        pafs.copy_files(str(local), path, destination_filesystem=fs)
        return
    tmp = f"{parent}/.{name}.{os.urandom(6).hex()}.tmp"
    try:
        pafs.copy_files(str(local), tmp, destination_filesystem=fs)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


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
    """An exclusive flock on `path` (created 0600). A symlink there is refused, not
    followed: the lock must not create or truncate a file somewhere else."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: the BSDs
            raise PermissionError(
                f"storage: lock file {path} is a symlink; remove it (nothing in the cache "
                "should be a link)"
            ) from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def cache_root() -> Path:
    """The per-node cache: `$TTPA_CACHE_DIR`, else `$XDG_CACHE_HOME/ttpa-ray`, else
    `~/.cache/ttpa-ray`. Created with mode 0700; an existing one must be a directory owned
    by the current user that neither group nor others can write (PermissionError)."""
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "ttpa-ray"
    else:
        root = Path.home() / ".cache" / "ttpa-ray"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(
            f"storage: cannot create the cache dir {root} ({e.strerror or e}); "
            f"set {CACHE_ENV} to a directory of yours"
        ) from None
    _check_private(root)
    return root


def _check_private(root: Path) -> None:
    # Whoever can write here chooses what a worker loads as "the model" (pickle-capable
    # checkpoints, tokenizer code): the cache must be the user's alone.
    st = root.stat()  # a symlink to a private dir of the user's is fine
    fix = f"set {CACHE_ENV} to a private directory of yours (mode 0700)"
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"storage: cache dir {root} is not a directory; {fix}")
    if st.st_uid != os.getuid():
        raise PermissionError(
            f"storage: cache dir {root} is owned by uid {st.st_uid}, not by you "
            f"(uid {os.getuid()}); {fix}"
        )
    if st.st_mode & 0o022:
        raise PermissionError(
            f"storage: cache dir {root} is writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod go-w {root}`, or {fix}"
        )


def local_path(path: str | os.PathLike[str]) -> str:
    """A local directory holding `path`: itself if local, else a per-node cached download.

    Concurrent actors on one node download once (a file lock). A download goes into a
    temporary dir in the cache and is renamed into place with its completion marker, so a
    killed one is never at the final path; a final dir without the marker (left by an
    older version) is removed and redone.
    """
    if not is_uri(path):
        return str(path)
    uri = str(path).rstrip("/")
    root = cache_root()
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = root / f"{key}-{uri.rsplit('/', 1)[-1]}"
    with _locked(root / f"{key}.lock"):
        if (dest / COMPLETE).exists():
            return str(dest)
        # under the lock, leftovers of killed downloads of this URI are no one's
        for old in root.glob(f".{key}-*.tmp"):
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", suffix=".tmp", dir=root))
        try:
            if not download(uri, tmp):
                raise FileNotFoundError(f"storage: {uri} does not exist")
            (tmp / COMPLETE).write_text(uri)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
