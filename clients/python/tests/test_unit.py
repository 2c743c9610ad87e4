"""Offline tests: parsing and encoding, no node needed."""

from __future__ import annotations

import json

import pytest

from shoal_client import BadRequest, JobDetail, NotFound, ShoalError
from shoal_client._common import (
    build_spec,
    data_path,
    default_headers,
    job_path,
    looks_like_cid,
    route_missing,
    normalize_base_url,
    resolve_token,
    spec_body,
    split_cid_path,
    wait_poll,
)
from shoal_client._sse import SseEvent, parse_sse
from shoal_client._unixfs import CHUNK_SIZE, small_file_car, varint


def test_base_url_without_a_scheme_is_http() -> None:
    assert normalize_base_url("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert normalize_base_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert normalize_base_url("https://node.example") == "https://node.example"
    assert normalize_base_url("[::1]:80") == "http://[::1]:80"
    with pytest.raises(ValueError, match="scheme"):
        normalize_base_url("ftp://x:1")
    with pytest.raises(ValueError):
        normalize_base_url("  ")


def test_base_url_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_NODE", "127.0.0.1:9")
    monkeypatch.setenv("SHOAL_TOKEN", " secret\n")
    assert normalize_base_url(None) == "http://127.0.0.1:9"
    assert resolve_token(None) == "secret"
    assert resolve_token("given") == "given"
    assert resolve_token("") is None
    monkeypatch.delenv("SHOAL_TOKEN")
    monkeypatch.delenv("SHOAL_NODE")
    assert resolve_token(None) is None
    with pytest.raises(ValueError, match="SHOAL_NODE"):
        normalize_base_url(None)


def test_headers() -> None:
    h = default_headers("t0k", None)
    assert h["X-Shoal-Request"] == "1" and h["Authorization"] == "Bearer t0k"
    assert "Authorization" not in default_headers(None, None)


def test_paths_escape_each_segment() -> None:
    assert job_path("j-1", "/wait") == "/v1/jobs/j-1/wait"
    assert job_path("a/b?c") == "/v1/jobs/a%2Fb%3Fc"
    assert data_path("cat", "bafyx", "outputs/counts.tsv") == "/v1/cat/bafyx/outputs/counts.tsv"
    assert data_path("ls", "bafyx", "") == "/v1/ls/bafyx"
    assert data_path("ls", "bafyx/a b/", "c#d") == "/v1/ls/bafyx/a%20b/c%23d"
    assert split_cid_path("/ipfs/Qm1/x//y/", "z") == ("Qm1", "x/y/z")


def test_cid_shapes() -> None:
    assert looks_like_cid("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH")
    assert looks_like_cid("bafybeif7k7yqpc3o4uaf434pyz5luyupppfis3bsj76algsjxchpfj7mia")
    assert not looks_like_cid("wordcount.wasm")
    assert not looks_like_cid("/tmp/x")


def test_spec_bodies_and_building() -> None:
    assert spec_body({"task": {"module": "Qm"}}) == (b'{"task": {"module": "Qm"}}', "application/json")
    assert spec_body("task:\n  module: Qm\n")[1] == "application/yaml"
    assert spec_body(' {"task": {}}')[1] == "application/json"
    base = {"task": {"limits": {"timeout": "5s"}, "env": {"A": "1"}}, "retries": 0}
    s = build_spec("QmM", {"/inputs/x": {"cid": "QmI"}}, ["a", "1"], 2, None, {"B": "2"}, ["zone=eu"], base)
    assert s == {
        "task": {
            "module": "QmM",
            "limits": {"timeout": "5s"},
            "env": {"A": "1", "B": "2"},
            "args": ["a", "1"],
            "inputs": [{"cid": "QmI", "mount": "/inputs/x"}],
        },
        "redundancy": {"count": 2},
        "constraints": ["zone=eu"],
        "retries": 0,
    }
    assert base["task"] == {"limits": {"timeout": "5s"}, "env": {"A": "1"}}, "the base is copied"


def test_wait_polls_are_bounded() -> None:
    assert wait_poll(None, 300) == 300
    assert wait_poll(1000.0, 300) == 300
    assert wait_poll(12.7, 300) == 12
    assert wait_poll(0.99, 300) == 0


def test_sse_parsing() -> None:
    text = (
        ": keep-alive\n"
        "event: job\n"
        'data: {"a":\n'
        "data:  1}\n"
        "\n"
        "\n"
        "id: 7\n"
        "data: plain\r\n"
        "\r\n"
        "event: job\n"
        "data: cut off"
    )
    events = list(parse_sse(text.splitlines()))
    assert events == [SseEvent("job", '{"a":\n 1}'), SseEvent("message", "plain", "7")]
    assert json.loads(events[0].data) == {"a": 1}


def test_job_detail_outcomes() -> None:
    def detail(state: str, outcome: object, code: object) -> JobDetail:
        job = {"id": "j-1", "state": state, "outcome": outcome, "exit_code": code, "spec": {}}
        return JobDetail.from_json({"job": job, "executions": []})

    ok = detail("completed", "succeeded", 0)
    assert ok.succeeded and ok.ended and not ok.guest_failed and ok.check() is ok
    bad = detail("completed", "failed", 5)
    assert bad.guest_failed and not bad.succeeded and bad.exit_code == 5
    with pytest.raises(Exception, match="exit code 5"):
        bad.check()
    assert detail("completed", None, None).succeeded, "a node that predates outcomes"
    assert not detail("failed", None, None).succeeded
    assert not detail("running", None, None).ended
    assert detail("cancelled", None, None).cancelled


def test_unixfs_leaves_have_kubos_cids() -> None:
    assert small_file_car(b"")[0] == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    assert small_file_car(b"hello world")[0] == "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"
    assert small_file_car(b"hello world\n")[0] == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert varint(300) == b"\xac\x02"
    with pytest.raises(ValueError):
        small_file_car(b"x" * CHUNK_SIZE)


def test_error_text() -> None:
    e = ShoalError("no job j-1", status=404, method="GET", url="http://h/v1/jobs/j-1")
    assert str(e) == "GET http://h/v1/jobs/j-1: 404 no job j-1"


def test_route_missing_tells_an_older_node_from_the_apis_own_404() -> None:
    assert route_missing(NotFound("Not Found", status=404))
    assert route_missing(NotFound("x", status=404, api_error="no route POST /v1/files; GET /openapi.json lists the api"))
    assert route_missing(ShoalError("Method Not Allowed", status=405))
    assert not route_missing(NotFound("x", status=404, api_error="no job j-1 on this node"))
    assert not route_missing(BadRequest("x", status=400, api_error="invalid file name"))
