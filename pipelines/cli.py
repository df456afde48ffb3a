"""The ``glccl`` command line: ``glccl <command> [args]``.

Each command lives in its own module with a ``main(argv) -> int``; modules are imported only when their command runs,
so ``glccl heads`` does not pay for importing Ray.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help). Modules expose main(argv: list[str]) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipelines.demo", "run the main job on the embedded default (synthetic videos, tiny model, local Ray)"),
    "data": ("pipelines.data_cli", "synth | manifest | prepare | features: data sets, manifests, frame and "
                                   "feature caches"),
    "train": ("pipelines.train", "train a model with Ray Train, tracked in MLflow"),
    "eval": ("pipelines.evaluate", "evaluate a checkpoint"),
    "search": ("pipelines.search", "text -> top-k videos over a precomputed gallery"),
    "sweep": ("sweeps.tune", "run or resume a Ray Tune sweep"),
    "report": ("pipelines.report", "a sweep's trials with intervals, paired differences and cost, from MLflow"),
    "ui": ("pipelines.ui", "start the MLflow UI over the project's tracking store"),
    "runs": ("pipelines.ui", "print the top runs of an experiment or sweep"),
    "heads": ("pipelines.heads_cli", "list the similarity heads"),
    "config": ("pipelines.config_cli", "--list: every config key with its type, default and meaning; --show: a "
                                       "resolved config"),
    "submit": ("cluster.submit", "submit a job to a Ray cluster"),
    "exposure": ("cluster.exposure_cli", "list the sockets a process tree listens on; fail on any open to the network"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: glccl <command> [args]  (glccl <command> --help for details)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"glccl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "runs":
        return int(module.runs_main(rest) or 0)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
