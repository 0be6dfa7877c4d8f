"""Hardening of URL downloads: a hard deadline per URL against a server that drips bytes,
URLs with spaces or CR/LF, blank and repeated URL lines, IPv6 forms that embed a private
IPv4 address (issue 14, items 1 and 10)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from reface_hq.download import Downloader, DownloadError, vet_host
from reface_hq.sources import URLListSource

DRIP_EVERY = 0.3     # seconds between bytes: far below the socket timeout below
DRIP_FOR = 12.0      # a fixed server gives up after this; an unfixed client waits that long


class _Drip(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(65536)
        mode = self.server.mode
        self.server.hits += 1
        if mode == "headers":
            head, tail = b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"a" * 10_000
        else:
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                    b"Content-Length: 100000\r\n\r\n\x89PNG")
            tail = b"\x00" * 100_000
        try:
            self.request.sendall(head)
            stop = time.monotonic() + DRIP_FOR
            for b in tail:
                if time.monotonic() > stop or self.server.closing:
                    break
                self.request.sendall(bytes([b]))
                time.sleep(DRIP_EVERY)
        except OSError:
            pass  # the client hung up: what the deadline should do


@pytest.fixture
def drip_server():
    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        hits = 0
        closing = False
        mode = "body"

    srv = Server(("127.0.0.1", 0), _Drip)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.closing = True
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("mode", ["body", "headers"])
def test_deadline_holds_against_a_server_dripping_one_byte_at_a_time(drip_server, mode):
    drip_server.mode = mode
    url = f"http://127.0.0.1:{drip_server.server_address[1]}/face.png"
    dl = Downloader(timeout=1.0, deadline=2.0, retries=2, backoff=0.05, allow_private=True)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        dl.fetch(url)
    elapsed = time.monotonic() - t0
    assert info.value.reason == "timeout", str(info.value)
    assert "deadline of 2.0s" in str(info.value)
    # The deadline covers the URL, retries included: no second attempt after it.
    assert elapsed < 3.5, f"{mode}: held for {elapsed:.1f}s with a 2 s deadline"
    assert drip_server.hits == 1


@pytest.mark.parametrize("bad", ["/a b.png", "/a.png\r\nX-Injected: 1", "/a.png\n", "/a\tb.png"])
def test_urls_with_spaces_or_control_characters_are_bad_url_and_not_fetched(drip_server, bad):
    url = f"http://127.0.0.1:{drip_server.server_address[1]}{bad}"
    dl = Downloader(timeout=1.0, deadline=5.0, retries=2, backoff=0.5, allow_private=True)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        dl.fetch(url)
    assert info.value.reason == "bad_url" and not info.value.retry
    assert "spaces or control characters" in str(info.value)
    assert drip_server.hits == 0 and time.monotonic() - t0 < 0.5  # no request, no backoff


def test_blank_and_repeated_url_lines_get_a_status_row(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text("url,identity\n"
                    "https://a.example/1.jpg,x\n"
                    ",y\n"
                    "https://b.example/2.jpg,\n"
                    "https://a.example/1.jpg,x\n"
                    "  ,\n")
    rows = URLListSource(str(path)).rows()
    assert [(r["status"], r["origin"]) for r in rows] == [
        ("ok", "https://a.example/1.jpg"), ("blank_url", "urls.csv#row2"),
        ("ok", "https://b.example/2.jpg"), ("duplicate_url", "https://a.example/1.jpg"),
        ("blank_url", "urls.csv#row5")]
    assert rows[3]["error"] == "row 4 repeats the URL of row 1"
    assert all(r["dropped_at"] == "source" for r in rows if r["status"] != "ok")
    assert len({r["row_id"] for r in rows}) == len(rows)


@pytest.mark.parametrize("address", [
    "2002:7f00:1::1",                     # 6to4 of 127.0.0.1
    "2002:a00:1::",                       # 6to4 of 10.0.0.1
    "2002:c0a8:101::",                    # 6to4 of 192.168.1.1
    "::ffff:127.0.0.1",                   # IPv4-mapped
    "::127.0.0.1",                        # IPv4-compatible (deprecated, still routed by some)
    "64:ff9b::7f00:1",                    # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",                 # NAT64 of 169.254.169.254 (cloud metadata)
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
])
def test_ipv6_forms_embedding_a_private_ipv4_are_blocked(address):
    with pytest.raises(DownloadError) as info:
        vet_host(address, 80, allow_private=False)
    assert info.value.reason == "blocked_address"
    # ...unless private addresses are allowed on purpose.
    assert vet_host(address, 80, allow_private=True) == socket.getaddrinfo(
        address, 80, type=socket.SOCK_STREAM)[0][4][0]


def test_6to4_of_a_public_address_is_not_blocked():
    assert vet_host("2002:808:808::", 80, allow_private=False).startswith("2002:")


def test_deadline_holds_against_a_slow_resolver(monkeypatch):
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if host == "slow-dns.example":
            time.sleep(3.0)
            raise socket.gaierror(socket.EAI_AGAIN, "temporary failure")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    dl = Downloader(timeout=5.0, deadline=1.0, retries=2, backoff=0.05)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        dl.fetch("http://slow-dns.example/face.png")
    assert info.value.reason == "timeout" and "resolving host" in str(info.value)
    assert time.monotonic() - t0 < 2.0
