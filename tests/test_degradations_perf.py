"""The speed work on the CPU path keeps its bytes, and the BasicSR benchmark measures the
pipeline it claims to (GFPGAN's options, BasicSR's own functions)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script

from degradations import presets as P
from degradations.jpeg import jpeg_libjpeg
from degradations.kernels import make_kernel
from degradations.ops import (
    LEVELS,
    OPS,
    _real_spectrum_multiplier,
    _to_levels,
    filter2d,
    to_tensor,
    to_uint8,
)
from degradations.pipeline import _quantize_cpu

# BasicSR's degradations.py, opt in: tests neither download it nor read the user's cache
# (the benchmark caches it at $REFACE_HOME/perf/basicsr-1.4.2/degradations.py).
BASICSR_FILE = os.environ.get("REFACE_BASICSR_FILE")


def _bench():
    return load_script("perf/bench_degradations.py")


def test_quantize_cpu_matches_rounding_at_every_level_boundary():
    k = np.arange(256, dtype=np.float32)
    # every level, every half level and its float32 neighbours, and out-of-range values
    half = (k + np.float32(0.5)) / np.float32(255.0)
    vals = np.concatenate([k / np.float32(255.0), half, np.nextafter(half, np.float32(0)),
                           np.nextafter(half, np.float32(1)), np.float32([-1, -1e-6, 1 + 1e-6, 2])])
    src = np.resize(vals.astype(np.float32), (2, 3, 8, 100))
    want = (np.round(np.clip(src, 0, 1) * np.float32(255.0)) / np.float32(255.0)).astype(np.float32)
    dst = np.empty_like(src)
    _quantize_cpu(src, dst)
    assert np.array_equal(dst, want)
    # a strided destination (a caller's non-contiguous ``out``) gets the same values
    wide = np.zeros((2, 3, 8, 200), np.float32)
    _quantize_cpu(src, wide[..., ::2])
    assert np.array_equal(wide[..., ::2], want)


def test_level_table_and_8bit_conversion_match_numpy():
    k = np.arange(256, dtype=np.uint8)
    assert np.array_equal(LEVELS[0], np.divide(k, np.float32(255.0), dtype=np.float32))
    half = (k.astype(np.float32) + np.float32(0.5)) / np.float32(255.0)
    plane = np.stack([half, np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(1)),
                      k / np.float32(255.0), np.linspace(-0.5, 1.5, 256, dtype=np.float32)])
    want = np.round(np.clip(plane, 0, 1) * np.float32(255.0)).astype(np.uint8)
    assert np.array_equal(_to_levels(plane), want)


@pytest.mark.realdata
def test_cpu_jpeg_op_equals_the_per_image_libjpeg_round_trip(data_root):
    from reface_core.imageio import load_image
    files = sorted(data_root.glob("identities_512/*/gt.png"))[:2]
    # off-grid values, and odd sizes (4:2:0 chroma on a half MCU)
    x = torch.cat([to_tensor(load_image(f)[:173, :251]) for f in files]) * 1.1 - 0.03
    got = OPS["jpeg"](x, [{"quality": 37}, {"quality": 88}], "libjpeg")
    for i, q in enumerate((37, 88)):
        want = jpeg_libjpeg(to_uint8(x[i]), q)
        assert np.array_equal(to_uint8(got[i]), want)


def test_spectrum_multiplier_in_place_equals_copy():
    spec = np.random.default_rng(0).standard_normal((36, 40)).astype(np.float32)
    want = _real_spectrum_multiplier(spec)
    got = _real_spectrum_multiplier(spec.copy(), inplace=True)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("size", [(64, 80), (7, 9)])
def test_symmetric_kernel_placement_agrees_with_general_path(size):
    # The in-place quadrant placement of point-symmetric kernels against the general
    # (flipped-kernel) path, which places it without wrapping: same correlation.
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((1, 3, *size), dtype=np.float32))
    k = make_kernel(type="aniso", size=41, sigma_x=3.0, sigma_y=6.0, theta=0.4)
    asym = k.copy()
    asym[0, 0] += 1e-9  # breaks point symmetry by a negligible amount: takes the general path
    a, b = filter2d(x, [k]).numpy(), filter2d(x, [asym / asym.sum()]).numpy()
    assert np.abs(a - b).max() < 1e-5


def test_gfpgan_preset_has_gfpgans_options():
    bench = _bench()
    bench.check_preset_matches_gfpgan(P.get_preset("gfpgan"))
    with pytest.raises(SystemExit, match="lacks"):
        bench.check_preset_matches_gfpgan(P.get_preset("codeformer"))  # no colour stages
    g = P.get_preset("gfpgan")
    stages = tuple(dataclasses.replace(s, quality=(30.0, 100.0)) if isinstance(s, P.Jpeg) else s
                   for s in g.stages)
    with pytest.raises(SystemExit, match="jpeg_range"):
        bench.check_preset_matches_gfpgan(dataclasses.replace(g, stages=stages))


def test_basicsr_file_is_patched_in_memory(tmp_path):
    bench = _bench()
    fake = tmp_path / "degradations.py"
    fake.write_text("import cv2\n"
                    "from torchvision.transforms.functional_tensor import rgb_to_grayscale\n"
                    "def add_jpg_compression(img, quality=90):\n"
                    "    encode_param = [int(cv2.IMWRITE_JPEG_QUALITY), quality]\n"
                    "    return encode_param\n")
    before = fake.read_bytes()
    mod = bench.load_basicsr(fake)
    assert mod.rgb_to_grayscale.__module__.startswith("torchvision.transforms")
    assert mod.add_jpg_compression(None, 71.9)[1] == 71  # OpenCV 4's truncation
    assert fake.read_bytes() == before  # the file on disk is untouched


def test_bench_skips_basicsr_with_a_reason_when_not_available(tmp_path, capsys):
    # REFACE_HOME is an empty folder here (conftest), and --no-fetch forbids the download.
    out = tmp_path / "r.json"
    rc = _bench().main(["--no-fetch", "--presets", "mgfr-mild", "gfpgan", "--rounds", "1", "--batch", "1",
                        "--threads", "1", "--pairs", "1", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert "not cached" in res["basicsr_skipped"]
    assert "skipped the basicsr baseline" in capsys.readouterr().out
    assert {r["path"] for r in res["results"]} >= {"batched", "single"}


def test_basicsr_pipeline_calls_basicsr_in_gfpgans_order():
    calls = []

    class FakeBasicSR:  # records the calls; identity degradations
        @staticmethod
        def random_mixed_kernels(kernel_list, kernel_prob, size, sx, sy, rot, noise_range=None):
            calls.append(("kernel", tuple(kernel_list), size, tuple(sx), noise_range))
            k = np.zeros((size, size))
            k[size // 2, size // 2] = 1.0
            return k

        @staticmethod
        def random_add_gaussian_noise(img, sigma_range):
            calls.append(("noise", img.shape, tuple(sigma_range)))
            return img

        @staticmethod
        def random_add_jpg_compression(img, quality_range):
            calls.append(("jpeg", img.shape, tuple(quality_range)))
            return img

    img = np.random.default_rng(0).random((64, 48, 3), dtype=np.float32)
    np.random.seed(3)
    out = _bench().basicsr_gfpgan(FakeBasicSR, img, colour=False)
    assert [c[0] for c in calls] == ["kernel", "noise", "jpeg"]
    assert calls[0][1:] == (("iso", "aniso"), 41, (0.1, 10), None)
    assert calls[1][1][:2] == calls[2][1][:2] and calls[1][1][0] < 64  # after the downsample
    assert (calls[1][2], calls[2][2]) == ((0, 20), (60, 100))
    assert out.shape == (3, 64, 48)  # resized back, CHW, RGB


@pytest.mark.realdata
def test_basicsr_gfpgan_degrades_a_real_face(data_root):
    if not BASICSR_FILE:
        pytest.skip("set REFACE_BASICSR_FILE to basicsr 1.4.2's data/degradations.py "
                    "(perf/bench_degradations.py caches it under $REFACE_HOME/perf/)")
    from reface_core.imageio import load_image
    bench = _bench()
    bsr = bench.load_basicsr(Path(BASICSR_FILE))
    hq = load_image(min(data_root.glob("identities_512/*/gt.png")))
    bgr = np.ascontiguousarray(hq[..., ::-1], dtype=np.float32) / np.float32(255.0)
    np.random.seed(0)
    lq = bench.basicsr_gfpgan(bsr, bgr, colour=False)
    assert lq.shape == (3, *hq.shape[:2])
    ref = torch.from_numpy(hq.transpose(2, 0, 1) / 255.0).float()
    psnr = 10 * np.log10(1.0 / float(((lq - ref) ** 2).mean()))
    assert 15 < psnr < 45  # degraded, but still the same face
    assert torch.equal(lq, torch.round(lq * 255) / 255)  # on the 8-bit grid, as the dataset rounds


def test_bench_rejects_bad_arguments_with_one_line(tmp_path, capsys):
    bench = _bench()
    assert bench.main(["--presets", "gfpgn"]) == 2
    assert "did you mean 'gfpgan'" in capsys.readouterr().err
    assert bench.main(["--basicsr-file", str(tmp_path / "missing.py")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert bench.main(["--threads", "0"]) == 2
