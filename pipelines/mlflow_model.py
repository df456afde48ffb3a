"""A run's best model as an MLflow model that loads without unpickling anything: weights as safetensors, the config
as JSON, and this module as the loader.

``glccl train`` logs it as the run's logged model ``best_model`` (MLflow flavour ``python_function`` with
``loader_module: pipelines.mlflow_model``; no pickle, no cloudpickle, no code in the artifacts)::

    MLmodel, requirements.txt, python_env.yaml, conda.yaml
    data/best_model/model.safetensors    the state dict (safetensors: raw tensors, nothing executable)
    data/best_model/config.json          the run's resolved config tree

Load it (the model id is on the run's page in the MLflow UI, or ``mlflow.search_logged_models``)::

    from pipelines.mlflow_model import load_model
    model, cfg = load_model("models:/m-...")            # or a downloaded model directory
    # mlflow.pyfunc.load_model("models:/m-...").predict(["a red circle moves left"])  -> sentence features

:func:`load_model` reads only ``config.json`` and ``model.safetensors``; it never imports a loader named by the
model's ``MLmodel`` file, so a model from someone else cannot run code through it. (``mlflow.pyfunc.load_model`` does
import the ``loader_module`` the ``MLmodel`` file names: use it only for models from a trusted store.)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.pyfunc
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from glccl.config import ConfigError, load_config, upgrade
from glccl.model import create_model_from_config
from pipelines.tracking import fluent_uri

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DATA_DIR = "best_model"
LOADER_MODULE = "pipelines.mlflow_model"


class ModelFileError(ValueError):
    """A model directory without the expected files, or with unreadable ones."""


def write_model_dir(directory: str | os.PathLike, state_dict: dict, config: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clones: safetensors refuses tensors that share memory (tied or viewed weights); loading copies them back anyway
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True))
    return directory


def log_model(state_dict: dict, config: dict[str, Any], pip_requirements: list[str]):
    """Log the weights and config as the active MLflow run's logged model ``best_model``; returns MLflow's ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp:
        data = write_model_dir(Path(tmp) / DATA_DIR, state_dict, config)
        return mlflow.pyfunc.log_model(name="best_model", loader_module=LOADER_MODULE, data_path=str(data),
                                       pip_requirements=pip_requirements)


def _find_data_dir(root: Path) -> Path:
    if (root / WEIGHTS).is_file() and (root / CONFIG).is_file():
        return root
    hits = sorted({p.parent for p in root.rglob(CONFIG) if (p.parent / WEIGHTS).is_file()})
    if len(hits) != 1:
        raise ModelFileError(f"model {root}: expected one directory with {WEIGHTS} and {CONFIG}, found {len(hits)}")
    return hits[0]


def load_model_dir(directory: str | os.PathLike):
    """(model, cfg) from a directory holding ``model.safetensors`` and ``config.json`` (or a model directory that
    contains one such directory). Reads nothing else."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError(f"model {directory}: no such directory")
    data = _find_data_dir(directory)
    try:
        raw = json.loads((data / CONFIG).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON {type(raw).__name__}, not an object")
        cfg = load_config(upgrade(raw))  # written by this program, maybe before keys moved
    except (ValueError, ConfigError) as e:
        raise ModelFileError(f"model {data / CONFIG}: not a glccl config ({e})") from None
    try:
        state = load_file(str(data / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"model {data / WEIGHTS}: not a readable safetensors file ({e})") from None
    model = create_model_from_config(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelFileError(f"model {data / WEIGHTS}: weights do not fit the config's model ({first})") from None
    return model.eval(), cfg


def load_model(model_uri: str, tracking_uri: str | None = None):
    """(model, cfg) from an MLflow model URI (``models:/<id>``, ``runs:/<run>/best_model``, ...) or a local
    directory. Downloads the artifacts and reads only the weights and the config."""
    if Path(model_uri).is_dir():
        return load_model_dir(model_uri)

    # models:/ URIs resolve through the fluent API's tracking URI, whatever download_artifacts is given
    with fluent_uri(tracking_uri) if tracking_uri else contextlib.nullcontext(), tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking_uri)
        return load_model_dir(local)


class _TextEncoder:
    """What ``mlflow.pyfunc.load_model(uri).predict(texts)`` returns: one sentence feature row per text."""

    def __init__(self, model):
        self.model = model

    def predict(self, model_input, params: dict[str, Any] | None = None):
        if hasattr(model_input, "iloc"):  # a pandas DataFrame or Series: its first column
            model_input = model_input.iloc[:, 0] if model_input.ndim == 2 else model_input
        texts = [str(t) for t in list(model_input)]
        with torch.no_grad():
            sentence = self.model.encode_text(self.model.tokenize(texts))[0]
        return sentence.float().numpy()


def _load_pyfunc(data_path: str) -> _TextEncoder:
    """MLflow's pyfunc hook (``loader_module``)."""
    model, _ = load_model_dir(data_path)
    return _TextEncoder(model)
