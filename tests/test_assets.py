import hashlib

import pytest

from reface_core import assets as A
from reface_core.assets_cli import main as assets_main


def test_registry_covers_the_field():
    names = {a.name for a in A.list_assets()}
    for expected in ["dlib-mmod-detector", "dlib-landmarks-68", "dlib-landmarks-5",
                     "dlib-face-descriptor", "age-onnx", "gender-onnx", "insightface-antelopev2",
                     "insightface-buffalo_l", "retinaface-resnet50", "blip-caption-base",
                     "blip-vqa-base", "sd21-base", "codeformer", "pyiqa-musiq-koniq"]:
        assert expected in names
    for a in A.list_assets():
        assert a.license and a.description and a.used_by


def test_offline_defaults_found_in_packages_and_checksums_match():
    for name in ["dlib-mmod-detector", "dlib-landmarks-68", "dlib-landmarks-5",
                 "dlib-face-descriptor", "age-onnx", "gender-onnx"]:
        path, digest, ok = A.verify(name)
        assert path.is_file() and ok is True, name


def test_missing_asset_error_names_every_place(tmp_path):
    with pytest.raises(A.AssetNotFoundError) as e:
        A.resolve("codeformer")
    msg = str(e.value)
    assert "'codeformer'" in msg and "codeformer.pth" in msg
    assert "$REFACE_ASSET_CODEFORMER" in msg
    assert str(A.reface_home() / "codeformer" / "codeformer.pth") in msg
    assert "https://github.com/sczhou/CodeFormer" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_wrong_explicit_path_is_an_error(tmp_path):
    with pytest.raises(A.AssetNotFoundError, match="explicit path"):
        A.resolve("dlib-landmarks-5", path=tmp_path / "nope.dat")


def test_search_order_env_then_home(tmp_path, monkeypatch):
    f = tmp_path / "mine.pth"
    f.write_bytes(b"weights")
    monkeypatch.setenv("REFACE_ASSET_CODEFORMER", str(f))
    assert A.resolve("codeformer") == f
    monkeypatch.delenv("REFACE_ASSET_CODEFORMER")
    home_file = A.reface_home() / "codeformer" / "codeformer.pth"
    home_file.parent.mkdir(parents=True)
    home_file.write_bytes(b"w")
    assert A.resolve("codeformer") == home_file


def test_dir_asset_needs_its_required_files(tmp_path, monkeypatch):
    d = tmp_path / "antelopev2"
    d.mkdir()
    (d / "glintr100.onnx").write_bytes(b"x")
    monkeypatch.setenv("REFACE_ASSET_INSIGHTFACE_ANTELOPEV2", str(d))
    # An override that points at an incomplete pack is an error, not a silent fallback.
    with pytest.raises(A.AssetIntegrityError, match="lacks scrfd_10g_bnkps.onnx"):
        A.find("insightface-antelopev2")
    (d / "scrfd_10g_bnkps.onnx").write_bytes(b"x")
    assert A.find("insightface-antelopev2") == d


def test_unknown_asset_suggests():
    with pytest.raises(A.UnknownAssetError, match="did you mean 'codeformer'"):
        A.get_asset("codeformr")


def test_download_verified_and_atomic(file_server, monkeypatch):
    root, base = file_server
    payload = b"pretend weights" * 100
    (root / "w.pth").write_bytes(payload)
    good = A.Asset(name="test-good", filename="w.pth", subdir="t", description="d",
                   used_by=("tests",), license="none", url=f"{base}/w.pth",
                   sha256=hashlib.sha256(payload).hexdigest()[:8])
    bad = A.Asset(name="test-bad", filename="w2.pth", subdir="t", description="d",
                  used_by=("tests",), license="none", url=f"{base}/w.pth", sha256="deadbeef")
    monkeypatch.setitem(A._ASSETS, good.name, good)
    monkeypatch.setitem(A._ASSETS, bad.name, bad)
    with pytest.raises(A.AssetNotFoundError):
        A.resolve("test-good")  # downloads are opt-in
    p = A.resolve("test-good", allow_download=True)
    assert p.read_bytes() == payload
    with pytest.raises(A.AssetChecksumError, match="does not match"):
        A.fetch("test-bad", progress=False)
    assert not list((A.reface_home() / "t").glob("w2*"))  # nothing half-written left


def test_cli_list_and_where(capsys):
    assert assets_main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    for a in A.list_assets():
        assert a.name in out
    assert "present" in out and "missing" in out and "searched" in out
    assert assets_main(["where", "sd21-base"]) == 0
    out = capsys.readouterr().out
    assert "stabilityai/stable-diffusion-2-1-base" in out
    assert "$REFACE_HOME cache" in out


def test_cli_missing_verify_fails(capsys):
    assert assets_main(["verify", "codeformer"]) == 1
    assert "MISSING" in capsys.readouterr().err
    assert assets_main(["verify", "dlib-landmarks-5"]) == 0
    assert assets_main(["where", "nope"]) == 2


def test_resolve_member_of_folder_asset(tmp_path, monkeypatch):
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    for f in ("w600k_r50.onnx", "det_10g.onnx"):
        (pack / f).write_bytes(b"x")
    # an explicit file, an explicit folder, then the resolver's own search
    assert A.resolve_member("insightface-buffalo_l", "det_10g.onnx", pack / "det_10g.onnx") == \
        pack / "det_10g.onnx"
    assert A.resolve_member("insightface-buffalo_l", "det_10g.onnx", pack) == pack / "det_10g.onnx"
    with pytest.raises(A.AssetNotFoundError, match="explicit path"):
        A.resolve_member("insightface-buffalo_l", "det_10g.onnx", tmp_path / "none.onnx")
    monkeypatch.setenv("REFACE_ASSET_INSIGHTFACE_BUFFALO_L", str(pack))
    assert A.resolve_member("insightface-buffalo_l", "w600k_r50.onnx") == pack / "w600k_r50.onnx"


def test_downloaded_asset_keeps_the_umask_mode(file_server, monkeypatch):
    """A shared cache (umask 002) must be readable by the group, not mkstemp's 0600."""
    import os
    import stat
    root, base = file_server
    payload = b"weights for a group" * 10
    (root / "g.pth").write_bytes(payload)
    asset = A.Asset(name="test-group", filename="g.pth", subdir="t", description="d",
                    used_by=("tests",), license="none", url=f"{base}/g.pth",
                    sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(A._ASSETS, asset.name, asset)
    old = os.umask(0o002)
    try:
        path = A.fetch("test-group", progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
