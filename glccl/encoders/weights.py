"""Load pretrained CLIP weights into an open_clip ``CLIP``, with errors that say what is wrong and with which file.

Accepted sources (``load_pretrained(clip, source)``):

- the OpenAI TorchScript archive (``ViT-B-32.pt``): read with ``torch.jit.load(...).state_dict()``, because
  ``torch.load(weights_only=True)`` refuses TorchScript;
- a plain state dict (``.pt/.pth/.bin`` read with ``torch.load(weights_only=True)``, or ``.safetensors``);
- an open_clip training checkpoint ``{"state_dict": ..., "epoch": ...}`` (``module.`` prefixes stripped);
- a glccl / X-CLIP checkpoint whose CLIP keys start with ``clip.`` (only those are taken, the prefix is stripped);
- a hub tag: ``openai``, ``laion2b_...`` (any tag open_clip lists for the preset's architecture) or ``hf-hub:org/repo``.

Only hub tags ever touch the network. Policy: when ``HF_HUB_OFFLINE`` is set, or when huggingface.co (or the
download host) does not accept a TCP connection within 2 s, the weights are taken from the local Hugging Face cache if
they are there, and otherwise a :class:`WeightsError` is raised at once (instead of open_clip's ~49 s of retries).
Nothing here sets any offline switch.

Every failure raises :class:`WeightsError` (a ``ValueError``) whose message names the file and the reason.
"""

from __future__ import annotations

import os
import socket
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from glccl import _tv_compat  # noqa: F401  (must precede open_clip)

# Entries of OpenAI's archive that are not weights.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_HUB_TIMEOUT_S = 2.0
# torch.save's pre-1.6 (non-zip) format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


class WeightsError(ValueError):
    """A weight source that cannot be used; the message names the file (or tag) and the reason."""


# ---------------------------------------------------------------------------------------------------------------------
# reading files


def _is_torchscript_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    # TorchScript archives carry compiled code and constants next to data.pkl; torch.save archives do not.
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file (any accepted format) into a flat ``{name: tensor}`` dict, wrappers and prefixes removed.

    Raises:
        WeightsError: missing, empty, unreadable or corrupt file, or a file that holds no tensors.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    if not path.is_file():
        raise WeightsError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"{path}: file is empty (0 bytes); an interrupted download or copy?")

    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise WeightsError(f"{path}: a safetensors file, but the safetensors package is not installed") from e
        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
            raise WeightsError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    elif _is_torchscript_zip(path):
        try:
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{path}: corrupt TorchScript archive ({_first_line(e)})") from e
    else:
        is_zip = zipfile.is_zipfile(path)
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_MAGIC))
        if not is_zip and head[:4] == b"PK\x03\x04":
            raise WeightsError(f"{path}: corrupt or truncated archive (a zip file without its central directory, "
                               f"{size} bytes; an interrupted download or copy?)")
        if not is_zip and head != _LEGACY_TORCH_MAGIC:
            raise WeightsError(f"{path}: not a readable weight file (not a PyTorch, TorchScript or safetensors file; "
                               f"{size} bytes of unknown format)")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            msg = _first_line(e)
            if "zip archive" in msg or "central directory" in msg or (is_zip and "failed" in msg.lower()):
                raise WeightsError(f"{path}: corrupt or truncated archive ({msg})") from e
            if "weights_only" in msg or "weights only" in msg.lower() or "Unsupported global" in msg:
                raise WeightsError(f"{path}: holds pickled objects other than tensors and plain containers, which "
                                   f"are not loaded for safety ({msg})") from e
            raise WeightsError(f"{path}: not a readable weight file (not a PyTorch, TorchScript or safetensors "
                               f"file; {size} bytes; {msg})") from e
    return _flatten_checkpoint(obj, path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _flatten_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Unwrap training checkpoints: {"state_dict": ...} (open_clip), {"model": ...}, {"module": ...}.
    for _ in range(3):
        if _is_state_dict(obj) or not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"{path}: holds no tensors (keys: {', '.join(map(str, list(obj)[:8]))})")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    # glccl and X-CLIP checkpoints: the CLIP lives under "clip."; the temporal encoder and heads are not ours to load.
    if any(k.startswith("clip.") for k in sd):
        sd = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    for key in _NON_WEIGHT_KEYS:
        sd.pop(key, None)
    return sd


# ---------------------------------------------------------------------------------------------------------------------
# loading into a model


def _examples(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def load_state_dict_into(clip: nn.Module, sd: dict[str, torch.Tensor], source: str,
                         model_name: str | None = None) -> None:
    """Strictly load ``sd`` into ``clip``; on any mismatch raise one :class:`WeightsError` describing all of them."""
    target = clip.state_dict()
    # Non-persistent buffers (attn_mask) end up in scripted archives; they are computed, not loaded.
    computed = {name for name, _ in clip.named_buffers()} - set(target)
    sd = {k: v for k, v in sd.items() if k not in computed}
    if "logit_scale" in sd and "logit_scale" in target and sd["logit_scale"].numel() == target["logit_scale"].numel():
        sd["logit_scale"] = sd["logit_scale"].reshape(target["logit_scale"].shape)

    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    mismatched = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    problems = []
    if mismatched:
        # the patch embedding tells architectures apart best (width, patch size)
        k = "visual.conv1.weight" if "visual.conv1.weight" in mismatched else mismatched[0]
        problems.append(f"{len(mismatched)} keys have mismatched shapes, e.g. {k}: file {_shape(sd[k])} vs model "
                        f"{_shape(target[k])}")
    if missing:
        problems.append(f"{len(missing)} model keys are missing from the file, e.g. {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys in the file are not in the model, e.g. {_examples(unexpected)}")
    if problems:
        arch = f" ({model_name})" if model_name else ""
        raise WeightsError(f"{source}: does not fit the CLIP{arch}: " + "; ".join(problems)
                           + " — is this the right preset, and a CLIP checkpoint?")
    clip.load_state_dict(sd, strict=True)  # copies (and casts, e.g. OpenAI's fp16) into the existing parameters


def load_pretrained(clip: nn.Module, path_or_tag: str | os.PathLike, model_name: str | None = None,
                    cache_dir: str | None = None) -> str:
    """Load weights into an open_clip ``CLIP`` in place.

    Args:
        clip: the model to fill (its architecture must match the weights exactly).
        path_or_tag: a weight file (see module docstring) or a hub tag (``openai``, ``hf-hub:org/repo``, ...).
        model_name: open_clip architecture of ``clip`` (e.g. ``ViT-B-32-quickgelu``); needed to resolve tags such
            as ``openai`` and used in error messages.
        cache_dir: download cache for hub tags.

    Returns:
        The local file the weights came from.

    Raises:
        WeightsError: see the module docstring.
    """
    source = os.fspath(path_or_tag)
    if not os.path.exists(source) and is_hub_tag(source, model_name):
        path = resolve_hub_tag(source, model_name, cache_dir=cache_dir)
    else:
        if not os.path.exists(source) and model_name and not Path(source).suffix and os.sep not in source:
            tags = _tags(model_name)
            raise WeightsError(f"{source}: no such file, and not a pretrained tag of {model_name} "
                               f"(tags: {', '.join(tags) or 'none'}; or use hf-hub:org/repo)")
        path = source
    sd = read_state_dict(path)
    load_state_dict_into(clip, sd, path, model_name)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# hub tags (the only network access in glccl)


def _tags(model_name: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(model_name))


def is_hub_tag(source: str, model_name: str | None = None) -> bool:
    """``hf-hub:...``, or a pretrained tag that open_clip lists for ``model_name``."""
    if source.startswith("hf-hub:"):
        return True
    return bool(model_name) and source in _tags(model_name)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def host_reachable(host: str, port: int = 443, timeout: float = _HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` s (DNS included, so it runs in a thread)."""
    ok: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _from_hf_cache(repo_id: str, filename: str | None, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename and filename.endswith(".bin"):
        names.insert(0, filename[: -len(".bin")] + ".safetensors")
    for name in names:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def resolve_hub_tag(tag: str, model_name: str | None, cache_dir: str | None = None) -> str:
    """Local path of the weights behind a hub tag, downloading them only when the network is there."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    if tag.startswith("hf-hub:"):
        repo_id, filename, url = tag[len("hf-hub:"):].strip("/"), None, ""
        if not repo_id:
            raise WeightsError(f"{tag}: empty hub repository")
    else:
        cfg = open_clip.get_pretrained_cfg(model_name, tag) if model_name else {}
        if not cfg:
            raise WeightsError(f"{tag}: not a pretrained tag of {model_name}")
        hub = cfg.get("hf_hub", "")
        url = cfg.get("url", "")
        repo_id, filename = os.path.split(hub) if hub else ("", None)
        filename = filename or None
        if hub and not oc_pretrained.has_hf_hub():
            repo_id = ""  # open_clip falls back to the URL
    host = "huggingface.co" if repo_id else urlparse(url).hostname or "huggingface.co"
    why = None
    if _offline():
        why = "HF_HUB_OFFLINE is set"
    elif not host_reachable(host):
        why = f"{host} is not reachable (no connection within {_HUB_TIMEOUT_S:.0f} s)"
    if why is None:
        try:
            if repo_id:
                return oc_pretrained.download_pretrained_from_hf(repo_id, filename=filename, cache_dir=cache_dir)
            return oc_pretrained.download_pretrained_from_url(url, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{tag}: download failed ({_first_line(e)})") from e
    cached = _from_hf_cache(repo_id, filename, cache_dir) if repo_id else None
    if cached:
        return cached
    where = f"hf-hub {repo_id}" if repo_id else url
    raise WeightsError(f"{tag}: needs a download from {where}, but {why} and the weights are not in the local "
                       f"cache. Download them on a machine with network and pass the file path instead (e.g. "
                       f"model.pretrained=/path/to/ViT-B-32.pt).")
