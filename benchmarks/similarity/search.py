"""Measuring two-stage search (exact stage-1 shortlist, then GLCCL on it) against exhaustive GLCCL scoring, on
structured random features where rankings mean something."""

from __future__ import annotations

import statistics
from functools import partial

import torch

from benchmarks.measure import sync, timed
from benchmarks.similarity.stage import SHAPES, configure
from glccl.heads import build_head
from glccl.search import Gallery, _topk, rerank, shortlist_indices, shortlist_recall
from glccl.similarity import similarity_matrix


def structured_features(n: int, shape: dict, clusters: int = 40, seed: int = 0, scale: float = 8.0):
    """Videos = noisy copies of cluster centres (frames = noisy views of the video), text i = noisy view of video i.

    Features are ``scale`` x (unit signal + noise) (CLIP-like norms, so GLIM's ``/ 5`` softmax is peaked); the noise
    levels put MeanP's ground-truth R@1 near 50 % at N = 1000. Captions have 8..Nw valid words. Returns (text, video,
    text_to_video).
    """
    g = torch.Generator().manual_seed(seed)
    K, Nw, D = shape["K"], shape["Nw"], shape["D"]

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    centres = unit(torch.randn(clusters, D, generator=g))
    z = unit(centres[torch.randint(0, clusters, (n,), generator=g)] + 0.6 * unit(torch.randn(n, D, generator=g)))
    drift = torch.linspace(-1, 1, K)[None, :, None] * unit(torch.randn(n, 1, D, generator=g))  # motion over frames
    frames = scale * (z[:, None] + 0.5 * drift + 2.0 * unit(torch.randn(n, K, D, generator=g)))
    sentence = scale * (z + 4.0 * unit(torch.randn(n, D, generator=g)))
    words = scale * (z[:, None] + 4.0 * unit(torch.randn(n, Nw, D, generator=g)))
    lengths = torch.randint(8, Nw + 1, (n,), generator=g)
    word_mask = torch.arange(Nw)[None] < lengths[:, None]
    text = {"sentence": sentence, "words": words, "word_mask": word_mask}
    video = {"frames": frames, "frame_mask": torch.ones(n, K, dtype=torch.bool)}
    return text, video, torch.arange(n)


@torch.no_grad()
def measure_search(n: int, shortlists=(10, 50, 100), ks=(1, 5, 10), stage1s=("meanp", "glim"), reps: int = 3,
                   threads: int | None = None, device: str = "cpu") -> dict:
    """Shortlist recall and speed of two-stage search vs exhaustive GLCCL scoring (MSR-VTT shape)."""
    dev, _ = configure(device, "fp32", threads)
    shape = SHAPES["msrvtt"]
    text, video, t2v = structured_features(n, shape)
    head = build_head("glccl", num_words=shape["Nw"], num_frames=shape["K"], dim=shape["D"]).to(dev).eval()
    text = {k: v.to(dev) for k, v in text.items()}
    gallery = Gallery(video["frames"].to(dev), video["frame_mask"].to(dev), [f"v{i}" for i in range(n)])
    kmax = min(max(ks), n)
    ks = tuple(k for k in ks if k <= n)

    def gt_r1(top1: torch.Tensor) -> float:
        return float((top1.cpu() == t2v).float().mean()) * 100

    # exhaustive: the whole N x N matrix with the head (as evaluation computes it), then top-k
    similarity_matrix(head, {k: v[:8] for k, v in text.items()}, video)  # warm-up
    sync(dev)

    def exhaustive():
        full = similarity_matrix(head, text, {"frames": gallery.frames, "frame_mask": gallery.frame_mask})
        return _topk(full, kmax)

    (ref_scores, ref), t = timed(exhaustive, dev)
    t_ex = t.wall_s
    rows = []
    for stage1 in stage1s:
        for s in shortlists:
            s = min(s, n)
            times, t1s = [], []
            for _ in range(reps):
                cand, t1 = timed(partial(shortlist_indices, text["sentence"], gallery, s, stage1, head.temperature),
                                 dev)
                (scores, idx), t2 = timed(partial(rerank, head, text, gallery, cand, kmax, pair_fn=head.score_pairs),
                                          dev)
                times.append(t1.wall_s + t2.wall_s)
                t1s.append(t1.wall_s)
            rec = shortlist_recall(cand.cpu(), ref.cpu(), ks)
            rows.append({"stage1": stage1, "shortlist": s, "recall": {str(k): v for k, v in rec.items()},
                         "time_s": statistics.median(times), "stage1_s": statistics.median(t1s),
                         "speedup": t_ex / statistics.median(times), "gt_r1": gt_r1(idx[:, 0]),
                         "pairs_frac": s / n})
    return {"n": n, "exhaustive_s": t_ex, "exhaustive_gt_r1": gt_r1(ref[:, 0]), "rows": rows,
            "threads": torch.get_num_threads(), "ks": list(ks)}
