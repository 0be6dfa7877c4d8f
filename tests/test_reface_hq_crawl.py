"""The URL-list source and the guarded downloader, against a local HTTP server."""

from __future__ import annotations

import http.server
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_rgb
from PIL import Image

from reface_hq import schema
from reface_hq.download import Download, Downloader, DownloadError, vet_host
from reface_hq.sources import URLListSource


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


GOOD1 = _png(make_rgb(80, 60, seed=1))
GOOD2 = _jpeg(make_rgb(90, 70, seed=2))
TRUNCATED = _jpeg(make_rgb(200, 200, seed=3))[:700]
BOMB = _png(np.zeros((3000, 3000, 3), np.uint8))   # small file, 9 MP of pixels
BIG = b"\x89PNG" + bytes(300_000)                    # over the byte cap below


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: dict = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        route = self.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        status, ctype, body, extra = route
        if extra.get("sleep"):
            time.sleep(extra["sleep"])
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in extra.get("headers", {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(extra.get("length", len(body))))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server():
    _Handler.routes = {
        "/good1.png": (200, "image/png", GOOD1, {}),
        "/good2.jpg": (200, "image/jpeg", GOOD2, {}),
        "/slow.jpg": (200, "image/jpeg", GOOD2, {"sleep": 1.5}),
        "/truncated.jpg": (200, "image/jpeg", TRUNCATED, {}),
        "/page.html": (200, "text/html; charset=utf-8", b"<html><body>hi</body></html>", {}),
        "/big.png": (200, "image/png", BIG, {}),
        "/bomb.png": (200, "image/png", BOMB, {}),
        "/redirect": (302, None, b"", {"headers": {"Location": "/good1.png"}}),
        "/to-internal": (302, None, b"", {"headers": {
            "Location": "http://127.0.0.2:9/admin.png"}}),
        "/octet": (200, "application/octet-stream", _png(make_rgb(40, 40, seed=5)), {}),
        "/flaky": (503, "text/plain", b"busy", {}),
    }
    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 64   # the default backlog of 5 drops concurrent connects

    httpd = Server(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _dl(**kw) -> Downloader:
    opts = dict(timeout=0.5, deadline=5.0, retries=1, backoff=0.05, max_bytes=200_000,
                max_pixels=4_000_000, allow_private=True)
    opts.update(kw)
    return Downloader(**opts)


def test_crawl_good_land_bad_recorded_with_reasons(server, tmp_path):
    names = ["good1.png", "good2.jpg", "missing.png", "slow.jpg", "truncated.jpg", "page.html",
             "big.png", "bomb.png", "redirect", "octet"]
    csv = tmp_path / "urls.csv"
    csv.write_text("url,identity,license\n" + "".join(
        f"{server}/{n},person{i % 2},CC-BY-4.0\n" for i, n in enumerate(names))
        + "ftp://example.org/x.png,,\n")
    rows = URLListSource(str(csv)).rows()
    assert len(rows) == len(names) + 1
    stage = Download(folder=str(tmp_path / "dl"), threads=4, timeout=0.5, deadline=5.0,
                     retries=1, backoff=0.05, max_bytes=200_000, max_pixels=4_000_000,
                     allow_private=True)
    out = stage(rows)
    by = {r["origin"].rsplit("/", 1)[-1]: r for r in out}
    for good in ("good1.png", "good2.jpg", "redirect", "octet"):
        r = by[good]
        assert r["status"] == "ok", (good, r["error"])
        assert r["local_path"] and Path(r["local_path"]).read_bytes()
        assert r["width"] > 0 and r["license"] == "CC-BY-4.0"
    assert Path(by["good1.png"]["local_path"]).read_bytes() == GOOD1
    expected = {"missing.png": "http_404", "slow.jpg": "timeout", "truncated.jpg": "corrupt_image",
                "page.html": "not_an_image", "big.png": "file_too_large",
                "bomb.png": "image_too_large", "x.png": "bad_url"}
    for name, reason in expected.items():
        r = by[name]
        assert r["status"] == reason, (name, r["status"], r["error"])
        assert r["error"] and r["local_path"] is None
    assert by["missing.png"]["http_status"] == 404
    assert by["page.html"]["content_type"] == "text/html"
    # Only the good files were written; nothing half-written is left behind.
    files = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert len(files) == 4 and not any(f.startswith(".") for f in files)


def test_loopback_refused_without_the_flag(server, tmp_path):
    with pytest.raises(DownloadError) as e:
        _dl(allow_private=False).fetch(f"{server}/good1.png")
    assert e.value.reason == "blocked_address" and "127.0.0.1" in str(e.value)
    row = schema.new_row(row_id="r", source="s", origin=f"{server}/good1.png")
    out = Download(folder=str(tmp_path), allow_private=False)([row])[0]
    assert out["status"] == "blocked_address" and out["dropped_at"] == "download"


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254",
                                  "::1", "0.0.0.0", "fc00::1"])
def test_private_and_link_local_addresses_are_blocked(host):
    with pytest.raises(DownloadError) as e:
        vet_host(host, 80, allow_private=False)
    assert e.value.reason == "blocked_address"


def test_retries_with_backoff_then_reports_the_status(server):
    _Handler.hits.pop("/flaky", None)
    with pytest.raises(DownloadError) as e:
        _dl(retries=2).fetch(f"{server}/flaky")
    assert e.value.reason == "http_503"
    assert _Handler.hits["/flaky"] == 3   # first try plus two retries
    _Handler.hits.pop("/missing.png", None)
    with pytest.raises(DownloadError):
        _dl(retries=2).fetch(f"{server}/missing.png")
    assert _Handler.hits["/missing.png"] == 1   # a 404 is final


def test_exclusion_by_url_and_by_content_hash(server, tmp_path):
    import hashlib
    rows = [schema.new_row(row_id=str(i), source="s", origin=f"{server}/{n}")
            for i, n in enumerate(["good1.png", "good2.jpg"])]
    stage = Download(folder=str(tmp_path), allow_private=True, timeout=1.0,
                     exclusion=(f"{server}/good1.png", hashlib.sha256(GOOD2).hexdigest()))
    out = stage(rows)
    assert [r["status"] for r in out] == ["excluded", "excluded"]
    assert not list(tmp_path.iterdir())


def test_redirect_to_a_private_address_is_refused(server, monkeypatch):
    """Every hop is checked: a public-looking first hop that redirects inside is refused."""
    import ipaddress

    import reface_hq.download as D
    # Treat 127.0.0.1 (the test server) as public and 127.0.0.2 as the internal target.
    monkeypatch.setattr(D, "_blocked", lambda ip: ip == ipaddress.ip_address("127.0.0.2"))
    assert _dl(allow_private=False).fetch(f"{server}/good1.png").data == GOOD1
    with pytest.raises(DownloadError) as e:
        _dl(allow_private=False).fetch(f"{server}/to-internal")
    assert e.value.reason == "blocked_address" and "127.0.0.2" in str(e.value)


def test_decode_refuses_oversized_files(tmp_path):
    from reface_hq.stages import Decode
    (tmp_path / "big.png").write_bytes(GOOD1 + bytes(5000))
    row = schema.new_row(row_id="b", source="s", origin="big.png",
                         local_path=str(tmp_path / "big.png"))
    out = Decode(max_bytes=1000)([row])[0]
    assert out["status"] == "file_too_large" and "max_bytes" in out["error"]
