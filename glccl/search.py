"""Two-stage text -> video search over a precomputed gallery (pure PyTorch).

A :class:`Gallery` holds what the video side of every score needs, computed once per video: the post-temporal frame
features ``[Nv, K, D]`` with their mask, the video ids, and one first-stage vector per video (the L2-normalised
masked mean of its frames, ``[Nv, D]``). A query is then answered in two stages:

1. **shortlist**: a cheap exact score against every video; ``stage1="meanp"`` (default) is the cosine of the
   sentence feature with the first-stage vectors (one ``[Nq, D] x [D, Nv]`` product, MeanP/CLIP4Clip-style);
   ``stage1="glim"`` is GLCCL's global GLIM score ``cos(s, sum_k softmax_k(s.f_k / tau) f_k)`` (``K`` times the work,
   still no per-pair ``D`` vector: the pooled norm comes from the frame Gram matrix);
2. **re-rank**: the model's full head (e.g. GLCCL) on the ``shortlist`` best videos only, top ``k`` returned, through
   the head's ``score_pairs`` (GLCCL's scores many queries' shortlists in one call; the base fallback calls the head
   once per query).

``exhaustive=True`` scores every video with the head instead (the reference ranking). With ``shortlist >= Nv`` the
two-stage result is the exhaustive one (stage 2 then scores every video; scores equal up to float rounding). Scores
are the head's unscaled scores (no logit scale). Ties rank the lower gallery index first.

Gallery files (:meth:`Gallery.save` / :meth:`Gallery.load`) are single ``torch.save`` files with a format tag and a
fingerprint of the video encoder (CLIP visual tower + temporal encoder) that built them; loading a missing, corrupt,
inconsistent or (given a model) mismatched file raises :class:`GalleryError` naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

GALLERY_FORMAT = "glccl-gallery/1"
STAGE1 = ("meanp", "glim")

ScoreFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
PairFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class QueryError(ValueError):
    """A search query that cannot be answered (empty)."""


class GalleryError(ValueError):
    """A gallery file is missing, unreadable, malformed, or was built by a different video encoder."""


def _unit(x: Tensor) -> Tensor:
    nsq = (x * x).sum(-1, keepdim=True)
    tiny = torch.finfo(x.dtype).tiny
    return x * torch.where(nsq > tiny, nsq.clamp_min(tiny).rsqrt(), torch.zeros_like(nsq))


def first_stage_vectors(frames: Tensor, frame_mask: Tensor) -> Tensor:
    """CLIP4Clip's video vector ``[Nv, D]``: the L2-normalised masked mean of the L2-normalised frames (a video
    without valid frames gives 0)."""
    from glccl.heads.meanp import masked_mean, unit

    return unit(masked_mean(unit(frames), frame_mask.bool()))


def encoder_fingerprint(model) -> str:
    """Hex digest of the video encoder's weights and structure (CLIP visual tower + temporal encoder).

    A gallery is valid for any model whose fingerprint matches: the head does not enter the gallery features.
    """
    return weights_fingerprint({"visual": model.clip.visual, "temporal": model.temporal},
                               f"dim={model.embed_dim};image={model.image_size}")


def weights_fingerprint(modules: dict[str, torch.nn.Module], header: str = "") -> str:
    """Hex digest of the weights and structure (names, dtypes, shapes, values) of ``modules``, after ``header``."""
    h = hashlib.blake2b(digest_size=16)
    h.update(header.encode())
    for prefix, module in modules.items():
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Gallery:
    """Precomputed video side of every score.

    Attributes:
        frames: ``[Nv, K, D]`` float, post-temporal frame features (what the head sees).
        frame_mask: ``[Nv, K]`` bool.
        video_ids: ``Nv`` ids, in gallery order.
        first_stage: ``[Nv, D]`` normalised masked-mean vectors (stage 1); computed from ``frames`` when omitted.
        meta: free-form facts (``fingerprint``, ``preset``, ``head``, ``split``, ...).
    """

    frames: Tensor
    frame_mask: Tensor
    video_ids: list[str]
    first_stage: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frame_mask = self.frame_mask.bool()
        self.video_ids = [str(v) for v in self.video_ids]
        if self.first_stage is None:
            self.first_stage = first_stage_vectors(self.frames, self.frame_mask)
        problem = self._problem()
        if problem:
            raise GalleryError(f"inconsistent gallery: {problem}")

    def _problem(self) -> str | None:
        f, m, fs = self.frames, self.frame_mask, self.first_stage
        if not isinstance(f, Tensor) or f.ndim != 3 or not f.is_floating_point():
            return f"frames must be a float tensor [Nv, K, D], got {getattr(f, 'shape', type(f))}"
        nv, k, d = f.shape
        if not isinstance(m, Tensor) or tuple(m.shape) != (nv, k):
            return f"frame_mask must be [Nv, K] = {(nv, k)}, got {tuple(getattr(m, 'shape', ()))}"
        if not isinstance(fs, Tensor) or tuple(fs.shape) != (nv, d):
            return f"first_stage must be [Nv, D] = {(nv, d)}, got {tuple(getattr(fs, 'shape', ()))}"
        if len(self.video_ids) != nv:
            return f"{len(self.video_ids)} video ids for {nv} videos"
        if len(set(self.video_ids)) != nv:
            return "video ids are not unique"
        return None

    def __len__(self) -> int:
        return self.frames.shape[0]

    @property
    def dim(self) -> int:
        return self.frames.shape[-1]

    def to(self, device: torch.device | str) -> Gallery:
        return Gallery(self.frames.to(device), self.frame_mask.to(device), list(self.video_ids),
                       self.first_stage.to(device), dict(self.meta))

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``torch.save`` file (atomically: a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"format": GALLERY_FORMAT, "frames": self.frames.detach().cpu().contiguous(),
                "frame_mask": self.frame_mask.cpu(), "video_ids": list(self.video_ids),
                "first_stage": self.first_stage.detach().cpu().contiguous(), "meta": dict(self.meta)}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> Gallery:
        """Read a gallery file; with ``model``, also check it was built by this model's video encoder.

        Raises:
            GalleryError: missing, unreadable, not a gallery, wrong format version, inconsistent content, or built by
                a different video encoder (or with a different feature width) than ``model``.
        """
        path = Path(path)
        if not path.is_file():
            raise GalleryError(f"gallery {path}: no such file (build one with `glccl search --build-gallery`)")
        from glccl.safe_load import load_tensors

        try:  # weights_only: a file carrying pickled code is refused, never run
            blob = load_tensors(path, "gallery")
        except ValueError as e:  # truncated/corrupt zip, not a torch file, pickled code, ...
            raise GalleryError(str(e)) from None
        if not isinstance(blob, dict) or "format" not in blob:
            raise GalleryError(f"gallery {path} is not a glccl gallery (no format tag)")
        if blob["format"] != GALLERY_FORMAT:
            raise GalleryError(f"gallery {path} has format {blob['format']!r}; this version reads {GALLERY_FORMAT!r}")
        missing = [k for k in ("frames", "frame_mask", "video_ids", "first_stage", "meta") if k not in blob]
        if missing:
            raise GalleryError(f"gallery {path} lacks {missing}")
        try:
            gallery = cls(blob["frames"], blob["frame_mask"], blob["video_ids"], blob["first_stage"], blob["meta"])
        except GalleryError as e:
            raise GalleryError(f"gallery {path}: {e}") from None
        if model is not None:
            gallery.check_model(model, path)
        return gallery

    def check_model(self, model, path: str | os.PathLike | None = None) -> None:
        """Raise :class:`GalleryError` unless ``model``'s video encoder built this gallery."""
        where = f"gallery {path}" if path is not None else "gallery"
        if self.dim != model.embed_dim:
            raise GalleryError(f"{where} holds {self.dim}-d features but the model's are {model.embed_dim}-d")
        want = self.meta.get("fingerprint")
        if want is None:
            raise GalleryError(f"{where} records no encoder fingerprint; rebuild it with this model")
        have = encoder_fingerprint(model)
        if want != have:
            raise GalleryError(f"{where} was built by a different video encoder (fingerprint {want[:12]}..., this "
                               f"model's is {have[:12]}...): rebuild it with `glccl search --build-gallery`")


@torch.no_grad()
def build_gallery(model, batches: Iterable[dict[str, Tensor]], video_ids: Sequence[str] | None = None,
                  meta: dict[str, Any] | None = None, device: torch.device | None = None) -> Gallery:
    """Encode videos once (CLIP + temporal encoder) into a :class:`Gallery`.

    Args:
        model: a :class:`glccl.model.GLCCL`.
        batches: dicts with ``frames`` (``[B, K, H, W, 3]`` or ``[B, K, 3, H, W]``, uint8 or normalised float),
            ``frame_mask`` ``[B, K]`` and ``video_index`` ``[B]`` (e.g. Ray Data ``mode="videos"`` batches).
        video_ids: id of each ``video_index`` (``video_ids[video_index]``); None: the index itself as a string.
        meta: extra facts to store (split, checkpoint, ...).
    Returns:
        the gallery, in increasing ``video_index`` order.
    """
    from glccl import engine

    vids = engine.encode_videos(model, batches, device=device)
    if vids["frames"].numel() == 0:
        raise ValueError("no video to put in the gallery (the batches were empty)")
    order = torch.argsort(vids["video_index"])
    index = vids["video_index"][order].tolist()
    ids = [str(i) if video_ids is None else str(video_ids[i]) for i in index]
    info = {"fingerprint": encoder_fingerprint(model), "preset": getattr(model, "preset", None),
            "head": getattr(model.head, "name", None), "embed_dim": model.embed_dim,
            "num_frames": int(vids["frames"].shape[1]), "num_videos": len(ids), "torch": str(torch.__version__)}
    info.update(meta or {})
    return Gallery(vids["frames"][order], vids["frame_mask"][order], ids, meta=info)


# ---------------------------------------------------------------------------------------------------------------------
# stages (feature level: also used by the benchmark)


@torch.no_grad()
def stage1_scores(sentence: Tensor, gallery: Gallery, stage1: str = "meanp", temperature: float = 5.0,
                  video_chunk: int = 1024) -> Tensor:
    """Cheap scores of every query against every gallery video, ``[Nq, Nv]``.

    ``meanp``: ``cos(s, mean-pooled video)``. ``glim``: ``cos(s, v)`` with ``v = sum_k softmax_k(s.f_k / tau) f_k`` over
    valid frames (``||v||`` from the frame Gram matrix, so nothing of size ``Nq x Nv x D`` is formed).
    """
    if stage1 == "meanp":
        return _unit(sentence) @ gallery.first_stage.to(sentence.dtype).T
    if stage1 != "glim":
        raise ValueError(f"stage1 must be one of {STAGE1}, got {stage1!r}")
    from glccl.glim import glim_weights

    s_unit = _unit(sentence)
    cols = []
    for j in range(0, len(gallery), video_chunk):
        f = gallery.frames[j:j + video_chunk].to(sentence.dtype)
        fm = gallery.frame_mask[j:j + video_chunk]
        f = f.masked_fill(~fm[..., None], 0.0)
        c, k, d = f.shape
        alpha = glim_weights(sentence[:, None], f, fm, temperature)[:, :, 0]  # [Nq, c, K]
        gram = f @ f.transpose(1, 2)  # [c, K, K]
        nsq = torch.einsum("qck,ckl,qcl->qc", alpha, gram, alpha)
        sv = (alpha * (s_unit @ f.reshape(c * k, d).T).view(-1, c, k)).sum(-1)  # s_hat . v
        tiny = torch.finfo(nsq.dtype).tiny
        cols.append(torch.where(nsq > tiny, sv * nsq.clamp_min(tiny).rsqrt(), torch.zeros_like(sv)))
    return torch.cat(cols, dim=1)


def _topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k along the last dim, ties broken by the lower index (a stable descending sort)."""
    k = min(k, scores.shape[-1])
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return scores.gather(-1, order), order


@torch.no_grad()
def shortlist_indices(sentence: Tensor, gallery: Gallery, shortlist: int, stage1: str = "meanp",
                      temperature: float = 5.0) -> Tensor:
    """Stage 1: gallery indices ``[Nq, min(shortlist, Nv)]`` of the best videos by the cheap score, best first."""
    if shortlist < 1:
        raise ValueError(f"shortlist must be >= 1, got {shortlist}")
    return _topk(stage1_scores(sentence, gallery, stage1, temperature), shortlist)[1]


@torch.no_grad()
def rerank(score_fn: ScoreFn, text: dict[str, Tensor], gallery: Gallery, candidates: Tensor | None, k: int,
           pair_fn: PairFn | None = None, batch: int = 64) -> tuple[Tensor, Tensor]:
    """Stage 2: the full score on each query's candidates; returns (scores, gallery indices) ``[Nq, k']``.

    Args:
        score_fn: ``(sentence, words, word_mask, frames, frame_mask) -> (score [Bt, Bv], parts)``, e.g. ``model.score``.
        text: ``sentence`` ``[Nq, D]``, ``words`` ``[Nq, Nw, D]``, ``word_mask`` ``[Nq, Nw]``.
        candidates: ``[Nq, S]`` gallery indices (any order), or None for every video (exhaustive; the scores are then
            computed ``batch`` queries at a time against the whole gallery).
        k: results per query (``k' = min(k, S)``).
        pair_fn: optional ``(sentence, words, word_mask, frames, frame_mask, index [Bt, S]) -> (score [Bt, S], parts)``
            scoring text i against videos ``index[i]`` only (:meth:`GLCCLHead.score_pairs`): ``batch`` queries are
            then re-ranked per call. Without it, one head call per query.
    """
    sentence, words, word_mask = text["sentence"], text["words"], text["word_mask"]
    nq = sentence.shape[0]
    if candidates is None:
        out_s, out_i = [], []
        for i in range(0, nq, batch):
            sl = slice(i, i + batch)
            score, _ = score_fn(sentence[sl], words[sl], word_mask[sl], gallery.frames, gallery.frame_mask)
            s, idx = _topk(score, k)
            out_s.append(s)
            out_i.append(idx)
        return torch.cat(out_s), torch.cat(out_i)
    # Gallery order within each shortlist: the head then sees the candidates exactly as exhaustive scoring does.
    cand = torch.sort(candidates, dim=-1).values
    out_s, out_i = [], []
    if pair_fn is not None:
        for i in range(0, nq, batch):
            sl = slice(i, i + batch)
            uniq, local = torch.unique(cand[sl], return_inverse=True)  # the videos this batch needs, once each
            score, _ = pair_fn(sentence[sl], words[sl], word_mask[sl], gallery.frames[uniq], gallery.frame_mask[uniq],
                               local)
            s, pos = _topk(score, k)
            out_s.append(s)
            out_i.append(cand[sl].gather(1, pos))
        return torch.cat(out_s), torch.cat(out_i)
    for i in range(nq):
        idx = cand[i]
        score, _ = score_fn(sentence[i:i + 1], words[i:i + 1], word_mask[i:i + 1], gallery.frames[idx],
                            gallery.frame_mask[idx])
        s, pos = _topk(score[0], k)
        out_s.append(s)
        out_i.append(idx[pos])
    return torch.stack(out_s), torch.stack(out_i)


@torch.no_grad()
def search_features(score_fn: ScoreFn, text: dict[str, Tensor], gallery: Gallery, k: int = 10, shortlist: int = 100,
                    exhaustive: bool = False, stage1: str = "meanp", temperature: float = 5.0,
                    pair_fn: PairFn | None = None) -> tuple[Tensor, Tensor]:
    """Two-stage (or exhaustive) search on precomputed features; returns (scores, gallery indices) ``[Nq, k]``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if exhaustive:
        return rerank(score_fn, text, gallery, None, k)
    cand = shortlist_indices(text["sentence"], gallery, shortlist, stage1, temperature)
    return rerank(score_fn, text, gallery, cand, k, pair_fn=pair_fn)


def model_score_fns(model) -> tuple[ScoreFn, PairFn]:
    """``(score_fn, pair_fn)`` of a :class:`glccl.model.GLCCL`: ``model.score`` and its head's ``score_pairs``."""
    return model.score, model.head.score_pairs


def shortlist_recall(shortlists: Tensor, reference_topk: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall of a shortlist against a reference ranking: mean over queries of ``|ref top-k ∩ shortlist| / k``.

    Because stage 2 is exact, this is also the overlap of the two-stage top-k with the reference top-k.

    Args:
        shortlists: ``[Nq, S]`` gallery indices; reference_topk: ``[Nq, >= max(ks)]`` reference indices, best first.
    """
    out = {}
    for k in ks:
        if k > reference_topk.shape[1]:
            raise ValueError(f"the reference ranking has {reference_topk.shape[1]} columns, recall@{k} needs {k}")
        ref = reference_topk[:, :k]
        hit = (ref[:, :, None] == shortlists[:, None, :]).any(-1)  # [Nq, k]
        out[k] = float(hit.float().mean())
    return out


# ---------------------------------------------------------------------------------------------------------------------
# model level


@torch.no_grad()
def search(model, gallery: Gallery, queries: str | Sequence[str], k: int = 10, shortlist: int = 100,
           exhaustive: bool = False, stage1: str = "meanp") -> list[list[tuple[str, float]]]:
    """Text queries -> for each, the top-``k`` ``(video_id, score)`` pairs, best first.

    Stage 1 shortlists ``shortlist`` videos by the cheap score, stage 2 scores them with ``model.score`` (the model's
    head); ``exhaustive=True`` scores every video with the head.
    """
    from glccl import engine

    queries = [queries] if isinstance(queries, str) else list(queries)
    if not queries:
        return []
    empty = [i for i, q in enumerate(queries) if not isinstance(q, str) or not q.strip()]
    if empty:  # it would tokenise to start and end tokens only and rank the gallery by noise
        raise QueryError(f"query {empty[0] + 1} of {len(queries)} is empty: give some words to search for")
    model.eval()
    device = next(model.parameters()).device
    text = engine.encode_texts(model, model.tokenize(queries), device=device)
    text = {key: v.to(device) for key, v in text.items()}
    g = gallery.to(device) if gallery.frames.device != device else gallery
    # the GLIM stage 1 uses the head's own GLIM temperature where it has one (GLCCL, GLSCL), else the released 5
    temperature = float(model.head.temperature) if "temperature" in model.head.hyperparameters() else 5.0
    score_fn, pair_fn = model_score_fns(model)
    scores, idx = search_features(score_fn, text, g, k=k, shortlist=shortlist, exhaustive=exhaustive,
                                  stage1=stage1, temperature=temperature, pair_fn=pair_fn)
    return [[(g.video_ids[j], float(s)) for s, j in zip(srow.tolist(), irow.tolist())]
            for srow, irow in zip(scores.cpu(), idx.cpu())]
