"""The ``glccl`` command line: ``glccl <command> [args]``.

Each command lives in its own module with a ``main(argv) -> int``; modules are imported only when their command runs,
so ``glccl heads`` does not pay for importing Ray.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

# Mistakes of the user's (a config, a file, a path), not of the program: one line naming the thing and the reason,
# exit code 2. GLCCL_VERBOSE=1 shows the traceback as well. The library's error types are looked up where they were
# defined, once a command has imported them (importing them here would cost every command torch's import time).
USER_ERRORS = (("glccl.config", "ConfigError"), ("glccl.data.report", "DataError"), ("glccl.search", "GalleryError"),
               ("glccl.search", "QueryError"), ("glccl.encoders.weights", "WeightsError"),
               ("glccl.safe_load", "UnsafeFileError"))
OS_USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def is_user_error(e: BaseException) -> bool:
    types = [getattr(sys.modules[m], cls) for m, cls in USER_ERRORS if m in sys.modules]
    return isinstance(e, (*OS_USER_ERRORS, *types))

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
    stop_on_signals()
    try:
        module = importlib.import_module(COMMANDS[name][0])
        entry = module.runs_main if name == "runs" else module.main
        return int(entry(rest) or 0)
    except Exception as e:
        if not is_user_error(e) or os.environ.get("GLCCL_VERBOSE") == "1":
            raise
        print(f"glccl {name}: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glccl {name}: interrupted", file=sys.stderr)
        return 130


def one_line(e: BaseException) -> str:
    """An error as one line: an OSError as 'reason: file', anything else as its message's first line."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """SIGTERM (a service manager, ``kill``) and SIGHUP (a closed terminal) end a command as Ctrl-C does: its
    ``finally`` blocks and exit handlers run, so the servers and the private Ray it started are stopped."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


if __name__ == "__main__":
    sys.exit(main())
