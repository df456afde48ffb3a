"""Frame sampling and decoding on real (tiny) H.264 files written by PyAV, decoded by decord and PyAV."""

from __future__ import annotations

import time

import numpy as np
import pytest

from glccl.data.frames import (
    available_decoders,
    decode_clip,
    load_frames,
    normalize,
    pad_frames,
    resize_shape,
    sample_indices,
    snap_indices,
)
from glccl.data.report import VideoError
from glccl.data.samples import clip_frames, release_fifo, write_bad_videos, write_clip

DECODERS = [d for d in ("decord", "pyav") if d in available_decoders()]


def test_both_decoders_installed():
    assert DECODERS == ["decord", "pyav"]


# ---------------------------------------------------------------------------------------------------------------------
# sampling


def test_eval_indices_are_segment_centres():
    idx = sample_indices(120, 12, train=False)
    assert idx.tolist() == [5 + 10 * k for k in range(12)]
    assert sample_indices(7, 3, train=False).tolist() == [1, 3, 5]  # floor((k + .5) * 7 / 3)


def test_train_indices_one_per_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = sample_indices(100, 8, train=True, rng=rng)
        assert len(idx) == 8 and idx.dtype == np.int64
        for k, i in enumerate(idx):
            assert int(np.floor(k * 100 / 8)) <= i < int(np.floor((k + 1) * 100 / 8))
        seen.update(idx.tolist())
    assert len(seen) > 80  # random positions cover most of the video


def test_train_indices_reproducible_with_rng():
    a = sample_indices(1000, 12, True, np.random.default_rng(5))
    b = sample_indices(1000, 12, True, np.random.default_rng(5))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("train", [False, True])
def test_short_video_returns_all_frames(train):
    assert sample_indices(5, 12, train, np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4]
    assert sample_indices(12, 12, train, np.random.default_rng(0)).tolist() == list(range(12))


def test_sample_indices_rejects_empty():
    with pytest.raises(ValueError):
        sample_indices(0, 12, False)


def test_snap_and_pad_and_resize_shape():
    assert snap_indices(np.array([0, 4, 5, 9]), np.array([1, 5, 8])).tolist() == [0, 1, 1, 2]
    f, m = pad_frames(np.ones((3, 4, 4, 3), np.uint8), 5)
    assert f.shape == (5, 4, 4, 3) and m.tolist() == [True] * 3 + [False] * 2 and f[3:].sum() == 0
    assert resize_shape(320, 240, 224) == (299, 224)
    assert resize_shape(240, 320, 224) == (224, 299)


def test_normalize_layout():
    import torch

    x = torch.full((2, 3, 8, 8, 3), 255, dtype=torch.uint8)
    y = normalize(x)
    assert y.shape == (2, 3, 3, 8, 8) and y.dtype == torch.float32
    assert torch.allclose(y[0, 0, :, 0, 0], torch.tensor([(1 - 0.48145466) / 0.26862954,
                                                          (1 - 0.4578275) / 0.26130258,
                                                          (1 - 0.40821073) / 0.27577711]))


# ---------------------------------------------------------------------------------------------------------------------
# decoding good files


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_eval_frames_match_source(tmp_path, decoder):
    src = clip_frames(24, 32, 32)
    path = write_clip(tmp_path / "a.mp4", frames=src)
    frames, mask = load_frames(path, 6, 32, train=False, decoder=decoder)
    assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8
    assert mask.all()
    want = sample_indices(24, 6, train=False)
    # every decoded frame is closest (in brightness) to the source frame it should be
    err = np.abs(frames.astype(float).mean(axis=(1, 2, 3))[:, None] - src.astype(float).mean(axis=(1, 2, 3))[None])
    assert err.argmin(axis=1).tolist() == want.tolist()


def test_decord_and_pyav_agree(tmp_path):
    path = write_clip(tmp_path / "a.mp4", num_frames=16, width=40, height=32)
    a, _ = load_frames(path, 4, 24, decoder="decord")
    b, _ = load_frames(path, 4, 24, decoder="pyav")
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 8


@pytest.mark.parametrize("decoder", DECODERS)
def test_short_video_is_padded_and_masked(tmp_path, decoder):
    path = write_clip(tmp_path / "short.mp4", num_frames=5)
    frames, mask = load_frames(path, 8, 16, decoder=decoder)
    assert frames.shape == (8, 16, 16, 3)
    assert mask.tolist() == [True] * 5 + [False] * 3
    assert frames[5:].max() == 0 and frames[:5].max() > 0


@pytest.mark.parametrize("decoder", DECODERS)
def test_resize_shorter_side_then_centre_crop(tmp_path, decoder):
    # 64x32 frames: left half black, right half white; after resize (32x16 for size 16) and centre crop the crop covers
    # the middle: its left half dark, its right half bright
    f = np.zeros((6, 32, 64, 3), np.uint8)
    f[:, :, 32:] = 255
    path = write_clip(tmp_path / "wide.mp4", frames=f)
    frames, _ = load_frames(path, 3, 16, decoder=decoder)
    assert frames.shape == (3, 16, 16, 3)
    assert frames[:, :, :6].mean() < 40 and frames[:, :, 10:].mean() > 215


@pytest.mark.parametrize("decoder", DECODERS)
def test_train_sampling_varies(tmp_path, decoder):
    path = write_clip(tmp_path / "a.mp4", num_frames=40)
    rng = np.random.default_rng(0)
    clips = {tuple(decode_clip(path, 4, 16, train=True, rng=rng, decoder=decoder).indices) for _ in range(8)}
    assert len(clips) > 1


# ---------------------------------------------------------------------------------------------------------------------
# bad files: each raises VideoError naming the file and the reason, with both decoders


BAD = ["missing_file", "empty_file", "truncated", "not_a_video", "no_decodable_frame", "no_video_stream"]


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    return write_bad_videos(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("reason", BAD)
def test_bad_video_raises_named_error(bad_videos, reason, decoder):
    path = bad_videos[reason]
    with pytest.raises(VideoError) as ei:
        load_frames(path, 4, 16, decoder=decoder, timeout_s=10)
    assert ei.value.reason == reason
    assert str(path) in str(ei.value)


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(VideoError) as ei:
        load_frames(tmp_path, 4, 16)
    assert ei.value.reason == "not_a_file"


def test_truncated_faststart_file_is_rejected(tmp_path):
    # moov first: the index survives the cut, the frame data does not; no partially decoded frame may come back
    data = write_clip(tmp_path / "fs.mp4", num_frames=30, width=64, height=48, faststart=True).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    for decoder in DECODERS:
        with pytest.raises(VideoError) as ei:
            load_frames(tmp_path / "cut.mp4", 12, 16, decoder=decoder)
        assert ei.value.reason == "truncated"


@pytest.mark.parametrize("decoder", DECODERS)
def test_hanging_file_times_out(tmp_path, decoder):
    bad = write_bad_videos(tmp_path, fifo=True)
    t0 = time.perf_counter()
    try:
        with pytest.raises(VideoError) as ei:
            load_frames(bad["timeout"], 4, 16, decoder=decoder, timeout_s=0.5)
        assert ei.value.reason == "timeout" and "fifo.mp4" in str(ei.value)
        assert time.perf_counter() - t0 < 5
    finally:
        release_fifo(bad["timeout"])
