"""A blind A/B user study over the restorations in a results store, and its analysis.

``python -m benchmarks.study serve -i DIR --methods a,b[,c]`` starts a small web app
(Starlette, served by uvicorn) on 127.0.0.1. Each page shows one LQ face (and, unless
``--no-refs``, reference photos of the same person) and two restorations of it by two of
the chosen methods, in random order, with nothing that names the methods. The participant
clicks the better one; the vote goes into the store's ``study_votes`` table.

Safety, because a study page may be opened by people other than its author:

* the server binds 127.0.0.1 unless ``--host`` says otherwise;
* every URL carries the study token (random, printed at start; compared in constant time);
  a wrong token is a 404, the same as a page that does not exist;
* pairs are server-issued random ids held in server memory with the participant session
  they were shown to; images are served by random ids mapped to files at start-up, so no
  value from a request is ever used as a file path;
* a vote must name a pending pair of the caller's own session and ``left`` or ``right``
  and nothing else; request bodies over :data:`MAX_BODY` bytes are refused (413) before
  they are parsed;
* each vote is one DuckDB transaction (session row and vote row together), committed
  before the response, so a crash loses no answered vote and never leaves half of one.
  The pair id is the vote's primary key, so a replayed form cannot count twice.

``python -m benchmarks.study results -i DIR`` prints win rates with 95% Wilson
intervals and a Bradley-Terry ranking fitted with ``choix``; ``benchmarks.publish`` shows
the same tables when votes exist.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import random
import re
import secrets
import sys
import threading
import time
from pathlib import Path

from reface_core.registry import did_you_mean

STUDY_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS study_sessions (
        session_id VARCHAR PRIMARY KEY,
        study VARCHAR,
        started_at TIMESTAMP,
        last_vote_at TIMESTAMP,
        n_votes INTEGER)""",
    """CREATE TABLE IF NOT EXISTS study_votes (
        pair_id VARCHAR PRIMARY KEY,
        study VARCHAR,
        session_id VARCHAR,
        dataset_hash VARCHAR,
        image_id VARCHAR,
        left_run VARCHAR,
        right_run VARCHAR,
        choice VARCHAR,
        winner_run VARCHAR,
        loser_run VARCHAR,
        shown_at TIMESTAMP,
        answered_at TIMESTAMP,
        seconds DOUBLE,
        refs_shown INTEGER)""",
)

#: Largest request body accepted (a vote form is under 100 bytes).
MAX_BODY = 4096
#: A pair not answered within this many seconds is forgotten.
PAIR_TTL = 6 * 3600
#: Pending pairs kept at most (the oldest go first), so a flood of page loads cannot grow
#: the server's memory without bound.
MAX_PENDING = 20000
#: Sessions without a vote one client address may hold; its oldest goes first, so a flood
#: of page loads from one place evicts only its own sessions, never a voter's.
MAX_IDLE_SESSIONS_PER_CLIENT = 50
#: Seconds a client may take to send a whole request body (a vote form is one packet); a
#: slow body is answered 408 rather than holding a connection open.
BODY_TIMEOUT = 10.0
COOKIE = "reface_study_session"
_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
Z95 = 1.959963984540054


class StudyError(ValueError):
    """Bad study set-up (unknown method, no common images); the message names the input."""


# --------------------------------------------------------------------------- analysis


def wilson_interval(wins: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (better than the normal one at small n)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bradley_terry(n_items: int, comparisons: list[tuple[int, int]],
                  alpha: float = 0.01) -> list[float]:
    """Bradley-Terry log-strengths (mean 0) from (winner, loser) index pairs, via choix.

    ``alpha`` is choix's regularisation; it keeps the fit finite when one method won every
    comparison (the maximum-likelihood strength is then infinite).
    """
    import choix
    if n_items < 2 or not comparisons:
        return [0.0] * n_items
    params = choix.ilsr_pairwise(n_items, comparisons, alpha=alpha)
    params = params - params.mean()
    return [float(v) for v in params]


def _labels(runs: list[dict]) -> dict[str, str]:
    names = [r["restorer"] for r in runs]
    return {r["run_id"]: (r["restorer"] if names.count(r["restorer"]) == 1
                          else f"{r['restorer']} [{str(r['config_hash'])[:8]}]") for r in runs}


def study_results_from_con(con, study: str | None = None) -> dict:
    """Win rates, Wilson intervals and Bradley-Terry strengths per study, from a connection."""
    tables = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables").fetchall()}
    empty = {"n_votes": 0, "n_sessions": 0, "studies": []}
    if "study_votes" not in tables:
        return empty
    where, params = ("WHERE study = ?", [study]) if study else ("", [])
    votes = con.execute(f"SELECT study, dataset_hash, session_id, winner_run, loser_run "
                        f"FROM study_votes {where} ORDER BY study, answered_at, pair_id",
                        params).fetchall()
    if not votes:
        return empty
    run_rows = con.execute("SELECT run_id, restorer, config_hash, dataset FROM runs").fetchall()
    runs = {r[0]: {"run_id": r[0], "restorer": r[1] or r[0], "config_hash": r[2] or "",
                   "dataset": r[3] or ""} for r in run_rows}
    out = {"n_votes": len(votes), "n_sessions": len({v[2] for v in votes}), "studies": []}
    for name in sorted({v[0] for v in votes}):
        mine = [v for v in votes if v[0] == name]
        ids = sorted({v[3] for v in mine} | {v[4] for v in mine})
        index = {rid: i for i, rid in enumerate(ids)}
        known = [runs.get(rid, {"run_id": rid, "restorer": rid, "config_hash": "",
                                "dataset": ""}) for rid in ids]
        labels = _labels(known)
        strengths = bradley_terry(len(ids), [(index[v[3]], index[v[4]]) for v in mine])
        methods = []
        for rid, s in zip(ids, strengths, strict=False):
            wins = sum(1 for v in mine if v[3] == rid)
            n = sum(1 for v in mine if rid in (v[3], v[4]))
            lo, hi = wilson_interval(wins, n)
            methods.append({"run_id": rid, "label": labels[rid], "wins": wins,
                            "comparisons": n, "win_rate": wins / n if n else float("nan"),
                            "ci_low": lo, "ci_high": hi, "strength": s})
        methods.sort(key=lambda m: (-m["strength"], m["label"]))
        for rank, m in enumerate(methods, 1):
            m["rank"] = rank
        pairs = {}
        for v in mine:
            key = tuple(sorted((v[3], v[4])))
            rec = pairs.setdefault(key, {"a": labels[key[0]], "b": labels[key[1]],
                                         "a_wins": 0, "b_wins": 0})
            rec["a_wins" if v[3] == key[0] else "b_wins"] += 1
        out["studies"].append({
            "study": name, "dataset": runs.get(ids[0], {}).get("dataset", ""),
            "n_votes": len(mine), "n_sessions": len({v[2] for v in mine}),
            "methods": methods, "pairs": list(pairs.values())})
    return out


def study_results(results_dir, study: str | None = None) -> dict:
    from .store import open_store
    with open_store(results_dir, read_only=True) as store:
        return study_results_from_con(store.con, study)


# --------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Item:
    """One LQ face every chosen method restored."""

    image_id: str
    lq: str                     # media key
    outputs: dict[str, str]     # run_id -> media key
    refs: list[str]             # media keys


@dataclasses.dataclass
class Pair:
    pair_id: str
    session_id: str
    item: Item
    left: str                   # run ids
    right: str
    shown_at: float             # time.time()
    refs_shown: int


def _did_you_mean(name: str, options) -> str:
    return did_you_mean(name, options)


def resolve_methods(store, methods: list[str], dataset: str | None) -> list[dict]:
    """Each name is a run id or a restorer name with one finished run (on ``dataset``)."""
    if len(methods) < 2:
        raise StudyError(f"--methods needs at least two methods, got {methods!r}")
    if len(set(methods)) != len(methods):
        raise StudyError(f"--methods names a method twice: {methods!r}")
    runs = store.query("SELECT * FROM runs WHERE status = 'done' ORDER BY restorer, run_id")
    if dataset:
        runs = [r for r in runs if dataset in (r["dataset"], r["dataset_hash"])]
        if not runs:
            raise StudyError(f"--dataset {dataset!r}: no finished run on it")
    chosen = []
    for m in methods:
        hit = [r for r in runs if r["run_id"] == m] or [r for r in runs if r["restorer"] == m]
        if not hit:
            options = {r["restorer"] for r in runs} | {r["run_id"] for r in runs}
            finished = ", ".join(sorted({r["restorer"] for r in runs})) or "none"
            raise StudyError(f"--methods: no finished run of {m!r}{_did_you_mean(m, options)} "
                             f"(finished: {finished})")
        if len(hit) > 1:
            raise StudyError(f"--methods: {m!r} has {len(hit)} finished runs "
                             f"({', '.join(r['run_id'] for r in hit)}); name a run id"
                             + ("" if dataset else " or pass --dataset"))
        chosen.append(hit[0])
    hashes = {r["dataset_hash"] for r in chosen}
    if len(hashes) > 1:
        raise StudyError("--methods: the runs are on different datasets "
                         f"({', '.join(sorted(str(h) for h in hashes))}); pass --dataset")
    if len({r["run_id"] for r in chosen}) != len(chosen):
        raise StudyError(f"--methods: {methods!r} name the same run twice")
    return chosen


@dataclasses.dataclass
class StudyConfig:
    """Everything a study server needs; the CLI flags map one to one."""

    results: str
    methods: list[str]
    study: str = "main"
    dataset: str | None = None
    refs: int = 2
    token: str | None = None
    seed: int | None = None
    max_body: int = MAX_BODY


class Study:
    """The server-side state of one study: items, media ids, pending pairs, vote writing."""

    def __init__(self, config: StudyConfig):
        from .publish import _json_list, resolve_store_path
        from .store import StoreError, open_store
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", config.study):
            raise StudyError(f"--study {config.study!r}: use 1-64 letters, digits, '.', '_', '-'")
        if config.token is not None and not _ID.fullmatch(config.token):
            raise StudyError("--token: use 16-64 letters, digits, '_' or '-'")
        if config.refs < 0:
            raise StudyError(f"--refs must be >= 0, got {config.refs}")
        self.config = config
        self.root = Path(config.results)
        if not (self.root / "results.duckdb").is_file():
            raise StudyError(f"--input {config.results!r}: no results.duckdb in it")
        self.token = config.token or secrets.token_urlsafe(24)
        self.rng = random.Random(config.seed if config.seed is not None else secrets.randbits(64))
        try:
            store = open_store(self.root)
        except StoreError as e:
            raise StudyError(str(e)) from None
        with store:
            for stmt in STUDY_SCHEMA:
                store.con.execute(stmt)
            self.runs = resolve_methods(store, config.methods, config.dataset)
            self.dataset_hash = self.runs[0]["dataset_hash"]
            run_ids = [r["run_id"] for r in self.runs]
            marks = ", ".join("?" * len(run_ids))
            outputs = store.query(f"SELECT run_id, image_id, output_path FROM outputs WHERE "
                                  f"status = 'ok' AND run_id IN ({marks})", run_ids)
            images = {r["image_id"]: r for r in store.query(
                "SELECT * FROM images WHERE dataset_hash = ?", [self.dataset_hash])}
            counts = store.query(
                "SELECT least(left_run, right_run) AS a, greatest(left_run, right_run) AS b, "
                "count(*) AS n FROM study_votes WHERE study = ? GROUP BY ALL", [config.study])
        self.media: dict[str, Path] = {}
        self.allowed_roots = _allowed_roots(self.root, self.runs)

        def servable(p: Path | None) -> bool:
            # An edited store may name any file (/etc/passwd): only images inside the
            # results folder or a run's dataset folder are ever served.
            return p is not None and p.is_file() and any(
                p.resolve().is_relative_to(r) for r in self.allowed_roots)
        by_image: dict[str, dict[str, Path]] = {}
        for o in outputs:
            p = resolve_store_path(self.root, o["output_path"])
            if servable(p):
                by_image.setdefault(o["image_id"], {})[o["run_id"]] = p
        self.items: list[Item] = []
        for image_id in sorted(by_image):
            outs, rec = by_image[image_id], images.get(image_id)
            lq = resolve_store_path(self.root, rec["lq_path"]) if rec else None
            if len(outs) < len(run_ids) or not servable(lq):
                continue  # every pair must be possible on every item shown
            refs = [resolve_store_path(self.root, r) for r in _json_list(rec.get("ref_paths"))]
            refs = [r for r in refs if servable(r)][:config.refs]
            self.items.append(Item(image_id, self._media(lq),
                                   {rid: self._media(p) for rid, p in outs.items()},
                                   [self._media(r) for r in refs]))
        if not self.items:
            raise StudyError("--methods: no image has an output from every chosen method "
                             f"({', '.join(r['restorer'] for r in self.runs)})")
        self.labels = _labels(self.runs)
        self.pair_counts = {tuple(sorted((a, b))): 0 for i, a in enumerate(run_ids)
                            for b in run_ids[i + 1:]}
        for c in counts:
            if (c["a"], c["b"]) in self.pair_counts:
                self.pair_counts[(c["a"], c["b"])] = int(c["n"])
        self.pending: dict[str, Pair] = {}
        self.sessions: dict[str, dict] = {}
        self.lock = threading.Lock()

    def _media(self, path: Path) -> str:
        key = secrets.token_urlsafe(18)
        self.media[key] = path.resolve()
        return key

    # --- pairs -------------------------------------------------------------------------
    def new_session(self, client: str = "") -> str:
        """A session for a page load without one. Memory stays bounded without letting a
        flood of page loads evict honest sessions: a client's own idle sessions (no vote
        yet) go first, then the oldest idle session of the client holding the most; a
        voter's session goes last."""
        sid = secrets.token_urlsafe(18)
        with self.lock:
            idle_here = [k for k, v in self.sessions.items()
                         if v["client"] == client and not v["votes"]]
            if len(idle_here) >= MAX_IDLE_SESSIONS_PER_CLIENT:
                del self.sessions[idle_here[0]]
            if len(self.sessions) >= MAX_PENDING:
                # the oldest idle session of the client holding the most idle sessions
                idle: dict[str, list[str]] = {}
                for k, v in self.sessions.items():
                    if not v["votes"]:
                        idle.setdefault(v["client"], []).append(k)
                victim = max(idle.values(), key=len)[0] if idle else next(iter(self.sessions))
                del self.sessions[victim]
            self.sessions[sid] = {"started_at": time.time(), "seen": set(), "votes": 0,
                                  "client": client}
        return sid

    def issue_pair(self, session_id: str) -> Pair:
        """The least-voted method pair on an item this session has not judged for it."""
        with self.lock:
            self._expire()
            sess = self.sessions[session_id]
            low = min(self.pair_counts.values())
            candidates = [k for k, n in self.pair_counts.items() if n == low]
            a, b = self.rng.choice(candidates)
            fresh = [it for it in self.items if (it.image_id, a, b) not in sess["seen"]]
            item = self.rng.choice(fresh or self.items)
            left, right = (a, b) if self.rng.random() < 0.5 else (b, a)
            pair = Pair(secrets.token_urlsafe(18), session_id, item, left, right, time.time(),
                        len(item.refs))
            self.pending[pair.pair_id] = pair
            while len(self.pending) > MAX_PENDING:
                self.pending.pop(next(iter(self.pending)))
            return pair

    def _expire(self) -> None:
        cutoff = time.time() - PAIR_TTL
        for pid in [p for p, pair in self.pending.items() if pair.shown_at < cutoff]:
            del self.pending[pid]

    def record_vote(self, pair_id: str, session_id: str, choice: str) -> dict:
        """Write one vote in one transaction; raise VoteRefused for anything not valid."""
        import duckdb
        with self.lock:
            pair = self.pending.get(pair_id)
            if pair is None:
                raise VoteRefused(400, "unknown or already answered pair")
            if not secrets.compare_digest(pair.session_id, session_id):
                raise VoteRefused(400, "this pair was shown to another session")
            now = time.time()
            winner, loser = (pair.left, pair.right) if choice == "left" else (pair.right, pair.left)
            shown = dt.datetime.fromtimestamp(pair.shown_at, dt.timezone.utc).replace(tzinfo=None)
            answered = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(tzinfo=None)
            row = [pair.pair_id, self.config.study, session_id, self.dataset_hash,
                   pair.item.image_id, pair.left, pair.right, choice, winner, loser, shown,
                   answered, round(now - pair.shown_at, 3), pair.refs_shown]
            started = dt.datetime.fromtimestamp(self.sessions.get(session_id, {}).get(
                "started_at", pair.shown_at), dt.timezone.utc).replace(tzinfo=None)
            try:
                # A connection per vote: between votes the store is free for publish to read.
                con = duckdb.connect(str(self.root / "results.duckdb"))
            except duckdb.Error:
                raise VoteRefused(503, "the results store is busy; answer again") from None
            try:
                con.execute("BEGIN TRANSACTION")
                con.execute("INSERT INTO study_votes VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                con.execute(
                    "INSERT INTO study_sessions VALUES (?, ?, ?, ?, 1) ON CONFLICT (session_id) "
                    "DO UPDATE SET last_vote_at = excluded.last_vote_at, "
                    "n_votes = study_sessions.n_votes + 1",
                    [session_id, self.config.study, started, answered])
                con.execute("COMMIT")
            except duckdb.Error as e:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise VoteRefused(409 if "Constraint" in str(e) else 503,
                                  "vote not recorded") from None
            finally:
                con.close()
            del self.pending[pair_id]
            self.pair_counts[tuple(sorted((pair.left, pair.right)))] += 1
            sess = self.sessions.get(session_id)
            if sess is not None:
                sess["seen"].add((pair.item.image_id, *sorted((pair.left, pair.right))))
                sess["votes"] += 1
            return {"winner": winner, "loser": loser}


def _allowed_roots(results: Path, runs: list[dict]) -> list[Path]:
    """The folders the study may serve images from: the results folder and each chosen
    run's dataset folder (``dataset_config.data``)."""
    from reface_core.fsnames import path_from_text
    roots = [results.resolve()]
    for r in runs:
        try:
            cfg = r.get("dataset_config")
            cfg = json.loads(cfg) if isinstance(cfg, str) else (cfg or {})
            data = cfg.get("data") if isinstance(cfg, dict) else None
        except (ValueError, TypeError):
            data = None
        if data:
            roots.append(path_from_text(data).resolve())
    return roots


class VoteRefused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- web app


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes before the app sees it.

    The declared Content-Length is checked first; a body sent without one (chunked) is
    read up to the limit and refused as soon as it passes it. The whole body must arrive
    within ``timeout`` seconds (408 otherwise).
    """

    def __init__(self, app, limit: int, timeout: float = BODY_TIMEOUT):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import PlainTextResponse
        too_big = PlainTextResponse("request body too large", status_code=413)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await PlainTextResponse("bad content-length", 400)(scope, receive, send)
                if declared > self.limit:
                    return await too_big(scope, receive, send)
        import asyncio
        chunks, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout
        while more:
            try:
                message = await asyncio.wait_for(
                    receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                slow = PlainTextResponse("request body too slow", status_code=408,
                                         headers={"Connection": "close"})
                return await slow(scope, receive, send)
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await too_big(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


_HEADERS = {
    # The token is in the URL: never send it on in a Referer, never cache a page.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def create_app(study: Study):
    """The Starlette app of a study (also what the tests drive with TestClient)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "report")),
                      autoescape=True, undefined=StrictUndefined)
    page = env.get_template("study.html.j2")
    css = (Path(__file__).parent / "report" / "static" / "study.css").read_text(encoding="utf-8")
    base = f"/study/{study.token}"

    def not_found():
        return PlainTextResponse("not found", status_code=404, headers=_HEADERS)

    def token_ok(request: Request) -> bool:
        return secrets.compare_digest(str(request.path_params.get("token", "")).encode(),
                                      study.token.encode())

    def session_of(request: Request) -> str | None:
        sid = request.cookies.get(COOKIE, "")
        return sid if _ID.fullmatch(sid) and sid in study.sessions else None

    async def show(request: Request):
        if not token_ok(request):
            return not_found()
        sid = session_of(request)
        new = sid is None
        if new:
            sid = study.new_session(request.client.host if request.client else "")
        pair = study.issue_pair(sid)
        html = page.render(css=css, base=base, pair=pair, votes=study.sessions[sid]["votes"],
                           message=request.query_params.get("m", "") == "busy")
        resp = HTMLResponse(html, headers=_HEADERS)
        if new:
            resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path=base)
        return resp

    async def vote(request: Request):
        if not token_ok(request):
            return not_found()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return PlainTextResponse("send the study form", status_code=415, headers=_HEADERS)
        try:
            form = await request.form(max_files=0, max_fields=4)
        except (HTTPException, ValueError):  # malformed form data is the client's error
            return PlainTextResponse("malformed form", status_code=400, headers=_HEADERS)
        fields = dict(form.multi_items())
        if set(fields) != {"pair_id", "choice"} or len(form.multi_items()) != 2:
            return PlainTextResponse("expected exactly pair_id and choice", status_code=400,
                                     headers=_HEADERS)
        pair_id, choice = str(fields["pair_id"]), str(fields["choice"])
        if not _ID.fullmatch(pair_id) or choice not in ("left", "right"):
            return PlainTextResponse("invalid pair_id or choice", status_code=400,
                                     headers=_HEADERS)
        sid = session_of(request)
        if sid is None:
            return PlainTextResponse("no study session; reload the study page", status_code=400,
                                     headers=_HEADERS)
        try:
            study.record_vote(pair_id, sid, choice)
        except VoteRefused as e:
            if e.status == 503:
                return RedirectResponse(f"{base}?m=busy", status_code=303, headers=_HEADERS)
            return PlainTextResponse(e.reason, status_code=e.status, headers=_HEADERS)
        return RedirectResponse(base, status_code=303, headers=_HEADERS)

    async def media(request: Request):
        if not token_ok(request):
            return not_found()
        key = str(request.path_params.get("key", ""))
        path = study.media.get(key) if _ID.fullmatch(key) else None
        if path is None or not path.is_file():
            return not_found()
        return FileResponse(path, headers=_HEADERS)

    routes = [Route("/study/{token}", show, methods=["GET"]),
              Route("/study/{token}/vote", vote, methods=["POST"]),
              Route("/study/{token}/media/{key}", media, methods=["GET"])]
    app = Starlette(routes=routes)
    return BodyLimit(app, study.config.max_body)


def serve(study: Study, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn
    url_host = f"[{host}]" if ":" in host else host
    print(f"study {study.config.study!r}: {len(study.items)} faces, methods "
          f"{', '.join(study.labels.values())} (shown blind)")
    print(f"open: http://{url_host}:{port}/study/{study.token}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach it and has the link can "
              "vote", file=sys.stderr)
    uvicorn.run(create_app(study), host=host, port=port, log_level="warning",
                access_log=False, server_header=False)


# --------------------------------------------------------------------------- CLI


def _add_serve(p: argparse.ArgumentParser) -> None:
    from reface_core.cli import add_input
    add_input(p, "results folder (has results.duckdb)", dest="results", metavar="DIR",
              deprecated=("--results",))
    p.add_argument("--methods", required=True, metavar="A,B[,C]",
                   help="restorer names or run ids, comma-separated (at least two)")
    p.add_argument("--dataset", metavar="NAME",
                   help="dataset name or hash, when the runs are on several")
    p.add_argument("--study", default="main", metavar="NAME", help="study name (default: main)")
    p.add_argument("--refs", type=int, default=2, metavar="N",
                   help="reference photos shown beside the LQ face (default 2; 0 = none)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    p.add_argument("--token", help="study token for the URL (default: a new random one)")
    p.add_argument("--seed", type=int, help="seed of the pair order (default: random)")
    p.set_defaults(func=_cmd_serve)


def _add_results(p: argparse.ArgumentParser) -> None:
    from reface_core.cli import add_input
    add_input(p, "results folder (has results.duckdb)", dest="results", metavar="DIR",
              deprecated=("--results",))
    p.add_argument("--study", metavar="NAME", help="only this study (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_results)


def _add_commands(sub) -> None:
    _add_serve(sub.add_parser("serve", help="start the blind A/B study web app"))
    _add_results(sub.add_parser("results", help="win rates and Bradley-Terry ranking"))


def _parse_methods(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _cmd_serve(args) -> int:
    if not 0 < args.port < 65536:
        print(f"error: --port {args.port}: must be 1-65535", file=sys.stderr)
        return 2
    problem = _cannot_listen(args.host, args.port)
    if problem:
        print(f"error: --host {args.host} --port {args.port}: cannot listen there ({problem})",
              file=sys.stderr)
        return 2
    try:
        study = Study(StudyConfig(results=args.results, methods=_parse_methods(args.methods),
                                  study=args.study, dataset=args.dataset, refs=args.refs,
                                  token=args.token, seed=args.seed))
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    serve(study, args.host, args.port)
    return 0


def _cannot_listen(host: str, port: int) -> str | None:
    """Why uvicorn could not bind host:port (in use, no such address), or None."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _cmd_results(args) -> int:
    from .store import StoreError
    if not (Path(args.results) / "results.duckdb").is_file():
        print(f"error: --input {args.results!r}: no results.duckdb in it", file=sys.stderr)
        return 2
    try:
        res = study_results(args.results, args.study)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    if not res["n_votes"]:
        print("no votes recorded" + (f" for study {args.study!r}" if args.study else ""))
        return 0
    for s in res["studies"]:
        print(f"study {s['study']!r} on {s['dataset']}: {s['n_votes']} votes, "
              f"{s['n_sessions']} sessions")
        print(f"  {'rank':>4}  {'method':<24} {'wins':>5} {'of':>5}  {'win rate':>8}  "
              f"{'95% Wilson CI':<15} {'BT strength':>11}")
        for m in s["methods"]:
            print(f"  {m['rank']:>4}  {m['label']:<24} {m['wins']:>5} {m['comparisons']:>5}  "
                  f"{_fmt(m['win_rate']):>8}  {_fmt(m['ci_low'])}-{_fmt(m['ci_high']):<9} "
                  f"{_fmt(m['strength']):>11}")
    return 0


def add_subcommands(subparsers) -> None:
    """``python -m benchmarks study serve|results ...``."""
    p = subparsers.add_parser("study", help="blind A/B user study: serve, results")
    sub = p.add_subparsers(dest="study_command", metavar="COMMAND", required=True)
    _add_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study",
                                description="Blind A/B user study over a results store.")
    sub = p.add_subparsers(dest="study_command", metavar="COMMAND", required=True)
    _add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from reface_core.cli import run_main
    return run_main(build_parser, argv)


if __name__ == "__main__":
    from reface_core.cli import exit_with
    exit_with(main)


__all__ = ["Study", "StudyConfig", "StudyError", "bradley_terry", "create_app", "main",
           "study_results", "study_results_from_con", "wilson_interval"]
