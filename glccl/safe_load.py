"""Loading ``torch.save`` files without running code from them.

A ``torch.save`` file is a pickle: loaded with ``weights_only=False`` it can call any function its author named (an
object whose ``__reduce__`` writes files or starts a shell runs at load time). Every file glccl reads back (model
checkpoints, training state, galleries) goes through :func:`load_tensors`, which loads with ``weights_only=True``:
tensors, numbers, strings, ``None`` and plain containers only. Anything else is refused with one line naming the
file, the reference it carries and the reason; the file's code never runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


class UnsafeFileError(ValueError):
    """A file holds pickled references to code or to objects that are not tensors or plain containers."""


def load_tensors(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors.

    Raises:
        FileNotFoundError: no such file.
        UnsafeFileError: the file references code or other objects (refused, nothing of it is executed).
        ValueError: the file is not a readable ``torch.save`` file (corrupt, truncated, another format).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); not loaded")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line naming the file
        msg = str(e)
        m = _GLOBAL.search(msg)
        if m:  # the pickle names a function or class to call: the way pickles run code
            raise UnsafeFileError(f"{what} {path}: refused, not loaded: it holds a pickled reference to code or to an "
                                  f"object other than tensors and plain containers ({m.group(1)}), which could run "
                                  f"code when loaded") from None
        if "Weights only load failed" in msg:  # garbage, or pickle operations outside the safe subset
            detail = _UNPICKLER.search(msg)
            reason = detail.group(1).strip() if detail else "unsupported content"
            raise ValueError(f"{what} {path} could not be read: not a torch.save file of tensors and plain containers "
                             f"({reason}); not loaded") from None
        if isinstance(e, (EOFError, PermissionError)) or "zip archive" in msg or "central directory" in msg:
            why = "permission denied" if isinstance(e, PermissionError) else "truncated, or not a torch.save file"
            raise ValueError(f"{what} {path} could not be read: {why}; not loaded") from None
        first = msg.strip().splitlines()[0] if msg.strip() else ""
        raise ValueError(f"{what} {path} could not be read ({type(e).__name__}: {first})") from None
