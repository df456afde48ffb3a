"""Manifest adapters on the real annotation files (../shared/data/annotations) and on small files in the other
formats; bad annotation rows and malformed annotation files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pytest

from glccl.data.manifest import (
    MANIFEST_SCHEMA,
    build_manifest,
    build_manifests,
    clean_caption,
    read_manifest,
    select_split,
    video_order,
    write_manifest,
)
from glccl.data.report import AnnotationError, BadInputError, MissingAnnotationError, SkipReport

ANN = Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations"
if not ANN.is_dir():  # the checkout may live elsewhere; the shared folder is at a fixed place on the project machines
    ANN = Path("/work/shared/data/annotations")
needs_real = pytest.mark.skipif(not ANN.is_dir(), reason="real annotation files not available")


# ---------------------------------------------------------------------------------------------------------------------
# real files


@needs_real
def test_msrvtt_test_1k_a():
    r = SkipReport()
    t = build_manifest("msrvtt", ANN / "msrvtt", "test", report=r)
    assert t.schema == MANIFEST_SCHEMA
    assert t.num_rows == 1000 and len(set(t["video_id"].to_pylist())) == 1000
    assert r.num_skipped == 0 and r.ok == 1000
    first = t.slice(0, 1).to_pylist()[0]
    assert first["video_id"] == "video9770" and first["caption_id"] == "ret0"
    assert first["caption"] == "a person is connecting something to system"
    assert first["video_path"].endswith("/video9770.mp4") and Path(first["video_path"]).is_absolute()
    # MSR-VTT has no validation split: "val" is the 1k-A test set, as in the reference code
    assert build_manifest("msrvtt", ANN / "msrvtt", "val").num_rows == 1000


@needs_real
def test_msvd_test_all_captions():
    raw = json.loads((ANN / "msvd" / "captions_msvd.json").read_text())
    ids = (ANN / "msvd" / "test_list.txt").read_text().split()
    expected = sum(1 for v in ids for c in raw[v] if clean_caption(c)[1] is None)
    r = SkipReport()
    t = build_manifest("msvd", ANN / "msvd", "test", report=r)
    vids, _, row_video = video_order(t)
    assert len(vids) == 670 and vids == ids
    assert t.num_rows == expected > 670 * 20
    assert r.ok == expected and r.total == sum(len(raw[v]) for v in ids)
    # captions of a video are contiguous and in file order
    first = [c for v, c in zip(t["video_id"].to_pylist(), t["caption"].to_pylist()) if v == ids[0]]
    assert first == [" ".join(c.split()) for c in raw[ids[0]] if c.strip()]
    assert row_video == sorted(row_video)


@needs_real
def test_msvd_train_val_sizes():
    assert len(video_order(build_manifest("msvd", ANN / "msvd", "train"))[0]) == 1200
    assert len(video_order(build_manifest("msvd", ANN / "msvd", "val"))[0]) == 100


@needs_real
def test_didemo_test_paragraphs():
    raw = json.loads((ANN / "didemo" / "test_data.json").read_text())
    t = build_manifest("didemo", ANN / "didemo", "test")
    assert t.num_rows == 1037 and len(set(t["video_id"].to_pylist())) == 1037
    row = t.slice(0, 1).to_pylist()[0]
    descs = [m["description"] for m in raw if m["video"] == row["video_id"]]
    assert row["caption"] == " ".join(" ".join(d.split()) for d in descs)
    assert row["video_path"].endswith(row["video_id"])  # the file name is the id (extensions differ per video)


@needs_real
def test_msrvtt_train_9k_with_data_json(tmp_path):
    ids = [r["video_id"] for r in csv.DictReader(open(ANN / "msrvtt" / "MSRVTT_train.9k.csv"))]
    assert len(ids) == 9000
    (tmp_path / "MSRVTT_train.9k.csv").write_text((ANN / "msrvtt" / "MSRVTT_train.9k.csv").read_text())
    sentences = [{"video_id": v, "caption": f"caption {k} of {v}", "sen_id": i * 20 + k}
                 for i, v in enumerate(ids) for k in range(20)]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": [], "sentences": sentences}))
    t = build_manifest("msrvtt", tmp_path, "train")
    assert t.num_rows == 180_000  # the 9k split expanded to every (video, caption) pair
    assert len(video_order(t)[0]) == 9000


@needs_real
def test_msrvtt_train_7k_split_file():
    ids = [r["video_id"] for r in csv.DictReader(open(ANN / "msrvtt" / "MSRVTT_train.7k.csv"))]
    assert len(ids) == 7010


# ---------------------------------------------------------------------------------------------------------------------
# small files in the formats that are not in ../shared


def _msrvtt_dir(tmp_path: Path, sentences: list, ids=("video0", "video1", "video2")) -> Path:
    (tmp_path / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in ids))
    (tmp_path / "MSRVTT_train.7k.csv").write_text("video_id\n" + f"{ids[0]}\n")
    body = json.dumps({"info": {"year": 2016}, "videos": [{"video_id": v} for v in ids], "sentences": sentences},
                      indent=1)
    (tmp_path / "MSRVTT_data.json").write_text(body)
    return tmp_path


def test_msrvtt_train_small_and_bad_rows(tmp_path):
    sentences = [
        {"video_id": "video0", "caption": "a man is cooking", "sen_id": 0},
        {"video_id": "video0", "caption": "  someone   cooks food ", "sen_id": 1},
        {"caption": "a row without a video", "sen_id": 2},                      # annotation row without a video
        {"video_id": "video1", "caption": "", "sen_id": 3},                      # empty caption
        {"video_id": "video1", "caption": "a dog runs", "sen_id": 4},
        {"video_id": "video1", "caption": "BADUTF8", "sen_id": 5},               # replaced by invalid bytes below
        {"video_id": "video9", "caption": "not in the split", "sen_id": 6},
    ]
    root = _msrvtt_dir(tmp_path, sentences)
    p = root / "MSRVTT_data.json"
    p.write_bytes(p.read_bytes().replace(b"BADUTF8", b"caf\xe9 \xff\xfe"))  # latin-1 bytes: not UTF-8
    r = SkipReport()
    t = build_manifest("msrvtt", root, "train", report=r)
    assert t["caption"].to_pylist() == ["a man is cooking", "someone cooks food", "a dog runs"]
    assert t["caption_id"].to_pylist() == ["0", "1", "4"]
    assert r.by_reason() == {"bad_utf8": 1, "empty_caption": 1, "no_caption": 1, "no_video": 1}
    assert build_manifest("msrvtt", root, "train7k").num_rows == 2


def test_vatex_hgr_format(tmp_path):
    caps = {"vidA_000010_000020": [f"caption {i} of A" for i in range(10)],
            "vidB_000000_000010": [f"caption {i} of B" for i in range(10)],
            "vidC_000000_000010": [f"caption {i} of C" for i in range(10)]}
    (tmp_path / "ref_captions.json").write_text(json.dumps(caps))
    (tmp_path / "train_list.txt").write_text("vidA_000010_000020\nvidB_000000_000010\n")
    (tmp_path / "test_list.txt").write_text("vidC_000000_000010\n")
    t = build_manifest("vatex", tmp_path, "train")
    assert t.num_rows == 20 and video_order(t)[0] == ["vidA_000010_000020", "vidB_000000_000010"]
    assert build_manifest("vatex", tmp_path, "test").num_rows == 10


def test_vatex_official_format(tmp_path):
    data = [
        {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": [f"a person does thing {i}" for i in range(10)],
         "chCap": ["一个人"] * 10},
        {"enCap": ["an entry without a video"], "chCap": []},
        {"videoID": "xyz_000001_000011", "enCap": ["one", "   ", "two"], "chCap": []},
    ]
    (tmp_path / "vatex_training_v1.0.json").write_text(json.dumps(data, ensure_ascii=False))
    (tmp_path / "vatex_validation_v1.0.json").write_text(json.dumps(data[:1]))
    r = SkipReport()
    t = build_manifest("vatex", tmp_path, "train", report=r)
    assert t.num_rows == 12
    assert r.by_reason() == {"empty_caption": 1, "no_video": 1}
    assert build_manifest("vatex", tmp_path, "val").num_rows == 10
    with pytest.raises(MissingAnnotationError):
        build_manifest("vatex", tmp_path, "test")


def test_msvd_format_small_with_videos(tmp_path):
    (tmp_path / "captions_msvd.json").write_text(json.dumps({"a": ["x one", "x two"], "b": ["y"], "c": []}))
    (tmp_path / "train_list.txt").write_text("a\nb\nc\nd\n")
    vdir = tmp_path / "videos"
    vdir.mkdir()
    (vdir / "a.avi").write_bytes(b"x")  # resolution finds the existing extension
    r = SkipReport()
    t = build_manifest("msvd", tmp_path, "train", report=r)
    paths = dict(zip(t["video_id"].to_pylist(), t["video_path"].to_pylist()))
    assert paths["a"] == str((vdir / "a.avi").resolve()) and paths["b"].endswith("videos/b.mp4")
    assert r.by_reason() == {"no_caption": 2}  # c has an empty caption list, d no entry at all
    r2 = SkipReport()
    t2 = build_manifest("msvd", tmp_path, "train", report=r2, check_videos=True)
    assert video_order(t2)[0] == ["a"] and r2.by_reason() == {"missing_file": 2, "no_caption": 1}


def test_didemo_small_with_list_and_bad_rows(tmp_path):
    data = [
        {"video": "v1.mp4", "description": "first part.", "times": [[0, 0]], "annotation_id": 1},
        {"video": "v2.mov", "description": "other video", "times": [[1, 1]], "annotation_id": 2},
        {"video": "v1.mp4", "description": "second part", "times": [[2, 2]], "annotation_id": 3},
        {"description": "no video here", "times": [[0, 0]], "annotation_id": 4},
        {"video": "v1.mp4", "description": "", "times": [[3, 3]], "annotation_id": 5},
    ]
    (tmp_path / "train_data.json").write_text(json.dumps(data))
    r = SkipReport()
    t = build_manifest("didemo", tmp_path, "train", report=r)
    assert t["caption"].to_pylist() == ["first part. second part", "other video"]
    assert r.by_reason() == {"empty_caption": 1, "no_video": 1}
    (tmp_path / "train_list.txt").write_text("v2.mov\n")
    assert build_manifest("didemo", tmp_path, "train")["video_id"].to_pylist() == ["v2.mov"]


# ---------------------------------------------------------------------------------------------------------------------
# malformed annotation files: an error naming the file and the line


def test_malformed_json_names_file_and_line(tmp_path):
    (tmp_path / "captions_msvd.json").write_text('{\n "a": ["one",\n   "two" "three"]\n}\n')
    (tmp_path / "test_list.txt").write_text("a\n")
    with pytest.raises(AnnotationError) as ei:
        build_manifest("msvd", tmp_path, "test")
    assert ei.value.line == 3 and str(ei.value).startswith(f"{tmp_path / 'captions_msvd.json'}:3:")


def test_malformed_csv_names_file_and_line(tmp_path):
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr1,video1,a cat\nret1,msr2,video2,a dog,EXTRA\n")
    with pytest.raises(AnnotationError) as ei:
        build_manifest("msrvtt", tmp_path, "test")
    assert ei.value.line == 3 and "MSRVTT_JSFUSION_test.csv:3" in str(ei.value)


def test_csv_row_without_video_is_skipped(tmp_path):
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr1,video1,a cat\nret1,msr2,,a dog\n")
    r = SkipReport()
    t = build_manifest("msrvtt", tmp_path, "test", report=r)
    assert t.num_rows == 1 and r.by_reason() == {"no_video": 1}


def test_wrong_structure_and_missing_files(tmp_path):
    (tmp_path / "test_data.json").write_text('{"not": "a list"}')
    with pytest.raises(AnnotationError, match=r"test_data.json:1: expected a JSON list"):
        build_manifest("didemo", tmp_path, "test")
    with pytest.raises(MissingAnnotationError, match="val_data.json"):
        build_manifest("didemo", tmp_path, "val")
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text("key,video\nret0,video1\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_JSFUSION_test.csv:1: CSV header lacks"):
        build_manifest("msrvtt", tmp_path, "test")
    (tmp_path / "captions.json").write_text("{}")
    (tmp_path / "train_list.txt").write_text("ok_id\nbad id with spaces\n")
    with pytest.raises(AnnotationError, match=r"train_list.txt:2:"):
        build_manifest("synth", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_manifest("kinetics", tmp_path, "train")


def test_strict_mode_stops_at_first_bad_row(tmp_path):
    root = _msrvtt_dir(tmp_path, [{"video_id": "video0", "caption": "fine"}, {"video_id": "video0", "caption": " "}],
                       ids=("video0",))
    with pytest.raises(BadInputError, match="empty caption"):
        build_manifest("msrvtt", root, "train", report=SkipReport(strict=True))


def test_skip_report_threshold_and_file(tmp_path):
    r = SkipReport(max_fraction=0.01)
    r.add_ok(99)
    r.skip("x", "empty_caption")
    assert not r.exceeded
    r.skip("y", "bad_utf8", "b'\\xff'")
    assert r.exceeded and r.num_skipped == 2 and r.total == 101
    d = json.loads(r.write(tmp_path / "rep.json").read_text())
    assert d["skipped"] == 2 and d["by_reason"] == {"bad_utf8": 1, "empty_caption": 1} and d["exceeded"]
    assert "bad_utf8: 1" in r.summary()


# ---------------------------------------------------------------------------------------------------------------------
# parquet


def test_write_read_roundtrip(tmp_path):
    (tmp_path / "captions.json").write_text(json.dumps({"a": ["one", "two"], "b": ["three"]}))
    for s in ("train", "test"):
        (tmp_path / f"{s}_list.txt").write_text("a\nb\n" if s == "train" else "b\n")
    t = build_manifests("synth", tmp_path, ["train", "test"])
    path = write_manifest(t, tmp_path / "m" / "manifest.parquet")
    back = read_manifest(path)
    assert back.equals(t) and back.schema == MANIFEST_SCHEMA
    assert select_split(back, "test")["caption"].to_pylist() == ["three"]
    assert video_order(select_split(back, "train"))[2] == [0, 0, 1]
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a manifest"):
        read_manifest(tmp_path / "other.parquet")
