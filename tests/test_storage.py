"""Storage URIs through pyarrow filesystems (file:// here; s3:// and gs:// take the same
code path): upload/download, per-node model cache, the staged run dir."""

from __future__ import annotations

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
