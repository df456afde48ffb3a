"""Bad-input bookkeeping shared by every data stage: error types and the skip report.

Default policy: a bad item is skipped, counted and listed with its reason; the stage exits non-zero when
the skipped share exceeds ``max_fraction`` (default 1 %). With ``strict=True`` the first bad item raises
:class:`BadInputError` naming the file and the reason.

Reason codes are short stable strings (see :data:`REASONS`) so reports can be grepped and compared across runs.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REASONS: dict[str, str] = {
    # video files
    "missing_file": "video file does not exist",
    "empty_file": "video file is empty (0 bytes)",
    "not_a_file": "video path is not a regular file",
    "truncated": "truncated video file",
    "not_a_video": "not a video file",
    "corrupt": "corrupt video file (container or stream cannot be read)",
    "no_video_stream": "file has no video stream",
    "no_decodable_frame": "no decodable frame",
    "timeout": "decoding exceeded the time limit",
    "invalid_frames": "decoder returned frames of the wrong shape or type",
    "not_in_cache": "video is not in the frame cache (it was skipped when the cache was prepared)",
    # annotations
    "no_video": "annotation row without a video",
    "no_caption": "video has no usable caption",
    "empty_caption": "empty caption",
    "bad_utf8": "caption is not valid UTF-8",
    "bad_row": "malformed annotation row",
    "duplicate_id": "video listed again in the same split (its captions are kept once)",
}


class DataError(Exception):
    """Base class of the data errors."""


class AnnotationError(DataError, ValueError):
    """A malformed or missing annotation file. The message names the file (and the line where known)."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class MissingAnnotationError(AnnotationError):
    """An annotation file that a split needs does not exist."""


class SplitError(DataError, ValueError):
    """The splits of a run do not make a valid benchmark: an empty split, or a video in two splits."""


class VideoError(DataError, RuntimeError):
    """A video that cannot be used. ``reason`` is a code of :data:`REASONS`; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        text = REASONS.get(reason, reason)
        super().__init__(f"{self.path}: {text}" + (f" ({detail})" if detail else ""))


class BadInputError(DataError, RuntimeError):
    """Raised in strict mode at the first bad item, or when the skipped share exceeds the limit."""


@dataclass
class SkipReport:
    """Counts items and lists skipped ones with their reason.

    ``add_ok()`` for every good item, ``skip(...)`` for every bad one (raises in strict mode). ``exceeded`` tells whether
    the skipped share is above ``max_fraction``; ``write(path)`` stores the report as JSON.
    """

    stage: str = ""
    strict: bool = False
    max_fraction: float = 0.01
    ok: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add_ok(self, n: int = 1) -> None:
        self.ok += n

    def skip(self, item: str, reason: str, detail: str = "", file: str | None = None) -> None:
        entry = {"item": str(item), "reason": reason, "detail": str(detail), "file": str(file) if file else ""}
        self.skipped.append(entry)
        if self.strict:
            where = entry["file"] or entry["item"]
            text = REASONS.get(reason, reason)
            raise BadInputError(f"bad input (strict mode): {where}: {text}" + (f" ({detail})" if detail else ""))

    def skip_error(self, item: str, err: VideoError) -> None:
        self.skip(item, err.reason, err.detail, err.path)

    def extend(self, entries: list[dict[str, str]], ok: int = 0) -> None:
        for e in entries:
            self.skip(e.get("item", ""), e.get("reason", ""), e.get("detail", ""), e.get("file") or None)
        self.ok += ok

    @property
    def total(self) -> int:
        return self.ok + len(self.skipped)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def fraction(self) -> float:
        return self.num_skipped / self.total if self.total else 0.0

    @property
    def exceeded(self) -> bool:
        return self.fraction > self.max_fraction

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(e["reason"] for e in self.skipped).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "total": self.total,
            "ok": self.ok,
            "skipped": self.num_skipped,
            "skipped_fraction": round(self.fraction, 6),
            "max_skip_fraction": self.max_fraction,
            "exceeded": self.exceeded,
            "by_reason": self.by_reason(),
            "items": self.skipped,
        }

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        return path

    def summary(self, limit: int = 10) -> str:
        lines = [f"skipped {self.num_skipped} of {self.total} items ({100 * self.fraction:.2f} %, limit "
                 f"{100 * self.max_fraction:.2f} %)"]
        for reason, n in self.by_reason().items():
            lines.append(f"  {reason}: {n}  ({REASONS.get(reason, reason)})")
        for e in self.skipped[:limit]:
            lines.append(f"  - {e['file'] or e['item']}: {e['reason']}" + (f" ({e['detail']})" if e["detail"] else ""))
        if self.num_skipped > limit:
            lines.append(f"  ... {self.num_skipped - limit} more in the report")
        return "\n".join(lines)
