"""A synthetic text-video retrieval benchmark built around partial relevance (``glccl data synth``).

Each video is 2-4 consecutive *events* (by default; ``events=(min, max)`` sets the range); an event is one big
coloured shape crossing the frame in one direction over a mildly textured background, with a fading trail behind it
(so that the direction is visible in single frames too). A
caption describes one event ("a red circle moves left") or, sometimes, two consecutive events in order ("a red circle
moves left then a blue square moves up"): it is relevant to only part of its video, which is the premise that
text-guided frame pooling exploits and mean pooling does not.

Vocabulary: 8 colours x 4 shapes x 4 directions = 128 event types. Within a video, every event has a different
(colour, shape).

Splits:

* ``train``: every single-event caption and every consecutive two-event caption of each video (3-7 per video);
* ``val`` and ``test``: one caption per video, chosen so that it matches its own video and no other video of the split
  (a single-event caption's event type occurs in no other video of the split; a two-event caption's ordered pair occurs
  in no other video). Chance text-to-video R@1 on a 100-video test split is therefore exactly 1 %.

DiDeMo layout (``layout="didemo"``, ``glccl data synth --layout didemo``): long multi-event videos described, as
DiDeMo's annotators do, moment by moment. A video of N events (``events``) gets ``described`` (min, max) moment
descriptions, one per event, of an ordered subset of its events (every event when ``described`` is None); the DiDeMo
adapter joins them, in order, into the paragraph query (with a fixed ``described`` range, the longer the video, the
smaller the share of it a paragraph describes). In ``val`` and ``test`` no other video of the split holds the
described events in that order, so each paragraph matches its own video only. Written in DiDeMo's own format
(LocalizingMoments)::

    out_dir/{train,val,test}_data.json   [{"video": "<id>.mp4", "description": ..., "times": [[s, e]],
                                           "annotation_id": k}, ...]  (times: 5 s segment indices, as DiDeMo's)
    out_dir/{train,val,test}_list.txt    video file names
    out_dir/videos/<id>.mp4, events.json, synth_meta.json  (as below)

Output of the default layout, in the MSVD annotation format (so the same adapter code path reads it)::

    out_dir/captions.json          video id -> list of captions
    out_dir/{train,val,test}_list.txt
    out_dir/videos/<id>.mp4        H.264 (libx264, yuv420p), size x size, fps
    out_dir/events.json            ground truth: the events of every video with their frame ranges
    out_dir/synth_meta.json        generation parameters and summary

Deterministic given the seed: the event plans come from ``numpy.random.default_rng([seed, split])`` and each video is
rendered from its own seed; colour conversion happens in NumPy and x264 runs single-threaded without its macroblock
tree (which reads uninitialised memory on small frames), so the files are byte-identical across runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 175, 55),
    "blue": (35, 85, 235),
    "yellow": (240, 220, 25),
    "purple": (150, 55, 205),
    "orange": (250, 135, 15),
    "cyan": (25, 210, 220),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPLITS = ("train", "val", "test")
LAYOUTS = ("msvd", "didemo")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}

Event = tuple[str, str, str]  # (colour, shape, direction)


def event_text(e: Event) -> str:
    article = "an" if e[0][0] in "aeiou" else "a"
    return f"{article} {e[0]} {e[1]} moves {e[2]}"


def caption_text(events: list[Event]) -> str:
    return " then ".join(event_text(e) for e in events)


# ---------------------------------------------------------------------------------------------------------------------
# planning (cheap, sequential, deterministic)


DEFAULT_EVENTS = (2, 4)
MAX_EVENTS = len(COLOURS) * len(SHAPES)  # every event of a video has a different (colour, shape)


def check_events(events: tuple[int, int]) -> tuple[int, int]:
    """``(min, max)`` events per video as ints; ``1 <= min <= max <= MAX_EVENTS`` or ``ValueError``."""
    lo, hi = (int(x) for x in events)
    if not 1 <= lo <= hi <= MAX_EVENTS:
        raise ValueError(f"events per video must satisfy 1 <= min <= max <= {MAX_EVENTS}, got ({lo}, {hi})")
    return lo, hi


def _sample_events(rng: np.random.Generator, forbid: set[Event] | None = None,
                   events: tuple[int, int] = DEFAULT_EVENTS) -> list[Event]:
    n = int(rng.integers(events[0], events[1] + 1))  # min..max events (default 2..4)
    colours, shapes, dirs = list(COLOURS), SHAPES, list(DIRECTIONS)
    out: list[Event] = []
    used: set[tuple[str, str]] = set()
    while len(out) < n:
        e = (colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))], dirs[rng.integers(len(dirs))])
        if (e[0], e[1]) in used or (forbid and e in forbid):
            continue
        used.add((e[0], e[1]))
        out.append(e)
    return out


def _has_pair(events: list[Event], a: Event, b: Event) -> bool:
    """``a`` occurs before ``b`` (not necessarily adjacent)."""
    try:
        i = events.index(a)
    except ValueError:
        return False
    return b in events[i + 1:]


def plan_train(n: int, rng: np.random.Generator,
               events: tuple[int, int] = DEFAULT_EVENTS) -> list[tuple[list[Event], list[list[Event]]]]:
    """Events and captions (as event lists) of ``n`` training videos: every single event and every consecutive pair."""
    out = []
    for _ in range(n):
        ev = _sample_events(rng, events=events)
        caps = [[e] for e in ev] + [[ev[j], ev[j + 1]] for j in range(len(ev) - 1)]
        out.append((ev, caps))
    return out


def plan_eval(n: int, rng: np.random.Generator, p_single: float = 0.8,
              events: tuple[int, int] = DEFAULT_EVENTS) -> list[tuple[list[Event], list[list[Event]]]]:
    """``n`` videos with one caption each that matches its own video only (see the module docstring).

    With many events per video most event types soon occur in some planned video, so later captions are mostly
    two-event ones (the single-event share drops below ``p_single``).
    """
    videos: list[list[Event]] = []
    caps: list[list[Event]] = []
    seen: set[Event] = set()        # event types present in some planned video
    reserved: set[Event] = set()    # types used as single-event captions: may occur in no other video
    pairs: list[tuple[Event, Event]] = []  # ordered pairs used as captions: may occur in no other video
    for _ in range(n):
        for _attempt in range(10_000):
            ev = _sample_events(rng, forbid=reserved, events=events)
            if any(_has_pair(ev, a, b) for a, b in pairs):
                continue
            singles = [e for e in ev if e not in seen]
            cand_pairs = [(ev[j], ev[j + 1]) for j in range(len(ev) - 1)
                          if not any(_has_pair(v, ev[j], ev[j + 1]) for v in videos)]
            if singles and (rng.random() < p_single or not cand_pairs):
                e = singles[int(rng.integers(len(singles)))]
                reserved.add(e)
                cap = [e]
            elif cand_pairs:
                a, b = cand_pairs[int(rng.integers(len(cand_pairs)))]
                pairs.append((a, b))
                cap = [a, b]
            else:
                continue
            break
        else:  # pragma: no cover - the vocabulary is far larger than any split we make
            raise RuntimeError(f"could not plan {n} uniquely captioned videos")
        videos.append(ev)
        caps.append(cap)
        seen.update(ev)
    return [(v, [c]) for v, c in zip(videos, caps)]


def _described(ev: list[Event], rng: np.random.Generator, described: tuple[int, int] | None) -> list[int]:
    """Sorted indices of the events of ``ev`` that a paragraph describes (all of them when ``described`` is None)."""
    if described is None:
        return list(range(len(ev)))
    m = int(rng.integers(described[0], min(described[1], len(ev)) + 1))
    return sorted(int(i) for i in rng.choice(len(ev), size=m, replace=False))


def _holds_in_order(events: list[Event], seq: list[Event]) -> bool:
    """``seq`` occurs in ``events`` as an ordered (not necessarily contiguous) subsequence."""
    it = iter(events)
    return all(any(e == x for x in it) for e in seq)


def plan_paragraphs(n: int, rng: np.random.Generator, events: tuple[int, int], described: tuple[int, int] | None,
                    unique: bool) -> list[tuple[list[Event], list[int]]]:
    """``n`` videos with the indices of their described events; ``unique``: no other video of the list holds a
    video's described events in the same order (evaluation splits)."""
    out: list[tuple[list[Event], list[int]]] = []
    for _ in range(n):
        for _attempt in range(10_000):
            ev = _sample_events(rng, events=events)
            idx = _described(ev, rng, described)
            seq = [ev[i] for i in idx]
            if unique and (any(_holds_in_order(v, seq) for v, _ in out)
                           or any(_holds_in_order(ev, [v[i] for i in j]) for v, j in out)):
                continue
            break
        else:  # pragma: no cover - the vocabulary is far larger than any split we make
            raise RuntimeError(f"could not plan {n} uniquely described videos")
        out.append((ev, idx))
    return out


def _segment(start: int, end: int, num_frames: int, fps: int) -> list[int]:
    """DiDeMo's moment times: 5-second segment indices ``[first, last]`` covering frames ``[start, end)``."""
    last = max(start, end - 1)
    return [int(start / fps // 5), int(last / fps // 5)]


# ---------------------------------------------------------------------------------------------------------------------
# rendering (per video, in worker processes)


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small 2-D grid to ``h x w``."""
    gy, gx = grid.shape
    ys = np.linspace(0, gy - 1, h)
    xs = np.linspace(0, gx - 1, w)
    rows = np.stack([np.interp(xs, np.arange(gx), grid[i]) for i in range(gy)])  # [gy, w]
    return np.stack([np.interp(ys, np.arange(gy), rows[:, j]) for j in range(w)], axis=1)  # [h, w]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(95, 150) + rng.uniform(-10, 10, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:  # soft blobs
        tex = _upsample(rng.uniform(-1, 1, size=(5, 5)), size, size) * 16
    elif kind == 1:  # stripes at a random angle
        a = rng.uniform(0, np.pi)
        period = rng.uniform(8, 20)
        tex = np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) * 10
    else:  # checkerboard
        cell = int(rng.integers(8, 17))
        tex = (((xx // cell) + (yy // cell)) % 2 * 2 - 1) * 8
    tex = tex + rng.normal(0, 3, size=(size, size))
    bg = base[None, None, :] + tex[..., None]
    return np.clip(bg, 0, 255).astype(np.float32)


_MASKS: dict[tuple[str, int], np.ndarray] = {}


def _mask(shape: str, r: int) -> np.ndarray:
    """Anti-aliased alpha mask (float32, [2r+1, 2r+1]) of a shape with half-extent ``r`` pixels."""
    key = (shape, r)
    if key in _MASKS:
        return _MASKS[key]
    ss = 4
    n = (2 * r + 1) * ss
    c = (np.arange(n) + 0.5) / ss - (r + 0.5)
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        m = x * x + y * y <= r * r
    elif shape == "square":
        m = (np.abs(x) <= 0.82 * r) & (np.abs(y) <= 0.82 * r)
    elif shape == "triangle":  # pointing up: apex (0, -r), base at y = 0.8 r
        m = (y <= 0.8 * r) & (y >= -r + 1.8 * np.abs(x))
    elif shape == "cross":
        t = 0.34 * r
        m = ((np.abs(x) <= t) & (np.abs(y) <= r)) | ((np.abs(y) <= t) & (np.abs(x) <= r))
    else:
        raise ValueError(shape)
    out = m.reshape(2 * r + 1, ss, 2 * r + 1, ss).mean(axis=(1, 3)).astype(np.float32)
    _MASKS[key] = out
    return out


def _blit(img: np.ndarray, mask: np.ndarray, cx: float, cy: float, colour: np.ndarray, alpha: float) -> None:
    h, w, _ = img.shape
    r = mask.shape[0] // 2
    x0, y0 = int(round(cx)) - r, int(round(cy)) - r
    x1, y1 = x0 + mask.shape[1], y0 + mask.shape[0]
    mx0, my0 = max(0, -x0), max(0, -y0)
    x0c, y0c, x1c, y1c = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0c >= x1c or y0c >= y1c:
        return
    a = mask[my0:my0 + (y1c - y0c), mx0:mx0 + (x1c - x0c), None] * alpha
    region = img[y0c:y1c, x0c:x1c].astype(np.float32)
    region = region * (1 - a) + a * colour + 0.5  # (+0.5: round when truncating back to uint8)
    img[y0c:y1c, x0c:x1c] = np.clip(region, 0, 255).astype(np.uint8)


_TRAIL = ((0.30, 0.15), (0.20, 0.30), (0.10, 0.50))  # (lag in path fraction, alpha), drawn oldest first


def render_video(events: list[Event], bounds: list[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[F, size, size, 3]``; event ``j`` occupies frames ``bounds[j]:bounds[j+1]``."""
    bg = np.clip(np.rint(_background(rng, size)), 0, 255).astype(np.uint8)
    r = max(3, int(round(0.17 * size)))
    lo, hi = 0.25 * size, 0.75 * size
    out = np.empty((bounds[-1], size, size, 3), np.uint8)
    for j, (colour, shape, direction) in enumerate(events):
        mask = _mask(shape, r)
        col = np.asarray(COLOURS[colour], np.float32)
        dx, dy = DIRECTIONS[direction]
        across = rng.uniform(0.32, 0.68) * size  # position on the axis perpendicular to the motion
        n = bounds[j + 1] - bounds[j]

        def pos(p: float, dx=dx, dy=dy, across=across):
            along = lo + (hi - lo) * p if (dx + dy) > 0 else hi - (hi - lo) * p
            return (along, across) if dx != 0 else (across, along)

        for t in range(n):
            p = t / max(1, n - 1)
            img = out[bounds[j] + t]
            img[:] = bg
            for lag, alpha in _TRAIL:
                if p - lag >= 0:
                    _blit(img, mask, *pos(p - lag), col, alpha)
            _blit(img, mask, *pos(p), col, 1.0)
    return out


def event_bounds(num_events: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    w = rng.uniform(0.8, 1.2, size=num_events)
    cuts = np.round(np.cumsum(w) / w.sum() * num_frames).astype(int)
    return [0, *cuts.tolist()]


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[n, h, w, 3]`` (h, w even) -> planar yuv420p ``[n, h * 3 // 2, w]``: BT.601 limited range in 8-bit
    fixed point (FFmpeg's coefficients), chroma from the rounded 2x2 RGB mean. Integer NumPy (16-bit, no overflow)
    rather than FFmpeg's scaler, so that the encoder input is exactly reproducible."""
    n, h, w, _ = frames.shape
    out = np.empty((n, h * 3 // 2, w), np.uint8)
    x = frames.astype(np.uint16)
    out[:, :h] = ((66 * x[..., 0] + 129 * x[..., 1] + 25 * x[..., 2] + 128) >> 8) + 16  # <= 56228 before the shift
    m = ((x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2] + 2) >> 2).astype(np.int16)
    r, g, b = m[..., 0], m[..., 1], m[..., 2]
    out[:, h:h + h // 4] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128).reshape(n, h // 4, w)  # |.| <= 28688
    out[:, h + h // 4:] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128).reshape(n, h // 4, w)
    return out


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, crf: int = 18) -> None:
    """H.264 mp4 (libx264, yuv420p, single-threaded, no macroblock tree, colour conversion in NumPy: byte-identical
    output across runs and processes)."""
    import av

    n, h, w = frames.shape[:3]
    if h % 2 or w % 2:
        raise ValueError(f"frame size must be even, got {w}x{h}")
    yuv = rgb_to_yuv420p(frames)
    with av.open(os.fspath(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        # threads=1 and no-mbtree: x264's macroblock-tree pass reads uninitialised memory on small frames, which made
        # the output differ from run to run (seen at 48 and 112 px); without it the files are byte-identical
        s.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "g": str(max(1, 2 * fps)),
                     "x264-params": "log-level=error:no-mbtree=1"}
        for f in yuv:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="yuv420p")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _render_task(task: tuple) -> tuple[str, int, list[int]]:
    vid, events, path, size, fps, num_frames, seed = task
    rng = np.random.default_rng(seed)
    bounds = event_bounds(len(events), num_frames, rng)
    frames = render_video([tuple(e) for e in events], bounds, size, rng)
    write_mp4(path, frames, fps)
    return vid, os.path.getsize(path), bounds


def _mp_context():
    """fork where it is safe (Linux, no Ray in this process: workers inherit the imports, which saves seconds per
    worker since importing ``glccl`` loads torch), else spawn."""
    import multiprocessing as mp

    ray = sys.modules.get("ray")
    if "fork" in mp.get_all_start_methods() and (ray is None or not ray.is_initialized()):
        return get_context("fork")
    return get_context("spawn")


# ---------------------------------------------------------------------------------------------------------------------


def generate(out_dir: str | os.PathLike = "data/synth", *, num_train: int = 800, num_val: int = 100,
             num_test: int = 100, seed: int = 0, size: int = 96, fps: int = 10, seconds: float = 5.0,
             workers: int | None = None, p_single: float = 0.8, events: tuple[int, int] = DEFAULT_EVENTS,
             layout: str = "msvd", described: tuple[int, int] | None = None,
             progress: Callable[[int], None] | None = None) -> dict:
    """Write the synthetic benchmark to ``out_dir`` (see the module docstring) and return a summary dict.

    ``out_dir`` must be empty, absent, or a previous output of this function (which is then replaced). ``events``:
    ``(min, max)`` events per video (inclusive; the default 2-4 gives the same files as before the option existed);
    every video has ``round(fps * seconds)`` frames (at least 4), which must be at least ``max`` (with fewer than 2
    frames per event an event may get no frame). ``layout``: ``msvd`` (default) or ``didemo`` (paragraphs of moment
    descriptions in DiDeMo's format; ``described`` = (min, max) moments described per video, None: all).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if described is not None:
        described = check_events(described)
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not seconds > 0 or fps < 1 or size < 8:
        raise ValueError(f"need seconds > 0, fps >= 1 and size >= 8, got {seconds}, {fps}, {size}")
    per_video = check_events(events)
    num_frames = max(4, int(round(fps * seconds)))
    if num_frames < per_video[1]:
        raise ValueError(f"{num_frames} frames per video (fps {fps} x {seconds} s) are too few for up to {per_video[1]} "
                         f"events")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / "synth_meta.json").is_file():
            raise FileExistsError(f"{out} is not empty and is not a synthetic benchmark: refusing to overwrite it")
        shutil.rmtree(out / "videos", ignore_errors=True)
        for name in ("captions.json", "events.json", "synth_meta.json", *(f"{s}_list.txt" for s in SPLITS),
                     *(f"{s}_data.json" for s in SPLITS)):
            (out / name).unlink(missing_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts = {"train": num_train, "val": num_val, "test": num_test}
    plans: dict[str, list] = {}
    described_idx: dict[str, list[list[int]]] = {}
    for split, n in counts.items():
        rng = np.random.default_rng([seed, _SPLIT_CODE[split]])
        if layout == "didemo":
            planned = plan_paragraphs(n, rng, per_video, described, unique=split != "train")
            plans[split] = [(ev, [[ev[i] for i in idx]]) for ev, idx in planned]
            described_idx[split] = [idx for _, idx in planned]
        else:
            plans[split] = plan_train(n, rng, per_video) if split == "train" else plan_eval(n, rng, p_single,
                                                                                             per_video)
    captions: dict[str, list[str]] = {}
    tasks = []
    for split, plan in plans.items():
        for i, (events, caps) in enumerate(plan):
            vid = f"{split}{i:05d}"
            captions[vid] = [" ".join(event_text(e) for e in c) if layout == "didemo" else caption_text(c)
                             for c in caps]
            vseed = np.random.SeedSequence([seed, _SPLIT_CODE[split], i, 7]).generate_state(2)
            tasks.append((vid, [list(e) for e in events], str(out / "videos" / f"{vid}.mp4"), size, fps, num_frames,
                          [int(x) for x in vseed]))
    workers = workers if workers is not None else min(len(tasks), os.cpu_count() or 1)
    results: dict[str, tuple[int, list[int]]] = {}
    if workers <= 1 or len(tasks) < 8:
        for t in tasks:
            vid, nbytes, bounds = _render_task(t)
            results[vid] = (nbytes, bounds)
            if progress:
                progress(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) as ex:
            for vid, nbytes, bounds in ex.map(_render_task, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers)))):
                results[vid] = (nbytes, bounds)
                if progress:
                    progress(1)
    events_out = {}
    for split, plan in plans.items():
        ids = [f"{split}{i:05d}" for i in range(len(plan))]
        names = [f"{v}.mp4" for v in ids] if layout == "didemo" else ids
        (out / f"{split}_list.txt").write_text("".join(v + "\n" for v in names))
        moments = []
        for k, (vid, (events, _)) in enumerate(zip(ids, plan)):
            bounds = results[vid][1]
            events_out[vid] = [{"colour": e[0], "shape": e[1], "direction": e[2], "start": bounds[j],
                                "end": bounds[j + 1]} for j, e in enumerate(events)]
            if layout == "didemo":
                moments += [{"video": f"{vid}.mp4", "description": event_text(events[j]),
                             "times": [_segment(bounds[j], bounds[j + 1], num_frames, fps)],
                             "annotation_id": f"{vid}-{j}"} for j in described_idx[split][k]]
        if layout == "didemo":
            (out / f"{split}_data.json").write_text(json.dumps(moments, indent=1) + "\n")
    if layout == "msvd":
        (out / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
    (out / "events.json").write_text(json.dumps(events_out, indent=1) + "\n")
    elapsed = time.perf_counter() - t0
    single_share = {}
    for split in ("val", "test"):
        caps = [c for _, cs in plans[split] for c in cs]
        single_share[split] = round(sum(len(c) == 1 for c in caps) / len(caps), 3) if caps else None
    summary = {
        "out_dir": str(out),
        "videos": {s: len(p) for s, p in plans.items()},
        "captions": {s: sum(len(cs) for _, cs in p) for s, p in plans.items()},
        "single_event_caption_share": single_share,
        "bytes": int(sum(b for b, _ in results.values())),
        "seconds": round(elapsed, 2),
        "params": {"seed": seed, "size": size, "fps": fps, "seconds": seconds, "frames_per_video": num_frames,
                   "num_train": num_train, "num_val": num_val, "num_test": num_test, "p_single": p_single,
                   "events": list(per_video), "layout": layout,
                   "described": list(described) if described is not None else None},
        "vocabulary": {"colours": list(COLOURS), "shapes": list(SHAPES), "directions": list(DIRECTIONS)},
        "format": ("didemo ({split}_data.json + {split}_list.txt + videos/<id>.mp4)" if layout == "didemo"
                   else "msvd (captions.json + {split}_list.txt + videos/<id>.mp4)"),
    }
    (out / "synth_meta.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
