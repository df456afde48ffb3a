"""Video decoding throughput: decord in one process vs. the Ray Data pipeline at 1 and 2 CPUs (not a test).

    .venv/bin/python -m benchmarks.decode                      # 120 clips, 320x240, 10 s at 25 fps, K=12 at 224 px
    .venv/bin/python -m benchmarks.decode --videos 60 --repeat 5 --json out.json

(from the repository root.)

The clips are MSR-VTT-like (320x240, 25 fps, 10 s, H.264 with a 2 s GOP, moving textured content) and are written once
with PyAV into ``--video-dir`` (reused on later runs). Every measurement decodes the same clips the same way (K frames at
the segment centres, shorter side resized to ``--size`` by the decoder, centre crop):

* ``direct``: ``glccl.data.frames.load_frames`` in a loop in this process (decord, one decoder thread);
* ``ray-N``: ``pipelines.data.video_dataset(mode="videos")`` on a private local Ray with ``num_cpus=N``, consumed by
  ``iter_batches`` in the driver. A warm-up pass starts the workers first; then the full passes are timed.

Each setup runs ``--repeat`` timed passes and reports the fastest (on a shared machine it is the least disturbed one);
all passes and the load average before and after are recorded too.

Targets: ray-2 >= 1.7 x ray-1, and ray per CPU >= 80 % of direct.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import ray

from benchmarks.measure import cpu_model, timed, tree_cpu_seconds
from glccl.data.frames import load_frames
from glccl.data.manifest import MANIFEST_SCHEMA
from pipelines.data import video_dataset
from pipelines.ray_session import connect


def make_clips(folder: Path, n: int, width: int, height: int, fps: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    frames_per_clip = int(fps * seconds)
    paths = []
    for i in range(n):
        path = folder / f"clip{i:04d}_{width}x{height}_{fps}fps_{seconds:g}s.mp4"
        paths.append(path)
        if path.is_file() and path.stat().st_size > 0:
            continue
        rng = np.random.default_rng(i)
        tex = rng.integers(0, 256, size=(height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
        tex = np.kron(tex, np.ones((8, 8, 1), np.uint8))  # blocky texture that x264 must really code
        tmp = path.with_suffix(".tmp.mp4")
        with av.open(str(tmp), "w") as c:
            s = c.add_stream("libx264", rate=fps)
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            s.options = {"preset": "ultrafast", "crf": "23", "g": str(2 * fps), "threads": "1",
                         "x264-params": "log-level=error"}
            for t in range(frames_per_clip):
                dy, dx = (t * 2) % 16, (t * 3) % 16
                f = np.ascontiguousarray(tex[dy:dy + height, dx:dx + width])
                f[:, (t * 5) % width:(t * 5) % width + 20] = (255, 30, 30)
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        os.replace(tmp, path)
    return paths


def bench_direct(paths: list[Path], k: int, size: int, decoder: str, repeat: int) -> tuple[list[float], list[float]]:
    load_frames(paths[0], k, size, decoder=decoder)  # import + first-open costs out of the timing

    def one_pass() -> None:
        for p in paths:
            f, _ = load_frames(p, k, size, decoder=decoder)
            assert f.shape == (k, size, size, 3)

    runs = [timed(one_pass)[1] for _ in range(repeat)]
    return [r.wall_s for r in runs], [r.cpu_s for r in runs]


def bench_ray(paths: list[Path], k: int, size: int, cpus: int, batch_size: int, decoder: str,
              repeat: int) -> tuple[list[float], list[float]]:
    table = pa.Table.from_pylist([{"dataset": "bench", "split": "bench", "video_id": p.stem, "video_path": str(p),
                                   "caption_id": p.stem, "caption": "x"} for p in paths], schema=MANIFEST_SCHEMA)
    with connect(None, num_cpus=cpus, object_store_mb=1024, log_to_driver=False):
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)

        def run(tbl) -> int:
            ds = video_dataset(tbl, "bench", num_frames=k, size=size, train=False, mode="videos",
                               batch_size=batch_size, num_cpus=1, decoder=decoder)
            n = 0
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                n += len(b["video_index"])
            return n

        run(table.slice(0, min(len(paths), 4 * batch_size)))  # warm-up: start and import the workers

        def one_pass() -> None:
            n = run(table)
            assert n == len(paths), (n, len(paths))

        # CPU time of the driver and every Ray process it started: the decoding happens in the workers
        runs = [timed(one_pass, cpu_clock=tree_cpu_seconds)[1] for _ in range(repeat)]
        return [r.wall_s for r in runs], [r.cpu_s for r in runs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=120)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--num-frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8, help="videos per Ray Data task")
    ap.add_argument("--decoder", default="decord", choices=("decord", "pyav"))
    ap.add_argument("--video-dir", default="/tmp/glccl-bench-videos")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per setup; the fastest counts (the machine "
                    "may be shared: the best pass is the least disturbed one)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    paths = make_clips(Path(args.video_dir), args.videos, args.width, args.height, args.fps, args.seconds)
    print(f"{len(paths)} clips {args.width}x{args.height} {args.fps} fps {args.seconds:g} s in {args.video_dir} "
          f"(ready in {time.perf_counter() - t0:.1f} s)")
    k, n = args.num_frames, len(paths)
    load0 = os.getloadavg()[0]
    runs = {}
    runs["direct"] = bench_direct(paths, k, args.size, args.decoder, args.repeat)
    for cpus in (1, 2):
        runs[f"ray-{cpus}"] = bench_ray(paths, k, args.size, cpus, args.batch_size, args.decoder, args.repeat)
    load1 = os.getloadavg()[0]
    rows = []
    for name, (times, cpu) in runs.items():
        best = int(np.argmin(times))
        dt = times[best]
        rows.append({"setup": name, "seconds": round(dt, 2), "videos_per_s": round(n / dt, 2),
                     "frames_per_s": round(n * k / dt, 1), "cpu_s_per_video": round(min(cpu) / n, 4),
                     "all_passes_s": [round(t, 2) for t in times], "all_passes_cpu_s": [round(c, 2) for c in cpu]})
        print(f"{name}: {n / dt:.1f} videos/s, {min(cpu) / n * 1e3:.1f} CPU-ms/video (passes "
              f"{', '.join(f'{t:.2f}' for t in times)} s)")
    v = {r["setup"]: r["videos_per_s"] for r in rows}
    c = {r["setup"]: r["cpu_s_per_video"] for r in rows}
    ratios = {
        "ray2_over_ray1": round(v["ray-2"] / v["ray-1"], 3),
        "ray1_per_cpu_over_direct": round(v["ray-1"] / v["direct"], 3),
        "ray2_per_cpu_over_direct": round(v["ray-2"] / 2 / v["direct"], 3),
        # load-independent: CPU time per video of direct decoding / of the whole pipeline (driver + all Ray processes)
        "cpu_efficiency_ray1": round(c["direct"] / c["ray-1"], 3),
        "cpu_efficiency_ray2": round(c["direct"] / c["ray-2"], 3),
    }
    out = {
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
                    "load_avg_1min_before_after": [round(load0, 2), round(load1, 2)]},
        "clips": {"count": n, "width": args.width, "height": args.height, "fps": args.fps, "seconds": args.seconds},
        "decode": {"decoder": args.decoder, "num_frames": k, "size": args.size, "batch_size": args.batch_size},
        "results": rows, "ratios": ratios,
        "targets_met": {"ray2_over_ray1>=1.7": ratios["ray2_over_ray1"] >= 1.7,
                        "ray_per_cpu_over_direct>=0.8": min(ratios["ray1_per_cpu_over_direct"],
                                                            ratios["ray2_per_cpu_over_direct"]) >= 0.8},
    }
    print()
    print("| setup | time (s) | videos/s | frames/s | CPU-ms/video |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['seconds']} | {r['videos_per_s']} | {r['frames_per_s']} | "
              f"{1e3 * r['cpu_s_per_video']:.1f} |")
    print()
    for kk, vv in ratios.items():
        print(f"{kk}: {vv}")
    print(json.dumps(out["targets_met"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
