"""Output paths: ttpa-ray resumes and replaces only what it wrote, and deletes nothing else."""

from __future__ import annotations

import json
import os

import pytest

from ttpa_ray.outdir import (
    MARKER,
    OutDirError,
    claim_out_dir,
    file_is_ours,
    is_ours,
    replacing_dir,
    replacing_file,
)


def user_dir(path):
    """A directory as a user keeps it: a file and a subdirectory, no marker."""
    (path / "sub").mkdir(parents=True)
    (path / "IMPORTANT.txt").write_text("keep me")
    (path / "sub" / "x").write_text("x")
    return path


def untouched(path):
    return (path / "IMPORTANT.txt").read_text() == "keep me" and (path / "sub" / "x").exists()


def test_claim_missing_and_empty_dirs_marks_them(tmp_path):
    claim_out_dir(tmp_path / "a" / "b", "construct")
    marker = json.loads((tmp_path / "a" / "b" / MARKER).read_text())
    assert marker["command"] == "construct" and marker["created"].endswith("Z")
    (tmp_path / "empty").mkdir()
    claim_out_dir(tmp_path / "empty", "sample")
    assert is_ours(tmp_path / "empty")


def test_claim_our_dir_again_resumes(tmp_path):
    out = tmp_path / "out"
    claim_out_dir(out, "construct")
    (out / "shards").mkdir()
    before = (out / MARKER).read_text()
    claim_out_dir(out, "construct")  # no error: ours
    assert (out / "shards").is_dir() and (out / MARKER).read_text() == before


def test_claim_foreign_dir_refused_and_overwrite_writes_beside(tmp_path):
    out = user_dir(tmp_path / "mine")
    with pytest.raises(OutDirError, match="not written by ttpa-ray.*--overwrite") as e:
        claim_out_dir(out, "construct")
    assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert untouched(out) and not is_ours(out)
    claim_out_dir(out, "construct", overwrite=True)
    # allowed, but it stays the user's: no marker, so it can never be replaced as ours
    assert untouched(out) and not is_ours(out)


def test_claim_legacy_file_counts_as_ours(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline.json").write_text("{}")
    with pytest.raises(OutDirError):
        claim_out_dir(run, "pipeline")
    claim_out_dir(run, "pipeline", legacy=("pipeline.json",))
    assert (run / MARKER).is_file()


def test_claim_refuses_a_file_and_skips_uris(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutDirError, match="not a directory"):
        claim_out_dir(tmp_path / "f", "eval", overwrite=True)
    claim_out_dir("s3://bucket/run", "pipeline")  # nothing to check locally
    claim_out_dir(f"file://{tmp_path}/uri-run", "pipeline")
    assert not (tmp_path / "uri-run").exists()


def test_replacing_dir_new_then_ours_is_swapped(tmp_path):
    out = tmp_path / "scored.parquet"
    with replacing_dir(out, "score") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".scored.parquet.tmp-")
        (tmp / "part-1.parquet").write_text("1")
    assert is_ours(out) and (out / "part-1.parquet").exists()
    with replacing_dir(out, "score") as tmp:
        (tmp / "part-2.parquet").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "part-2.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.parquet"]  # no leftovers


def test_replacing_dir_takes_an_empty_dir_with_its_permissions(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with replacing_dir(out, "score") as tmp:
        (tmp / "a").write_text("a")
    assert (out / "a").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_replacing_dir_never_deletes_a_foreign_dir(tmp_path):
    out = user_dir(tmp_path / "out")
    with pytest.raises(OutDirError, match="did not write.*--overwrite"), replacing_dir(out, "s"):
        raise AssertionError("must not run")
    assert untouched(out)
    with replacing_dir(out, "score", overwrite=True) as tmp:
        (tmp / "new").write_text("n")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("out.replaced-")]
    assert len(aside) == 1 and untouched(aside[0])  # moved aside, whole
    assert (out / "new").exists() and is_ours(out)


def test_replacing_dir_error_leaves_the_old_output(tmp_path):
    out = tmp_path / "o"
    with replacing_dir(out, "score") as tmp:
        (tmp / "old").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), replacing_dir(out, "score") as tmp:
        (tmp / "half").write_text("h")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_replacing_file_owns_only_what_it_wrote(tmp_path):
    out = tmp_path / "export.jsonl"
    with replacing_file(out, "export") as tmp:
        assert tmp.suffix == ".jsonl" and tmp.name.startswith(".export.jsonl.tmp-")
        tmp.write_text("a\n")
    assert out.read_text() == "a\n" and file_is_ours(out)
    with replacing_file(out, "export") as tmp:  # ours: replaced without --overwrite
        tmp.write_text("b\n")
    assert out.read_text() == "b\n"
    out.write_text("edited by hand\n")  # size changed: the user's now
    assert not file_is_ours(out)
    with (
        pytest.raises(OutDirError, match="not written by ttpa-ray.*--overwrite"),
        replacing_file(out, "export") as tmp,
    ):
        tmp.write_text("c\n")
    assert out.read_text() == "edited by hand\n"
    assert not list(tmp_path.glob(".export.jsonl.tmp-*"))
    with replacing_file(out, "export", overwrite=True) as tmp:
        tmp.write_text("c\n")
    assert out.read_text() == "c\n" and file_is_ours(out)


def test_replacing_file_refuses_a_directory(tmp_path):
    user_dir(tmp_path / "d")
    with (
        pytest.raises(OutDirError, match="is a directory"),
        replacing_file(tmp_path / "d", "export", overwrite=True),
    ):
        pass
    assert untouched(tmp_path / "d")
