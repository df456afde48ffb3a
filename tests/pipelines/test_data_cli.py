"""``glccl data synth | manifest | prepare`` end to end: outputs, summaries, reports and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glccl.data.manifest import MANIFEST_SCHEMA, read_manifest, write_manifest
from glccl.data.samples import write_bad_videos
from pipelines.cli import main as glccl

ANN = Path("/work/shared/data/annotations")
needs_real = pytest.mark.skipif(not ANN.is_dir(), reason="real annotation files not available")


def test_synth_cli(tmp_path, capsys):
    rc = glccl(["data", "synth", "--out", str(tmp_path / "s"), "--num-train", "5", "--num-val", "2", "--num-test", "3",
                "--size", "48", "--fps", "8", "--seconds", "3", "--workers", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("items:      10", "skipped:    0", "time:", "throughput:", "videos/s"):
        assert word in out
    assert len(list((tmp_path / "s" / "videos").glob("*.mp4"))) == 10
    assert (tmp_path / "s" / "captions.json").is_file() and (tmp_path / "s" / "test_list.txt").is_file()


@needs_real
def test_manifest_cli_real_msrvtt(tmp_path, capsys):
    out = tmp_path / "msrvtt.parquet"
    rc = glccl(["data", "manifest", "--dataset", "msrvtt", "--root", str(ANN / "msrvtt"), "--split", "test",
                "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and "items:      1000" in text and "test 1000 captions / 1000 videos" in text
    assert read_manifest(out).num_rows == 1000
    rep = json.loads(out.with_suffix(".skipped.json").read_text())
    assert rep["skipped"] == 0 and rep["total"] == 1000


@needs_real
def test_manifest_cli_default_splits_skip_absent_ones(tmp_path, capsys):
    rc = glccl(["data", "manifest", "--dataset", "didemo", "--root", str(ANN / "didemo"), "--out",
                str(tmp_path / "d.parquet"), "--quiet"])
    assert rc == 0
    t = read_manifest(tmp_path / "d.parquet")
    assert set(t["split"].to_pylist()) == {"val", "test"}  # the train file is not in ../shared
    assert "split 'train' skipped" in capsys.readouterr().err


def _bad_rows_dir(tmp_path: Path) -> Path:
    caps = {f"v{i}": [f"caption {i}"] for i in range(20)}
    caps["v3"] = [""]
    caps["v4"] = ["BADUTF8"]
    (tmp_path / "captions_msvd.json").write_bytes(json.dumps(caps).encode().replace(b"BADUTF8", b"\xff\xfebad"))
    (tmp_path / "test_list.txt").write_text("".join(f"v{i}\n" for i in range(20)))
    return tmp_path


def test_manifest_cli_bad_rows_exit_codes(tmp_path, capsys):
    root = _bad_rows_dir(tmp_path)
    out = tmp_path / "m.parquet"
    rc = glccl(["data", "manifest", "--dataset", "msvd", "--root", str(root), "--split", "test", "--out", str(out),
                "--quiet"])
    cap = capsys.readouterr()
    assert rc == 1  # 2 of 20 skipped: over the 1 % default
    assert "skipped:    2" in cap.out and "exceeds the limit" in cap.err
    rep = json.loads(out.with_suffix(".skipped.json").read_text())
    assert rep["by_reason"] == {"bad_utf8": 1, "empty_caption": 1}
    assert read_manifest(out).num_rows == 18  # the good rows are still written
    rc = glccl(["data", "manifest", "--dataset", "msvd", "--root", str(root), "--split", "test", "--out", str(out),
                "--max-skip-fraction", "0.2", "--quiet"])
    assert rc == 0
    rc = glccl(["data", "manifest", "--dataset", "msvd", "--root", str(root), "--split", "test", "--out", str(out),
                "--strict", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "strict mode" in err and "v3" in err and "empty caption" in err


def test_manifest_cli_malformed_file(tmp_path, capsys):
    (tmp_path / "captions_msvd.json").write_text('{"a": ["x"],\n "b": ["y"]\n "c": []}')
    (tmp_path / "test_list.txt").write_text("a\n")
    rc = glccl(["data", "manifest", "--dataset", "msvd", "--root", str(tmp_path), "--split", "test", "--out",
                str(tmp_path / "m.parquet"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'captions_msvd.json'}:3:" in err and "malformed JSON" in err


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from glccl.data.synth import generate

    root = tmp_path_factory.mktemp("clisynth")
    generate(root, num_train=4, num_val=2, num_test=4, seed=2, size=48, fps=8, seconds=2.0, workers=1)
    return root


def test_prepare_cli_from_annotations(ray_session, synth_root, tmp_path, capsys):
    out = tmp_path / "cache"
    rc = glccl(["data", "prepare", "--dataset", "synth", "--root", str(synth_root), "--split", "test", "--split",
                "val", "--out", str(out), "--num-frames", "4", "--size", "32", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "items:      6" in text and "throughput:" in text
    assert (out / "manifest.parquet").is_file()  # the manifest the cache was built from, for training
    for split, n in (("test", 4), ("val", 2)):
        meta = json.loads((out / split / "meta.json").read_text())
        assert meta["videos"] == n and meta["frames_per_video"] == 12 and meta["size"] == 32
        assert pq.read_table(out / split / "index.parquet").num_rows == n


@pytest.fixture
def zoo_manifest(synth_root, tmp_path):
    bad = write_bad_videos(tmp_path / "zoo")
    good = [{"dataset": "synth", "split": "test", "video_id": f"test{i:05d}",
             "video_path": str(synth_root / "videos" / f"test{i:05d}.mp4"), "caption_id": f"c{i}", "caption": "x"}
            for i in range(4)]
    rows = good + [{"dataset": "synth", "split": "test", "video_id": r, "video_path": str(p), "caption_id": r,
                    "caption": "x"} for r, p in bad.items()]
    return write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "zoo.parquet"), bad


def test_prepare_cli_bad_videos(ray_session, zoo_manifest, tmp_path, capsys):
    path, bad = zoo_manifest
    out = tmp_path / "cache"
    args = ["data", "prepare", "--manifest", str(path), "--out", str(out), "--num-frames", "4", "--size", "32",
            "--timeout", "5", "--quiet"]
    rc = glccl(args)
    cap = capsys.readouterr()
    assert rc == 1 and f"skipped:    {len(bad)}" in cap.out and "exceeds the limit" in cap.err
    assert "nothing of this prepare was installed" in cap.err
    rep = json.loads((out / "test.rejected.skipped.json").read_text())  # the report is kept, the split not installed
    assert {e["item"]: e["reason"] for e in rep["items"]} == {r: r for r in bad}
    assert not (out / "test").exists()
    assert glccl(args + ["--max-skip-fraction", "0.7"]) == 0
    capsys.readouterr()
    assert json.loads((out / "test" / "meta.json").read_text())["videos"] == 4
    rep = json.loads((out / "test" / "skipped.json").read_text())
    assert {e["item"]: e["reason"] for e in rep["items"]} == {r: r for r in bad}
    rc = glccl(args + ["--strict", "--out", str(tmp_path / "strict")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad input (strict mode)" in err and ".mp4: " in err
    assert not (tmp_path / "strict" / "test").exists()
