"""reface_hq on the real photos of $REFACE_TEST_DATA: the issue's done-when checks.

One mixed build (identities_512 + part of celeba_hq_1024 + att_faces_lowres +
unaligned_named) is made once per module and shared; the no-hints build reuses its
finished map stages through the shared work folder, so it costs only the global stages.
Faces are aligned at 256 px without FFHQ padding here to keep CPU time low; the library
defaults (512, padded) run in perf/bench_reface_hq.py and the demo.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from reface_hq import BuildConfig, FolderSource, build, export, verify
from reface_hq.dataset import FaceReferenceDataset, to_hf_dataset

pytestmark = pytest.mark.realdata

FAST = dict(output_size=256, transform_size=512, align_padding=False, progress=False,
            shard_size=24, musiq="off")
UNALIGNED_HINTS = r"train/([^/]+)/|(obama|biden)"
# Photos removed on request: one by its path, one by the sha256 of its bytes.
EXCLUDED_ORIGIN = "identities_512/00052/conditioning/00052_3.png"
EXCLUDED_FILE = "identities_512/00116/conditioning/00116_4.png"


def _sources(data: Path):
    return [
        FolderSource(str(data / "identities_512"), identity="folder", folder_level=0),
        # Unlabelled; a third is enough to show they are kept apart from labelled people.
        FolderSource(str(data / "celeba_hq_1024"), include=r"/[0-4][^/]*\.jpg$"),
        FolderSource(str(data / "att_faces_lowres"), identity="folder", folder_level=1),
        FolderSource(str(data / "unaligned_named"), identity="regex", pattern=UNALIGNED_HINTS),
    ]


@pytest.fixture(scope="module")
def built(data_root, tmp_path_factory):
    import hashlib
    base = tmp_path_factory.mktemp("reface_hq_real")
    sha = hashlib.sha256((data_root / EXCLUDED_FILE).read_bytes()).hexdigest()
    exclusion = (EXCLUDED_ORIGIN, sha)
    t0 = time.perf_counter()
    config = BuildConfig(sources=_sources(data_root), out=str(base / "hints"),
                         work_dir=str(base / "work"), exclusion=exclusion, **FAST)
    stats = build(config)
    t1 = time.perf_counter()
    no_hints = BuildConfig(sources=_sources(data_root), out=str(base / "no_hints"),
                           work_dir=str(base / "work"), exclusion=exclusion,
                           use_identity_hints=False, **FAST)
    stats_nh = build(no_hints)
    t2 = time.perf_counter()
    print(f"\n[reface_hq] mixed build {t1 - t0:.1f}s, no-hints rebuild {t2 - t1:.1f}s")
    return {"base": base, "config": config, "stats": stats, "stats_nh": stats_nh,
            "exclusion": exclusion, "sha": sha}


def _all_rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(out / "manifest.parquet"),
                      pd.read_parquet(out / "dropped.parquet")], ignore_index=True)


def _folder_labels(data_root: Path) -> dict[str, set[str]]:
    """sha256 of photo bytes -> identities_512 folders holding that photo."""
    import hashlib
    labels: dict[str, set[str]] = {}
    for p in sorted((data_root / "identities_512").rglob("*.png")):
        if p.name == "degraded.png":
            continue  # a synthetic LQ copy, not a photo of the set
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        labels.setdefault(digest, set()).add(p.relative_to(data_root / "identities_512").parts[0])
    return labels


def test_low_resolution_att_faces_are_filtered_as_too_small(built):
    rows = _all_rows(Path(built["config"].out))
    att = rows[rows.source == "att_faces_lowres"]
    assert len(att) == 400
    assert set(att.status) == {"source_too_small"} and set(att.dropped_at) == {"decode"}
    assert built["stats"]["dropped"]["decode"]["source_too_small"] == 400


def test_duplicates_across_folders_are_found(built):
    rows = _all_rows(Path(built["config"].out))
    by_face = rows.set_index("face_id")
    dups = rows[rows.status.isin(["duplicate", "near_duplicate"])]
    pairs = {(o, by_face.loc[k, "origin"]) for o, k in zip(dups.origin, dups.duplicate_of, strict=False)}
    shared = {frozenset(p) for p in pairs if {q.split("/")[1] for q in p} == {"00399", "00737"}}
    assert len(shared) == 4, sorted(pairs)      # the four photos both folders hold
    # The same Obama photo under examples/, knn_examples/ and tests/test_images/.
    obama = [p for p in pairs if all(q.startswith("unaligned_named") for q in p)]
    assert len(obama) >= 3
    kept = rows[rows.status == "ok"]
    # Two people of one photo may both be kept (a face moved to its own identity).
    assert not kept.duplicated(["sha256", "face_index"]).any()


def test_identities_are_pure_against_folder_labels(built, data_root):
    # 00399 and 00737 are one person filed twice (they share photos): the build now
    # merges them into one identity, so purity is scored with the two labels as one.
    labels = {k: {"00399" if x == "00737" else x for x in v}
              for k, v in _folder_labels(data_root).items()}
    man = pd.read_parquet(Path(built["config"].out) / "manifest.parquet")
    labelled = man[man.sha256.isin(labels.keys())]
    correct = 0
    for _identity, group in labelled.groupby("identity"):
        votes = Counter(lab for s in group.sha256 for lab in labels[s])
        top = votes.most_common(1)[0][0]
        correct += sum(top in labels[s] for s in group.sha256)
    purity = correct / len(labelled)
    import hashlib
    excluded = {hashlib.sha256((data_root / p).read_bytes()).hexdigest()
                for p in (EXCLUDED_ORIGIN, EXCLUDED_FILE)}
    lost = len(set(labels) - set(man.sha256) - excluded)
    stats = {"purity": round(purity, 4), "labelled_faces": len(labelled),
             "unique_labelled_photos": len(labels), "true_photos_lost": lost,
             "identities": int(man.identity.nunique())}
    print(f"\n[reface_hq] hinted build: {json.dumps(stats)}")
    assert purity >= 0.98
    assert lost <= 0.05 * len(labels)
    assert man.identity.str.startswith("identities_512-").sum() >= 0.9 * len(labelled)
    # Unlabelled CelebA-HQ faces never join a labelled identity.
    assert not (man.source == "celeba_hq_1024").any() or \
        not man[man.source == "celeba_hq_1024"].identity.str.startswith("identities_512").any()


def _pairwise(pred: list[str | None], truth: list[str]) -> tuple[float, float]:
    tp = fp = fn = 0
    for (pa, ta), (pb, tb) in itertools.combinations(zip(pred, truth, strict=False), 2):
        same_pred = pa is not None and pa == pb
        same_true = ta == tb
        tp += same_pred and same_true
        fp += same_pred and not same_true
        fn += (not same_pred) and same_true
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


def test_clustering_without_hints_recovers_identities(built, data_root):
    labels = _folder_labels(data_root)
    out = Path(built["base"] / "no_hints")
    rows = _all_rows(out)
    # Every identities_512 face that reached identity grouping, kept or dropped there.
    part = rows[(rows.source == "identities_512") & rows.sha256.isin(labels.keys())
                & (rows.status.isin(["ok", "identity_outlier", "too_few_photos"]))]
    pred = [i if s == "ok" else None for i, s in zip(part.identity, part.status, strict=False)]
    truth = [min(labels[s]) for s in part.sha256]
    precision, recall = _pairwise(pred, truth)
    # 00399 and 00737 are one person filed twice (they share photos): merged labels.
    merged = ["00399" if t == "00737" else t for t in truth]
    precision_m, recall_m = _pairwise(pred, merged)
    clusters = Counter(p for p in pred if p)
    print(f"\n[reface_hq] no-hints clustering: precision {precision:.3f} recall {recall:.3f} "
          f"(00399=00737: precision {precision_m:.3f} recall {recall_m:.3f}); "
          f"{len(clusters)} clusters for {len(set(truth))} folders")
    assert all(str(i).startswith("cluster-") for i in rows[rows.status == "ok"].identity)
    assert precision_m >= 0.95 and recall_m >= 0.9
    assert precision >= 0.85


def test_excluded_photos_appear_in_no_output(built, data_root, tmp_path):
    import webdataset as wds
    out = Path(built["config"].out)
    sha = built["sha"]
    for folder in (out, built["base"] / "no_hints"):
        rows = _all_rows(folder)
        assert not rows.origin.isin([EXCLUDED_ORIGIN, EXCLUDED_FILE]).any()
        assert not (rows.sha256 == sha).any()
        assert verify(folder, exclusion=frozenset(built["exclusion"])) == []
    stats = built["stats"]
    assert stats["dropped"]["decode"]["excluded"] == 2
    exp = tmp_path / "export"
    export(out, exp, shard_rows=200)
    blobs = b"".join(p.read_bytes() for p in exp.rglob("*") if p.is_file())
    assert EXCLUDED_ORIGIN.encode() not in blobs and sha.encode() not in blobs
    assert not any("00052_3" in p.name for p in (out / "images").rglob("*"))
    published = [p for p in out.rglob("*") if p.is_file() and ".work" not in p.parts]
    text = b"".join(p.read_bytes() for p in published)
    assert EXCLUDED_ORIGIN.encode() not in text and sha.encode() not in text
    # The exported shards load with datasets and webdataset.
    import datasets
    ds = datasets.load_dataset("parquet", data_dir=str(exp / "data"))
    n = stats["faces_kept"]
    assert sum(len(ds[s]) for s in ds) == n
    assert ds["train"][0]["image"].size == (256, 256)
    assert set(ds["train"]["identity"]).isdisjoint(ds["test"]["identity"])
    samples = list(wds.WebDataset(sorted(str(p) for p in (exp / "wds").glob("*.tar")),
                                  shardshuffle=False).decode("pil"))
    assert len(samples) == n and samples[0]["png"].size == (256, 256)
    assert samples[0]["identity.txt"] == samples[0]["json"]["identity"]   # decoded by wds
    assert "## Licenses" in (exp / "README.md").read_text()


def test_dataset_loaders_and_duckdb(built):
    import duckdb
    out = Path(built["config"].out)
    con = duckdb.connect()
    n_ids, n = con.execute("SELECT count(DISTINCT identity), count(*) FROM read_parquet(?)",
                           [str(out / "manifest.parquet")]).fetchone()
    assert n == built["stats"]["faces_kept"] and n_ids == built["stats"]["identities"]
    ds = to_hf_dataset(out, split="test")
    assert len(ds) == built["stats"]["splits"]["test"]["faces"]
    tds = FaceReferenceDataset(out, split="train", n_references=2)
    target, refs, identity, _ = tds[0]
    assert tuple(target.shape) == (3, 256, 256) and tuple(refs.shape) == (2, 3, 256, 256)
    assert identity == tds.items[0]["identity"]


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_manifest(data_root, tmp_path):
    """A real kill (SIGKILL of the CLI process group) in the middle of a stage."""
    src = (f"{data_root / 'identities_512'}?identity=folder&folder_level=0"
           f"&include=^(00001|00027)/")
    common = ["-i", src, "-i", f"{data_root / 'att_faces_lowres'}?include=s1/",
              "--size", "512", "--transform-size", "512", "--no-align-padding",
              "--min-photos", "3", "--seed", "3", "--shard-size", "4",
              "--musiq", "off", "-q"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reface_hq", "build", *common, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    stage_dir = None
    while time.time() < deadline and proc.poll() is None:
        dirs = sorted((killed / ".work").glob("*-detect_align-*")) if killed.exists() else []
        if dirs and len(list(dirs[0].glob("*.done.json"))) >= 2:
            stage_dir = dirs[0]
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(stage_dir.glob("*.done.json")))
    assert not (killed / "manifest.parquet").exists()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400,
                           check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "faces of" in rerun.stdout
    report = json.loads((stage_dir / "_SUCCESS.json").read_text())
    assert report["reused_shards"] >= done_at_kill >= 2
    fresh = tmp_path / "fresh"
    from reface_hq.cli import main
    assert main(["build", *common, "--out", str(fresh)]) == 0
    a = pq.read_table(killed / "manifest.parquet")
    b = pq.read_table(fresh / "manifest.parquet")
    assert a.num_rows > 0 and a.equals(b)
    assert pq.read_table(killed / "dropped.parquet").equals(pq.read_table(fresh / "dropped.parquet"))
    assert verify(killed) == []
    def files(root):
        return sorted(p.relative_to(root).as_posix()
                                    for p in (root / "images").rglob("*") if p.is_file())
    assert files(killed) == files(fresh)


def test_optional_caption_stage_annotates_the_manifest(data_root, tmp_path):
    pytest.importorskip("captioning.manifest", reason="the captioning package is not present")
    config = BuildConfig(
        sources=[FolderSource(str(data_root / "identities_512"), identity="folder",
                              include=r"^00027/conditioning/")],
        out=str(tmp_path / "ds"), captions=True, test_fraction=0.0, **FAST)
    stats = build(config)
    man = pd.read_parquet(tmp_path / "ds" / "manifest.parquet")
    assert len(man) == stats["faces_kept"] >= 3
    assert man.prompt.notna().all() and man.attributes.notna().all()
    genders = {json.loads(a)["gender"]["value"] for a in man.attributes}
    assert genders <= {"male", "female"} and genders
    assert verify(tmp_path / "ds") == []


def test_build_from_a_crawled_url_list(data_root, tmp_path):
    """A URL list served on 127.0.0.1: real faces land in the dataset, every bad URL is a
    status row with its reason in dropped.parquet, nothing crashes. A download that timed
    out makes the build exit 1; a rerun reuses it, `--retry-failed` fetches it again."""
    import http.server
    import threading
    from collections import Counter
    hits: Counter = Counter()
    slow = {"seconds": 2.0}
    photos = sorted((data_root / "identities_512" / "00027" / "conditioning").glob("*.png"))[:4]
    routes = {f"/p{i}.png": ("image/png", p.read_bytes()) for i, p in enumerate(photos)}
    routes["/page.html"] = ("text/html", b"<html>not a photo</html>")
    routes["/cut.png"] = ("image/png", photos[0].read_bytes()[:5000])

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits[self.path] += 1
            if self.path == "/slow.png":
                time.sleep(slow["seconds"])
            if self.path not in routes:
                self.send_response(404)
                self.end_headers()
                return
            ctype, body = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 64   # the downloader opens 8 connections at once

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        urls = [f"{base}{p}" for p in [*[f"/p{i}.png" for i in range(len(photos))],
                                        "/page.html", "/cut.png", "/missing.png", "/slow.png"]]
        (tmp_path / "urls.jsonl").write_text("".join(
            json.dumps({"url": u, "identity": "person27", "license": "CC-BY-NC-4.0"}) + "\n"
            for u in urls))
        from reface_hq.cli import main
        common = ["-i", str(tmp_path / "urls.jsonl"), "--min-photos", "2",
                  "--download-timeout", "0.5", "--download-retries", "0", "--musiq", "off",
                  "-q", "--test-fraction", "0", "--shard-size", "1"]
        # slow.png timed out: a failed row a retry may fix, so exit 1.
        assert main(["build", *common, "--out", str(tmp_path / "ds"),
                     "--allow-private-addresses"]) == 1
        first = pd.read_parquet(tmp_path / "ds" / "manifest.parquet")
        first_dropped = pd.read_parquet(tmp_path / "ds" / "dropped.parquet")
        # Without the flag the loopback server is refused, URL by URL (final: exit 0).
        assert main(["build", *common, "--out", str(tmp_path / "refused")]) == 0
        # A plain rerun reuses the cached downloads: nothing is fetched again.
        before = sum(hits.values())
        assert main(["build", *common, "--out", str(tmp_path / "ds"),
                     "--allow-private-addresses"]) == 1
        assert sum(hits.values()) == before
        # --retry-failed fetches the timed-out URL again (the server is fast now); only the
        # shard holding it is recomputed (one URL a shard here), not the dead link.
        slow["seconds"] = 0.0
        fifth = sorted((data_root / "identities_512/00027/conditioning").glob("*.png"))[4]
        routes["/slow.png"] = ("image/png", fifth.read_bytes())
        assert main(["build", *common, "--out", str(tmp_path / "retried"),
                     "--work-dir", str(tmp_path / "ds" / ".work"),
                     "--allow-private-addresses", "--retry-failed"]) == 0
        assert hits["/slow.png"] == 2 and hits["/missing.png"] == hits["/p1.png"] == 1
        retried = pd.read_parquet(tmp_path / "retried" / "manifest.parquet")
        assert urls[7] in set(retried.origin) and len(retried) == len(first) + 1
    finally:
        httpd.shutdown()
        httpd.server_close()
    man, dropped = first, first_dropped.set_index("origin")
    assert sorted(man.origin) == urls[:4]
    assert set(man.license) == {"CC-BY-NC-4.0"} and man.identity.nunique() == 1
    reasons = {u.rsplit("/", 1)[1]: dropped.loc[u, "status"] for u in urls[4:]}
    assert reasons == {"page.html": "not_an_image", "cut.png": "corrupt_image",
                       "missing.png": "http_404", "slow.png": "timeout"}
    assert dropped.loc[urls[6], "http_status"] == 404
    assert dropped.loc[urls[5], "http_status"] == 200   # fetched fine, failed to decode
    assert verify(tmp_path / "ds") == []
    refused = pd.read_parquet(tmp_path / "refused" / "dropped.parquet")
    assert len(refused) == len(urls) and set(refused.status) == {"blocked_address"}
    assert pd.read_parquet(tmp_path / "refused" / "manifest.parquet").empty


@pytest.mark.slow
def test_ray_executor_builds_the_same_dataset(data_root, tmp_path):
    pytest.importorskip("ray", reason="Ray Data is an optional extra: pip install '.[ray]'")
    src = [FolderSource(str(data_root / "identities_512"), identity="folder",
                        include=r"^00027/conditioning/00027_1")]
    local = BuildConfig(sources=src, out=str(tmp_path / "local"), min_photos=2, **FAST)
    remote = BuildConfig(sources=src, out=str(tmp_path / "ray"), min_photos=2,
                         executor="ray", **FAST)
    build(local)
    stats = build(remote)
    assert stats["faces_kept"] >= 2
    a = pq.read_table(tmp_path / "local" / "manifest.parquet")
    b = pq.read_table(tmp_path / "ray" / "manifest.parquet")
    assert a.equals(b)
