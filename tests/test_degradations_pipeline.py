"""Operations and the two front ends of ``degradations`` (per-image and batched)."""

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import make_rgb

from degradations import ops
from degradations.jpeg import jpeg_libjpeg, jpeg_torch, quality_tables
from degradations.kernels import gaussian, make_kernel
from degradations.pipeline import BatchDegrader, Degrader, apply_records
from degradations.presets import list_presets
from degradations.reference import reference_apply


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    """Four structured 128x128 images (smooth gradients, edges, texture)."""
    out = []
    for s in range(4):
        img = make_rgb(128, 128, seed=s).astype(np.int32)
        cv2.circle(img, (64, 60), 30 + 4 * s, (200, 150, 120), -1)
        cv2.rectangle(img, (20, 90), (100, 110), (30, 40, 50), -1)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


# --- operations ------------------------------------------------------------------------------

@pytest.mark.parametrize("ktype,kw", [("aniso", dict(sigma_x=4.0, sigma_y=1.0, theta=0.5)),
                                      ("sinc", dict(omega=1.2)), ("motion", dict(length=9.0, angle=0.3))])
@pytest.mark.parametrize("hw", [(64, 48), (9, 12), (128, 128), (25, 55), (25, 12), (12, 25)])  # odd DFT sizes too
def test_fft_blur_equals_opencv_filter2d(ktype, kw, hw):
    img = make_rgb(*hw, seed=1).astype(np.float32) / 255
    k = make_kernel(ktype, 21, **kw)
    expected = cv2.filter2D(img, -1, k.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    got = ops.filter2d(x, [k])[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # the torch.fft path (CUDA / autograd) computes the same correlation
    got_t = ops._torch_correlate(x, [k])[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got_t, expected, atol=2e-5)


def test_asymmetric_kernels_take_the_general_path():
    img = make_rgb(40, 36, seed=3).astype(np.float32) / 255
    k = np.zeros((7, 7))
    k[3, 3:] = [0.4, 0.3, 0.2, 0.1]  # a one-sided smear
    expected = cv2.filter2D(img, -1, k.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    np.testing.assert_allclose(ops.filter2d(x, [k])[0].numpy().transpose(1, 2, 0), expected, atol=2e-5)


def test_blur_batches_mix_kernel_sizes():
    x = torch.rand(2, 3, 40, 40)
    ks = [gaussian(7, 1.0), gaussian(21, 3.0, 1.0, 0.2)]
    both = ops.filter2d(x, ks)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], ops.filter2d(x[i:i + 1], [ks[i]]), atol=1e-6, rtol=0)


def test_adjust_hue_matches_torchvision():
    import torchvision.transforms.functional as TF
    x = torch.rand(3, 3, 32, 32)
    for d in (-0.5, -0.1, 0.0, 0.07, 0.5):
        got = ops.adjust_hue(x, torch.full((3,), d))
        ref = torch.stack([TF.adjust_hue(x[i], d) for i in range(3)])
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_resize_follows_opencv_semantics():
    img = make_rgb(50, 70, seed=2).astype(np.float32) / 255
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    for mode, flag in (("bilinear", cv2.INTER_LINEAR), ("bicubic", cv2.INTER_CUBIC)):
        ref = cv2.resize(img, (23, 17), interpolation=flag).transpose(2, 0, 1)
        np.testing.assert_allclose(ops.resize(x, (17, 23), mode)[0].numpy(), ref, atol=1e-5)
        # torch's own interpolation (used on CUDA) agrees
        tor = torch.nn.functional.interpolate(x, size=(17, 23), mode=mode, align_corners=False)
        np.testing.assert_allclose(tor[0].numpy(), ref, atol=1e-4)


# --- JPEG ------------------------------------------------------------------------------------

def test_quality_tables_follow_libjpeg_scaling():
    luma50, _ = quality_tables(50)
    assert luma50[0, 0] == 16 and luma50[7, 7] == 99
    luma100, chroma100 = quality_tables(100)
    assert (luma100 == 1).all() and (chroma100 == 1).all()
    luma10, _ = quality_tables(10)
    assert luma10[0, 0] == 80 and luma10.max() == 255  # 5000/10 = 500 %, clamped to baseline
    with pytest.raises(ValueError, match="quality"):
        quality_tables(0)


def test_jpeg_error_falls_as_quality_rises(faces):
    img = faces[0]
    x = torch.from_numpy(img.transpose(2, 0, 1).copy()).float()[None] / 255
    qualities = [10, 30, 50, 70, 90, 98]
    lib = [psnr(img, jpeg_libjpeg(img, q)) for q in qualities]
    tor = [psnr(img, ops.to_uint8(jpeg_torch(x, [q]))) for q in qualities]
    assert lib == sorted(lib) and tor == sorted(tor)
    assert lib[-1] - lib[0] > 5 and tor[-1] - tor[0] > 5


def test_torch_jpeg_tracks_libjpeg(faces):
    """The batched torch model against real libjpeg: within 0.1 dB-scale agreement."""
    x = torch.stack([torch.from_numpy(f.transpose(2, 0, 1).copy()).float() / 255 for f in faces])
    qs = [20, 50, 75, 95]
    out = jpeg_torch(x, qs)
    for i, q in enumerate(qs):
        lib = jpeg_libjpeg(faces[i], q)
        mine = ops.to_uint8(out[i])
        assert psnr(lib, mine) > 38, (q, psnr(lib, mine))
        # and the distortion it adds is the same amount as libjpeg's
        assert abs(psnr(faces[i], lib) - psnr(faces[i], mine)) < 1.0


def test_torch_jpeg_handles_odd_sizes_and_is_differentiable():
    x = torch.rand(2, 3, 37, 53, requires_grad=True)
    for rounding in ("ste", "cubic"):
        y = jpeg_torch(x, [40, 80], rounding=rounding)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        x.grad = None


# --- front ends --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_presets())
def test_same_preset_seed_and_id_give_the_same_bytes_and_replay_exactly(name, faces):
    deg = Degrader(name)
    lq, rec = deg(faces[1], seed=11, image_id="face-1")
    lq2, rec2 = Degrader(name)(faces[1], seed=11, image_id="face-1")
    assert rec == rec2 and lq.tobytes() == lq2.tobytes()
    stored = json.loads(json.dumps(rec))  # through JSON, as on disk
    assert Degrader.replay(faces[1], stored).tobytes() == lq.tobytes()
    assert lq.dtype == np.uint8
    assert list(lq.shape[:2]) == rec["output_size"]
    other, _ = deg(faces[1], seed=12, image_id="face-1")
    assert other.tobytes() != lq.tobytes()


@pytest.mark.parametrize("name", ["gfpgan", "realesrgan"])
def test_replay_does_not_depend_on_the_thread_setting(name, faces):
    lq, rec = Degrader(name)(faces[2], seed=3, image_id="t")
    before, cv_before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            cv2.setNumThreads(n)
            assert Degrader.replay(faces[2], rec).tobytes() == lq.tobytes()
    finally:
        torch.set_num_threads(before)
        cv2.setNumThreads(cv_before)


@pytest.mark.parametrize("name", ["gfpgan", "mgfr-severe", "realesrgan"])
def test_batched_front_end_agrees_with_the_per_image_one(name, faces):
    """Stated tolerance. With libjpeg (the CPU default) the batch is byte-identical to
    the per-image output. With the torch JPEG model (the CUDA default) a face preset stays
    within 2 8-bit levels mean absolute difference of it over the batch (one sample whose
    JPEG input is ~10 px wide can differ more: a single flipped DCT coefficient then covers
    the whole upsampled image); Real-ESRGAN's Poisson noise is
    drawn from the image entering it, so a small JPEG difference re-draws that noise and
    only the degradation level agrees (PSNR against HQ within 1.5 dB on average)."""
    x = torch.cat([ops.to_tensor(f) for f in faces])
    ids = [f"id{i}" for i in range(len(faces))]
    lq, records = BatchDegrader(name, jpeg="libjpeg")(x, seed=5, image_ids=ids)
    lq_t = BatchDegrader(name, jpeg="torch").apply(x, records)
    gaps = []
    for i, f in enumerate(faces):
        single, rec = Degrader(name)(f, seed=5, image_id=ids[i])
        assert rec == records[i]
        assert ops.to_uint8(lq[i]).tobytes() == single.tobytes()
        t = ops.to_uint8(lq_t[i])
        if name != "realesrgan":
            gaps.append(np.abs(t.astype(int) - single).mean())
        else:
            hq = cv2.resize(f, t.shape[1::-1], interpolation=cv2.INTER_AREA)
            gaps.append(psnr(hq, single) - psnr(hq, t))
    if name != "realesrgan":
        assert np.mean(gaps) <= 2.0
    else:
        assert abs(np.mean(gaps)) < 1.5


def test_batched_threads_do_not_change_the_result(faces):
    x = torch.cat([ops.to_tensor(f) for f in faces])
    a, recs = BatchDegrader("diffbir-face", threads=1)(x, seed=1, image_ids=list("abcd"))
    b = BatchDegrader("diffbir-face", threads=3).apply(x, recs)
    assert torch.equal(a, b)


def test_batched_torch_path_is_differentiable_end_to_end():
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    deg = BatchDegrader("mgfr-medium", jpeg="torch")
    records = deg.sample(0, ["a", "b"], (64, 64))
    y = apply_records(x, records, jpeg="torch")
    y.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_our_gfpgan_equals_the_opencv_reference_on_the_same_records(faces):
    """An independent per-image OpenCV implementation computes the same images."""
    for i, f in enumerate(faces):
        for seed in range(3):
            lq, rec = Degrader("gfpgan")(f, seed=seed, image_id=str(i))
            ref = reference_apply(f, rec)
            diff = np.abs(lq.astype(int) - ref)
            # color_jitter's hue is computed differently (closed form vs torchvision's HSV
            # round trip): equal within float rounding, which can flip a few 8-bit levels
            # and a JPEG block.
            assert (diff <= 1).mean() > 0.995 and psnr(lq, ref) > 45


def test_input_errors_are_clear(faces):
    deg = Degrader("gfpgan")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        deg(faces[0].astype(np.float32), 0, "a")
    _, rec = deg(faces[0], 0, "a")
    with pytest.raises(ValueError, match=r"sampled for input size \[128, 128\].*\[64, 64\]"):
        Degrader.replay(make_rgb(64, 64), rec)
    with pytest.raises(ValueError, match="2 records for a batch of 1"):
        apply_records(torch.rand(1, 3, 8, 8), [rec, rec])
    with pytest.raises(ValueError, match="jpeg must be one of"):
        BatchDegrader("gfpgan", jpeg="pil")
    with pytest.raises(ValueError, match="unknown op 'sharpen'"):
        apply_records(torch.rand(1, 3, 128, 128), [{**rec, "ops": [{"op": "sharpen"}]}])


@pytest.mark.parametrize("name", ["gfpgan", "realesrgan"])
def test_torch_op_implementations_match_the_cpu_ones(name, faces):
    """On CUDA (or with autograd) blur, resize, noise and colour jitter run as torch ops
    instead of OpenCV/NumPy; a CPU tensor that requires grad takes that same code path, so
    this checks the CUDA implementations against the CPU ones without a GPU."""
    x = torch.cat([ops.to_tensor(f) for f in faces])
    deg = BatchDegrader(name, jpeg="torch")
    records = deg.sample(2, [f"g{i}" for i in range(len(faces))], tuple(x.shape[-2:]))
    for r in records:  # Poisson noise is re-drawn from its input (see the agreement test)
        for op in r["ops"]:
            if op.get("type") == "poisson":
                op.update(type="gaussian", sigma=5.0)
    cpu = apply_records(x, records, jpeg="torch")
    torch_ops = apply_records(x.clone().requires_grad_(True), records, jpeg="torch").detach()
    diff = (cpu - torch_ops).abs() * 255
    assert diff.mean() < 0.5 and (diff <= 1.5).float().mean() > 0.99


def test_batched_front_end_keeps_the_input_dtype(faces):
    x = torch.cat([ops.to_tensor(f) for f in faces[:2]])
    ref, recs = BatchDegrader("gfpgan")(x, seed=0, image_ids=["a", "b"])
    for dt in (torch.float64, torch.bfloat16):
        y = BatchDegrader("gfpgan").apply(x.to(dt), recs)
        assert y.dtype == dt and y.shape == ref.shape
        if dt == torch.float64:  # float32 inside: the same values
            assert torch.equal(y.float(), ref)
