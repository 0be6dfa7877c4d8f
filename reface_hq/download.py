"""A small, guarded image downloader (the ``download`` stage for URL sources).

Why not img2dataset: it pins ``pandas<3`` and ``webdataset<0.3`` (this project runs
pandas 3 and webdataset 1.x) and pulls wandb and albumentations; it reads whole responses
into memory with no byte cap, retries without backoff, has no guard against private or
loopback addresses, and writes its own shard format that we would have to re-read. What
we need is one function per URL with those guards, returning a status row; this is it.

Guards, in order, for every hop (redirects included):

* scheme must be http or https;
* the host is resolved once, and *every* address must be public (no private, loopback,
  link-local, multicast, reserved or unspecified address) unless ``allow_private``;
* the connection goes to the address that was checked (no second DNS lookup that a
  rebinding attacker could answer differently); TLS still verifies the host name;
* connect/read timeouts per socket operation plus an overall deadline per URL;
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


def _blocked(ip: ipaddress._BaseAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def vet_host(host: str, port: int, *, allow_private: bool) -> str:
    """Resolve ``host`` and return one address to connect to, after checking them all."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
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
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


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
                address = vet_host(parts.hostname, port, allow_private=self.allow_private)
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
                if length and length.isdigit() and len(data) < int(length):
                    raise DownloadError("truncated", f"got {len(data):,} of {int(length):,} "
                                        "announced bytes", retry=True, http_status=status,
                                        content_type=ctype)
                return Downloaded(url, current, data, status, ctype)
            except DownloadError:
                raise
            except TimeoutError as e:
                raise DownloadError("timeout", f"timed out after {timeout:.1f}s ({e})",
                                    retry=True) from None
            except ssl.SSLError as e:
                raise DownloadError("tls_error", f"TLS error: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError("connection_error", f"{type(e).__name__}: {e}",
                                    retry=True) from None
            finally:
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
            if hashlib.sha256(got.data).hexdigest() in excluded:
                return schema.drop(row, self.name, "excluded", "content hash is on the "
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
