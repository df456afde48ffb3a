"""The Ray Data pipeline on a private local Ray: streaming into a consumer (the driver and a Ray Train worker), the
parquet frame cache, and bad inputs in both."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pytest
import torch

from glccl.data.frames import load_frames
from glccl.data.manifest import MANIFEST_SCHEMA, build_manifests, write_manifest
from glccl.data.report import BadInputError
from glccl.data.samples import release_fifo, write_bad_videos
from glccl.data.synth import generate
from glccl.tokenizer import tokenize

pytestmark = pytest.mark.ray

K, S, L = 6, 32, 16


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsynth")
    generate(root, num_train=8, num_val=2, num_test=6, seed=1, size=48, fps=8, seconds=3.0, workers=1)
    m = build_manifests("synth", root, ["train", "test"])
    path = write_manifest(m, root / "manifest.parquet")
    return root, path, m


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, synth):
    """A manifest whose test split mixes 4 good synthetic videos with every kind of bad video file."""
    root, _, m = synth
    bad = write_bad_videos(tmp_path_factory.mktemp("zoo"), fifo=True)
    good = m.filter(pa.compute.equal(m["split"], "test")).slice(0, 4).to_pylist()
    rows = good + [{"dataset": "synth", "split": "test", "video_id": f"bad_{r}", "video_path": str(p),
                    "caption_id": f"bad_{r}#0", "caption": f"caption of {r}"} for r, p in bad.items()]
    yield pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), bad
    release_fifo(bad["timeout"])


def _collect(ds, mode="pairs", batch_size=4):
    from pipelines.data import torch_dtypes

    out: dict[str, list] = {}
    for b in ds.iter_torch_batches(batch_size=batch_size, dtypes=torch_dtypes(mode)):
        for k, v in b.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def test_stream_pairs_feeds_driver_consumer(ray_session, synth):
    from pipelines.data import eval_texts, split_items, video_dataset

    root, path, _ = synth
    ds = video_dataset(path, "train", num_frames=K, size=S, train=True, max_words=L, batch_size=8, seed=0)
    b = _collect(ds)
    it = split_items(path, "train")
    n = len(it["captions"])
    assert b["frames"].shape == (n, K, S, S, 3) and b["frames"].dtype == torch.uint8
    assert b["frame_mask"].dtype == torch.bool and bool(b["frame_mask"].all())
    assert b["tokens"].shape == (n, L) and b["tokens"].dtype == torch.int64
    assert sorted(b["caption_index"].tolist()) == list(range(n))  # one row per video-caption pair
    order = torch.argsort(b["caption_index"])
    assert torch.equal(b["tokens"][order], tokenize(it["captions"], L))  # tokenised in the pipeline
    assert torch.equal(b["video_index"][order], torch.as_tensor(it["row_video_index"]))
    assert b["caption_index"].tolist() != list(range(n))  # shuffled for training
    assert ds.skip_log.report(ds.expected_items).num_skipped == 0
    # even with a seed, the next epoch has a new order and new random frames
    b2 = _collect(ds)
    assert sorted(b2["caption_index"].tolist()) == list(range(n))
    assert b2["caption_index"].tolist() != b["caption_index"].tolist()
    assert not torch.equal(b2["frames"][torch.argsort(b2["caption_index"])], b["frames"][order])
    # the same numbering as the evaluation texts
    tokens, t2v, caps, vids = eval_texts(path, "train", L)
    assert tokens.shape == (n, L) and t2v.tolist() == it["row_video_index"].tolist() and len(vids) == 8


def test_seeded_stream_repeats_runs_and_not_epochs(ray_session, synth):
    """With a seed, a second run (a dataset built anew) draws the frames of the first, epoch by epoch, and the next
    epoch draws new frames for (nearly) every item."""
    from pipelines.data import split_items, video_dataset

    root, path, _ = synth
    batch = 6  # divides the item count: every batch keeps its items in every epoch, so only the epoch can vary frames
    assert len(split_items(path, "train")["captions"]) % batch == 0

    def epochs(seed):
        ds = video_dataset(path, "train", num_frames=K, size=S, train=True, max_words=L, batch_size=batch, seed=seed)
        out = []
        for _ in range(2):
            b = _collect(ds)
            out.append(b["frames"][torch.argsort(b["caption_index"])])
        return out

    def changed(a, b):  # the fraction of items whose frames differ
        return float((a != b).flatten(1).any(1).float().mean())

    first, second = epochs(7), epochs(7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])  # runs repeat, epoch by epoch
    assert changed(first[0], first[1]) > 0.9  # epochs do not
    assert changed(epochs(8)[0], first[0]) > 0.9  # nor do seeds


def test_stream_videos_eval_is_deterministic(ray_session, synth):
    from pipelines.data import eval_texts, video_dataset

    root, path, _ = synth
    ds = video_dataset(path, "test", num_frames=K, size=S, train=False, mode="videos", batch_size=4)
    b = _collect(ds, "videos")
    assert set(b) == {"frames", "frame_mask", "video_index"}
    assert sorted(b["video_index"].tolist()) == list(range(6))  # one row per video
    tokens, t2v, caps, vids = eval_texts(path, "test", L)
    assert tokens.shape == (6, L) and t2v.tolist() == list(range(6))
    i = int(torch.nonzero(b["video_index"] == 3)[0])
    direct, _ = load_frames(root / "videos" / f"{vids[3]}.mp4", K, S, train=False)
    assert np.array_equal(b["frames"][i].numpy(), direct)


def test_stream_skips_and_counts_bad_videos(ray_session, zoo):
    from pipelines.data import video_dataset

    table, bad = zoo
    ds = video_dataset(table, "test", num_frames=K, size=S, train=False, mode="videos", batch_size=3, timeout_s=2.0)
    b = _collect(ds, "videos")
    assert sorted(b["video_index"].tolist()) == [0, 1, 2, 3]  # only the good videos come through
    rep = ds.skip_log.report(ds.expected_items)
    got = {e["file"]: e["reason"] for e in rep.skipped}
    assert got == {str(p): r for r, p in bad.items()}
    assert rep.total == 4 + len(bad) and rep.exceeded


def test_stream_strict_fails_at_bad_video(ray_session, zoo):
    from pipelines.data import video_dataset

    table, bad = zoo
    small = table.filter(pa.compute.is_in(table["video_id"], pa.array(["bad_truncated"])))
    ds = video_dataset(small, "test", num_frames=K, size=S, train=False, mode="videos", strict=True)
    with pytest.raises(Exception) as ei:
        ds.take_all()
    assert "truncated.mp4" in str(ei.value) and "truncated video file" in str(ei.value)


def test_prepare_cache_and_read_it(ray_session, synth, tmp_path, caplog):
    from pipelines.data import prepare_cache, read_cache_meta, read_cache_row, read_cache_rows, video_dataset

    root, path, _ = synth
    s = prepare_cache(path, ["train", "test"], tmp_path / "cache", num_frames=K, size=S, cache_factor=3,
                      batch_size=4, progress=False)
    assert s["items"] == 14 and s["skipped"] == 0 and not s["exceeded"]
    meta = read_cache_meta(tmp_path / "cache", "test")
    assert meta["frames_per_video"] == 3 * K and meta["size"] == S and meta["videos"] == 6
    idx = pa.parquet.read_table(tmp_path / "cache" / "test" / "index.parquet").to_pylist()
    frames, fidx, n = read_cache_row(str(tmp_path / "cache" / "test" / idx[0]["file"]), idx[0]["row_group"])
    assert frames.shape == (3 * K, S, S, 3) and n == 24 and fidx.tolist() == sorted(fidx.tolist())
    # several row groups of a file in one read, in the order asked (repeats included)
    same_file = [r["row_group"] for r in idx if r["file"] == idx[0]["file"]]
    assert len(same_file) >= 2
    ask = [same_file[1], same_file[0], same_file[1]]
    rows = read_cache_rows(str(tmp_path / "cache" / "test" / idx[0]["file"]), ask)
    for rg, (f, fi, total) in zip(ask, rows):
        f1, fi1, total1 = read_cache_row(str(tmp_path / "cache" / "test" / idx[0]["file"]), rg)
        assert np.array_equal(f, f1) and np.array_equal(fi, fi1) and total == total1
    assert not np.array_equal(rows[0][0], rows[1][0])
    # evaluation from the cache reads exactly the frames decoding would give
    from_cache = _collect(video_dataset(path, "test", num_frames=K, size=S, train=False, mode="videos",
                                        cache=tmp_path / "cache"), "videos")
    decoded = _collect(video_dataset(path, "test", num_frames=K, size=S, train=False, mode="videos"), "videos")
    a = from_cache["frames"][torch.argsort(from_cache["video_index"])]
    b = decoded["frames"][torch.argsort(decoded["video_index"])]
    assert torch.equal(a, b)
    # training from the cache: every pair, random frames within segments (two epochs differ)
    ds = video_dataset(path, "train", num_frames=K, size=S, train=True, max_words=L, cache=tmp_path / "cache",
                       batch_size=4)
    e1, e2 = _collect(ds), _collect(ds)
    assert sorted(e1["caption_index"].tolist()) == sorted(e2["caption_index"].tolist())
    assert len(e1["caption_index"]) == len(pa.parquet.read_table(path).filter(
        pa.compute.equal(pa.parquet.read_table(path)["split"], "train")))
    o1, o2 = torch.argsort(e1["caption_index"]), torch.argsort(e2["caption_index"])
    assert not torch.equal(e1["frames"][o1], e2["frames"][o2])
    assert not torch.equal(e1["caption_index"], e2["caption_index"])  # a new order every epoch
    with pytest.raises(ValueError, match="64px requested"):
        video_dataset(path, "test", num_frames=K, size=64, train=False, mode="videos", cache=tmp_path / "cache")
    # a cache prepared for another K still serves (frames snapped to the nearest cached one), and says so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipelines.data"):
        video_dataset(path, "test", num_frames=K, size=S, train=False, mode="videos", cache=tmp_path / "cache")
        assert not [r for r in caplog.records if "prepared for K=" in r.getMessage()]
        video_dataset(path, "test", num_frames=K - 1, size=S, train=False, mode="videos", cache=tmp_path / "cache")
    assert [r for r in caplog.records if f"prepared for K={K} " in r.getMessage()]


def test_prepare_cache_skips_bad_videos_with_report(ray_session, zoo, tmp_path):
    from pipelines.data import prepare_cache, video_dataset

    table, bad = zoo
    # above the default limit nothing would be installed (tests/pipelines/test_bad_input.py); here the limit admits them
    s = prepare_cache(table, ["test"], tmp_path / "cache", num_frames=K, size=S, batch_size=3, timeout_s=2.0,
                      max_skip_fraction=0.9, progress=False)
    sp = s["splits"]["test"]
    assert sp["written"] == 4 and sp["skipped"] == len(bad) and not sp["exceeded"] and s["installed"]
    rep = json.loads((tmp_path / "cache" / "test" / "skipped.json").read_text())
    assert {e["file"]: e["reason"] for e in rep["items"]} == {str(p): r for r, p in bad.items()}
    assert rep["by_reason"]["timeout"] == 1
    idx = pa.parquet.read_table(tmp_path / "cache" / "test" / "index.parquet")
    assert sorted(idx["video_id"].to_pylist()) == sorted(table["video_id"].to_pylist()[:4])  # no garbage rows
    ds = video_dataset(table, "test", num_frames=K, size=S, train=False, mode="videos", cache=tmp_path / "cache")
    assert len(ds.take_all()) == 4
    assert len(ds.skip_log.report().skipped) == len(bad)  # not in the cache: counted again, with a pointer


def test_prepare_cache_strict_writes_nothing(ray_session, zoo, tmp_path):
    from pipelines.data import prepare_cache

    table, bad = zoo
    keep = pa.array([v != "bad_timeout" for v in table["video_id"].to_pylist()])
    with pytest.raises(BadInputError, match=r"bad input \(strict mode\): .*\.mp4: "):
        prepare_cache(table.filter(keep), ["test"], tmp_path / "cache", num_frames=K, size=S, strict=True,
                      progress=False)
    assert not (tmp_path / "cache" / "test").exists()
    assert not any(p.name.startswith(".test.tmp") for p in (tmp_path / "cache").iterdir())


@pytest.mark.slow  # ~30 s on an idle 2-core machine, minutes on a busy one; the driver-side consumer tests are fast
def test_ray_train_worker_consumes_stream(ray_session, synth, tmp_path):
    """The contract of the training loop: get_dataset_shard("train").iter_torch_batches on a Ray Train worker."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.data import video_dataset

    root, path, _ = synth
    ds = video_dataset(path, "train", num_frames=K, size=S, train=True, max_words=L, batch_size=8, num_cpus=0.5)

    def loop(config):
        import json

        import ray.train
        import torch

        from glccl.data.frames import normalize
        from pipelines.data import torch_dtypes

        shard = ray.train.get_dataset_shard("train")
        rows, total = 0, 0.0
        for batch in shard.iter_torch_batches(batch_size=8, dtypes=torch_dtypes("pairs")):
            x = normalize(batch["frames"])  # [B, K, 3, S, S] float on the worker
            assert x.shape[1:] == (K, 3, S, S) and batch["tokens"].shape[1] == L
            rows += len(x)
            total += float(x.mean())
        with open(config["out"], "w") as f:  # one machine: the test reads what the worker saw
            json.dump({"rows": rows, "finite": bool(torch.isfinite(torch.tensor(total)))}, f)

    trainer = TorchTrainer(loop, train_loop_config={"out": str(tmp_path / "seen.json")},
                           scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                           datasets={"train": ds},
                           run_config=RunConfig(name="data_stream_test", storage_path=str(tmp_path / "runs")))
    trainer.fit()
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["rows"] == ds.expected_items and seen["finite"]
