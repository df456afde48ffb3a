"""Training heads on cached frame features: a frozen frame tower's features computed once by Ray Data into a feature
cache, then the ordinary ``glccl train`` path (same engine, same MLflow record) trains text tower + temporal encoder +
head from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

K, SIZE = 4, 32


def test_a_step_on_features_equals_the_step_on_pixels():
    """What training from a feature cache computes: the same losses as the pixel step, the tower run beforehand."""
    from glccl import engine
    from glccl.losses import build_loss
    from glccl.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny-rn", head="glscl", num_frames=3, max_words=8).eval()  # glscl: has aux_losses
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 3, model.image_size, model.image_size, 3), generator=g, dtype=torch.uint8)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    tokens = model.tokenize(["a red circle", "a blue square moves"])
    loss_fn = build_loss(model.head)
    with torch.no_grad():
        want = engine.compute_losses(model, loss_fn, {"tokens": tokens, "frames": frames, "frame_mask": mask})
        feats = model.encode_frames(engine.channels_first(frames), mask)
        got = engine.compute_losses(model, loss_fn, {"tokens": tokens, "frames": feats, "frame_mask": mask})
    assert set(got) == set(want) and any(k.startswith("aux/") for k in got)
    for k in want:
        assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-5, abs=1e-6), k


@pytest.fixture(scope="module")
def feature_setup(ray_session, tiny_synth, tmp_path_factory):
    from glccl.data.manifest import build_manifests, write_manifest
    from glccl.model import create_model
    from pipelines import data as pdata

    root = tmp_path_factory.mktemp("features")
    table = build_manifests("synth", tiny_synth, ["train", "val", "test"])
    write_manifest(table, root / "manifest.parquet")
    pdata.prepare_cache(table, ["train", "val", "test"], root / "frames", num_frames=K, size=SIZE, progress=False)
    torch.manual_seed(3)
    tower = create_model("tiny-rn-32", head="meanp", num_frames=K, max_words=16).eval()
    ckpt = root / "tower.pt"
    torch.save(tower.state_dict(), ckpt)  # a glccl checkpoint: model.pretrained takes its "clip." weights
    pdata.prepare_features(root / "frames", ["train", "val", "test"], root / "feats", tower)
    return root, tower, ckpt


@pytest.mark.ray
def test_feature_cache_holds_the_towers_features_of_the_cached_frames(feature_setup):
    from pipelines import data as pdata

    root, tower, _ = feature_setup
    meta = pdata.read_cache_meta(root / "feats", "test")
    assert meta["feature_dim"] == tower.embed_dim and meta["tower"]["fingerprint"] == pdata.tower_fingerprint(tower)
    import pyarrow.parquet as pq

    idx = pq.read_table(root / "feats" / "test" / "index.parquet").to_pydict()
    fidx = pq.read_table(root / "frames" / "test" / "index.parquet").to_pydict()
    assert idx["video_id"] == fidx["video_id"] and idx["num_cached"] == fidx["num_cached"]
    feats, findex, total = pdata.read_cache_row(str(root / "feats" / "test" / idx["file"][0]), idx["row_group"][0])
    frames, findex2, total2 = pdata.read_cache_row(str(root / "frames" / "test" / fidx["file"][0]),
                                                   fidx["row_group"][0])
    assert np.array_equal(findex, findex2) and total == total2 and feats.shape == (len(findex), tower.embed_dim)
    with torch.no_grad():
        ref = tower.encode_frames(torch.from_numpy(frames)[None].permute(0, 1, 4, 2, 3))[0]
    np.testing.assert_allclose(feats, ref.numpy(), rtol=2e-3, atol=2e-3)  # float16 storage


@pytest.mark.ray
def test_train_from_features_through_the_ordinary_run(feature_setup, tmp_path):
    from mlflow.tracking import MlflowClient

    from glccl.config import load_config
    from pipelines import train

    root, tower, ckpt = feature_setup
    cfg = load_config(None, [
        "name=from-features", f"storage={tmp_path}", "experiment=test-features", "data.dataset=synth",
        f"data.manifest={root / 'manifest.parquet'}", f"data.cache={root / 'feats'}", "model.preset=tiny-rn-32",
        f"model.pretrained={ckpt}", "model.head=xpool", f"model.num_frames={K}", "model.max_words=16",
        "model.temporal_layers=1", "train.batch_size=8", "train.eval_batch_size=8", "train.epochs=1",
        "scaling.num_workers=1", "train.max_steps=2", "train.lr=1e-3"])
    out = train.run(cfg)
    run = MlflowClient(tracking_uri=out["tracking_uri"]).get_run(out["run_id"])
    assert run.info.status == "FINISHED" and "test/t2v/R@1" in out["metrics"]
    best = torch.load(tmp_path / "from-features" / "best_model.pt", map_location="cpu", weights_only=True)
    best = best.get("model", best) if isinstance(best, dict) and "model" in best else best
    visual = {k[len("clip.visual."):]: v for k, v in best.items() if k.startswith("clip.visual.")}
    for name, value in tower.clip.visual.state_dict().items():  # the frame tower stayed frozen
        assert torch.equal(visual[name], value), name
    moved = [k for k, v in best.items() if k.startswith("temporal.") and not torch.equal(v, _initial(ckpt, cfg)[k])]
    assert moved, "the temporal encoder did not train"


def _initial(ckpt, cfg):
    from glccl.model import create_model_from_config

    return create_model_from_config(cfg.model).state_dict()


@pytest.mark.ray
def test_a_feature_cache_of_another_tower_is_refused_before_training(feature_setup, tmp_path):
    from glccl.config import ConfigError, load_config
    from pipelines.run_data import check_feature_cache

    root, _, _ = feature_setup
    cfg = load_config(None, ["data.dataset=synth", f"data.cache={root / 'feats'}", "model.preset=tiny-rn-32",
                             f"model.num_frames={K}", "model.max_words=16"])  # random init: another tower
    with pytest.raises(ConfigError, match=r"model\.pretrained.*another frame tower"):
        check_feature_cache(cfg)
    frames_only = load_config(None, ["data.dataset=synth", f"data.cache={root / 'frames'}"])
    assert check_feature_cache(frames_only) is False


def test_a_relative_pretrained_file_is_made_absolute_for_the_workers(tmp_path, monkeypatch):
    """Ray Train workers run elsewhere: a relative model.pretrained must name the same file there."""
    from glccl.config import load_config
    from pipelines.train import resolve_local_files

    (tmp_path / "w.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    cfg = resolve_local_files(load_config(None, ["model.pretrained=w.pt"]))
    assert cfg.model.pretrained == str(tmp_path / "w.pt")
    assert resolve_local_files(load_config(None, ["model.pretrained=openai"])).model.pretrained == "openai"
