"""Analysis metrics against hand-computed values, and the table + plot that `analyze` writes."""

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from eval.analysis import DYNAMICS_EPS, analyze, dynamics_magnitude, frequency_magnitude, unit_frames


def _constant_video(colours, h=6, w=5) -> np.ndarray:
    """uint8 (T, H, W, 3), frame t filled with colours[t]."""
    return np.stack([np.full((h, w, 3), c, dtype=np.uint8) for c in colours])


def test_static_clip_has_the_floor_dynamics():
    video = np.random.default_rng(0).integers(0, 256, size=(1, 8, 8, 3), dtype=np.uint8).repeat(5, axis=0)
    assert dynamics_magnitude(video) == pytest.approx(math.log(DYNAMICS_EPS), abs=1e-12)


def test_alternating_colours_give_the_exact_dynamics():
    a, b = (255, 0, 0), (0, 255, 255)  # L2 distance in [0, 1] RGB: sqrt(1 + 1 + 1)
    video = _constant_video([a, b, a, b, a, b, a])
    assert dynamics_magnitude(video) == pytest.approx(math.log(math.sqrt(3) + DYNAMICS_EPS), rel=1e-12)
    # One moving half: per-pair pixel mean is half the distance (red <-> black = 1).
    half = _constant_video([(0, 0, 0)] * 4, w=4)
    half[1::2, :, :2] = (255, 0, 0)
    assert dynamics_magnitude(half) == pytest.approx(math.log(0.5 + DYNAMICS_EPS), rel=1e-12)


def test_model_side_float_video_gives_the_same_values():
    video = np.random.default_rng(1).integers(0, 256, size=(4, 10, 12, 3), dtype=np.uint8)
    model_side = torch.from_numpy(video).permute(3, 0, 1, 2).double() / 127.5 - 1  # (3, T, H, W) in [-1, 1]
    torch.testing.assert_close(unit_frames(model_side), unit_frames(video))
    assert dynamics_magnitude(model_side) == pytest.approx(dynamics_magnitude(video), rel=1e-12)
    assert frequency_magnitude(model_side) == pytest.approx(frequency_magnitude(video), rel=1e-12)


def test_sobel_magnitude_of_a_step_edge():
    # Black left 5 columns, white right 7 (luma 0 -> 1). Valid 3x3 windows: 10 columns, of which
    # the 2 straddling the step see gx = (1 + 2 + 1) * 1 = 4 and gy = 0: mean = 4 * 2 / 10.
    frame = np.zeros((9, 12, 3), dtype=np.uint8)
    frame[:, 5:] = 255
    video = np.stack([frame, frame])
    assert frequency_magnitude(video) == pytest.approx(0.8, rel=1e-12)
    # Transposed (a horizontal edge in a 12x9 frame): 2 of 10 valid rows see gy = 4, gx = 0.
    assert frequency_magnitude(np.ascontiguousarray(video.transpose(0, 2, 1, 3))) == pytest.approx(0.8, rel=1e-12)
    # A diagonal step seen by both kernels: one valid window over [[0, 0, 0], [0, 0, 1], [0, 1, 1]];
    # gx = (0 + 2 * 1 + 1) - 0 = 3 (right column minus left), gy = 3 likewise: magnitude 3 sqrt(2).
    diag = np.zeros((1, 3, 3, 3), dtype=np.uint8)
    diag[0][np.add.outer(np.arange(3), np.arange(3)) >= 3] = 255
    assert frequency_magnitude(np.concatenate([diag, diag])) == pytest.approx(3 * math.sqrt(2), rel=1e-12)
    assert abs(frequency_magnitude(_constant_video([(40, 90, 200)] * 3))) < 1e-12


@pytest.mark.slow
def test_analyze_writes_table_and_plot(tmp_path):
    rng = np.random.default_rng(2)
    items = []
    for i in range(4):
        real = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
        noise = rng.integers(-8 * (i + 1), 8 * (i + 1) + 1, size=real.shape)
        items.append((f"clip{i}", real, (real.astype(int) + noise).clip(0, 255).astype(np.uint8)))
    items.append(("precomputed", items[0][1], 31.5))
    result = analyze(iter(items), tmp_path / "out")
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["clip0", "clip1", "clip2", "clip3", "precomputed"]
    assert rows[-1]["psnr"] == 31.5 and rows[0]["psnr"] > rows[3]["psnr"]  # more noise, lower PSNR
    with open(result["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and float(table[2]["dynamics"]) == pytest.approx(rows[2]["dynamics"])
    md = open(result["markdown"]).read()
    assert "| clip3 |" in md and "Pearson correlation" in md
    with Image.open(result["plot"]) as img:
        assert img.format == "PNG" and img.size[0] > 200
    assert set(result["correlation"]) == {"dynamics", "frequency"}


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="at least 2 frames"):
        dynamics_magnitude(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        dynamics_magnitude(np.zeros((3, 2, 4, 4), np.uint8))
