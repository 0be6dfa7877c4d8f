"""MGFRPipeline tests: tiny preset, random weights, CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_rgb

from mgfr.model import MGFRModel
from mgfr.pipeline import MGFRPipeline, NoFaceError, load_pipeline

PROMPTS = dict(prompt="a photo of a smiling man", negative_attribute_prompt="woman, child",
               negative_quality_prompt="blurry, noisy")


def _randomize(module, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP workers
    # spinning against other processes make every call 10x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained_adapters(tmp_path_factory):
    """An adapter folder with non-zero ("trained") weights on the tiny base."""
    from mgfr.base import load_base

    model = MGFRModel.from_base(load_base("tiny"))
    _randomize(model.adapter)
    return model.save_adapters(tmp_path_factory.mktemp("run") / "adapters", stage=2, step=5)


@pytest.fixture(scope="module")
def pipe(trained_adapters):
    return load_pipeline(adapters=str(trained_adapters))


def _faces(n, size=96, seed=0):
    return [make_rgb(size, size, seed=seed + i) for i in range(n)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shapes_determinism_and_references_matter(pipe):
    face, (r1, r2) = _faces(1)[0], _faces(2, 128, seed=5)
    ids = np.random.default_rng(0).standard_normal((1, 2, 128)).astype(np.float32)
    kw = dict(num_inference_steps=2, **PROMPTS)
    a = pipe(face, references=[r1, r2], id_embeds=ids, generator=_gen(0), **kw)
    b = pipe(face, references=[r1, r2], id_embeds=ids, generator=_gen(0), **kw)
    assert a.images[0].shape == (64, 64, 3) and a.images[0].dtype == np.uint8
    assert np.array_equal(a.images[0], b.images[0])  # deterministic for a seed
    c = pipe(face, references=[r1, r2], id_embeds=ids, generator=_gen(1), **kw)
    assert not np.array_equal(a.images[0], c.images[0])
    no_ref = pipe(face, generator=_gen(0), **kw)
    assert not np.array_equal(a.images[0], no_ref.images[0])
    other_id = pipe(face, references=[r1, r2], id_embeds=-ids, generator=_gen(0), **kw)
    assert not np.array_equal(a.images[0], other_id.images[0])
    # A batch of two faces with different numbers of references (padded and masked).
    batch = pipe(_faces(2), references=[[r1], [r1, r2]],
                 id_embeds=np.concatenate([np.pad(ids[:, :1], ((0, 0), (0, 1), (0, 0))), ids]),
                 generator=_gen(0), **kw)
    assert len(batch.images) == 2 and all(im.shape == (64, 64, 3) for im in batch.images)
    assert batch.prompts[1] == (PROMPTS["prompt"], PROMPTS["negative_attribute_prompt"],
                                PROMPTS["negative_quality_prompt"])


def _plain_cfg_latents(pipe, face, prompt, g, steps, seed):
    """Classifier-free guidance written out by hand: batch [uncond, cond], one UNet call."""
    from mgfr.pipeline import resize_square

    model = MGFRModel(pipe.unet, pipe.adapter)
    lq = pipe._encode_latents([resize_square(face, pipe.resolution)])
    cond = model.prepare(lq)
    ehs = pipe._encode_text(["", prompt])
    pipe.scheduler.set_timesteps(steps)
    latents = torch.randn((1, 4, 32, 32), generator=_gen(seed)) * pipe.scheduler.init_noise_sigma
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.scale_model_input(latents, t)
            eu, ep = model.step(x, t, ehs, cond, num_branches=2).chunk(2)
            latents = pipe.scheduler.step(eu + g * (ep - eu), t, latents, return_dict=False)[0]
    return latents


def test_zero_lambdas_give_exactly_plain_cfg(pipe):
    face = _faces(1)[0]
    kw = dict(num_inference_steps=3, guidance_scale=3.0, output_type="latent", **PROMPTS)
    got = pipe(face, lambda_na=0.0, lambda_nq=0.0, generator=_gen(4), **kw).images[0]
    want = _plain_cfg_latents(pipe, face, PROMPTS["prompt"], 3.0, 3, seed=4)[0]
    assert torch.equal(got, want)
    steered = pipe(face, lambda_na=1.0, lambda_nq=0.5, generator=_gen(4), **kw).images[0]
    assert not torch.equal(steered, want)


def test_step_invariant_work_runs_once_per_call(pipe):
    calls = {}

    def counter(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1
        return hook

    modules = {"vae_encoder": pipe.vae.encoder, "text_encoder": pipe.text_encoder,
               "rlf": pipe.adapter.rlf, "id_proj": pipe.adapter.id_proj, "unet": pipe.unet,
               "adapter": pipe.adapter}
    handles = [m.register_forward_hook(counter(n)) for n, m in modules.items()]
    face, refs = _faces(1)[0], _faces(2, seed=9)
    ids = np.zeros((1, 2, 128), np.float32)
    try:
        counts = []
        for steps in (2, 5):
            calls.clear()
            pipe(face, references=refs, id_embeds=ids, num_inference_steps=steps,
                 generator=_gen(0), **PROMPTS)
            counts.append(dict(calls))
    finally:
        for h in handles:
            h.remove()
    for c, steps in zip(counts, (2, 5), strict=False):
        # once: the LQ latents and the references' latents (one batch), one batch of four
        # prompts, RLF and identity tokens; per step: one adapter call, one UNet call.
        assert c == {"vae_encoder": 2, "text_encoder": 1, "rlf": 1, "id_proj": 1,
                     "unet": steps, "adapter": steps}, c


def test_bad_inputs_are_clear_errors(pipe):
    face = _faces(1)[0]
    with pytest.raises(ValueError, match="must be square"):
        pipe(make_rgb(64, 48), **PROMPTS)
    with pytest.raises(ValueError, match=r"expected a uint8 \(H, W, 3\)"):
        pipe(face.astype(np.float32), **PROMPTS)
    with pytest.raises(ValueError, match="at least 16 px"):
        pipe(make_rgb(8, 8), **PROMPTS)
    with pytest.raises(ValueError, match="got 2 lists for 1 images"):
        pipe([face], references=[[face], [face]], **PROMPTS)
    with pytest.raises(ValueError, match="lambda_na must be a finite number >= 0"):
        pipe(face, lambda_na=-1, **PROMPTS)
    with pytest.raises(ValueError, match=r"id_embeds must be \(B, R, 128\)"):
        pipe(face, references=[face], id_embeds=np.zeros((1, 1, 512), np.float32), **PROMPTS)
    with pytest.raises(ValueError, match="different embedders"):
        pipe.set_embedder("arcface-antelopev2")
    with pytest.raises(ValueError, match="did you mean 'ddim'"):
        pipe.set_scheduler("dddim")
    with pytest.raises(NoFaceError, match="photo: no face found"):
        pipe.restore_photo(make_rgb(160, 200), **PROMPTS)


def test_missing_weights_are_a_clear_error():
    from reface_core.assets import AssetNotFoundError

    with pytest.raises(AssetNotFoundError, match="sd21-base"):
        load_pipeline(base="sd21-base")


def test_diffusers_layout_round_trip_and_record(pipe, trained_adapters, tmp_path):
    face = _faces(1)[0]
    kw = dict(num_inference_steps=2, generator=None, **PROMPTS)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "MGFRPipeline"
    assert index["adapter"] == ["mgfr.adapters", "DualControlAdapter"]
    back = MGFRPipeline.from_pretrained(tmp_path / "pipe")
    kw["generator"] = _gen(2)
    a = pipe(face, **kw).images[0]
    kw["generator"] = _gen(2)
    assert np.array_equal(back(face, **kw).images[0], a)
    rec = pipe.config_for_record(num_inference_steps=2, lambda_na=0.5)
    json.dumps(rec)
    assert rec["base"] == "tiny" and rec["adapters"] == str(trained_adapters)
    assert rec["num_inference_steps"] == 2 and rec["lambda_na"] == 0.5
    assert rec["scheduler"] == "DDIMScheduler" and rec["dtype"] == "float32"
    assert rec["embedder"] == "dlib" and len(rec["adapters_sha256"]) == 64
    untrained = load_pipeline(base="tiny")
    assert untrained.config_for_record()["adapters_sha256"] != rec["adapters_sha256"]


def test_save_pretrained_from_pretrained_is_bit_exact(pipe, tmp_path):
    """Every tensor of every component, the tokenizer, the scheduler and the pipeline config
    come back identical from safetensors alone, and so does a restoration that runs all
    four guidance branches and the reference branch."""
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for f in files), files
    for part in ("unet", "vae", "adapter"):
        assert f"{part}/diffusion_pytorch_model.safetensors" in files
    assert "text_encoder/model.safetensors" in files
    back = MGFRPipeline.from_pretrained(folder, use_safetensors=True)
    assert type(back.adapter).__name__ == "DualControlAdapter"
    for part in ("unet", "vae", "text_encoder", "adapter"):
        a, b = getattr(pipe, part).state_dict(), getattr(back, part).state_dict()
        assert a.keys() == b.keys(), part
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{part}.{k}"
    def public(cfg):
        return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
    assert public(back.config) == public(pipe.config)
    assert public(back.adapter.config) == public(pipe.adapter.config)
    assert type(back.scheduler) is type(pipe.scheduler)
    assert public(back.scheduler.config) == public(pipe.scheduler.config)
    assert back.tokenizer.get_vocab() == pipe.tokenizer.get_vocab()
    text = [PROMPTS["prompt"], "blurry, noisy, jpeg artifacts"]
    assert back.tokenizer(text, padding="max_length").input_ids == \
        pipe.tokenizer(text, padding="max_length").input_ids
    assert back.adapters_hash() == pipe.adapters_hash()
    face, refs = _faces(1)[0], _faces(2, 128, seed=7)
    ids = np.random.default_rng(1).standard_normal((1, 2, 128)).astype(np.float32)
    kw = dict(references=[refs], id_embeds=ids, num_inference_steps=3, guidance_scale=3.0,
              lambda_na=0.5, lambda_nq=0.5, **PROMPTS)
    a = pipe(face, generator=_gen(4), output_type="latent", **kw).images[0]
    b = back(face, generator=_gen(4), output_type="latent", **kw).images[0]
    assert torch.equal(a, b)
    assert np.array_equal(pipe(face, generator=_gen(4), **kw).images[0],
                          back(face, generator=_gen(4), **kw).images[0])


@pytest.mark.realdata
def test_whole_photo_keeps_pixels_outside_the_faces(pipe, data_root):
    import faces
    from reface_core.imageio import load_image

    photo = load_image(data_root / "unaligned_named" / "examples" / "obama.jpg")
    ref = load_image(data_root / "unaligned_named" / "examples" / "obama2.jpg")
    res = pipe.restore_photo(photo, references=[ref], upscale=1.5, num_inference_steps=2,
                             generator=_gen(0), **PROMPTS)
    import cv2

    up = cv2.resize(photo, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)
    assert res.image.shape == up.shape and len(res.faces) >= 1
    covered = np.zeros(up.shape[:2], bool)
    for rec in res.faces:
        # A black face pasted on white marks every pixel the soft mask touches (255 * mask
        # >= 0.5); everywhere else the paste must leave the photo bit-identical.
        black = np.zeros_like(rec["restored"])
        pasted = faces.paste_back(np.full_like(up, 255), black, np.array(rec["matrix"]))
        covered |= pasted[..., 0] < 255
    assert 0.005 < covered.mean() < 0.9
    assert np.array_equal(res.image[~covered], up[~covered])
    assert not np.array_equal(res.image[covered], up[covered])
    with pytest.raises(NoFaceError, match="reference 0: no face found in the reference"):
        pipe.restore_photo(photo, references=[make_rgb(200, 160)], **PROMPTS)
