"""No file the project reads back runs code: checkpoints, training state, galleries and the MLflow model.

A checkpoint carrying a real pickle payload (an object whose ``__reduce__`` calls ``exec`` to write a marker file) is
refused by ``glccl eval``, ``glccl search`` and the gallery and training-state loaders with one line naming the file
and the reason, and the marker never appears. The same payload does run under ``weights_only=False`` (the control), so
the checks can fail. What the project writes itself (training state with its RNG states, the MLflow model) loads back
under the safe loaders.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Pickles as ``exec(<code that writes the marker>)``: unpickling it runs the code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def _tiny_cfg():
    from glccl.config import load_config

    return load_config({"model": {"preset": "tiny", "num_frames": 4, "max_words": 16, "pretrained": None}})


@pytest.fixture
def evil(tmp_path):
    """A best_model.pt shaped like the real thing (model + config) with the payload next to the weights."""
    from glccl.config import to_dict
    from glccl.model import create_model_from_config

    torch.manual_seed(0)
    cfg = _tiny_cfg()
    marker = tmp_path / "marker"
    path = tmp_path / "shared_model.pt"
    torch.save({"model": create_model_from_config(cfg.model).state_dict(), "config": to_dict(cfg),
                "extra": _Payload(marker)}, path)
    return path, marker


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_payload_is_live_under_unsafe_loading(evil, tmp_path):
    """The control: loading the file the unsafe way really runs the payload (in a subprocess)."""
    path, marker = evil
    out = subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert marker.read_text() == "payload ran"


def test_eval_refuses_a_checkpoint_with_a_payload(evil, capsys):
    from pipelines import evaluate

    path, marker = evil
    assert evaluate.main(["--checkpoint", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"glccl eval: checkpoint {path}: refused, not loaded") and "(exec)" in line, line
    assert not marker.exists(), "the payload ran"


def test_search_refuses_a_checkpoint_with_a_payload(evil, tmp_path, capsys):
    from pipelines import search

    path, marker = evil
    assert search.main(["--checkpoint", str(path), "--gallery", str(tmp_path / "g.pt"), "a red circle"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"checkpoint {path}: refused" in line and "could run code" in line, line
    assert not marker.exists()


def test_gallery_and_training_state_loaders_refuse_a_payload(tmp_path):
    from glccl.safe_load import UnsafeFileError, load_tensors
    from glccl.search import Gallery, GalleryError

    marker = tmp_path / "marker"
    gallery = tmp_path / "gallery.pt"
    torch.save({"format": "glccl-gallery/1", "frames": torch.zeros(1, 2, 4), "meta": _Payload(marker)}, gallery)
    with pytest.raises(GalleryError) as e:
        Gallery.load(gallery)
    assert "\n" not in str(e.value) and f"gallery {gallery}: refused" in str(e.value)
    state = tmp_path / "state.pt"
    torch.save({"model": {}, "rng": _Payload(marker)}, state)
    with pytest.raises(UnsafeFileError, match=r"training checkpoint .*state\.pt: refused.*\(exec\)"):
        load_tensors(state, "training checkpoint")
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"^checkpoint .*junk\.pt could not be read") as e:
        load_tensors(junk, "checkpoint")
    assert "\n" not in str(e.value)


def test_training_state_round_trips_under_weights_only(tmp_path):
    """What a run checkpoints (model, AdamW, scheduler, torch/numpy/python RNG states, counters) loads with
    weights_only=True and restores the RNG streams exactly."""
    from glccl.model import create_model_from_config
    from glccl.optim import build_optimizer, build_scheduler
    from glccl.safe_load import load_tensors
    from pipelines import checkpoints

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    model = create_model_from_config(_tiny_cfg().model)
    opt = build_optimizer(model, 1e-3, 1e-2, 0.2, (0.9, 0.98), 1e-6)
    sched = build_scheduler(opt, 10, 0.1)
    tokens = model.tokenize(["a red circle", "a blue square"])
    model.encode_text(tokens)[0].sum().backward()
    opt.step()
    sched.step()
    np.random.normal()  # a cached gaussian in numpy's legacy state
    counters = {"step": 1, "epoch": 0, "batch_in_epoch": 1, "best": {"metric": 12.5, "epoch": 0}}
    checkpoints.save_train_state(tmp_path, model, opt, sched, counters, None)
    want = (torch.rand(3), np.random.rand(3), random.random())

    state = load_tensors(tmp_path / checkpoints.TRAIN_STATE, "training checkpoint")
    load_tensors(tmp_path / checkpoints.BEST_WEIGHTS, "training checkpoint")
    checkpoints.set_rng_state(state["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
    assert state["best"] == counters["best"] and state["step"] == 1
    opt2 = build_optimizer(model, 1e-3, 1e-2, 0.2, (0.9, 0.98), 1e-6)
    opt2.load_state_dict(state["optimizer"])
    build_scheduler(opt2, 10, 0.1).load_state_dict(state["scheduler"])


def test_mlflow_model_has_no_pickle_and_loads_back(tmp_path):
    """The logged model is safetensors + JSON (+ MLflow's YAML/text metadata): no file in it is a pickle; it loads
    back with the project's loader and with mlflow.pyfunc; a weights file that is really a pickle is refused."""
    import mlflow

    from glccl.config import to_dict
    from glccl.model import create_model_from_config
    from pipelines import mlflow_model, tracking

    torch.manual_seed(0)
    cfg = _tiny_cfg()
    model = create_model_from_config(cfg.model).eval()
    with tracking.fluent_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        exp = mlflow.create_experiment("safe-model", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp):
            info = mlflow_model.log_model(model.state_dict(), to_dict(cfg), ["glccl", "torch==2.13.0"])
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_path / "dl")))
        files = [p for p in local.rglob("*") if p.is_file()]
        names = sorted(p.relative_to(local).as_posix() for p in files)
        assert "data/best_model/model.safetensors" in names and "data/best_model/config.json" in names, names
        for p in files:
            assert p.suffix in (".safetensors", ".json", ".yaml", ".txt", "") and p.read_bytes()[:1] != b"\x80", p
        assert "loader_module: pipelines.mlflow_model" in (local / "MLmodel").read_text()

        back, back_cfg = mlflow_model.load_model(info.model_uri)
        assert back_cfg == cfg
        for k, v in model.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
        texts = ["a red circle moves left", "a blue square"]
        with torch.no_grad():
            want = model.encode_text(model.tokenize(texts))[0].numpy()
        assert np.allclose(mlflow.pyfunc.load_model(info.model_uri).predict(texts), want, atol=1e-6)

    marker = tmp_path / "marker"
    bad = tmp_path / "bad" / "best_model"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text((local / "data" / "best_model" / "config.json").read_text())
    torch.save({"w": _Payload(marker)}, bad / "model.safetensors")
    with pytest.raises(mlflow_model.ModelFileError, match=r"model\.safetensors: not a readable safetensors file"):
        mlflow_model.load_model(str(tmp_path / "bad"))
    assert not marker.exists()
