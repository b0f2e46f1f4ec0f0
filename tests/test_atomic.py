"""Atomic marker writes and tolerant marker reads (`ttpa_ray.atomic`), and the shard
resume check built on them (`runner.shard_done`)."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from ttpa_ray.atomic import (
    atomic_file,
    read_json,
    read_json_marker,
    write_atomic,
    write_json_atomic,
)
from ttpa_ray.runner import shard_done


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "_SUCCESS"  # the parent is created
    write_json_atomic(path, {"key": "a"})
    write_json_atomic(path, {"key": "b"}, indent=2)
    assert json.loads(path.read_text()) == {"key": "b"}
    write_atomic(path, b"\x00raw")
    assert path.read_bytes() == b"\x00raw"
    assert os.listdir(path.parent) == ["_SUCCESS"]


def test_new_file_mode_follows_the_umask_not_0600(tmp_path):
    # a manifest in a shared run dir must stay as readable as write_text made it
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "manifest.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_error_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "counts.json"
    write_json_atomic(path, [1, 2, 3])
    with pytest.raises(RuntimeError, match="disk full"), atomic_file(path) as f:
        f.write(b"[1, 2")
        raise RuntimeError("disk full")
    # an object json cannot encode fails before anything is written
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text()) == [1, 2, 3]
    assert os.listdir(tmp_path) == ["counts.json"]


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"key": "a"', b"\xff\xfe"])
def test_read_json_marker_unreadable_is_none_with_a_warning(tmp_path, caplog, content):
    path = tmp_path / "_SUCCESS"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="ttpa_ray"):
        assert read_json_marker(path) is None
    assert str(path) in caplog.text and "not done" in caplog.text
    with pytest.raises(ValueError, match=f"{path}: unreadable"):
        read_json(path)


def test_read_json_marker_missing_is_none_quietly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ttpa_ray"):
        assert read_json_marker(tmp_path / "_SUCCESS") is None
    assert caplog.text == ""
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "_SUCCESS")
    write_json_atomic(tmp_path / "ok.json", {"a": [1]})
    assert read_json_marker(tmp_path / "ok.json") == read_json(tmp_path / "ok.json") == {"a": [1]}


def test_shard_done_needs_the_key_and_readable_counts(tmp_path, caplog):
    shard = tmp_path / "shard-0"
    assert not shard_done(shard, "k")  # nothing there yet
    write_json_atomic(shard / "counts.json", [])
    write_json_atomic(shard / "_SUCCESS", {"key": "k"})
    assert shard_done(shard, "k")
    assert not shard_done(shard, "other")  # another config
    (shard / "counts.json").write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="ttpa_ray"):
        assert not shard_done(shard, "k")
    assert str(shard / "counts.json") in caplog.text
    write_json_atomic(shard / "counts.json", [])
    (shard / "_SUCCESS").write_text("")  # torn by a crash of an older version
    assert not shard_done(shard, "k")
    (shard / "_SUCCESS").write_text("[]")  # valid JSON, not a marker
    assert not shard_done(shard, "k")


def test_unreadable_pipeline_json_stops_the_run_naming_it(tmp_path):
    # the run's state is not a redo-able marker: a clear error, not a silent fresh start
    from ttpa_ray.config import Config
    from ttpa_ray.pipeline import Pipeline

    (tmp_path / "pipeline.json").write_text('{"stages": [')
    with pytest.raises(ValueError, match=f"{tmp_path}/pipeline.json: unreadable.*restore it"):
        Pipeline(Config(), tmp_path)
    (tmp_path / "pipeline.json").write_text('{"stages": []}')
    Pipeline(Config(), tmp_path)._save()
    assert json.loads((tmp_path / "pipeline.json").read_text())["stages"] == []
    assert os.listdir(tmp_path) == ["pipeline.json"]
