"""Data: annotation adapters and the manifest, frame sampling and decoding, the synthetic benchmark.

Pure Python/NumPy/PyArrow (+ decord/PyAV for video); the Ray Data pipeline lives in ``pipelines/data.py``.
"""

from glccl.data.report import (
    AnnotationError,
    BadInputError,
    DataError,
    MissingAnnotationError,
    SkipReport,
    VideoError,
)

__all__ = ["AnnotationError", "BadInputError", "DataError", "MissingAnnotationError", "SkipReport", "VideoError"]
