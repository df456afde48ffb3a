"""The library never imports Ray or MLflow: every module under glccl/ imports, and a tiny model builds and runs,
in a fresh interpreter where importing ``ray`` or ``mlflow`` raises ImportError."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys, traceback

    BLOCKED = ("ray", "mlflow")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"import of {name!r} is blocked: glccl/ must not import Ray or MLflow")
            return None

    sys.meta_path.insert(0, Blocker())

    failures = []
    import glccl

    def onerror(name):
        failures.append((name, traceback.format_exc()))

    names = ["glccl", "glccl.model", "glccl.encoders", "glccl.config", "glccl.tokenizer"]
    names += [m.name for m in pkgutil.walk_packages(glccl.__path__, "glccl.", onerror=onerror)]
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception:
            failures.append((name, traceback.format_exc()))

    import torch
    from glccl.model import create_model

    try:
        m = create_model("tiny", num_frames=4, max_words=8, temporal_layers=1).eval()
        with torch.no_grad():
            out = m(m.tokenize(["a dog", "a cat"]), torch.zeros(2, 4, 3, m.image_size, m.image_size, dtype=torch.uint8))
            score, parts = m.score(**{k: out[k] for k in ("sentence", "words", "word_mask", "frames", "frame_mask")})
        assert score.shape == (2, 2), score.shape
    except Exception:
        failures.append(("create_model('tiny')", traceback.format_exc()))

    leaked = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    if leaked:
        failures.append(("sys.modules", f"blocked packages present: {leaked}"))
    for name, tb in failures:
        print(f"=== {name}\\n{tb}")
    print(f"imported {len(dict.fromkeys(names))} modules; {len(failures)} failures")
    sys.exit(1 if failures else 0)
    """
)


def test_glccl_imports_without_ray_and_mlflow():
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_data_modules_import_without_torch():
    """Ray decode workers import glccl.data.* and pipelines.data: they must not pay for torch and open_clip (Ray
    itself is loaded in every Ray worker already)."""
    code = ("import sys; import glccl.data.frames, glccl.data.manifest, pipelines.data; "
            "heavy = sorted(m for m in ('torch', 'open_clip', 'mlflow') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    # and the package's public names still resolve (lazily)
    proc = subprocess.run([sys.executable, "-c", "import glccl; print(glccl.create_model.__name__, glccl.FEATURE_KEYS)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "create_model" in proc.stdout, proc.stderr[-3000:]
