"""Storage URIs through pyarrow filesystems (file:// here; s3:// and gs:// take the same
code path): upload/download, per-node model cache, the staged run dir."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from ttpa_ray import storage
from ttpa_ray.storage import StagedRun


def tree(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != storage.COMPLETE
    }


def test_upload_download_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    uri = f"file://{tmp_path}/remote/x"
    storage.upload(src, uri)
    assert storage.exists(uri) and storage.exists(storage.join(uri, "sub/b.txt"))
    assert not storage.exists(storage.join(uri, "nope"))
    assert storage.download(uri, tmp_path / "back")
    assert tree(tmp_path / "back") == {"a.txt": "A", "sub/b.txt": "B"}
    assert not storage.download(storage.join(uri, "nope"), tmp_path / "none")


def test_local_path_downloads_once_and_redoes_a_torn_copy(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    uri = f"file://{tmp_path}/bucket/model"
    storage.upload(src, uri)
    local = storage.local_path(uri)
    assert tree(Path(local)) == {"config.json": "{}"}
    # a second call reuses the cache: a change in the bucket is not fetched again
    storage.upload(src / "config.json", storage.join(uri, "extra.json"))
    assert storage.local_path(uri) == local
    assert not (Path(local) / "extra.json").exists()
    # a copy without the completion marker (a killed download) is redone
    (Path(local) / storage.COMPLETE).unlink()
    assert (Path(storage.local_path(uri)) / "extra.json").exists()
    assert storage.local_path(str(src)) == str(src)  # plain paths are used as they are
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.local_path(f"file://{tmp_path}/bucket/missing")


def test_local_path_download_is_renamed_into_place_whole(tmp_path, monkeypatch):
    # a download killed half way leaves nothing at the final path, and a retry succeeds
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    uri = f"file://{tmp_path}/bucket/model"
    storage.upload(src, uri)
    real = storage.download

    def killed(u, local):
        real(u, local)
        raise KeyboardInterrupt  # after the files, before the marker

    monkeypatch.setattr(storage, "download", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.local_path(uri)
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []
    monkeypatch.setattr(storage, "download", real)
    local = Path(storage.local_path(uri))
    assert local.parent == cache and tree(local) == {"config.json": "{}"}
    assert (local / storage.COMPLETE).read_text() == uri


def test_cache_root_is_created_private(tmp_path, monkeypatch):
    root = tmp_path / "a" / "cache"
    monkeypatch.setenv(storage.CACHE_ENV, str(root))
    assert storage.cache_root() == root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_cache_root_default_is_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv(storage.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert storage.cache_root() == tmp_path / "xdg" / "ttpa-ray"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage.cache_root() == tmp_path / "home" / ".cache" / "ttpa-ray"
    assert stat.S_IMODE((tmp_path / "home" / ".cache" / "ttpa-ray").stat().st_mode) == 0o700


def test_cache_root_refuses_a_dir_others_can_write(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv(storage.CACHE_ENV, str(root))
    with pytest.raises(PermissionError, match=f"cache dir {root} is writable by other users"):
        storage.cache_root()
    with pytest.raises(PermissionError, match="writable by other users"):
        storage.local_path(f"file://{tmp_path}/bucket/model")  # before any download
    root.chmod(0o755)  # others may read: refused only for writing
    assert storage.cache_root() == root


def test_cache_root_refuses_a_dir_of_another_user(tmp_path, monkeypatch):
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    monkeypatch.setenv(storage.CACHE_ENV, str(root))
    monkeypatch.setattr(storage.os, "getuid", lambda: root.stat().st_uid + 1)
    with pytest.raises(PermissionError, match=f"cache dir {root} is owned by uid"):
        storage.cache_root()


def test_cache_root_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "file"))
    with pytest.raises(PermissionError, match=f"cannot create the cache dir {tmp_path}/file"):
        storage.cache_root()


def test_lock_file_symlink_is_refused_not_followed(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    uri = f"file://{tmp_path}/bucket/model"
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    storage.cache_root()
    (tmp_path / "cache" / f"{key}.lock").symlink_to(victim)
    with pytest.raises(PermissionError, match=f"lock file .*{key}.lock is a symlink"):
        storage.local_path(uri)
    assert victim.read_text() == "precious"


def test_file_upload_to_a_local_target_replaces_it_whole(tmp_path, monkeypatch):
    src = tmp_path / "pipeline.json"
    src.write_text('{"stages": [1]}')
    dst = tmp_path / "bucket" / "run" / "pipeline.json"
    uri = f"file://{dst}"
    storage.upload(src, uri)
    assert dst.read_text() == '{"stages": [1]}'
    # a copy that fails half way leaves the old file, and no temporary file beside it
    import pyarrow.fs as pafs

    def torn(source, destination, **kw):
        Path(destination).write_text('{"sta')
        raise OSError("connection reset")

    monkeypatch.setattr(pafs, "copy_files", torn)
    src.write_text('{"stages": [1, 2]}')
    with pytest.raises(OSError, match="connection reset"):
        storage.upload(src, uri)
    assert dst.read_text() == '{"stages": [1]}'
    assert os.listdir(dst.parent) == ["pipeline.json"]


def test_bad_uri_is_a_clear_error():
    with pytest.raises(ValueError, match="storage: cannot open nosuchscheme://x"):
        storage.exists("nosuchscheme://x")


def test_staged_run_pushes_stages_but_not_ray_train_storage(tmp_path):
    uri = f"file://{tmp_path}/bucket/run"
    a = StagedRun(uri, staging=tmp_path / "driver-a")
    (a.local / "sft" / "model").mkdir(parents=True)
    (a.local / "sft" / "model" / "w.bin").write_text("weights")
    (a.local / "sft" / "ray").mkdir()
    (a.local / "sft" / "ray" / "ckpt").write_text("local ray storage")
    (a.local / "pipeline.json").write_text('{"stages": []}')
    a.push("sft")
    remote = tmp_path / "bucket" / "run"
    assert (remote / "sft" / "model" / "w.bin").read_text() == "weights"
    assert (remote / "pipeline.json").exists() and not (remote / "sft" / "ray").exists()
    # another driver (a fresh machine) pulls the state and the finished stages
    (remote / "sft" / "ray").mkdir()
    (remote / "sft" / "ray" / "big").write_text("checkpoints stay remote")
    b = StagedRun(uri, staging=tmp_path / "driver-b")
    b.pull(())
    assert tree(b.local) == {"pipeline.json": '{"stages": []}'}  # the state only
    b.pull(("construct", "sft"))
    assert tree(b.local) == {"pipeline.json": '{"stages": []}', "sft/model/w.bin": "weights"}
    # each stage is fetched once per driver: a later pull does not copy it again
    (b.local / "sft" / "model" / "w.bin").write_text("local edit")
    b.pull(("sft",))
    assert (b.local / "sft" / "model" / "w.bin").read_text() == "local edit"
    # what the stage's workers wrote to the URI themselves is not uploaded again
    (a.local / "sft" / "metrics.jsonl").write_text("driver copy")
    (remote / "sft" / "metrics.jsonl").write_text("rank 0's upload")
    a.written["sft"] = {"metrics.jsonl"}
    a.push("sft")
    assert (remote / "sft" / "metrics.jsonl").read_text() == "rank 0's upload"
