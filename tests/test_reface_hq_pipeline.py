"""Unit tests of reface_hq: schema, executor/resume, sources, stages, dedupe, identities,
split, dataset writing, loaders, export. Synthetic data only (real photos: realdata file)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_rgb

from reface_core.imageio import save_image
from reface_hq import schema
from reface_hq.build import read_exclusion
from reface_hq.dedupe import Dedupe
from reface_hq.executor import LocalExecutor, RayExecutor, get_executor
from reface_hq.identity import IdentityGroup, SplitByIdentity, cluster
from reface_hq.sources import (
    FolderSource,
    HFSource,
    SourceError,
    URLListSource,
    parse_source,
)
from reface_hq.stage_protocol import Stage
from reface_hq.stages import (
    Decode,
    Quality,
    colorfulness,
    is_grayscale,
    laplacian_variance,
)

# --- schema and the stage protocol ----------------------------------------------------

@dataclasses.dataclass
class AddLength(Stage):
    """Test stage: records len(origin) in width, drops origins containing 'bad',
    splits origins containing 'pair' into two face rows."""

    name = "add_length"
    fail_after: int | None = None   # raise (a simulated crash) on this many-th call

    def process_row(self, row):
        if "bad" in row["origin"]:
            return [schema.drop(row, self.name, "bad_origin", "origin contains 'bad'")]
        n = 2 if "pair" in row["origin"] else 1
        return [dict(row, width=len(row["origin"]), face_id=f"{row['row_id']}-{k}", face_index=k)
                for k in range(n)]


@dataclasses.dataclass
class Crashing(Stage):
    name = "crashing"
    marker: str = ""
    crash_on: str = ""

    def process_row(self, row):
        import os
        if row["origin"] == self.crash_on and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise KeyboardInterrupt("simulated kill")
        return [dict(row, height=7)]


def _rows(n):
    names = [f"img{i}{'-bad' if i % 5 == 3 else ''}{'-pair' if i % 7 == 2 else ''}"
             for i in range(n)]
    return [schema.new_row(row_id=f"r{i:03d}", source="t", origin=o) for i, o in enumerate(names)]


@pytest.mark.parametrize("kind", ["list", "arrow", "pandas"])
def test_stage_answers_in_the_batch_kind_it_got(kind):
    rows = _rows(6)
    batch = {"list": rows, "arrow": schema.to_table(rows),
             "pandas": schema.to_table(rows).to_pandas()}[kind]
    out = AddLength()(batch)
    assert type(out) is type(batch)
    got = schema.to_rows(out)
    assert [r["status"] for r in got] == ["ok", "ok", "ok", "ok", "bad_origin", "ok", "ok"]
    assert got[4]["dropped_at"] == "add_length" and got[4]["error"]
    assert [r["face_id"] for r in got[2:4]] == ["r002-0", "r002-1"]


def test_new_row_rejects_unknown_columns():
    with pytest.raises(ValueError, match="unknown row columns"):
        schema.new_row(not_a_column=1)


def test_local_executor_resumes_without_duplicates(tmp_path):
    rows = _rows(23)
    ref, reports = LocalExecutor(shard_size=4, progress=False).run(
        [AddLength(), Crashing()], rows, tmp_path / "ref")
    assert reports[0].dropped == {"bad_origin": 4} and reports[1].rows_in == 26
    crash = Crashing(marker=str(tmp_path / "crashed"), crash_on="img14")
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(shard_size=4, progress=False).run([AddLength(), crash], rows, work)
    out, reports = LocalExecutor(shard_size=4, progress=False).run([AddLength(), crash], rows, work)
    # Crashing's config differs from the reference run only by marker/crash_on, so compare
    # the rows, not the folders.
    assert [(r["face_id"], r["status"], r["width"]) for r in out] == \
        [(r["face_id"], r["status"], r["width"]) for r in ref]
    assert len({r["face_id"] for r in out if r["face_id"]}) == sum(1 for r in out if r["face_id"])
    assert reports[0].reused_shards == 6           # stage 1 finished before the crash
    assert 0 < reports[1].reused_shards < 6        # stage 2 resumed mid-way
    # A third run recomputes nothing.
    _, again = LocalExecutor(shard_size=4, progress=False).run([AddLength(), crash], rows, work)
    assert [r.reused_shards for r in again] == [6, 6]


def test_overwrite_and_redo_recompute_the_right_shards(tmp_path):
    """``overwrite`` recomputes every shard; ``redo`` the shards holding a matching row
    dropped at a stage, at that stage and every later one; a plain rerun nothing."""
    rows = _rows(12)                     # 'bad' rows: 3 and 8, in shards 0 and 2 of 3
    ex = LocalExecutor(shard_size=4, progress=False)
    ref, _ = ex.run([AddLength()], rows, tmp_path / "w")
    out, again = ex.run([AddLength()], rows, tmp_path / "w")
    assert out == ref and [r.reused_shards for r in again] == [3]
    _, forced = ex.run([AddLength()], rows, tmp_path / "w", overwrite=True)
    assert [r.reused_shards for r in forced] == [0]
    asked = []

    def redo(row):
        asked.append(row["origin"])
        return row["origin"] == "img8-bad"
    out, retried = ex.run([AddLength()], rows, tmp_path / "w", redo=redo)
    assert out == ref
    assert retried[0].reused_shards == 2            # only the shard of img8-bad
    assert sorted(set(asked)) == ["img3-bad", "img8-bad"]  # rows dropped at the stage only

    class Second(AddLength):
        name = "second"
    fresh, _ = ex.run([AddLength(), Second()], rows, tmp_path / "w2")
    out, two = ex.run([AddLength(), Second()], rows, tmp_path / "w2",
                      redo=lambda r: r["origin"] == "img8-bad")
    assert [r.reused_shards for r in two] == [2, 2]  # redone at stage 1 and so at stage 2
    assert out == fresh


def test_local_executor_process_pool_matches_inline(tmp_path):
    rows = _rows(10)
    a, _ = LocalExecutor(workers=1, shard_size=3, progress=False).run([AddLength()], rows,
                                                                        tmp_path / "a")
    b, _ = LocalExecutor(workers=2, shard_size=3, progress=False).run([AddLength()], rows,
                                                                        tmp_path / "b")
    assert a == b


def test_executor_options_are_checked():
    with pytest.raises(ValueError, match="workers"):
        LocalExecutor(workers=0)
    with pytest.raises(ValueError, match="unknown executor"):
        get_executor("spark")


@pytest.mark.slow
def test_ray_executor_runs_the_same_stage_functions(tmp_path):
    pytest.importorskip("ray", reason="Ray Data is an optional extra: pip install '.[ray]'")
    # A package stage (Ray workers import it by name; test-module classes are not importable).
    for k in range(6):
        save_image(tmp_path / "src" / f"{k}.png", make_rgb(60 + 20 * k, 120, seed=k))
    (tmp_path / "src" / "broken.png").write_bytes(b"\x89PNG broken")
    rows = FolderSource(str(tmp_path / "src")).rows()
    stages = [Decode(min_source_side=100)]
    local, _ = LocalExecutor(shard_size=2, progress=False).run(stages, rows, tmp_path / "w")
    remote, reports = RayExecutor(shard_size=2, num_cpus=1, progress=False).run(
        stages, rows, tmp_path / "w")
    def key(r):
        return r["row_id"]
    assert sorted(remote, key=key) == sorted(local, key=key)
    assert reports[0].dropped == {"source_too_small": 2, "decode_error": 1}


# --- sources --------------------------------------------------------------------------

@pytest.fixture
def photo_tree(tmp_path):
    root = tmp_path / "photos"
    for person in ("alice", "bob"):
        for k in range(2):
            save_image(root / person / "set1" / f"{person}_{k}.png", make_rgb(40, 40, seed=k))
    save_image(root / "loose.jpg", make_rgb(40, 40, seed=9))
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_source_identity_from_folder_level_and_regex(photo_tree):
    rows = FolderSource(str(photo_tree), identity="folder", folder_level=0).rows()
    # notes.txt is not an image: a status row, not a silent skip.
    assert [(r["origin"], r["status"]) for r in rows if r["status"] != "ok"] == [
        ("photos/notes.txt", "not_an_image")]
    rows = [r for r in rows if r["status"] == "ok"]
    assert [r["origin"] for r in rows][:2] == ["photos/alice/set1/alice_0.png",
                                               "photos/alice/set1/alice_1.png"]
    assert [r["identity_hint"] for r in rows] == ["alice", "alice", "bob", "bob", None]
    rows = FolderSource(str(photo_tree), identity="folder", folder_level=-1).rows()
    assert rows[0]["identity_hint"] == "set1"
    rows = FolderSource(str(photo_tree), identity="regex", pattern=r"(\w+)_\d+\.png").rows()
    assert [r["identity_hint"] for r in rows if r["status"] == "ok"] == [
        "alice", "alice", "bob", "bob", None]
    rows = FolderSource(str(photo_tree), include=r"^bob/").rows()
    assert len(rows) == 2 and all(r["identity_hint"] is None for r in rows)
    again = FolderSource(str(photo_tree), identity="folder").rows()
    assert [r["row_id"] for r in again] == [r["row_id"] for r in
                                            FolderSource(str(photo_tree)).rows()]


def test_folder_source_errors_name_the_input(tmp_path):
    with pytest.raises(SourceError, match="not a folder"):
        FolderSource(str(tmp_path / "nope")).rows()
    with pytest.raises(SourceError, match="no image files"):
        FolderSource(str(tmp_path)).rows()
    with pytest.raises(SourceError, match="bad identity pattern"):
        FolderSource(str(tmp_path), identity="regex", pattern="(")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_url_list_source_formats(tmp_path, fmt):
    df = pd.DataFrame({"url": ["http://a.example/1.jpg", "https://b.example/2.png",
                               "http://a.example/1.jpg"],
                       "identity": ["x", None, "x"], "license": ["MIT", None, "MIT"]})
    path = tmp_path / f"urls.{fmt}"
    {"csv": lambda: df.to_csv(path, index=False),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(path)}[fmt]()
    rows = URLListSource(str(path)).rows()
    assert [r["origin"] for r in rows] == ["http://a.example/1.jpg", "https://b.example/2.png",
                                           "http://a.example/1.jpg"]
    # The repeated URL is recorded, not fetched twice.
    assert [r["status"] for r in rows] == ["ok", "ok", "duplicate_url"]
    assert rows[0]["identity_hint"] == "x" and rows[0]["license"] == "MIT"
    assert rows[1]["identity_hint"] is None and rows[1]["license"] is None


def test_url_list_without_url_column_is_a_clear_error(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("link\nhttp://x/1.jpg\n")
    with pytest.raises(SourceError, match="no 'url' column"):
        URLListSource(str(path)).rows()


def test_hf_source_from_save_to_disk_and_parquet(tmp_path):
    import datasets
    images = [make_rgb(32, 32, seed=s) for s in range(3)]
    from PIL import Image
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images],
                                     "person": ["p1", "p1", "p2"]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "person": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    ds.to_parquet(str(tmp_path / "ds.parquet"))
    for path in (tmp_path / "ds", tmp_path / "ds.parquet"):
        src = parse_source(f"{path}?identity_column=person")
        assert isinstance(src, HFSource)
        rows = src.rows(tmp_path / "work")
        assert [r["identity_hint"] for r in rows] == ["p1", "p1", "p2"]
        out = Decode(min_source_side=16)(rows)
        assert all(r["status"] == "ok" for r in out)
        assert out[0]["width"] == 32


def test_parse_source_specs(tmp_path, photo_tree):
    src = parse_source(f"{photo_tree}?identity=folder&folder_level=0&license=MIT&name=p")
    assert isinstance(src, FolderSource) and src.folder_level == 0 and src.name == "p"
    (tmp_path / "u.csv").write_text("url\nhttp://x/1.jpg\n")
    assert isinstance(parse_source(str(tmp_path / "u.csv")), URLListSource)
    with pytest.raises(SourceError, match="unknown option 'colour'"):
        parse_source(f"{photo_tree}?colour=red")
    with pytest.raises(SourceError, match="neither a folder"):
        parse_source(str(tmp_path / "missing.bin"))


# --- map stages on synthetic images ---------------------------------------------------

def test_decode_validates_and_honours_exclusion(tmp_path):
    save_image(tmp_path / "ok.png", make_rgb(200, 160))
    save_image(tmp_path / "small.png", make_rgb(112, 92))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    gray = np.repeat(make_rgb(200, 200)[..., :1], 3, axis=2)
    save_image(tmp_path / "gray.png", gray)
    rows = FolderSource(str(tmp_path)).rows()
    excluded_origin = [r["origin"] for r in rows if r["origin"].endswith("gray.png")][0]
    out = {r["origin"].rsplit("/", 1)[-1]: r for r in Decode(exclusion=(excluded_origin,))(rows)}
    assert out["ok.png"]["status"] == "ok" and out["ok.png"]["width"] == 160
    assert len(out["ok.png"]["sha256"]) == 64 and len(out["ok.png"]["pixel_sha256"]) == 64
    assert out["small.png"]["status"] == "source_too_small"
    assert out["bad.jpg"]["status"] == "decode_error" and "bad.jpg" in out["bad.jpg"]["error"]
    assert out["gray.png"]["status"] == "excluded"
    by_hash = Decode(exclusion=(out["ok.png"]["sha256"],))(rows)
    assert [r["status"] for r in by_hash if r["origin"].endswith("ok.png")] == ["excluded"]


def test_quality_measures():
    sharp = make_rgb(256, 256, seed=1)
    import cv2
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    assert laplacian_variance(sharp) > 10 * laplacian_variance(blurred)
    gray = np.repeat(sharp[..., :1], 3, axis=2)
    assert is_grayscale(gray) and not is_grayscale(sharp)
    assert colorfulness(gray) == pytest.approx(0.0, abs=1e-6) and colorfulness(sharp) > 10


def test_quality_stage_gates(tmp_path):
    import cv2
    sharp = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    paths = {}
    for name, img in {"sharp": sharp, "blur": cv2.GaussianBlur(sharp, (0, 0), 6),
                      "gray": np.repeat(sharp[..., :1], 3, axis=2)}.items():
        paths[name] = str(save_image(tmp_path / f"{name}.png", img))
    rows = [schema.new_row(row_id=n, source="t", origin=n, aligned_path=p, face_size=300.0)
            for n, p in paths.items()]
    rows.append(schema.new_row(row_id="tiny", source="t", origin="tiny",
                               aligned_path=paths["sharp"], face_size=60.0))
    out = Quality(musiq="off")(rows)
    assert [r["status"] for r in out] == ["ok", "blurry", "grayscale", "face_too_small"]
    assert out[0]["sharpness"] > 40 and out[0]["musiq"] is None
    assert Quality(musiq="off", drop_grayscale=False)([rows[2]])[0]["status"] == "ok"


def test_quality_musiq_missing_weights(tmp_path):
    from reface_core.assets import AssetNotFoundError
    path = str(save_image(tmp_path / "a.png", make_rgb(64, 64)))
    row = schema.new_row(row_id="a", source="t", origin="a", aligned_path=path, face_size=300.0)
    assert Quality(musiq="auto", min_sharpness=0)([row])[0]["musiq"] is None
    with pytest.raises(AssetNotFoundError, match="pyiqa-musiq-koniq"):
        Quality(musiq="on", min_sharpness=0)([row])


def test_musiq_scorer_loads_weights_safely(tmp_path):
    torch = pytest.importorskip("torch")
    from pyiqa.archs.musiq_arch import MUSIQ

    from reface_core.iqa import MusiqScorer
    arch = dict(hidden_size=32, mlp_dim=32, num_heads=2, num_layers=1)
    torch.manual_seed(0)
    net = MUSIQ(pretrained=False, num_class=1, **arch)
    torch.save({"params": net.state_dict()}, tmp_path / "tiny_musiq.pth")
    scorer = MusiqScorer(str(tmp_path / "tiny_musiq.pth"), **arch)
    a = scorer(make_rgb(96, 96, seed=1))
    assert isinstance(a, float) and np.isfinite(a)
    assert scorer(make_rgb(96, 96, seed=1)) == a
    torch.save({"params": net.state_dict(), "evil": object()}, tmp_path / "pickle.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        MusiqScorer(str(tmp_path / "pickle.pth"), **arch)


# --- global stages --------------------------------------------------------------------

def _face(fid, emb, source="s", hint=None, sha=None, phash="0" * 16, size=300.0, sharp=100.0):
    return schema.new_row(row_id=fid.split("-")[0], face_id=fid, face_index=0, source=source,
                          origin=f"o/{fid}", identity_hint=hint, sha256=sha or f"sha-{fid}",
                          pixel_sha256=f"pix-{fid}", phash=phash, embedding=list(emb),
                          face_size=size, sharpness=sharp)


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def _people(n_people=3, per=5, dim=16, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centres = [_unit(rng.normal(size=dim)) for _ in range(n_people)]
    out = []
    for p, c in enumerate(centres):
        for _k in range(per):
            out.append((p, _unit(c + spread * rng.normal(size=dim) / np.sqrt(dim))))
    return centres, out


def test_dedupe_exact_and_near():
    _, people = _people(2, 3)
    # Far-apart pHashes for distinct photos (a fixed odd multiplier scatters the bits).
    ph = [(k + 1) * 0x9E3779B97F4A7C15 % 2**64 for k in range(len(people))]
    rows = [_face(f"f{k}-0", e, phash=f"{ph[k]:016x}") for k, (_, e) in enumerate(people)]
    rows.append(_face("g0-0", people[0][1], sha=rows[0]["sha256"], phash="ffff000000000000",
                      size=100.0))                             # exact copy, smaller face
    rows.append(_face("g1-0", people[1][1] * 0.999, phash=f"{ph[1] ^ 0b11:016x}", size=500.0))
    rows.append(_face("g2-0", people[2][1], phash="ffffffffffffffff"))  # same person, other photo
    out = {r["face_id"]: r for r in Dedupe(max_phash_distance=4, min_cosine=0.95)(rows)}
    assert out["g0-0"]["status"] == "duplicate" and out["g0-0"]["duplicate_of"] == "f0-0"
    assert out["f1-0"]["status"] == "near_duplicate" and out["f1-0"]["duplicate_of"] == "g1-0"
    assert out["g1-0"]["status"] == "ok"   # the larger face of the pair is kept
    assert out["g2-0"]["status"] == "ok" and out["f2-0"]["status"] == "ok"


def test_dedupe_carries_hints_of_dropped_copies():
    e = _unit(np.ones(8))
    rows = [_face("a-0", e, hint="p1", sha="same"), _face("b-0", e, hint="p2", sha="same")]
    out = Dedupe()(rows)
    assert out[0]["status"] == "ok" and out[0]["alt_identity_hints"] == ["s:p2"]
    assert out[1]["status"] == "duplicate"


def test_identity_grouping_with_hints_drops_outliers_and_small_identities():
    _, people = _people(3, 6)
    rows = [_face(f"f{k:02d}-0", e, hint=f"p{p}") for k, (p, e) in enumerate(people)]
    rows[0]["embedding"] = list(people[-1][1])      # mislabelled: p2's face filed under p0
    rows += [_face("z1-0", people[7][1], hint="lonely"), _face("z2-0", people[8][1] * -1)]
    out = {r["face_id"]: r for r in IdentityGroup(max_distance=0.2, min_photos=3,
                                                  cluster_threshold=0.1)(rows)}
    # The mislabelled face is moved to its true identity (p2 is in the build).
    assert out["f00-0"]["status"] == "ok" and out["f00-0"]["identity"] == "s-p2"
    assert {out[f"f{k:02d}-0"]["identity"] for k in range(1, 6)} == {"s-p0"}
    # "lonely" is a face of p1 under another name: one person, one identity.
    assert out["z1-0"]["status"] == "ok" and out["z1-0"]["identity"] == "s-p1"
    assert out["z2-0"]["status"] == "too_few_photos"


def test_identity_clustering_without_hints_recovers_people():
    _, people = _people(4, 5, dim=32, spread=0.2, seed=3)
    rows = [_face(f"f{k:02d}-0", e, hint=f"p{p}") for k, (p, e) in enumerate(people)]
    out = IdentityGroup(use_hints=False, cluster_threshold=0.3, max_distance=0.3,
                        min_photos=2)(rows)
    labels = {}
    for r, (p, _) in zip(out, people, strict=False):
        assert r["status"] == "ok"
        labels.setdefault(p, set()).add(r["identity"])
    assert all(len(v) == 1 for v in labels.values())
    assert len({next(iter(v)) for v in labels.values()}) == 4
    assert all(r["identity"].startswith("cluster-") for r in out)
    assert cluster(np.stack([people[0][1]]), 0.1).tolist() == [0]


def test_split_by_identity_is_deterministic_and_disjoint():
    rows = [schema.new_row(row_id=str(i), face_id=f"{i}-0", identity=f"id{i % 10}")
            for i in range(50)]
    a = SplitByIdentity(test_fraction=0.2, seed=1)(rows)
    b = SplitByIdentity(test_fraction=0.2, seed=1)(list(reversed(rows)))
    assert {r["face_id"]: r["split"] for r in a} == {r["face_id"]: r["split"] for r in b}
    test_ids = {r["identity"] for r in a if r["split"] == "test"}
    train_ids = {r["identity"] for r in a if r["split"] == "train"}
    assert len(test_ids) == 2 and not test_ids & train_ids
    with pytest.raises(ValueError):
        SplitByIdentity(test_fraction=1.0)


def test_read_exclusion(tmp_path):
    p = tmp_path / "ex.txt"
    p.write_text("# removal requests\nhttp://x.example/a.jpg#frag\n" + "A" * 64 + "  # one\n\n")
    assert read_exclusion(p) == ("a" * 64, "http://x.example/a.jpg#frag")
    with pytest.raises(FileNotFoundError, match="exclusion list"):
        read_exclusion(tmp_path / "missing.txt")


# --- writing, verifying, loading, exporting a dataset built from synthetic rows ----------

@pytest.fixture
def synthetic_dataset(tmp_path):
    """A dataset written by the real writer from rows the map stages would produce."""
    from reface_hq.build import BuildConfig
    from reface_hq.dataset import write_dataset
    _, people = _people(3, 4)
    rows = []
    for k, (p, e) in enumerate(people):
        path = save_image(tmp_path / "aligned" / f"f{k:02d}-0.png", make_rgb(64, 64, seed=k))
        r = _face(f"f{k:02d}-0", e, hint=f"p{p}")
        r.update(aligned_path=str(path), width=640, height=480, embedder="test-embedder",
                 license="CC-BY-4.0" if p else None, box=[1.0, 2.0, 3.0, 4.0],
                 landmarks5=[[1.0, 2.0]] * 5)
        rows.append(r)
    rows.append(schema.drop(_face("x-0", people[0][1]), "quality", "blurry", "too blurry"))
    rows = IdentityGroup(max_distance=0.3, min_photos=2)(rows)
    rows = SplitByIdentity(test_fraction=0.34, seed=0)(rows)
    config = BuildConfig(sources=[FolderSource(str(tmp_path / "aligned"))],
                         out=str(tmp_path / "ds"), progress=False)
    stats = write_dataset(rows, config, timings={}, seconds=0.0)
    return tmp_path / "ds", stats


def test_written_dataset_layout_stats_and_verify(synthetic_dataset):
    import duckdb

    from reface_hq.dataset import load_manifest, verify
    root, stats = synthetic_dataset
    assert stats["faces_kept"] == 12 and stats["identities"] == 3
    assert stats["dropped"] == {"quality": {"blurry": 1}}
    assert stats["splits"]["test"]["identities"] == 1
    df = load_manifest(root)
    for col in ("face_id", "image_path", "identity", "split", "source", "origin", "license",
                "sha256", "width", "height", "embedder", "embedding", "status"):
        assert col in df.columns
    assert "local_path" not in df.columns and "aligned_path" not in df.columns
    assert (root / df.image_path[0]).is_file()
    n = duckdb.connect().execute(f"SELECT count(DISTINCT identity) FROM '{root / 'manifest.parquet'}'").fetchone()
    assert n == (3,)
    assert verify(root) == []
    (root / "images" / "stray.png").write_bytes(b"x")
    (root / df.image_path[1]).write_bytes(b"changed")
    problems = verify(root)
    assert any("stray.png" in p for p in problems) and any("sha256" in p for p in problems)


def test_loaders_hf_and_torch(synthetic_dataset):
    from reface_hq.dataset import FaceReferenceDataset, to_hf_dataset
    root, _ = synthetic_dataset
    ds = to_hf_dataset(root, split="train")
    assert len(ds) == 8 and ds[0]["image"].size == (64, 64)
    tds = FaceReferenceDataset(root, split=None, n_references=2, seed=0)
    target, refs, identity, caption = tds[0]
    assert tuple(target.shape) == (3, 64, 64) and tuple(refs.shape) == (2, 3, 64, 64)
    assert 0.0 <= float(target.min()) and float(target.max()) <= 1.0
    assert identity == tds.items[0]["identity"] and caption == ""
    assert all(tds.items[k]["identity"] == identity and k != 0 for k in tds.references_of(0))
    assert tds.references_of(3) == FaceReferenceDataset(root, split=None, n_references=2,
                                                        seed=0).references_of(3)


def test_export_parquet_and_webdataset_load(synthetic_dataset, tmp_path):
    import datasets
    import webdataset as wds

    from reface_hq.export import export
    root, _ = synthetic_dataset
    out = tmp_path / "export"
    files = export(root, out, shard_rows=3)
    ds = datasets.load_dataset("parquet", data_files={"train": str(out / "data" / "train-*.parquet"),
                                                      "test": str(out / "data" / "test-*.parquet")})
    assert len(ds["train"]) == 8 and len(ds["test"]) == 4
    assert ds["train"][0]["image"].size == (64, 64)
    assert len(ds["train"][0]["embedding"]) == 16
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "wds").glob("*.tar")),
                                  shardshuffle=False))
    assert len(samples) == 12
    meta = json.loads(samples[0]["json"])
    assert meta["face_id"] == samples[0]["__key__"] and samples[0]["png"][:4] == b"\x89PNG"
    card = (out / "README.md").read_text()
    assert "identities: 3" in card and "CC-BY-4.0" in card and "split: train" in card
    assert len(files["parquet"]["train"]) == 3
    # An export after a removal request leaves the photo out of every format.
    gone = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"))["train"]
    victim = gone[0]["origin"]
    out2 = tmp_path / "export2"
    export(root, out2, exclusion=frozenset({victim}))
    assert victim not in set(datasets.load_dataset(
        "parquet", data_files=str(out2 / "data" / "*.parquet"))["train"]["origin"])
    tars = b"".join(p.read_bytes() for p in (out2 / "wds").glob("*.tar"))
    assert victim.encode() not in tars


def test_cli_help_and_clear_errors(tmp_path, capsys):
    from reface_hq.cli import main
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "--no-identity-hints" in capsys.readouterr().out
    assert main(["build", "-i", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a folder" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2
    assert "no manifest.parquet" in capsys.readouterr().err


def test_missing_detector_weights_raise_not_status_rows(tmp_path):
    from reface_core.assets import AssetNotFoundError
    from reface_hq.stages import DetectAlign
    path = save_image(tmp_path / "a.png", make_rgb(200, 200))
    row = schema.new_row(row_id="a", source="t", origin="a.png", local_path=str(path))
    with pytest.raises(AssetNotFoundError, match="retinaface"):
        DetectAlign(folder=str(tmp_path / "al"), detector="retinaface")([row])


def test_component_wise_clustering_equals_plain_average_linkage():
    from reface_hq.identity import _average_linkage
    _, people = _people(12, 6, dim=16, spread=0.6, seed=5)
    emb = np.stack([e for _, e in people])
    for t in (0.05, 0.15, 0.3):
        a = cluster(emb, t, chunk=7)
        b = _average_linkage(emb, t)
        # Same partition (labels may be numbered differently).
        pairs = lambda lab: {(i, j) for i in range(len(lab)) for j in range(i)  # noqa: E731
                             if lab[i] == lab[j]}
        assert pairs(a) == pairs(b)


def test_sources_with_the_same_name_are_refused(tmp_path, capsys):
    from reface_hq.cli import main
    for d in ("a/photos", "b/photos"):
        save_image(tmp_path / d / "x.png", make_rgb(40, 40))
    args = ["build", "--out", str(tmp_path / "o"), "-i", str(tmp_path / "a" / "photos"),
            "-i", str(tmp_path / "b" / "photos")]
    assert main(args) == 2
    assert "several sources are named ['photos']" in capsys.readouterr().err


def test_popcount_needs_no_numpy_2():
    from reface_hq.dedupe import near_pairs, popcount64
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**63, size=(40, 5), dtype=np.uint64) << np.uint64(1)
    x[0, 0] = np.uint64(2**64 - 1)
    expected = np.vectorize(lambda v: int(v).bit_count())(x)
    assert np.array_equal(popcount64(x), expected) and popcount64(x).shape == x.shape
    ph = np.array([0, 0b111, 2**64 - 1], dtype=np.uint64)
    emb = np.ones((3, 4), dtype=np.float32) / 2
    assert near_pairs(ph, emb, max_distance=3, min_cosine=0.9) == [(0, 1)]


def test_leakage_names_a_copied_face_across_splits():
    from reface_hq.dataset import leakage
    _, people = _people(4, 4, dim=32, spread=0.1, seed=1)
    rows = [{"face_id": f"f{k:02d}-0", "identity": f"p{p}", "split": "test" if p == 0 else "train",
             "embedding": list(e)} for k, (p, e) in enumerate(people)]
    assert leakage(rows, centre_distance=0.05) == []
    rows[0]["embedding"] = rows[9]["embedding"]          # p2's face filed as p0 in test
    problems = leakage(rows, centre_distance=0.05)
    assert len(problems) == 1 and "f00-0 (p0)" in problems[0] and "f09-0 (p2)" in problems[0]
