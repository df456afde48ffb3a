"""The synthetic partial-relevance benchmark: determinism, format, ground truth, uniqueness of evaluation captions."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from glccl.data.frames import load_frames
from glccl.data.manifest import build_manifest, video_order
from glccl.data.synth import COLOURS, DIRECTIONS, SHAPES, caption_text, generate, plan_eval, plan_train

SMALL = dict(num_train=6, num_val=4, num_test=4, seed=3, size=48, fps=8, seconds=3.0)


def _digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "synth_meta.json"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, workers=1, **SMALL)
    return out, summary


def test_layout_and_summary(small):
    out, s = small
    assert s["videos"] == {"train": 6, "val": 4, "test": 4}
    assert s["captions"]["val"] == 4 and s["captions"]["test"] == 4 and s["captions"]["train"] >= 6 * 3
    for split in ("train", "val", "test"):
        assert len((out / f"{split}_list.txt").read_text().split()) == SMALL[f"num_{split}"]
    assert len(list((out / "videos").glob("*.mp4"))) == 14
    meta = json.loads((out / "synth_meta.json").read_text())
    assert meta["params"]["seed"] == 3 and meta["format"].startswith("msvd")


def test_deterministic_and_parallel_identical(small, tmp_path):
    out, _ = small
    generate(tmp_path / "again", workers=2, **SMALL)  # 14 videos: rendered by a 2-process pool
    assert _digest(out) == _digest(tmp_path / "again")
    generate(tmp_path / "other", workers=1, **{**SMALL, "seed": 4})
    assert _digest(out) != _digest(tmp_path / "other")


def test_manifest_adapter_reads_it(small):
    out, _ = small
    t = build_manifest("synth", out, "test")
    assert t.num_rows == 4 and len(video_order(t)[0]) == 4
    train = build_manifest("synth", out, "train")
    assert train.num_rows == json.loads((out / "synth_meta.json").read_text())["captions"]["train"]
    frames, mask = load_frames(train["video_path"][0].as_py(), 12, 32)
    assert frames.shape == (12, 32, 32, 3) and mask.all()


def test_captions_describe_own_events(small):
    out, _ = small
    caps = json.loads((out / "captions.json").read_text())
    events = json.loads((out / "events.json").read_text())
    for vid, evs in events.items():
        assert 2 <= len(evs) <= 4
        ev = [(e["colour"], e["shape"], e["direction"]) for e in evs]
        assert evs[0]["start"] == 0 and evs[-1]["end"] == int(SMALL["fps"] * SMALL["seconds"])
        assert all(a["end"] == b["start"] for a, b in zip(evs, evs[1:]))
        assert len({(c, s) for c, s, _ in ev}) == len(ev)
        if vid.startswith("train"):
            want = [caption_text([e]) for e in ev] + [caption_text([a, b]) for a, b in zip(ev, ev[1:])]
            assert caps[vid] == want
        else:
            assert len(caps[vid]) == 1
            assert caps[vid][0] in [caption_text([e]) for e in ev] + [caption_text([a, b]) for a, b in zip(ev, ev[1:])]


def _centroid(frame: np.ndarray, colour: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(np.abs(frame.astype(float) - colour).sum(-1) < 60)
    assert len(xs) > 20
    return xs.mean(), ys.mean()


def test_frames_show_the_described_event(small):
    """The ground truth is visible: during each event its colour is on screen and its centroid moves the right way."""
    out, _ = small
    events = json.loads((out / "events.json").read_text())
    for vid in ("train00000", "test00001"):
        n = int(SMALL["fps"] * SMALL["seconds"])
        frames, _ = load_frames(out / "videos" / f"{vid}.mp4", n, 48, decoder="pyav")
        for e in events[vid]:
            col = np.array(COLOURS[e["colour"]], float)
            (x0, y0), (x1, y1) = (_centroid(frames[e["start"] + 1], col), _centroid(frames[e["end"] - 1], col))
            dx, dy = DIRECTIONS[e["direction"]]
            moved = (x1 - x0) * dx + (y1 - y0) * dy
            assert moved > 8, (vid, e, moved)


def _matches(caption_events, video_events) -> bool:
    it = iter(video_events)
    return all(any(e == v for v in it) for e in caption_events)  # subsequence (in order)


def test_eval_captions_match_only_their_own_video():
    plan = plan_eval(100, np.random.default_rng([0, 2]))
    videos = [ev for ev, _ in plan]
    caps = [c[0] for _, c in plan]
    for i, cap in enumerate(caps):
        hits = [j for j, ev in enumerate(videos) if _matches(cap, ev)]
        assert hits == [i]
    single = sum(len(c) == 1 for c in caps) / len(caps)
    assert 0.5 <= single < 1.0  # mostly one-event captions, some two-event ones
    assert all(2 <= len(v) <= 4 for v in videos)


def test_train_plan_and_vocabulary():
    plan = plan_train(50, np.random.default_rng(0))
    words = {w for _, caps in plan for c in caps for w in caption_text(c).split()}
    assert words <= {"a", "an", "moves", "then", *COLOURS, *SHAPES, *DIRECTIONS}
    assert any(len(c) == 2 for _, caps in plan for c in caps)


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(tmp_path, workers=1, **SMALL)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_events_per_video_range(tmp_path):
    """``events=(min, max)``: longer videos with more events; evaluation captions still match only their own video."""
    s = generate(tmp_path, workers=1, **{**SMALL, "num_train": 4, "num_val": 0, "num_test": 6, "seconds": 4.0},
                 events=(6, 8))
    assert s["params"]["events"] == [6, 8]
    events = json.loads((tmp_path / "events.json").read_text())
    caps = json.loads((tmp_path / "captions.json").read_text())
    assert set(events) == {f"train{i:05d}" for i in range(4)} | {f"test{i:05d}" for i in range(6)}
    for vid, evs in events.items():
        assert 6 <= len(evs) <= 8 and evs[-1]["end"] == 32
        assert all(e["end"] - e["start"] >= 2 for e in evs)  # 32 frames: every event is visible
        if vid.startswith("train"):
            assert len(caps[vid]) == 2 * len(evs) - 1
    plan = plan_eval(60, np.random.default_rng([0, 2]), events=(7, 11))
    videos = [ev for ev, _ in plan]
    assert all(7 <= len(v) <= 11 for v in videos)
    for i, (_, (cap,)) in enumerate(plan):
        assert [j for j, ev in enumerate(videos) if _matches(cap, ev)] == [i]
    assert plan_train(5, np.random.default_rng(0)) == plan_train(5, np.random.default_rng(0), events=(2, 4))


def test_events_argument_checked(tmp_path):
    for bad in ((0, 2), (3, 2), (2, 33)):
        with pytest.raises(ValueError, match="events per video"):
            generate(tmp_path / "x", workers=1, **SMALL, events=bad)
    with pytest.raises(ValueError, match="too few"):
        generate(tmp_path / "y", workers=1, **{**SMALL, "fps": 2, "seconds": 2.0}, events=(2, 6))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # checked before anything is written


def test_synth_cli_events(tmp_path, capsys):
    from pipelines.cli import main as glccl

    args = ["data", "synth", "--out", str(tmp_path / "s"), "--num-train", "2", "--num-val", "0", "--num-test", "2",
            "--size", "32", "--fps", "8", "--seconds", "2", "--workers", "1", "--quiet"]
    assert glccl(args + ["--events", "5-6"]) == 0
    events = json.loads((tmp_path / "s" / "events.json").read_text())
    assert len(events) == 4 and all(5 <= len(e) <= 6 for e in events.values())
    assert json.loads((tmp_path / "s" / "synth_meta.json").read_text())["params"]["events"] == [5, 6]
    assert glccl(args + ["--events", "3"]) == 0
    assert all(len(e) == 3 for e in json.loads((tmp_path / "s" / "events.json").read_text()).values())
    with pytest.raises(SystemExit) as e:
        glccl(args + ["--events", "4-2"])
    assert e.value.code == 2 and "events per video" in capsys.readouterr().err


def test_didemo_layout_writes_paragraph_queries_the_didemo_adapter_reads(tmp_path):
    from glccl.data.manifest import build_manifest
    from glccl.data.synth import _holds_in_order, event_text, generate

    out = tmp_path / "dd"
    s = generate(out, num_train=6, num_val=2, num_test=12, seed=3, size=32, fps=4, seconds=12.0, workers=1,
                 events=(5, 7), layout="didemo", described=(2, 3))
    assert s["params"]["layout"] == "didemo" and not (out / "captions.json").exists()
    events = json.loads((out / "events.json").read_text())
    moments = json.loads((out / "test_data.json").read_text())
    assert (out / "test_list.txt").read_text().split() == [f"test{i:05d}.mp4" for i in range(12)]
    table = build_manifest("didemo", out, "test", check_videos=True)
    assert table.num_rows == 12  # one paragraph per video
    seqs = {}
    for vid, cap in zip(table["video_id"].to_pylist(), table["caption"].to_pylist()):
        ev = events[vid.removesuffix(".mp4")]
        mine = [m for m in moments if m["video"] == vid]
        assert 2 <= len(mine) <= 3 and 5 <= len(ev) <= 7
        idx = [int(m["annotation_id"].rsplit("-", 1)[1]) for m in mine]
        assert idx == sorted(idx)  # described in the order they happen
        assert cap == " ".join(event_text((ev[i]["colour"], ev[i]["shape"], ev[i]["direction"])) for i in idx)
        for m, i in zip(mine, idx):  # DiDeMo's 5 s segment indices cover the event
            assert m["times"] == [[int(ev[i]["start"] / 4 // 5), int(max(ev[i]["start"], ev[i]["end"] - 1) / 4 // 5)]]
        seqs[vid] = [(ev[i]["colour"], ev[i]["shape"], ev[i]["direction"]) for i in idx]
    for vid, seq in seqs.items():  # each paragraph matches its own video only
        others = [o for o in seqs if o != vid]
        held = [[(e["colour"], e["shape"], e["direction"]) for e in events[o.removesuffix(".mp4")]] for o in others]
        assert not any(_holds_in_order(h, seq) for h in held), vid


def test_synth_rejects_impossible_settings(tmp_path):
    from glccl.data.synth import generate

    for kwargs, needle in (({"num_train": -1}, "num_train"), ({"seconds": -1.0}, "seconds"),
                           ({"layout": "vatex"}, "layout"), ({"layout": "didemo", "described": (3, 2)}, "min")):
        with pytest.raises(ValueError, match=needle):
            generate(tmp_path / "x", **{"num_train": 2, "num_val": 1, "num_test": 1, "size": 32, "workers": 1,
                                        **kwargs})
