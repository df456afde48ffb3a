"""Frame sampling and decoding: K frames per video, resized at decode time, centre-cropped, with a frame mask.

Sampling (:func:`sample_indices`) splits the video's N frames into K equal segments: training takes a random frame in
each segment, evaluation the segment centres ``floor((k + 0.5) N / K)``. A video with N < K frames yields all N frames;
:func:`load_frames` pads them to K with zero frames whose mask is False.

Decoding sits behind one small interface (``decoder="decord"`` or ``"pyav"``). decord is the default; when it is not
installed, or fails on a file, PyAV decodes instead. Frames are resized while decoding so that the shorter side is
``size`` (decord: FFmpeg's scaler through ``width=/height=``; PyAV: ``to_ndarray(width=, height=)``), then centre
cropped to ``size x size``.

Every failure raises :class:`VideoError` whose message names the file and the reason (missing, empty, truncated, not a
video, no video stream, no decodable frame, timeout). Each decode runs under a time limit (``timeout_s``): a decoder that
does not return in time is abandoned (its thread keeps running in the background) and the call raises a ``timeout``
error, so a bad file can never hang a pipeline.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass

import numpy as np

from glccl.data.report import VideoError

DECODERS = ("decord", "pyav")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------------------------------
# sampling


def sample_indices(num_total: int, num_frames: int, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices (int64, increasing) of ``num_frames`` uniform samples from a video of ``num_total`` frames.

    ``train``: one random frame inside each of the K equal segments; else the segment centres (deterministic). When the
    video has at most K frames every frame is returned once (length ``num_total`` < K: the caller pads and masks).
    """
    if num_total <= 0:
        raise ValueError(f"a video needs at least one frame, got num_total={num_total}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_total <= num_frames:
        return np.arange(num_total, dtype=np.int64)
    k = np.arange(num_frames, dtype=np.float64)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        lo = np.floor(k * num_total / num_frames).astype(np.int64)
        hi = np.floor((k + 1) * num_total / num_frames).astype(np.int64)  # hi - lo >= 1 because N > K
        return rng.integers(lo, hi).astype(np.int64)
    return np.floor((k + 0.5) * num_total / num_frames).astype(np.int64)


def snap_indices(wanted: np.ndarray, available: np.ndarray) -> np.ndarray:
    """For each wanted frame index, the position in ``available`` (sorted) of the nearest available index."""
    available = np.asarray(available)
    pos = np.searchsorted(available, wanted)
    pos = np.clip(pos, 0, len(available) - 1)
    left = np.clip(pos - 1, 0, len(available) - 1)
    take_left = np.abs(available[left] - wanted) < np.abs(available[pos] - wanted)
    return np.where(take_left, left, pos)


def resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``size`` (aspect ratio kept)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def pad_frames(frames: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``[n, ...]`` (frames ``[n, H, W, 3]`` or features ``[n, D]``) with zeros to ``[K, ...]``; mask True on real
    frames."""
    n = len(frames)
    if n > num_frames:
        raise ValueError(f"{n} frames > num_frames={num_frames}")
    mask = np.zeros(num_frames, dtype=bool)
    mask[:n] = True
    if n == num_frames:
        return np.ascontiguousarray(frames), mask
    out = np.zeros((num_frames, *frames.shape[1:]), dtype=frames.dtype)
    out[:n] = frames
    return out, mask


def normalize(frames, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 ``[..., H, W, 3]`` torch tensor -> float ``[..., 3, H, W]`` normalised with CLIP's mean/std (on the
    training worker, so that only uint8 travels through the pipeline)."""
    import torch

    x = frames.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.tensor(std, dtype=x.dtype, device=x.device)
    x = (x - m) / s
    return x.movedim(-1, -3).contiguous()


# ---------------------------------------------------------------------------------------------------------------------
# decoders


@dataclass
class Clip:
    """Decoded frames of one video: ``frames`` uint8 ``[n, size, size, 3]`` at original ``indices`` (n <= K)."""

    frames: np.ndarray
    indices: np.ndarray
    num_total: int
    decoder: str


def available_decoders() -> tuple[str, ...]:
    out = []
    for name, mod in (("decord", "decord"), ("pyav", "av")):
        try:
            __import__(mod)
            out.append(name)
        except ImportError:
            pass
    return tuple(out)


_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pdin", b"styp", b"sidx", b"moof"}
_MAGIC = ((b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (b"RIFF", "AVI"), (b"\x00\x00\x01\xba", "MPEG-PS"),
          (b"FLV", "FLV"), (b"\x30\x26\xb2\x75", "ASF/WMV"), (b"OggS", "Ogg"))


def sniff(path: str) -> tuple[str, str]:
    """Why a file that FFmpeg cannot read is bad: ``(reason, detail)`` from its first bytes and, for MP4, its box
    structure (a top-level box running past the end or a missing ``moov`` index means truncated)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if head[4:8] in _ISO_BOXES:
        seen = []
        pos = 0
        with open(path, "rb") as f:
            while pos + 8 <= size:
                f.seek(pos)
                hdr = f.read(16)
                box = int.from_bytes(hdr[:4], "big")
                typ = hdr[4:8]
                if box == 1 and len(hdr) >= 16:
                    box = int.from_bytes(hdr[8:16], "big")
                elif box == 0:
                    box = size - pos
                if box < 8:
                    return "corrupt", f"invalid MP4 box at byte {pos}"
                seen.append(typ)
                if pos + box > size:
                    return "truncated", (f"MP4 box {typ.decode('latin-1')!r} at byte {pos} needs {box} bytes, the file "
                                         f"ends after {size - pos}")
                pos += box
        if b"moov" not in seen and b"moof" not in seen:
            return "truncated", "MP4 without a 'moov' index (file cut short?)"
        return "corrupt", "MP4 structure is complete but its video stream cannot be decoded"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return "corrupt", f"{name} container that FFmpeg cannot read"
    if len(head) > 0 and head[0] == 0x47 and size > 188:
        return "corrupt", "MPEG-TS container that FFmpeg cannot read"
    return "not_a_video", f"unrecognised content starting with {head[:12]!r}"


def _check_file(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "missing_file") from None
    except OSError as e:
        raise VideoError(path, "missing_file", str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(path, "not_a_file", "is a directory")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise VideoError(path, "empty_file")


def _open_error(path: str, exc: BaseException) -> VideoError:
    try:
        reason, detail = sniff(path)
    except OSError as e:
        return VideoError(path, "missing_file", str(e))
    return VideoError(path, reason, f"{detail}; decoder said: {_short(exc)}")


def _short(exc: BaseException, n: int = 160) -> str:
    text = " ".join(str(exc).split())
    if "Check failed" in text:
        text = text[text.index("Check failed"):]
    return (text[:n] + "...") if len(text) > n else (text or type(exc).__name__)


def _probe_pyav(path: str) -> tuple[int, int, int]:
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise VideoError(path, "no_video_stream")
            s = c.streams.video[0]
            return int(s.codec_context.width), int(s.codec_context.height), int(s.frames or 0)
    except VideoError:
        raise
    except Exception as e:
        raise _open_error(path, e) from None


def _decode_decord(path: str, num_frames: int, size: int, train: bool, rng) -> Clip:
    import decord

    if "pyav" in available_decoders():
        w, h, _ = _probe_pyav(path)
    else:
        try:
            w, h = (int(x) for x in decord.VideoReader(path, num_threads=1)[0].shape[1::-1])
        except Exception as e:
            raise _open_error(path, e) from None
    if w <= 0 or h <= 0:
        raise VideoError(path, "corrupt", f"stream reports size {w}x{h}")
    nw, nh = resize_shape(w, h, size)
    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=nw, height=nh, num_threads=1)
    n = len(vr)
    if n == 0:
        raise VideoError(path, "no_decodable_frame", "the video stream has no frames")
    idx = sample_indices(n, num_frames, train, rng)
    frames = vr.get_batch(idx.tolist()).asnumpy()
    return Clip(frames, idx, n, "decord")


def _decode_pyav(path: str, num_frames: int, size: int, train: bool, rng) -> Clip:
    import av

    try:
        container = av.open(path)
    except Exception as e:
        raise _open_error(path, e) from None
    with container as c:
        if not c.streams.video:
            raise VideoError(path, "no_video_stream")
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        w, h = int(s.codec_context.width), int(s.codec_context.height)
        if w <= 0 or h <= 0:
            raise VideoError(path, "corrupt", f"stream reports size {w}x{h}")
        nw, nh = resize_shape(w, h, size)
        declared = int(s.frames or 0)
        idx = sample_indices(declared, num_frames, train, rng) if declared > 0 else None
        wanted = set(idx.tolist()) if idx is not None else None
        last = int(idx.max()) if idx is not None else -1
        kept: dict[int, np.ndarray] = {}
        i = -1
        try:
            for i, frame in enumerate(c.decode(s)):
                if wanted is None or i in wanted:
                    if frame.is_corrupt:
                        raise VideoError(path, "corrupt", f"frame {i} is marked corrupt by the decoder")
                    kept[i] = frame.to_ndarray(format="rgb24", width=nw, height=nh)
                if wanted is not None and i >= last:
                    break
        except VideoError:
            raise
        except Exception as e:
            reason, detail = sniff(path)
            if i < 0:
                raise VideoError(path, "truncated" if reason == "truncated" else "no_decodable_frame",
                                 _short(e)) from None
            raise VideoError(path, "truncated" if reason == "truncated" else "corrupt",
                             f"decoding stopped after {i + 1} frames: {_short(e)}") from None
        decoded = i + 1
    if decoded == 0:
        raise VideoError(path, "no_decodable_frame", "the video stream yields no frame")
    if idx is None:
        idx = sample_indices(decoded, num_frames, train, rng)
        return Clip(np.stack([kept[j] for j in idx.tolist()]), idx, decoded, "pyav")
    if any(j not in kept for j in idx.tolist()):
        raise VideoError(path, "truncated", f"the stream declares {declared} frames but only {decoded} decode")
    return Clip(np.stack([kept[j] for j in idx.tolist()]), idx, declared, "pyav")


def _decode(path: str, num_frames: int, size: int, train: bool, rng, decoder: str) -> Clip:
    have = available_decoders()
    if not have:
        raise RuntimeError("no video decoder installed: pip install decord or av")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r} (known: {', '.join(DECODERS)})")
    if decoder == "decord" and "decord" in have:
        try:
            return _decode_decord(path, num_frames, size, train, rng)
        except VideoError:
            raise
        except Exception as e:
            if "pyav" not in have:
                raise _open_error(path, e) from None
            first = e
        try:  # decord failed on a file FFmpeg could open: give PyAV a chance
            return _decode_pyav(path, num_frames, size, train, rng)
        except VideoError as e2:
            raise VideoError(path, e2.reason, f"{e2.detail}; decord said: {_short(first)}") from None
    if "pyav" not in have:
        raise RuntimeError("decoder 'pyav' requested but PyAV (av) is not installed")
    return _decode_pyav(path, num_frames, size, train, rng)


def _run_with_timeout(fn, timeout_s: float | None, path: str):
    if not timeout_s or timeout_s <= 0:
        return fn()
    box: dict[str, object] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="glccl-decode", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise VideoError(path, "timeout", f"no result after {timeout_s:g} s; the decoder was abandoned")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def _fit(frames: np.ndarray, size: int, path: str) -> np.ndarray:
    """Resize (only if the decoder did not already) and centre crop ``[n, H, W, 3]`` to ``[n, size, size, 3]``."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise VideoError(path, "invalid_frames", f"got array {frames.dtype} {tuple(frames.shape)}")
    n, h, w, _ = frames.shape
    if min(h, w) != size:
        from PIL import Image

        nw, nh = resize_shape(w, h, size)
        frames = np.stack([np.asarray(Image.fromarray(f).resize((nw, nh), Image.BICUBIC)) for f in frames])
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(frames[:, top:top + size, left:left + size])


def decode_clip(path: str | os.PathLike, num_frames: int, size: int, *, train: bool = False,
                rng: np.random.Generator | None = None, decoder: str = "decord", timeout_s: float | None = 60.0) -> Clip:
    """Decode up to ``num_frames`` sampled frames of ``path`` at ``size x size`` (no padding); see :func:`load_frames`."""
    path = os.fspath(path)
    _check_file(path)
    clip = _run_with_timeout(lambda: _decode(path, num_frames, size, train, rng, decoder), timeout_s, path)
    frames = _fit(clip.frames, size, path)
    if len(frames) != len(clip.indices) or len(frames) > num_frames:
        raise VideoError(path, "invalid_frames", f"{len(frames)} frames for {len(clip.indices)} indices")
    clip.frames = frames
    return clip


def load_frames(path: str | os.PathLike, num_frames: int, size: int, train: bool = False,
                rng: np.random.Generator | None = None, decoder: str = "decord",
                timeout_s: float | None = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """``(frames uint8 [K, size, size, 3], mask bool [K])`` for one video; raises :class:`VideoError`.

    Padded positions (videos with fewer than K frames) are zero frames with mask False.
    """
    clip = decode_clip(path, num_frames, size, train=train, rng=rng, decoder=decoder, timeout_s=timeout_s)
    return pad_frames(clip.frames, num_frames)
