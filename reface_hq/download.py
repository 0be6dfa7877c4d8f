"""A small, guarded image downloader (the ``download`` stage for URL sources).

Why not img2dataset: it pins ``pandas<3`` and ``webdataset<0.3`` (this project runs
pandas 3 and webdataset 1.x) and pulls wandb and albumentations; it reads whole responses
into memory with no byte cap, retries without backoff, has no guard against private or
loopback addresses, and writes its own shard format that we would have to re-read. What
we need is one function per URL with those guards, returning a status row; this is it.

Guards, in order, for every hop (redirects included):

* scheme must be http or https, and the URL holds no space or control character;
* the host is resolved once, and *every* address must be public (no private, loopback,
  link-local, multicast, reserved or unspecified address, nor an IPv6 address carrying
  one: IPv4-mapped or -compatible, 6to4, NAT64, Teredo) unless ``allow_private``;
* the connection goes to the address that was checked (no second DNS lookup that a
  rebinding attacker could answer differently); TLS still verifies the host name;
* connect/read timeouts per socket operation plus a hard wall-clock deadline per URL
  (DNS, headers, body, redirects and retries together): a timer shuts the socket down
  when it passes, however slowly the server drips bytes;
* ``Content-Length`` and the bytes actually read are capped at ``max_bytes``;
* the ``Content-Type`` must be an image type (``application/octet-stream`` is accepted
  and left to the decoder), and the bytes must decode with the project's safe loader
  (pixel cap before decode).

Transient failures (connection errors, timeouts, HTTP 408/425/429/5xx) are retried with
exponential backoff and jitter from a seeded generator; others fail at once. Each URL
ends as a status row: ``ok`` or a reason code (``http_404``, ``timeout``,
``blocked_address``, ``not_an_image``, ``file_too_large``, ``image_too_large``,
``corrupt_image``, ``too_many_redirects``, ``bad_url``, ``connection_error``).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import http.client
import ipaddress
import random
import socket
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

from reface_core.atomic import write_bytes_atomic
from reface_core.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageTooLargeError,
    open_image,
)

from . import schema
from .stage_protocol import Stage

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
#: Reasons of a failed download that a later attempt may fix (the server was slow, down or
#: unreachable then): what ``build --retry-failed`` redoes and what makes a build exit 1.
#: A dead link (``http_404``), a refused address or a file that is not an image is final.
TRANSIENT_REASONS = frozenset({"timeout", "connection_error", "dns_error", "truncated",
                               *(f"http_{s}" for s in _RETRY_STATUS)})


def is_transient(row: dict) -> bool:
    """True for a row dropped by the download stage for a reason a retry may fix."""
    return row.get("dropped_at") == "download" and row.get("status") in TRANSIENT_REASONS
_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
        "image/bmp": ".bmp", "image/tiff": ".tif"}


class DownloadError(Exception):
    def __init__(self, reason: str, message: str, *, retry: bool = False,
                 http_status: int | None = None, content_type: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry = retry
        self.http_status = http_status
        self.content_type = content_type


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries and that a relay or a dual stack may reach:
    IPv4-mapped, IPv4-compatible, 6to4 (2002::/16), NAT64 and Teredo (server and client)."""
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in _IPV4_COMPATIBLE or any(ip in net for net in _NAT64):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def _blocked(ip: ipaddress._BaseAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if any(_blocked(v4) for v4 in _embedded_ipv4(ip)):
            return True
        if ip.ipv4_mapped is not None:
            return False  # the mapped address itself was checked above
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global)


# Spaces and control characters (CR/LF above all: header injection) make a URL invalid;
# http.client would refuse them later as a "connection error" and the URL would be retried.
_BAD_URL_CHARS = frozenset(chr(c) for c in range(0x21)) | {"\x7f"}


def _getaddrinfo(host: str, port: int, timeout: float | None):
    if timeout is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # getaddrinfo cannot be interrupted: a slow resolver would hold the URL past its
    # deadline. It runs in a helper thread; on time-out the URL fails and the thread is
    # left to end on its own (the resolver's own time-out bounds it).
    pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="resolve")
    try:
        future = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        return future.result(timeout=max(timeout, 0.0))
    except cf.TimeoutError:
        raise DownloadError("timeout", f"resolving host {host!r} took longer than the "
                            f"{timeout:.1f}s left of the deadline") from None
    finally:
        pool.shutdown(wait=False)


def vet_host(host: str, port: int, *, allow_private: bool, timeout: float | None = None) -> str:
    """Resolve ``host`` and return one address to connect to, after checking them all.

    ``timeout``: seconds the lookup may take (None: the system resolver's own limit)."""
    try:
        infos = _getaddrinfo(host, port, timeout)
    except socket.gaierror as e:
        raise DownloadError("dns_error", f"cannot resolve host {host!r}: {e}", retry=True) from None
    addresses = sorted({info[4][0] for info in infos})
    if not addresses:
        raise DownloadError("dns_error", f"host {host!r} has no address", retry=True)
    if not allow_private:
        for a in addresses:
            if _blocked(ipaddress.ip_address(a.split("%")[0])):
                raise DownloadError(
                    "blocked_address",
                    f"host {host!r} resolves to {a}, a private/loopback/link-local or reserved "
                    "address; refused (allow_private / --allow-private-addresses allows it)")
    # Prefer IPv4 for predictability; connect exactly to an address we checked.
    addresses.sort(key=lambda a: (":" in a, a))
    return addresses[0]


def _expire(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    """The URL's deadline passed: end whatever read or connect is blocked on its socket."""
    expired.set()
    sock = conn.sock
    if sock is not None:
        try:
            # The plain socket's shutdown, also under TLS: SSLSocket.shutdown would drop
            # its SSL object under the feet of the thread blocked in a read or handshake.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, address, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # Handshake after self.sock is set, so the deadline watchdog can end a dripped one.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host,
                                              do_handshake_on_connect=False)
        self.sock.do_handshake()


@dataclasses.dataclass
class Downloaded:
    url: str
    final_url: str
    data: bytes
    http_status: int
    content_type: str


@dataclasses.dataclass
class Downloader:
    """Fetch one URL with guards (see the module docstring). The constructor is the config."""

    timeout: float = 10.0           # seconds per socket operation
    deadline: float = 60.0          # seconds for the whole URL, retries included
    retries: int = 2
    backoff: float = 0.5            # first retry waits ~backoff s, then doubles (with jitter)
    max_bytes: int = 20_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_redirects: int = 5
    allow_private: bool = False
    user_agent: str = "reface-toolkit-downloader/0.1 (research dataset builder)"

    def fetch(self, url: str, *, rng: random.Random | None = None) -> Downloaded:
        rng = rng or random.Random(0)
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return self._fetch_once(url, start)
            except DownloadError as e:
                attempt += 1
                wait = self.backoff * (2 ** (attempt - 1)) * (0.5 + rng.random())
                if not e.retry or attempt > self.retries or \
                        time.monotonic() - start + wait > self.deadline:
                    raise
                time.sleep(wait)

    def _fetch_once(self, url: str, start: float) -> Downloaded:
        current = url
        for _hop in range(self.max_redirects + 1):
            bad = sorted({repr(c) for c in current if c in _BAD_URL_CHARS})
            if bad:
                raise DownloadError("bad_url", f"{current!r} holds spaces or control "
                                    f"characters ({', '.join(bad)})")
            # A malformed URL (bad IPv6 literal, port out of range, a host label IDNA
            # cannot encode) is this URL's status row, not an exception that ends the build.
            try:
                parts = urllib.parse.urlsplit(current)
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError as e:
                raise DownloadError("bad_url", f"{current!r} is not a valid URL ({e})") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise DownloadError("bad_url", f"{current!r} is not an http(s) URL with a host")
            try:
                address = vet_host(parts.hostname, port, allow_private=self.allow_private,
                                   timeout=self.deadline - (time.monotonic() - start))
            except UnicodeError as e:
                raise DownloadError("bad_url", f"{current!r}: host {parts.hostname!r} is not "
                                    f"a valid host name ({e})") from None
            remaining = self.deadline - (time.monotonic() - start)
            if remaining <= 0:
                raise DownloadError("timeout", f"deadline of {self.deadline}s exceeded")
            timeout = min(self.timeout, remaining)
            if parts.scheme == "https":
                conn = _PinnedHTTPSConnection(parts.hostname, port, address, timeout,
                                              ssl.create_default_context())
            else:
                conn = _PinnedHTTPConnection(parts.hostname, port, address, timeout)
            path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            # Socket timeouts bound each read, not the URL: a server that sends one byte
            # every few seconds (in the headers or the body) never trips them. A timer shuts
            # the socket down when the URL's deadline passes; the blocked read then ends.
            expired = threading.Event()
            watchdog = threading.Timer(remaining, _expire, args=(conn, expired))
            watchdog.daemon = True
            watchdog.start()
            try:
                conn.request("GET", path, headers={"User-Agent": self.user_agent,
                                                   "Accept": "image/*",
                                                   "Accept-Encoding": "identity"})
                resp = conn.getresponse()
                status = resp.status
                ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
                if status in (301, 302, 303, 307, 308):
                    location = resp.getheader("Location")
                    if not location:
                        raise DownloadError("bad_redirect", f"HTTP {status} without Location",
                                            http_status=status)
                    current = urllib.parse.urljoin(current, location)
                    continue
                if status != 200:
                    raise DownloadError(f"http_{status}", f"HTTP {status} {resp.reason}",
                                        retry=status in _RETRY_STATUS, http_status=status,
                                        content_type=ctype)
                if not (ctype.startswith("image/") or ctype in ("", "application/octet-stream")):
                    raise DownloadError("not_an_image", f"Content-Type {ctype!r} is not an image",
                                        http_status=status, content_type=ctype)
                length = resp.getheader("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise DownloadError("file_too_large",
                                        f"Content-Length {int(length):,} exceeds max_bytes "
                                        f"{self.max_bytes:,}", http_status=status,
                                        content_type=ctype)
                data = self._read_capped(resp, start, status, ctype)
                if expired.is_set():
                    raise DownloadError("timeout", f"deadline of {self.deadline}s exceeded "
                                        "while reading")
                if length and length.isdigit() and len(data) < int(length):
                    raise DownloadError("truncated", f"got {len(data):,} of {int(length):,} "
                                        "announced bytes", retry=True, http_status=status,
                                        content_type=ctype)
                return Downloaded(url, current, data, status, ctype)
            except DownloadError as e:
                if expired.is_set() and e.reason != "timeout":
                    raise DownloadError("timeout", f"deadline of {self.deadline}s exceeded "
                                        f"({e})") from None
                raise
            except (OSError, http.client.HTTPException) as e:
                if expired.is_set():
                    raise DownloadError("timeout", f"deadline of {self.deadline}s exceeded "
                                        f"({type(e).__name__})") from None
                if isinstance(e, TimeoutError):
                    raise DownloadError("timeout", f"timed out after {timeout:.1f}s ({e})",
                                        retry=True) from None
                if isinstance(e, ssl.SSLError):
                    raise DownloadError("tls_error", f"TLS error: {e}") from None
                raise DownloadError("connection_error", f"{type(e).__name__}: {e}",
                                    retry=True) from None
            finally:
                watchdog.cancel()
                conn.close()
        raise DownloadError("too_many_redirects", f"more than {self.max_redirects} redirects")

    def _read_capped(self, resp, start: float, status: int, ctype: str) -> bytes:
        chunks, total = [], 0
        while True:
            if time.monotonic() - start > self.deadline:
                raise DownloadError("timeout", f"deadline of {self.deadline}s exceeded while "
                                    "reading", retry=False)
            block = resp.read(1 << 16)
            if not block:
                break
            total += len(block)
            if total > self.max_bytes:
                raise DownloadError("file_too_large", f"more than max_bytes {self.max_bytes:,} "
                                    "bytes", http_status=status, content_type=ctype)
            chunks.append(block)
        return b"".join(chunks)

    def validate(self, data: bytes, url: str) -> tuple[int, int]:
        """Decode-check downloaded bytes; (width, height) or a DownloadError."""
        try:
            img = open_image(data, max_pixels=self.max_pixels, name=url)
        except ImageTooLargeError as e:
            raise DownloadError("image_too_large", e.reason) from None
        except ImageLoadError as e:
            reason = "not_an_image" if "not a recognised" in e.reason else "corrupt_image"
            raise DownloadError(reason, e.reason) from None
        try:
            return img.size
        finally:
            img.close()


@dataclasses.dataclass
class Download(Stage):
    """Fetch rows whose ``origin`` is a URL into ``folder``; other rows pass through.

    ``folder`` is where the bytes land (``<sha1(url)>.<ext>``, written atomically). A URL
    or sha256 on the exclusion list is refused before/after fetching, never stored.
    """

    name = "download"
    folder: str = "downloads"
    threads: int = 8
    timeout: float = 10.0
    deadline: float = 60.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 20_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_private: bool = False
    seed: int = 0
    exclusion: tuple[str, ...] = ()

    def __post_init__(self):
        # timeout=0 would make sockets non-blocking: every URL would fail with a
        # confusing connection error instead of one clear message here.
        for field, value, low in (("timeout", self.timeout, 0), ("deadline", self.deadline, 0),
                                  ("max_bytes", self.max_bytes, 0)):
            if not value > low:
                raise ValueError(f"download {field} must be > {low}, got {value}")
        if self.retries < 0 or self.threads < 1:
            raise ValueError(f"download retries must be >= 0 and threads >= 1, got "
                             f"retries={self.retries}, threads={self.threads}")

    def config(self) -> dict:
        # The seed only spaces out retries and the thread count only overlaps downloads:
        # neither changes a row, so neither is part of the fingerprint (a build with
        # another --seed reuses every cached shard; only the split changes).
        return {k: v for k, v in super().config().items() if k not in ("seed", "threads")}

    def _downloader(self) -> Downloader:
        return Downloader(timeout=self.timeout, deadline=self.deadline, retries=self.retries,
                          backoff=self.backoff, max_bytes=self.max_bytes,
                          max_pixels=self.max_pixels, allow_private=self.allow_private)

    def process(self, rows: list[dict]) -> list[dict]:
        todo = [i for i, r in enumerate(rows) if schema.is_ok(r) and not r.get("local_path")
                and str(r.get("origin") or "").lower().startswith(("http://", "https://"))]
        out = list(rows)
        if not todo:
            return out
        excluded = set(self.exclusion)
        downloader = self._downloader()
        with cf.ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            futures = {pool.submit(self._one, downloader, rows[i], excluded): i for i in todo}
            for fut in cf.as_completed(futures):
                out[futures[fut]] = fut.result()
        return out

    def _one(self, downloader: Downloader, row: dict, excluded: set) -> dict:
        url = row["origin"]
        if url in excluded:
            return schema.drop(row, self.name, "excluded", "URL is on the exclusion list")
        # Retry jitter from a per-URL seeded generator: reruns back off the same way.
        rng = random.Random(f"{self.seed}:{url}")
        got = None
        try:
            got = downloader.fetch(url, rng=rng)
            sha = hashlib.sha256(got.data).hexdigest()
            if sha in excluded:
                return schema.drop(dict(row, sha256=sha), self.name, "excluded", "content hash is on the "
                                   "exclusion list")
            width, height = downloader.validate(got.data, url)
        except DownloadError as e:
            out = schema.drop(row, self.name, e.reason, str(e))
            out.update(http_status=got.http_status if got else e.http_status,
                       content_type=got.content_type if got else e.content_type)
            return out
        ext = _EXT.get(got.content_type) or Path(urllib.parse.urlsplit(url).path).suffix.lower()
        if not ext or len(ext) > 6 or not ext[1:].isalnum():
            ext = ".img"
        dest = Path(self.folder) / (hashlib.sha1(url.encode("utf-8")).hexdigest() + ext)
        write_bytes_atomic(dest, got.data)
        out = dict(row)
        out.update(local_path=str(dest), http_status=got.http_status,
                   content_type=got.content_type, width=width, height=height)
        return out
