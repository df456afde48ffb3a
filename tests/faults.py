"""Failures injected into a training run through its step callbacks (``pipelines.train.run(step_callbacks=...)``)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import cloudpickle


class FailAt:
    """At ``at_step`` on ``rank``, once per marker file: kill this worker process (``kind="kill"``, SIGKILL: the
    worker vanishes as on a lost node) or raise (``kind="raise"``)."""

    def __init__(self, kind: str, at_step: int, rank: int, marker: Path):
        if kind not in ("kill", "raise"):
            raise ValueError(f"kind must be kill or raise, got {kind!r}")
        self.kind, self.at_step, self.rank, self.marker = kind, at_step, rank, Path(marker)

    def __call__(self, step: int, rank: int) -> None:
        if step != self.at_step or rank != self.rank or self.marker.exists():
            return
        self.marker.write_text(f"{os.getpid()} step {step}")
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected failure at step {step}")


# The workers cannot import the test package: the callback travels by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
