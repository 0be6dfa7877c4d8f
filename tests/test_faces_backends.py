"""User-weights backends on tiny random-weight models built in the test: RetinaFace
(facexlib's architecture), SCRFD and ArcFace (ONNX graphs exported from torch)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import make_rgb  # noqa: E402

import faces  # noqa: E402
from reface_core.assets import AssetNotFoundError  # noqa: E402


def _skip_if_present(asset: str) -> None:
    """The missing-weights tests only mean something where the user has no weights."""
    from reface_core.assets import find

    if find(asset) is not None:
        pytest.skip(f"{asset} is installed on this machine")


# ---------------------------------------------------------------------- RetinaFace

@pytest.fixture(scope="module")
def retinaface_weights(tmp_path_factory):
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    net = RetinaFace(network_name="mobile0.25", phase="test", device=torch.device("cpu"))
    path = tmp_path_factory.mktemp("retina") / "retinaface_tiny.pth"
    # Saved as DataParallel does ("module." prefixes): the loader must strip them.
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)
    return path, net


def test_retinaface_matches_facexlib_on_random_weights(retinaface_weights):
    path, net = retinaface_weights
    det = faces.get_detector("retinaface", model_path=str(path), network="mobile0.25", max_side=None)
    img = make_rgb(96, 128, seed=5)
    got = det.detect(img, min_score=0.0)
    with torch.no_grad():
        ref = net.detect_faces(np.ascontiguousarray(img[..., ::-1]), conf_threshold=0.0,
                               nms_threshold=0.4)
    assert len(got) == len(ref) > 0
    ref = ref[np.argsort(-ref[:, 4], kind="stable")]
    np.testing.assert_allclose([d.box for d in got], ref[:, :4], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose([d.landmarks5 for d in got], ref[:, 5:15].reshape(-1, 5, 2), atol=1e-3)
    scores = [d.score for d in got]
    assert scores == sorted(scores, reverse=True)
    assert all(d.detector == "retinaface" and d.landmarks68 is None for d in got)
    # The default confidence (0.9) is above anything random weights produce.
    assert det.detect(img) == [] or all(d.score >= 0.9 for d in det.detect(img))


def test_retinaface_downscaling_maps_back(retinaface_weights):
    import cv2

    path, net = retinaface_weights
    img = make_rgb(200, 300, seed=6)
    det = faces.get_detector("retinaface", model_path=str(path), network="mobile0.25", max_side=150)
    got = det.detect(img, min_score=0.0)
    small = cv2.resize(img, (150, 100), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        ref = net.detect_faces(np.ascontiguousarray(small[..., ::-1]), conf_threshold=0.0)
    ref = ref[np.argsort(-ref[:, 4], kind="stable")]
    assert len(got) == len(ref) > 0
    # Detections come back in the coordinates of the full-size input.
    np.testing.assert_allclose([d.box for d in got], ref[:, :4] * 2, rtol=1e-4, atol=1e-2)


def test_retinaface_refuses_unsafe_pickles(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, path)
    det = faces.get_detector("retinaface", model_path=str(path), network="mobile0.25")
    with pytest.raises(ValueError, match="weights-only"):
        det.detect(make_rgb(64, 64))


def test_retinaface_wrong_architecture_is_a_clear_error(retinaface_weights):
    path, _ = retinaface_weights
    det = faces.get_detector("retinaface", model_path=str(path), network="resnet50")
    with pytest.raises(ValueError, match="do not fit RetinaFace-resnet50"):
        det.detect(make_rgb(64, 64))


def test_retinaface_without_weights_raises_asset_not_found():
    _skip_if_present("retinaface-resnet50")
    det = faces.get_detector("retinaface")
    with pytest.raises(AssetNotFoundError, match="retinaface-resnet50"):
        det.detect(make_rgb(64, 64))


# ---------------------------------------------------------------------- SCRFD

class _TinyScrfd(torch.nn.Module):
    """SCRFD's output layout: per stride (8, 16, 32) and 2 anchors, scores (N, 1),
    box distances (N, 4), keypoint offsets (N, 10), in units of the stride."""

    def __init__(self):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(3, 2 * 15, s, s) for s in (8, 16, 32))

    def forward(self, x):
        scores, boxes, kps = [], [], []
        for head in self.heads:
            y = head(x)  # (1, 30, H/s, W/s)
            y = y.permute(0, 2, 3, 1).reshape(-1, 15)  # anchors fastest, as SCRFD lays them out
            scores.append(torch.sigmoid(y[:, :1]))
            boxes.append(torch.nn.functional.softplus(y[:, 1:5]) + 0.5)
            kps.append(y[:, 5:15])
        return (*scores, *boxes, *kps)


@pytest.fixture(scope="module")
def scrfd_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("scrfd") / "scrfd_tiny.onnx"
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    torch.onnx.export(_TinyScrfd().eval(), torch.zeros(1, 3, 128, 128), str(path),
                      input_names=["input.1"], output_names=names, dynamo=False)
    return path


def test_scrfd_on_a_tiny_graph(scrfd_path):
    det = faces.get_detector("scrfd", model_path=str(scrfd_path), input_size=(128, 128))
    img = make_rgb(100, 160, seed=7)
    found = det.detect(img, min_score=0.0)
    assert found, "random weights give low-confidence boxes at threshold 0"
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for d in found:
        assert d.detector == "scrfd" and d.landmarks5.shape == (5, 2) and d.box.shape == (4,)
        assert d.box[2] > d.box[0] and d.box[3] > d.box[1]
    strict = det.detect(img, min_score=float(np.median(scores)))
    assert 0 < len(strict) < len(found) + 1
    assert all(d.score >= np.median(scores) for d in strict)


def test_scrfd_missing_file_is_asset_not_found(tmp_path):
    det = faces.get_detector("scrfd", model_path=str(tmp_path / "none.onnx"))
    with pytest.raises(AssetNotFoundError, match="insightface-antelopev2"):
        det.detect(make_rgb(64, 64))
    _skip_if_present("insightface-buffalo_l")
    with pytest.raises(AssetNotFoundError, match="insightface-buffalo_l"):
        faces.get_detector("scrfd", pack="buffalo_l").detect(make_rgb(64, 64))


# ---------------------------------------------------------------------- ArcFace

@pytest.fixture(scope="module")
def arcface_path(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, 8), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 14 * 14, 32)).eval()
    path = tmp_path_factory.mktemp("arcface") / "arcface_tiny.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 112, 112), str(path), input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}},
                      dynamo=False)
    return path, net


def test_arcface_embedder_on_a_tiny_graph(arcface_path):
    path, net = arcface_path
    emb = faces.get_embedder("arcface-buffalo_l", model_path=str(path))
    assert emb.name == "arcface-buffalo_l"
    crops = [make_rgb(256, 256, seed=s) for s in range(3)]
    v = emb.embed(crops)
    assert v.shape == (3, 32) and emb.dim == 32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(emb.embed(crops[2:])[0], v[2], atol=1e-5)
    # Same numbers as the torch network on the ArcFace crop, normalised the insightface way.
    x = (np.stack(emb.crops(crops)).astype(np.float32) - 127.5) / 127.5
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(v, ref, atol=1e-4)


def test_arcface_crop_puts_ffhq_landmarks_on_the_arcface_template(arcface_path):
    from faces.alignment import ffhq_template, template, transform_points, umeyama

    m = umeyama(ffhq_template(512), template("arcface", 112))
    assert np.abs(transform_points(m, ffhq_template(512)) - template("arcface")).max() < 3


def test_arcface_without_weights_raises_asset_not_found():
    _skip_if_present("insightface-antelopev2")
    with pytest.raises(AssetNotFoundError, match="insightface-antelopev2"):
        faces.get_embedder("arcface-antelopev2").embed([make_rgb(128, 128)])


# ---------------------------------------------------------------------- ParseNet masks

def test_parsing_mask_and_paste_back_with_it(tmp_path):
    from facexlib.parsing.parsenet import ParseNet

    from faces.parsing import FaceParser

    torch.manual_seed(0)
    path = tmp_path / "parsenet_tiny.pth"
    torch.save(ParseNet(in_size=64, out_size=64, parsing_ch=19).state_dict(), path)
    parser = FaceParser(model_path=str(path), size=64)
    face = make_rgb(96, 96, seed=3)
    lab = parser.labels(face)
    assert lab.shape == (96, 96) and lab.max() < 19
    m = parser.mask(face)
    assert m.shape == (96, 96) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    assert m[0].max() == 0 and m[:, -1].max() == 0  # never touches the crop border

    img = make_rgb(200, 200, seed=4)
    crop, mat = faces.similarity_align(img, np.array([[80, 90], [120, 90], [100, 110], [85, 130],
                                                      [115, 130]], np.float32), "ffhq", 96)
    white = np.full_like(crop, 255)
    assert np.array_equal(faces.paste_back(img, white, mat, face_mask=np.zeros((96, 96), np.float32)), img)
    full = faces.paste_back(img, white, mat, face_mask=np.ones((96, 96), np.float32))
    assert full[100, 100].min() == 255
    with pytest.raises(ValueError, match="does not match"):
        faces.paste_back(img, white, mat, face_mask=np.ones((10, 10), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        faces.paste_back(img, white, mat, face_mask=np.full((96, 96), 2, np.float32))


def test_parsing_without_weights_raises_asset_not_found():
    from faces.parsing import FaceParser

    _skip_if_present("facexlib-parsenet")
    with pytest.raises(AssetNotFoundError, match="facexlib-parsenet"):
        FaceParser().mask(make_rgb(64, 64))
