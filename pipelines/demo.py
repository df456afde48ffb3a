"""``glccl demo`` (the README's first command): the whole platform on the embedded default.

Synthesises the partial-relevance video benchmark if it is missing, trains the tiny GLCCL with 2 Ray Train workers on
CPU, evaluates it, trains the MeanP baseline the same way, prints a table comparing them, and says how to open the
MLflow UI on the runs.

    glccl demo                                  # GLCCL vs MeanP
    glccl demo --heads glccl,meanp,xpool        # any registered heads, side by side
    glccl demo train.epochs=2                   # overrides apply to every run
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

from glccl.config import ConfigError, load_config
from glccl.heads import list_heads
from pipelines import tracking, train
from pipelines.run_data import ensure_synth

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
COLUMNS = ["t2v/R@1", "t2v/R@5", "t2v/R@10", "t2v/MdR", "t2v/MnR", "v2t/R@1", "v2t/R@5", "v2t/MnR"]


def format_table(rows: dict[str, dict[str, float]], times: dict[str, float]) -> str:
    head = f"{'head':<10}" + "".join(f"{c:>10}" for c in COLUMNS) + f"{'time':>9}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        cells = "".join(f"{m.get('test/' + c, float('nan')):>10.1f}" for c in COLUMNS)
        lines.append(f"{name:<10}{cells}{times[name]:>8.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glccl demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--heads", default="glccl,meanp", help="comma-separated heads to train and compare")
    p.add_argument("--resume", action="store_true", help="continue earlier demo runs instead of starting afresh")
    p.add_argument("--address", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        base = load_config(args.config, args.overrides)
        heads = [h.strip() for h in args.heads.split(",") if h.strip()]
        unknown = [h for h in heads if h not in list_heads()]
        if unknown:
            raise ConfigError(f"--heads: unknown head(s) {unknown} (known: {', '.join(list_heads())})")
    except ConfigError as e:
        print(f"glccl demo: {e}", file=sys.stderr)
        return 2

    if base.data.dataset == "synth":
        ensure_synth(Path(base.data.root))
    results, times, uri = {}, {}, None
    for head in heads:
        cfg = dataclasses.replace(base, name=f"demo-{head}", model=dataclasses.replace(base.model, head=head))
        ray_dir = Path(cfg.storage).resolve() / "ray" / cfg.name
        if not args.resume:  # a fresh demo run, not a resume of the last one
            shutil.rmtree(ray_dir, ignore_errors=True)
            tracking.close_unfinished(tracking.default_tracking_uri(cfg.storage), cfg.experiment, cfg.name)
        print(f"\n[demo] training head={head} ({cfg.scaling.num_workers} Ray Train workers, {cfg.train.epochs} epochs)",
              flush=True)
        t0 = time.perf_counter()
        out = train.run(cfg, address=args.address)
        times[head] = time.perf_counter() - t0
        results[head] = out["metrics"]
        uri = out["tracking_uri"]

    print("\n[demo] test split of the synthetic benchmark (chance t2v R@1 = "
          f"{100.0 / max(1, int(results[heads[0]].get('test/num_videos', 100))):.0f}%):\n")
    print(format_table(results, times))
    if len(heads) > 1 and "glccl" in results and "meanp" in results:
        g, m = results["glccl"]["test/t2v/R@1"], results["meanp"]["test/t2v/R@1"]
        print(f"\nGLCCL t2v R@1 {g:.1f} vs MeanP {m:.1f} ({g - m:+.1f} points)")
    print(f"\nMLflow runs are in {uri}. Open the UI with:\n    glccl ui\n(or: mlflow ui --backend-store-uri {uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
