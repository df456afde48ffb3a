"""Tiny real video files for tests and smoke checks: good clips and the zoo of bad inputs.

Everything is written with PyAV (libx264), so decoders see genuine H.264 mp4 files, never mocks::

    write_clip("a.mp4", num_frames=10, width=32, height=32)
    bad = write_bad_videos("folder")   # {"empty_file": path, "truncated": path, ...}
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def clip_frames(num_frames: int = 10, width: int = 32, height: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 ``[n, h, w, 3]``: frame i has a distinct brightness (so decoded indices can be recognised) and a moving
    bar."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, size=3)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        level = int(20 + 200 * i / max(1, num_frames - 1))
        out[i] = np.clip(base + level, 0, 255).astype(np.uint8)
        x = (i * 3) % width
        out[i, :, x:x + max(1, width // 8)] = (255, 40, 40)
    return out


def write_clip(path: str | os.PathLike, num_frames: int = 10, width: int = 32, height: int = 32, fps: int = 10,
               faststart: bool = False, frames: np.ndarray | None = None) -> Path:
    """A small H.264 mp4. ``faststart`` puts the ``moov`` index before the data."""
    import av

    frames = clip_frames(num_frames, width, height) if frames is None else frames
    path = Path(path)
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"threads": "1", "preset": "veryfast", "x264-params": "log-level=error"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_audio_only(path: str | os.PathLike) -> Path:
    """An mp4 with one AAC audio stream and no video stream."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate = 16000
            f.pts = i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_bad_videos(folder: str | os.PathLike, fifo: bool = False) -> dict[str, Path]:
    """Write one file per kind of bad video input; returns ``{expected reason: path}``.

    * ``missing_file``: a path that does not exist
    * ``empty_file``: zero bytes
    * ``truncated``: an mp4 cut in half (its ``moov`` index, written last, is lost)
    * ``not_a_video``: a text file named ``.mp4``
    * ``no_decodable_frame``: a complete mp4 whose coded frames are zeroed (header intact, nothing decodes)
    * ``no_video_stream``: an audio-only mp4
    * ``timeout`` (only with ``fifo=True``): a named pipe called ``.mp4`` -- opening it blocks forever. Release a
      blocked reader with :func:`release_fifo`.
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {"missing_file": d / "missing.mp4"}
    (d / "empty.mp4").write_bytes(b"")
    out["empty_file"] = d / "empty.mp4"
    whole = write_clip(d / "_whole.mp4", num_frames=20).read_bytes()
    (d / "_whole.mp4").unlink()
    (d / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    out["truncated"] = d / "truncated.mp4"
    (d / "notvideo.mp4").write_text("this is a text file, not a video\n" * 20)
    out["not_a_video"] = d / "notvideo.mp4"
    fs = bytearray(write_clip(d / "_fs.mp4", num_frames=20, faststart=True).read_bytes())
    (d / "_fs.mp4").unlink()
    i = fs.find(b"mdat")
    fs[i + 4:] = bytes(len(fs) - i - 4)
    (d / "nodecodable.mp4").write_bytes(bytes(fs))
    out["no_decodable_frame"] = d / "nodecodable.mp4"
    out["no_video_stream"] = write_audio_only(d / "audioonly.mp4")
    if fifo:
        p = d / "fifo.mp4"
        if not p.exists():
            os.mkfifo(p)
        out["timeout"] = p
    return out


def release_fifo(path: str | os.PathLike) -> None:
    """Unblock readers stuck opening a FIFO (open it for writing without blocking, then close)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no reader waiting
    os.close(fd)
