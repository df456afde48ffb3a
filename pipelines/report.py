"""``glccl report --sweep NAME``: a sweep's trials read back from MLflow, with intervals, paired differences and cost.

    glccl report --sweep length-study                  # tables printed, report/ artifacts on the sweep's parent run
    glccl report --sweep length-study --out reports/   # also written to a folder

The analysis, fixed before any run (the length study's protocol):

- The unit is one trained model: one trial = (group, head, seed), a group being every sweep key other than the head
  and the seed (e.g. the video length bundle). Every head of a group saw the same data, steps and schedule.
- Metrics per trial are recomputed from its per-query test ranks (``ranks/test_ranks.json``): t2v / v2t R@1, R@5,
  R@10 and MnR. A table per group gives, per head, the mean +- sd over seeds and a 95 % interval from a two-level
  percentile bootstrap: seeds resampled with replacement, then test queries resampled with replacement (the same
  query indices for every seed and every head), ``--boot`` resamples.
- Head A against the reference head (GLCCL): the same bootstrap, paired: each resample draws seeds and queries once
  and applies them to both heads' ranks (seed-matched), so the shared difficulty of the queries cancels. A head is
  "within noise" of another when the 95 % interval of their paired difference contains 0.
- Cost: the similarity stage of each head at ``--cost-n`` x ``--cost-n`` pairs for each group's shape (K, Nw, D),
  timed with ``benchmarks.similarity.measure`` (extrapolated from a sub-problem past ``--cost-budget`` seconds), and its
  FLOPs from the head's declared ``flops``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from mlflow.tracking import MlflowClient

from benchmarks.similarity import measure
from glccl.heads import get_head_class
from pipelines import tracking
from pipelines.tracking import RANKS_ARTIFACT

matplotlib.use("Agg")  # reports are written without a display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

METRICS = ("t2v/R@1", "t2v/R@5", "t2v/R@10", "t2v/MnR", "v2t/R@1", "v2t/R@5", "v2t/MnR")
HIGHER_IS_BETTER = {m: not m.endswith("MnR") for m in METRICS}


class ReportError(ValueError):
    """The sweep cannot be reported (missing, unfinished, or inconsistent trials); the message says which."""


# ---------------------------------------------------------------------------------------------------------------------
# metrics from ranks


def metric_from_ranks(ranks: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` (e.g. ``R@5`` or ``MnR``) over the last axis of 0-based ranks (any leading shape)."""
    name = metric.split("/")[-1]
    if name == "MnR":
        return ranks.mean(-1) + 1.0
    if name.startswith("R@"):
        return 100.0 * (ranks < int(name[2:])).mean(-1)
    raise ValueError(f"unknown metric {metric!r}")


def bootstrap(ranks: dict[int, np.ndarray], metric: str, boot: int, rng: np.random.Generator,
              seeds: list[int] | None = None, queries: np.ndarray | None = None) -> np.ndarray:
    """``boot`` two-level bootstrap values of ``metric``: per resample, seeds (keys of ``ranks``, each an ``[Nq]`` rank
    array over the same queries) and queries drawn with replacement; the value is the mean over the drawn seeds.

    ``seeds`` (``[boot, S]`` keys) and ``queries`` (``[boot, Nq]`` indices) may be given to pair two heads."""
    keys = sorted(ranks)
    mat = np.stack([ranks[k] for k in keys])  # [S, Nq]
    pos = {k: i for i, k in enumerate(keys)}
    if seeds is None:
        seeds = np.asarray(keys)[rng.integers(0, len(keys), (boot, len(keys)))]
    if queries is None:
        queries = rng.integers(0, mat.shape[1], (boot, mat.shape[1]))
    rows = np.vectorize(pos.__getitem__)(seeds)  # [boot, S]
    out = np.empty(boot)
    for b in range(boot):
        out[b] = metric_from_ranks(mat[rows[b]][:, queries[b]], metric).mean()
    return out


def interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------------------------
# reading the sweep


def _client(uri: str):
    return MlflowClient(tracking_uri=uri)


def collect(uri: str, sweep: str) -> dict[str, Any]:
    """The sweep's parent run and its finished trials, each with its head, seed, group, shape and test ranks."""
    client = _client(uri)
    exps = client.search_experiments()
    parents = [r for e in exps for r in client.search_runs([e.experiment_id],
                                                           f"tags.mlflow.runName = '{sweep}'")
               if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        raise ReportError(f"no sweep named {sweep!r} in the MLflow store {uri}")
    parent = sorted(parents, key=lambda r: r.info.start_time)[-1]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10_000)
    space = {k[len("space."):]: json.loads(v) for k, v in parent.data.params.items() if k.startswith("space.")}
    group_keys = [k for k in space if k not in ("model.head", "train.seed")]
    trials, skipped = [], []
    for run in children:
        name = run.data.tags.get("mlflow.runName", run.info.run_id)
        if run.info.status != "FINISHED" or run.data.tags.get("glccl.stopped_early") == "1":
            skipped.append(f"{name} ({run.info.status.lower()})")
            continue
        p = run.data.params
        with tempfile.TemporaryDirectory() as d:
            try:
                path = client.download_artifacts(run.info.run_id, RANKS_ARTIFACT, d)
            except Exception:  # noqa: BLE001 - an MLflow error naming the artifact: the run has no ranks
                skipped.append(f"{name} (no {RANKS_ARTIFACT})")
                continue
            ranks = json.loads(Path(path).read_text())
        group = " ".join(run.data.tags.get(f"sweep.{k}", p.get(k, "?")) for k in group_keys) or "all"
        trials.append({"run_id": run.info.run_id, "name": name, "head": p["model.head"],
                       "seed": int(p["train.seed"]), "group": group,
                       "shape": {"K": int(p["model.num_frames"]), "Nw": int(p["model.max_words"])},
                       "t2v": np.asarray(ranks["t2v"], np.int64), "v2t": np.asarray(ranks["v2t"], np.int64)})
    if not trials:
        raise ReportError(f"sweep {sweep!r} has no finished trial with test ranks"
                          + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
    return {"parent": parent, "trials": trials, "skipped": skipped, "group_keys": group_keys}


# ---------------------------------------------------------------------------------------------------------------------
# analysis


def analyse(trials: list[dict], reference: str = "glccl", boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per group: per head the mean +- sd over seeds and the bootstrap interval of every metric, and each head's paired
    difference against ``reference`` (and against the group's best head on t2v R@1)."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for t in trials:
        by_group[t["group"]][t["head"]][t["seed"]] = t
    out: dict[str, Any] = {}
    for group, heads in sorted(by_group.items(), key=lambda g: _group_order(g[0])):
        nq = {len(t["t2v"]) for h in heads.values() for t in h.values()}
        if len(nq) != 1:
            raise ReportError(f"group {group}: trials were tested on different numbers of queries {sorted(nq)}")
        common = sorted(set.intersection(*(set(h) for h in heads.values())))
        rows = {}
        for head, runs in heads.items():
            row = {"seeds": sorted(runs), "shape": next(iter(runs.values()))["shape"]}
            for m in METRICS:
                side = m.split("/")[0]
                per_seed = np.array([float(metric_from_ranks(runs[s][side], m)) for s in sorted(runs)])
                vals = bootstrap({s: runs[s][side] for s in runs}, m, boot, rng)
                row[m] = {"mean": float(per_seed.mean()), "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1
                          else 0.0, "ci": interval(vals), "per_seed": per_seed.tolist()}
            rows[head] = row
        best = max(rows, key=lambda h: rows[h]["t2v/R@1"]["mean"])
        diffs: dict[str, dict] = {}
        for against in dict.fromkeys([reference, best]):
            if against not in heads or not common:
                continue
            for head in heads:
                if head == against:
                    continue
                d = {}
                for m in ("t2v/R@1", "t2v/R@5", "t2v/MnR", "v2t/R@1"):
                    side = m.split("/")[0]
                    n = len(heads[head][common[0]][side])
                    seeds = np.asarray(common)[rng.integers(0, len(common), (boot, len(common)))]
                    queries = rng.integers(0, n, (boot, n))
                    a = bootstrap({s: heads[head][s][side] for s in common}, m, boot, rng, seeds, queries)
                    b = bootstrap({s: heads[against][s][side] for s in common}, m, boot, rng, seeds, queries)
                    point = float(np.mean([metric_from_ranks(heads[head][s][side], m)
                                           - metric_from_ranks(heads[against][s][side], m) for s in common]))
                    lo, hi = interval(a - b)
                    d[m] = {"diff": point, "ci": (lo, hi), "within_noise": lo <= 0.0 <= hi}
                diffs.setdefault(against, {})[head] = d
        out[group] = {"heads": rows, "best": best, "paired": diffs, "queries": nq.pop(), "seeds": common}
    return out


def _group_order(label: str):
    digits = "".join(c for c in label if c.isdigit())
    return (int(digits) if digits else math.inf, label)


def costs(analysis: dict[str, Any], n: int, budget_s: float, reps: int = 1, dim: int = 512) -> dict[str, dict]:
    """Similarity-stage seconds and FLOPs at ``n x n`` pairs per group and head (``benchmarks.similarity``)."""
    out: dict[str, dict] = {}
    for group, g in analysis.items():
        out[group] = {}
        for head, row in g["heads"].items():
            shape = {**row["shape"], "D": dim}
            flops = int(get_head_class(head).flops(n, n, shape["Nw"], shape["K"], dim))
            if n and budget_s > 0:
                r = measure(head, shape, n, reps=reps, max_run_s=budget_s, rate_s=0.05)
                out[group][head] = {"seconds": r["wall_s"], "extrapolated": r["extrapolated"], "timed": r["timed"],
                                    "flops": flops, "shape": shape}
            else:
                out[group][head] = {"seconds": None, "extrapolated": False, "timed": 0, "flops": flops,
                                    "shape": shape}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# output


def _pm(cell: dict, digits: int = 1) -> str:
    lo, hi = cell["ci"]
    return f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def tables(analysis: dict[str, Any], cost: dict[str, dict], reference: str, n_cost: int) -> str:
    lines = []
    for group, g in analysis.items():
        lines += [f"### {group}  ({g['queries']} test queries, seeds {', '.join(map(str, g['seeds']))})", "",
                  "| head | t2v R@1 | t2v R@5 | t2v MnR | v2t R@1 | v2t R@5 | v2t MnR | "
                  f"Δ t2v R@1 vs {reference} | sim. stage {n_cost}² (s) | GFLOPs |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        order = sorted(g["heads"], key=lambda h: -g["heads"][h]["t2v/R@1"]["mean"])
        for head in order:
            r = g["heads"][head]
            d = g["paired"].get(reference, {}).get(head, {}).get("t2v/R@1")
            dtxt = "—" if d is None else (f"{d['diff']:+.1f} [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]"
                                          + (" ≈" if d["within_noise"] else ""))
            c = cost.get(group, {}).get(head, {})
            secs = c.get("seconds")
            stxt = "—" if secs is None else f"{secs:.2f}" + ("*" if c.get("extrapolated") else "")
            lines.append(f"| {head}{' (best)' if head == g['best'] else ''} | {_pm(r['t2v/R@1'])} | "
                         f"{_pm(r['t2v/R@5'])} | {_pm(r['t2v/MnR'])} | {_pm(r['v2t/R@1'])} | {_pm(r['v2t/R@5'])} | "
                         f"{_pm(r['v2t/MnR'])} | {dtxt} | {stxt} | {c.get('flops', 0) / 1e9:.1f} |")
        near = [h for h, d in g["paired"].get(g["best"], {}).items() if d["t2v/R@1"]["within_noise"]]
        lines += ["", f"Within noise of the best ({g['best']}) on t2v R@1: {', '.join(near) or 'none'}.", ""]
    lines.append("mean ± sd over seeds [95 % two-level bootstrap over seeds and test queries]; Δ: paired bootstrap "
                 "against the reference, ≈ = interval contains 0; * = extrapolated from a sub-problem.")
    return "\n".join(lines)


def plots(analysis: dict[str, Any], cost: dict[str, dict], out_dir: Path) -> list[Path]:
    groups = list(analysis)
    heads = sorted({h for g in analysis.values() for h in g["heads"]})
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, head in enumerate(heads):
        xs, ys, lo, hi = [], [], [], []
        for j, group in enumerate(groups):
            r = analysis[group]["heads"].get(head)
            if r is None:
                continue
            c = r["t2v/R@1"]
            xs.append(j + (i - len(heads) / 2) * 0.05)
            ys.append(c["mean"])
            lo.append(c["mean"] - c["ci"][0])
            hi.append(c["ci"][1] - c["mean"])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=head)
    ax.set_xticks(range(len(groups)), groups)
    paths.append(_finish(plt, fig, ax, "video length", "accuracy vs length (95 % intervals)",
                         out_dir / "accuracy_vs_length.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for head in heads:
        xs, ys = [], []
        for group in groups:
            r = analysis[group]["heads"].get(head)
            c = cost.get(group, {}).get(head, {})
            if r is None or not c:
                continue
            xs.append(c["seconds"] if c.get("seconds") else max(c["flops"], 1) / 1e9)
            ys.append(r["t2v/R@1"]["mean"])
        ax.plot(xs, ys, marker="o", label=head)
    timed = any(c.get("seconds") for g in cost.values() for c in g.values())
    ax.set_xscale("log")
    paths.append(_finish(plt, fig, ax, "similarity stage (s)" if timed else "similarity stage (GFLOPs)",
                         "accuracy vs cost (one point per length)", out_dir / "accuracy_vs_cost.png"))
    return paths


def _finish(plt, fig, ax, xlabel: str, title: str, path: Path) -> Path:
    """Labels, legend and grid of an accuracy plot; saved to ``path`` and closed."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test t2v R@1 (%)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def report(uri: str, sweep: str, out_dir: str | os.PathLike | None = None, reference: str = "glccl",
           boot: int = 1000, cost_n: int = 1000, cost_budget_s: float = 5.0, seed: int = 0) -> dict[str, Any]:
    """Read, analyse, write and log the report of ``sweep``; returns ``{"analysis", "cost", "text", "files"}``."""
    data = collect(uri, sweep)
    analysis = analyse(data["trials"], reference=reference, boot=boot, seed=seed)
    cost = costs(analysis, cost_n, cost_budget_s)
    text = (f"## Report of sweep {sweep}\n\n" + tables(analysis, cost, reference, cost_n)
            + (f"\n\nNot included: {', '.join(data['skipped'])}." if data["skipped"] else "") + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = plots(analysis, cost, folder)
        (folder / "report.md").write_text(text)
        (folder / "report.json").write_text(json.dumps(_jsonable({"sweep": sweep, "reference": reference,
                                                                  "boot": boot, "analysis": analysis,
                                                                  "cost": cost, "cost_n": cost_n}), indent=1))
        files += [folder / "report.md", folder / "report.json"]
        client = _client(uri)
        for f in files:
            client.log_artifact(data["parent"].info.run_id, str(f), "report")
        kept = [str(f) for f in files] if out_dir else []
    return {"analysis": analysis, "cost": cost, "text": text, "files": kept,
            "parent_run_id": data["parent"].info.run_id}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glccl report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, help="the sweep's name")
    p.add_argument("--storage", default="runs", help="the runs folder whose MLflow store holds the sweep")
    p.add_argument("--tracking-uri", default=None, help="an MLflow tracking URI (default: STORAGE's store)")
    p.add_argument("--out", default=None, help="also write the report to this folder")
    p.add_argument("--reference", default="glccl", help="the head every other head is compared with")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--cost-n", type=int, default=1000, help="pairs per side of the cost measurement (0: FLOPs only)")
    p.add_argument("--cost-budget", type=float, default=5.0, help="seconds per timed run before extrapolating")
    args = p.parse_args(argv)
    if args.boot < 100:
        print("glccl report: --boot must be at least 100", file=sys.stderr)
        return 2
    uri = args.tracking_uri or tracking.default_tracking_uri(Path(args.storage).resolve())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        print(f"glccl report: no MLflow store at {uri[len('sqlite:///'):]} (give the sweep's --storage)",
              file=sys.stderr)
        return 2

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store-migration notices are not the report
    try:
        out = report(uri, args.sweep, args.out, args.reference, args.boot, args.cost_n, args.cost_budget)
    except ReportError as e:
        print(f"glccl report: {e}", file=sys.stderr)
        return 2
    print(out["text"])
    print(f"[glccl] report logged to the sweep's parent run {out['parent_run_id']} (artifacts report/)"
          + (f" and written to {args.out}" if args.out else ""))
    return 0
