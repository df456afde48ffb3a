"""glccl: GLCCL text-video retrieval in pure PyTorch + open_clip (no Ray, no MLflow)."""

__version__ = "0.1.0"
