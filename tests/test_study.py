"""benchmarks.study: votes land in DuckDB; tampered requests are refused and change
nothing; win rates, Wilson intervals and the Bradley-Terry ranking are right."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from publish_support import handmade_results

from benchmarks import study as S
from benchmarks.store import open_store

TOKEN = "study-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def base_results(data_root, tmp_path_factory) -> Path:
    return handmade_results(tmp_path_factory.mktemp("results") / "res", data_root)


@pytest.fixture
def results(base_results, tmp_path) -> Path:
    res = tmp_path / "res"
    shutil.copytree(base_results, res)
    return res


def make_client(results: Path, **kw):
    from starlette.testclient import TestClient
    study = S.Study(S.StudyConfig(results=str(results), methods=["lq", "blur"], seed=0,
                                  token=TOKEN, **kw))
    return study, TestClient(S.create_app(study), base_url="http://127.0.0.1")


def pair_id_of(html: str) -> str:
    return re.search(r'name="pair_id" value="([^"]+)"', html).group(1)


def snapshot(results: Path) -> dict:
    """Every row of every table, to prove a refused request changed nothing."""
    with open_store(results, read_only=True) as store:
        names = [r["table_name"] for r in store.query(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "ORDER BY table_name")]
        return {n: sorted(map(repr, store.con.execute(f"SELECT * FROM {n}").fetchall()))
                for n in names}


@pytest.mark.realdata
def test_a_vote_lands_in_duckdb_with_its_pair_and_time(results):
    study, client = make_client(results)
    page = client.get(f"/study/{TOKEN}")
    assert page.status_code == 200
    assert page.headers["referrer-policy"] == "no-referrer"
    # Blind: nothing on the page names a method, a run or a file.
    for secret in ("lq", "blur", "run-", "outputs/", ".png", str(results)):
        assert not re.search(rf"\b{re.escape(secret)}\b", page.text.replace("degraded input", "")
                             ), secret
    for src in re.findall(r'src="([^"]+)"', page.text):  # LQ, 2 references, 2 candidates
        got = client.get(src)
        assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r'src="([^"]+)"', page.text)) == 5
    pid = pair_id_of(page.text)
    pair = study.pending[pid]
    resp = client.post(f"/study/{TOKEN}/vote", data={"pair_id": pid, "choice": "right"},
                       follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == f"/study/{TOKEN}"
    with open_store(results, read_only=True) as store:
        votes = store.query("SELECT * FROM study_votes")
        sessions = store.query("SELECT * FROM study_sessions")
    assert len(votes) == 1 and len(sessions) == 1
    v = votes[0]
    assert (v["pair_id"], v["choice"], v["winner_run"], v["loser_run"]) == (
        pid, "right", pair.right, pair.left)
    assert {v["left_run"], v["right_run"]} == {"run-lq-0001", "run-blur-0002"}
    assert v["image_id"] == pair.item.image_id and v["study"] == "main"
    assert 0 <= v["seconds"] < 60 and v["refs_shown"] == 2
    assert sessions[0]["session_id"] == v["session_id"] and sessions[0]["n_votes"] == 1
    # The next page is a new pair for the same session; its vote adds to the session row.
    pid2 = pair_id_of(client.get(f"/study/{TOKEN}").text)
    assert pid2 != pid
    assert client.post(f"/study/{TOKEN}/vote", data={"pair_id": pid2, "choice": "left"},
                       follow_redirects=False).status_code == 303
    with open_store(results, read_only=True) as store:
        assert store.query("SELECT n_votes FROM study_sessions")[0]["n_votes"] == 2


@pytest.mark.realdata
def test_tampered_requests_are_refused_and_leave_the_store_unchanged(results):
    study, client = make_client(results)
    pid = pair_id_of(client.get(f"/study/{TOKEN}").text)
    before = snapshot(results)
    vote = f"/study/{TOKEN}/vote"
    refused = {
        "bad token": client.post(f"/study/{'x' * 32}/vote",
                                 data={"pair_id": pid, "choice": "left"}),
        "bad token page": client.get(f"/study/{TOKEN[:-1]}X"),
        "unknown pair": client.post(vote, data={"pair_id": "A" * 24, "choice": "left"}),
        "path as pair": client.post(vote, data={"pair_id": "../../results.duckdb",
                                                "choice": "left"}),
        "path as choice": client.post(vote, data={"pair_id": pid, "choice": "/etc/passwd"}),
        "extra field": client.post(vote, data={"pair_id": pid, "choice": "left",
                                               "winner_run": "run-lq-0001"}),
        "two choices": client.post(vote, content=f"pair_id={pid}&choice=left&choice=right",
                                   headers={"content-type": "application/x-www-form-urlencoded"}),
        "json body": client.post(vote, json={"pair_id": pid, "choice": "left"}),
        "huge body": client.post(vote, data={"pair_id": pid, "choice": "left",
                                             "pad": "x" * 2_000_000}),
        "huge chunked body": client.post(
            vote, content=iter([f"pair_id={pid}&choice=left&pad=".encode()]
                               + [b"x" * 65536] * 8),
            headers={"content-type": "application/x-www-form-urlencoded"}),
        "path as media": client.get(f"/study/{TOKEN}/media/..%2F..%2Fresults.duckdb"),
        "media by name": client.get(f"/study/{TOKEN}/media/results.duckdb"),
        "get vote": client.get(vote),
    }
    from starlette.testclient import TestClient
    stranger = TestClient(S.create_app(study), base_url="http://127.0.0.1")  # no cookie
    refused["no session"] = stranger.post(vote, data={"pair_id": pid, "choice": "left"})
    stranger.get(f"/study/{TOKEN}")  # a session of its own, still not the one shown pid
    refused["other session"] = stranger.post(vote, data={"pair_id": pid, "choice": "left"})
    codes = {name: r.status_code for name, r in refused.items()}
    assert codes == {"bad token": 404, "bad token page": 404, "unknown pair": 400,
                     "path as pair": 400, "path as choice": 400, "extra field": 400,
                     "two choices": 400, "json body": 415, "huge body": 413,
                     "huge chunked body": 413, "path as media": 404, "media by name": 404,
                     "get vote": 405, "no session": 400, "other session": 400}, codes
    assert snapshot(results) == before
    # The genuine vote still works afterwards, exactly once.
    ok = client.post(vote, data={"pair_id": pid, "choice": "left"}, follow_redirects=False)
    assert ok.status_code == 303
    again = client.post(vote, data={"pair_id": pid, "choice": "left"}, follow_redirects=False)
    assert again.status_code == 400
    with open_store(results, read_only=True) as store:
        assert store.query("SELECT count(*) AS n FROM study_votes")[0]["n"] == 1


def test_wilson_interval_matches_published_values():
    # Wilson (1927) / Newcombe (1998) table: 8 of 10 -> 0.4902 to 0.9433; 0 of 10 ->
    # 0 to 0.2775; 15 of 148 -> 0.0624 to 0.1605.
    for (w, n), (lo, hi) in {(8, 10): (0.4902, 0.9433), (0, 10): (0.0, 0.2775),
                             (15, 148): (0.0624, 0.1605)}.items():
        got = S.wilson_interval(w, n)
        assert got == pytest.approx((lo, hi), abs=5e-5), (w, n, got)


def test_bradley_terry_ranks_by_strength_with_choix():
    # a beats b 8 of 10, b beats c 8 of 10, a beats c 9 of 10.
    data = [(0, 1)] * 8 + [(1, 0)] * 2 + [(1, 2)] * 8 + [(2, 1)] * 2 + [(0, 2)] * 9 + [(2, 0)]
    s = S.bradley_terry(3, data)
    assert s[0] > s[1] > s[2] and sum(s) == pytest.approx(0, abs=1e-9)
    # BT: P(a beats b) = 1 / (1 + exp(s_b - s_a)); fitted from balanced data it is near 0.8.
    assert 1 / (1 + math.exp(s[1] - s[0])) == pytest.approx(0.75, abs=0.1)


@pytest.mark.realdata
def test_results_cli_and_publish_show_the_votes(results, tmp_path, capsys):
    study, client = make_client(results)
    for _ in range(6):
        page = client.get(f"/study/{TOKEN}").text
        pid = pair_id_of(page)
        pair = study.pending[pid]
        # blur always wins: the side it sits on is the one chosen
        side = "left" if pair.left == "run-blur-0002" else "right"
        assert client.post(f"/study/{TOKEN}/vote", data={"pair_id": pid, "choice": side},
                           follow_redirects=False).status_code == 303
    assert S.main(["results", "-i", str(results), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    (st,) = res["studies"]
    top, bottom = st["methods"]
    assert (top["label"], top["wins"], top["comparisons"], top["rank"]) == ("blur", 6, 6, 1)
    assert (bottom["label"], bottom["wins"]) == ("lq", 0)
    assert (top["ci_low"], top["ci_high"]) == pytest.approx(S.wilson_interval(6, 6))
    assert S.main(["results", "-i", str(results)]) == 0
    text = capsys.readouterr().out
    assert "blur" in text and "6 votes" in text
    from benchmarks import publish as P
    assert P.main(["-i", str(results), "--out", str(tmp_path / "site")]) == 0
    index = (tmp_path / "site" / "index.html").read_text()
    assert "6 votes from 1 participant session" in index
    assert re.search(r"<td>blur</td>.*?<td class=\"num\">6</td><td class=\"num\">6</td>", index)


@pytest.mark.realdata
def test_bad_study_setup_is_one_line_error(results, capsys):
    cases = [(["--methods", "lq"], "at least two"),
             (["--methods", "lq,blurr"], "did you mean 'blur'"),
             (["--methods", "lq,broken"], "no finished run of 'broken'"),
             (["--methods", "lq,blur", "--token", "short"], "--token"),
             (["--methods", "lq,blur", "--study", "../x"], "--study"),
             (["--methods", "lq,blur", "--port", "0"], "--port")]
    for extra, needle in cases:
        assert S.main(["serve", "-i", str(results), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert S.main(["serve", "-i", str(results.parent / "nope"), "--methods", "a,b"]) == 2
    assert "no results.duckdb" in capsys.readouterr().err
    import socket
    with socket.socket() as busy:  # a port someone else listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert S.main(["serve", "-i", str(results), "--methods", "lq,blur",
                       "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 127.0.0.1 --port") and "in use" in err, err
    # The default address is this machine only.
    args = S.build_parser().parse_args(["serve", "-i", "r", "--methods", "a,b"])
    assert args.host == "127.0.0.1"
    from benchmarks.cli import build_parser
    args = build_parser().parse_args(["study", "results", "-i", str(results)])
    assert args.func(args) == 0 and "no votes recorded" in capsys.readouterr().out


@pytest.mark.realdata
def test_a_vote_is_all_or_nothing(results):
    """The vote row and the session row are one transaction: when the second insert fails
    the first is rolled back, the pair stays answerable, and the participant is told."""
    study, client = make_client(results)
    pid = pair_id_of(client.get(f"/study/{TOKEN}").text)
    with open_store(results) as store:  # break the session insert that follows the vote's
        store.con.execute("ALTER TABLE study_sessions RENAME TO study_sessions_away")
    resp = client.post(f"/study/{TOKEN}/vote", data={"pair_id": pid, "choice": "left"},
                       follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].endswith("?m=busy")
    assert "could not be saved" in client.get(resp.headers["location"]).text
    with open_store(results) as store:
        assert store.query("SELECT count(*) AS n FROM study_votes")[0]["n"] == 0
        store.con.execute("ALTER TABLE study_sessions_away RENAME TO study_sessions")
    assert pid in study.pending
    assert client.post(f"/study/{TOKEN}/vote", data={"pair_id": pid, "choice": "left"},
                       follow_redirects=False).headers["location"] == f"/study/{TOKEN}"
    with open_store(results, read_only=True) as store:
        assert store.query("SELECT count(*) AS n FROM study_votes")[0]["n"] == 1
