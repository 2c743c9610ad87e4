"""Against real nodes: a three-node devstack and a token-protected node."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from conftest import Devstack, TokenNode
from shoal_client import (
    BadRequest,
    Client,
    JobFailed,
    NotFound,
    ShoalError,
    Unauthorized,
    Unprocessable,
    WaitTimeout,
)
from shoal_client._unixfs import small_file_car

TEXT = b"the quick brown fox\njumps over the lazy dog\nand then some\n"  # 3 lines, 12 words
JOB_TIMEOUT = 60.0


def test_health_and_nodes(client: Client, devstack: Devstack) -> None:
    h = client.health()
    assert h.ok and h.peer.startswith("12D3") and h.version
    assert h.connected_peers == 2
    nodes = client.nodes()
    assert len(nodes) == 3
    me = [n for n in nodes if n.is_self]
    assert len(me) == 1 and me[0].id == h.peer and me[0].api == devstack.apis[0]
    assert sorted(n.labels["devstack-index"] for n in nodes) == ["0", "1", "2"]
    assert {n.api for n in nodes} == set(devstack.apis)
    assert all(n.compute and n.slots_total >= 1 and n.memory_bytes > 0 for n in nodes)


def test_base_url_without_scheme(devstack: Devstack) -> None:
    with Client(devstack.apis[1].removeprefix("http://")) as c:
        assert c.health().ok


def test_wordcount_with_redundancy_2(client: Client, samples: Path, tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_bytes(TEXT)
    done = client.run(
        samples / "wordcount.wasm",
        inputs={"/inputs/words.txt": words},
        redundancy=2,
        timeout=JOB_TIMEOUT,
    )
    job = done.job
    assert job.state == "completed", job
    assert job.outcome == "succeeded" and job.exit_code == 0 and done.succeeded and not done.guest_failed
    assert job.spec["redundancy"]["count"] == 2
    agreed = [e for e in done.executions if e.state == "completed"]
    assert len(agreed) >= 2 and len({e.node for e in agreed}) == len(agreed)
    assert all(e.result == job.result for e in agreed)
    assert done.result is not None
    # A signed receipt, stored on the node as one raw JSON block.
    assert job.receipt is not None
    receipt = json.loads(client.cat(job.receipt))
    assert receipt["result"] == job.result and receipt["quorum"] == 2
    # The client does not sign: the job is anonymous, and it ran (not cached).
    assert job.submitter is None and job.cached is None

    counts = client.cat(done.result, "outputs/counts.tsv").decode()
    assert f"words.txt\t3\t12\t{len(TEXT)}" in counts.splitlines(), counts
    assert client.cat(f"{done.result}/outputs/counts.tsv") == counts.encode()
    assert client.cat(done.result, "exitCode").decode().strip() == "0"
    assert "total (1 files)" in client.cat(done.result, "stdout").decode()

    top = client.ls(done.result)
    assert top.kind == "directory" and top.cid == done.result and top.path == "" and not top.truncated
    assert {"exitCode", "stdout", "stderr", "outputs"} <= set(top.names), top.names
    outputs = top.entry("outputs")
    assert outputs is not None and outputs.kind == "directory"
    sub = client.ls(done.result, "outputs")
    assert sub.path == "outputs" and sub.names == ["counts.tsv"]
    tsv = sub.entry("counts.tsv")
    assert tsv is not None and tsv.kind == "file" and tsv.size == len(counts)

    with pytest.raises(BadRequest, match="not a file"):
        client.cat(done.result)
    with pytest.raises(NotFound):
        client.cat(done.result, "outputs/missing.tsv")

    # The result as an input of another job: a CID with a path inside it.
    again = client.run(
        samples / "wordcount.wasm",
        inputs={"/inputs/r": f"{done.result}/outputs"},
        args=["/inputs/r"],
        timeout=JOB_TIMEOUT,
    )
    assert again.succeeded, (again.job.exit_code, again.job.failure, [(e.stdout, e.stderr) for e in again.executions])
    assert again.job.spec["task"]["inputs"] == [
        {"cid": done.result, "path": "outputs", "mount": "/inputs/r"}
    ]
    assert again.result is not None
    assert "counts.tsv\t" in client.cat(again.result, "outputs/counts.tsv").decode()

    logs = client.logs(done.id)
    assert logs.job == done.id and len(logs.executions) == len(done.executions)
    assert any(e.stdout and "words.txt" in e.stdout for e in logs.executions)

    # The job is listed, newest first.
    listed = client.jobs(state="completed", limit=1000)
    assert done.id in [j.id for j in listed]
    assert [j.created_ms for j in listed] == sorted((j.created_ms for j in listed), reverse=True)


def test_execution_timeline(client: Client, samples: Path) -> None:
    done = client.run(samples / "hello.wasm", timeout=JOB_TIMEOUT)
    assert done.succeeded
    e = next(e for e in done.executions if e.state == "completed")
    if "timeline" not in e.raw:
        pytest.skip("this node does not report execution timelines yet")
    states = [s.state for s in e.timeline]
    assert states[0] == "bid_asked" and states[-1] == "completed", states
    assert "running" in states and "committed" in states
    assert [s.ms for s in e.timeline] == sorted(s.ms for s in e.timeline)


def test_a_guest_that_exits_5_completes_with_outcome_failed(client: Client, samples: Path) -> None:
    done = client.run(samples / "exitcode.wasm", args=["5"], timeout=JOB_TIMEOUT)
    assert done.state == "completed"
    assert done.outcome == "failed" and done.exit_code == 5
    assert done.guest_failed and not done.succeeded
    with pytest.raises(JobFailed, match="exit code 5"):
        done.check()
    assert done.result is not None
    assert client.cat(done.result, "exitCode").decode().strip() == "5"


def test_events_follow_a_job_until_it_ends(client: Client, samples: Path) -> None:
    queued = client.run(samples / "hello.wasm", wait=False)
    seen = []
    started = time.monotonic()
    with client.events(queued.id) as stream:
        for detail in stream:
            assert detail.id == queued.id
            seen.append(detail)
            assert time.monotonic() - started < JOB_TIMEOUT
    assert seen, "at least the job as it is"
    assert seen[-1].ended and seen[-1].succeeded
    assert all(not d.ended for d in seen[:-1])
    assert client.cat(seen[-1].result or "", "stdout").decode().lower().startswith("hello")
    # An ended job: one event, then the stream closes.
    again = list(client.events(queued.id))
    assert len(again) == 1 and again[0].ended
    # Closing early stops the stream.
    stream = client.events(queued.id)
    stream.close()
    assert list(stream) == []


def test_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as e:
        client.job("j-0000000000000000000000")
    assert e.value.status == 404
    assert e.value.api_error is not None and "no job j-0000000000000000000000" in e.value.api_error
    assert e.value.message == e.value.api_error
    for call in (client.wait, client.logs, client.cancel, client.events):
        with pytest.raises(NotFound):
            call("j-0000000000000000000000")
    with pytest.raises(BadRequest, match="malformed job id"):
        client.job("j-not!valid")


def test_bad_specs(client: Client, samples: Path) -> None:
    with pytest.raises(BadRequest) as e:
        client.submit({"task": {}})
    assert e.value.status == 400 and "bad job spec" in e.value.message and "module" in e.value.message
    module = client.upload_file(samples / "hello.wasm")
    with pytest.raises(BadRequest, match="memroy"):
        client.submit({"task": {"module": module, "limits": {"memroy": "1GiB"}}})
    with pytest.raises(BadRequest):
        client.submit("task: [not, a, mapping")
    with pytest.raises(BadRequest, match="unknown state"):
        client.jobs(state="sleeping")
    # Valid, but its module is on no node.
    nowhere = small_file_car(b"a module nobody has, " + str(time.time()).encode())[0]
    with pytest.raises(Unprocessable) as u:
        client.submit({"task": {"module": nowhere}})
    assert u.value.status == 422 and nowhere in u.value.message


def test_yaml_spec_and_wait_deadline_and_cancel(client: Client, samples: Path) -> None:
    module = client.upload_file(samples / "hello.wasm")
    sub = client.submit(f"task:\n  module: {module}\nconstraints: [zone=nowhere]\n")
    assert sub.id.startswith("j-")
    assert sub.warnings and "0 node" in sub.warnings[0]
    assert client.job(sub.id).state == "queued"
    t = time.monotonic()
    with pytest.raises(WaitTimeout) as w:
        client.wait(sub.id, timeout=1.5)
    assert 1.4 <= time.monotonic() - t < 3
    assert w.value.detail.state == "queued"
    cancelled = client.cancel(sub.id)
    assert cancelled.state == "cancelled" and cancelled.cancelled and cancelled.ended
    assert client.wait(sub.id, timeout=5).state == "cancelled"
    assert sub.id in [j.id for j in client.jobs(state="cancelled")]


def test_x_shoal_request_lets_any_content_type_through(client: Client, samples: Path) -> None:
    module = client.upload_file(samples / "hello.wasm")
    sub = client.submit({"task": {"module": module}, "constraints": ["zone=nowhere"]})
    # text/plain is refused without the header; the client always sends it.
    r = client.request("POST", f"/v1/jobs/{sub.id}/cancel", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.json()["job"]["state"] == "cancelled"
    bare = httpx.post(f"{client.base_url}/v1/jobs/{sub.id}/cancel", content=b"{}", headers={"Content-Type": "text/plain"})
    assert bare.status_code == 415, bare.text


def test_files_ls_cat_car_held(client: Client, devstack: Devstack, tmp_path: Path) -> None:
    try:
        up = client.upload(b"hello world", "greeting.txt")
    except NotFound as e:
        if e.api_error is None:
            pytest.skip("this node has no POST /v1/files yet")
        raise
    # Imported as `shoal add` would: the same CID as Kubo's defaults.
    assert up.cid == "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD" and up.name == "greeting.txt" and up.size == 11
    assert client.held(up.cid)
    listing = client.ls(up.cid)
    assert listing.kind == "file" and listing.size == 11 and listing.entries == [] and listing.cid == up.cid
    assert client.cat(up.cid) == b"hello world"

    # A file of several chunks, from a path; read back through another node.
    big = tmp_path / "big.bin"
    data = bytes(range(256)) * 5000  # 1.28 MB
    big.write_bytes(data)
    cid = client.upload_file(big)
    with Client(devstack.apis[2]) as other:
        assert other.cat(cid) == data
        assert other.ls(cid).size == len(data)

    # What upload_file sends a node that predates /v1/files: the same CID.
    small = b"a small file, " + str(time.time()).encode()
    small_cid, small_car = small_file_car(small)
    assert client.upload_car(small_car) == [small_cid]
    assert client.cat(small_cid) == small and client.upload(small).cid == small_cid

    # CAR out and in.
    car = client.car(up.cid)
    assert car and client.upload_car(car) == [up.cid]
    nobody = small_file_car(b"held by nobody " + str(time.time()).encode())[0]
    assert not client.held(nobody)
    for call in (client.car, client.ls, client.cat):
        with pytest.raises(NotFound):
            call(nobody)

    with pytest.raises(NotFound):
        client.ls(up.cid, "no/such/path")
    with pytest.raises(BadRequest):
        client.cat("not-a-cid")


def test_openapi(client: Client) -> None:
    doc = client.openapi()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/events", "/v1/car", "/v1/dags/{cid}"):
        assert path in doc["paths"], path
    if "/v1/files" in doc["paths"]:
        for path in ("/v1/ls/{cid}", "/v1/cat/{cid}"):
            assert path in doc["paths"], path
    assert "shoal_jobs_submitted" in client.metrics()


def test_token_protected_node(token_node: TokenNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)
    with Client(token_node.api) as anon:
        with pytest.raises(Unauthorized) as e:
            anon.health()
        assert e.value.status == 401 and "bearer token" in (e.value.api_error or "")
    with Client(token_node.api, token="wrong") as wrong:
        with pytest.raises(Unauthorized):
            wrong.nodes()
    with Client(token_node.api, token=token_node.token) as c:
        assert c.health().ok
        nodes = c.nodes()
        assert len(nodes) == 1 and nodes[0].is_self and not nodes[0].compute
    monkeypatch.setenv("SHOAL_TOKEN", token_node.token)
    with Client(token_node.api) as env:
        assert env.health().ok


def test_pooled_connections_survive_answers_to_unread_bodies(client: Client) -> None:
    # The node drops a connection after answering a request whose body it did
    # not read (cancel, a route that does not take POST); the next request on
    # that pooled connection used to fail now and then ("server disconnected").
    unknown = "j-0000000000000000000000"
    for _ in range(150):
        with pytest.raises(NotFound):
            client.cancel(unknown)
        with pytest.raises(NotFound):
            client.events(unknown)
        with pytest.raises(ShoalError) as e:
            client.request("POST", "/v1/health", json={"unread": True})
        assert e.value.status == 405
        assert client.health().ok
