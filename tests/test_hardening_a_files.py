"""Files and file names (issue 14, items 3, 7 and 9): written files keep the umask's mode;
a file name that is not UTF-8 is processed, kept exactly and named; a full disk is one
error line in the faces command line."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest

from reface_core.atomic import write_bytes_atomic, write_json_atomic
from reface_core.fsnames import name_id, path_from_text, path_text, shown

NON_UTF8 = b"caf\xe9_\xff.png"          # Latin-1 bytes: not valid UTF-8


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_keep_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")       # what open() gives: the reference
    a = write_bytes_atomic(tmp_path / "a.bin", b"x")
    b = write_json_atomic(tmp_path / "sub" / "b.json", {"x": 1})
    assert _mode(a) == _mode(b) == _mode(plain) == 0o666 & ~mask


@pytest.mark.realdata
@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_synth_outputs_are_group_readable_under_the_umask(data_root, tmp_path, umask, mask):
    from degradations.cli import main
    umask(mask)
    src = tmp_path / "hq"
    src.mkdir()
    shutil.copy(data_root / "identities_512/00001/gt.png", src / "a.png")
    out = tmp_path / "lq"
    assert main(["synth", "--input", str(src), "-o", str(out), "--quiet"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"a.png", "a.json", "params.parquet", "run.json"}
    assert {oct(_mode(p)) for p in files} == {oct(0o666 & ~mask)}


def test_name_helpers_are_reversible_and_utf8():
    raw = os.fsdecode(b"/photos/" + NON_UTF8)
    text = path_text(raw)
    text.encode("utf-8")   # valid UTF-8
    assert path_from_text(text) == Path(raw)
    assert os.fsencode(path_from_text(text)) == b"/photos/" + NON_UTF8
    assert name_id(os.fsdecode(NON_UTF8)) == "caf%E9_%FF.png"
    assert shown(raw) == "/photos/caf\\xe9_\\xff.png"
    # UTF-8 names are left alone everywhere.
    assert path_text("/photos/café.png") == "/photos/café.png"
    assert name_id("café.png") == "café.png"


def _non_utf8_folder(data_root: Path, folder: Path) -> Path:
    """Two real faces, one under a name that is not UTF-8 (made with bytes)."""
    folder.mkdir(parents=True)
    shutil.copy(data_root / "identities_512/00001/gt.png", folder / "plain.png")
    odd = os.path.join(os.fsencode(folder), NON_UTF8)
    with open(odd, "wb") as f:
        f.write((data_root / "identities_512/00027/gt.png").read_bytes())
    return Path(os.fsdecode(odd))


@pytest.mark.realdata
def test_synth_processes_a_file_whose_name_is_not_utf8(data_root, tmp_path, capsys):
    from degradations.cli import main
    odd = _non_utf8_folder(data_root, tmp_path / "hq")
    # And one unreadable file under such a name: its error row must name it.
    broken = os.path.join(os.fsencode(tmp_path / "hq"), b"broken\xff.png")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    out = tmp_path / "lq"
    assert main(["synth", "--input", str(tmp_path / "hq"), "-o", str(out),
                 "--quiet"]) == 1     # one input failed: the documented exit status
    table = pd.read_parquet(out / "params.parquet").set_index("image_id")
    assert sorted(table.index) == ["broken%FF", "caf%E9_%FF", "plain"]
    row = table.loc["caf%E9_%FF"]
    assert row["status"] == "ok" and (out / row["lq_path"]).is_file()
    assert path_from_text(row["input_path"]) == odd and odd.is_file()
    bad = table.loc["broken%FF"]
    assert bad["status"] == "error" and "broken\\xff.png" in bad["error"]
    assert "error: broken%FF: " in capsys.readouterr().out
    # A rerun resumes (nothing redone) instead of failing the same way; it still exits 1
    # while the folder holds the failed row.
    assert main(["synth", "--input", str(tmp_path / "hq"), "-o", str(out),
                 "--quiet"]) == 1
    assert "3 inputs: 0 degraded, 0 failed, 3 already done" in capsys.readouterr().out
    assert len(pd.read_parquet(out / "params.parquet")) == 3


@pytest.mark.realdata
def test_reface_hq_build_processes_a_file_whose_name_is_not_utf8(data_root, tmp_path):
    from reface_hq import BuildConfig, FolderSource, build
    odd = _non_utf8_folder(data_root, tmp_path / "photos")
    stats = build(BuildConfig(
        sources=[FolderSource(str(tmp_path / "photos"))], out=str(tmp_path / "ds"),
        output_size=256, transform_size=512, align_padding=False, progress=False,
        musiq="off", min_photos=1))
    assert stats["photos_in"] == 2
    rows = pd.concat([pd.read_parquet(tmp_path / "ds" / name)
                      for name in ("manifest.parquet", "dropped.parquet")
                      if (tmp_path / "ds" / name).exists()])
    origins = set(rows["origin"])
    assert "photos/caf%E9_%FF.png" in origins and "photos/plain.png" in origins
    assert odd.is_file()  # the source file itself is untouched


@pytest.mark.realdata
@pytest.mark.parametrize("where", ["crop", "record"])
def test_a_full_disk_is_one_error_line_in_the_faces_command(data_root, tmp_path, capsys,
                                                            monkeypatch, where):
    import reface_core.atomic
    import reface_core.imageio
    from faces.cli import main
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(data_root / "unaligned_named/examples/obama_small.jpg", src / "a.jpg")

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    target = (reface_core.imageio, "save_image") if where == "crop" else \
        (reface_core.atomic, "write_json_atomic")
    monkeypatch.setattr(*target, full)
    assert main(["align", str(src), "-o", str(tmp_path / "crops"), "--size", "64", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No space left on device: "), err
    assert str(tmp_path / "crops") in err[0]


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from reface_core.atomic import atomic_dir, current_umask
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
