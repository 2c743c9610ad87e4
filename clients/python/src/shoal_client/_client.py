"""The synchronous client."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Type, Union

import httpx

from ._common import (
    DEFAULT_TIMEOUT,
    MAX_WAIT,
    RETRY_METHODS,
    FileSource,
    InputSource,
    build_spec,
    check,
    data_path,
    default_headers,
    job_path,
    looks_like_cid,
    normalize_base_url,
    resolve_token,
    route_missing,
    spec_body,
    split_cid_path,
    transport_error,
    wait_poll,
)
from ._errors import ShoalError, WaitTimeout
from ._models import (
    Health,
    Job,
    JobDetail,
    JobLogs,
    Listing,
    Node,
    SubmitResult,
    UploadedFile,
)
from ._sse import parse_sse
from ._unixfs import CHUNK_SIZE, small_file_car

__all__ = ["Client", "EventStream"]

_READ_CHUNK = 1 << 20
#: Read timeout of an event stream: the node sends a keep-alive comment every 15 s.
_EVENTS_READ_TIMEOUT = 60.0


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_READ_CHUNK)
            if not chunk:
                return
            yield chunk


class EventStream(Iterator[JobDetail]):
    """The ``job`` events of ``GET /v1/jobs/{id}/events``, each a :class:`JobDetail`.

    The request is made when it is created (so an unknown job raises at
    once); iterating ends when the node closes the stream, after the job
    has ended. Close it (or use it as a context manager) to stop early.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._events = parse_sse(response.iter_lines())
        self._closed = False
        self.last: Optional[JobDetail] = None

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> JobDetail:
        if self._closed:
            raise StopIteration
        try:
            for ev in self._events:
                if ev.event == "job":
                    self.last = JobDetail.from_json(json.loads(ev.data))
                    return self.last
        except httpx.TransportError as e:
            self.close()
            raise transport_error(e, "GET", str(self._response.request.url)) from e
        self.close()
        raise StopIteration

    def close(self) -> None:
        self._closed = True
        self._response.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class Client:
    """A client of one Shoal node's HTTP API.

    ``base_url`` is what ``shoal node`` prints as ``api=``
    (``http://127.0.0.1:8080``; ``127.0.0.1:8080`` means http; None takes
    ``SHOAL_NODE``). ``token`` is sent as ``Authorization: Bearer`` (None
    takes ``SHOAL_TOKEN``); it is needed by nodes that require one (any
    non-loopback bind, or ``--require-token``; the node's
    ``<home>/api-token``). ``timeout`` bounds each request in seconds
    (long polls add their own wait to it).

    Every request carries ``X-Shoal-Request: 1``. Any non-2xx answer
    raises a :class:`ShoalError` subclass with the API's message.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        headers: Optional[Mapping[str, str]] = None,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.timeout = float(timeout)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=default_headers(resolve_token(token), headers),
            timeout=self.timeout,
            transport=transport,
        )

    # -- plumbing -------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Sends a request to ``path`` (``/v1/...``); raises :class:`ShoalError` unless 2xx."""
        attempts = 2 if method.upper() in RETRY_METHODS else 1
        for attempt in range(attempts):
            try:
                return check(self._http.request(method, path, **kwargs))
            except httpx.RemoteProtocolError as e:
                # A pooled connection the node closed after its last answer.
                if attempt + 1 < attempts:
                    continue
                raise transport_error(e, method, self.base_url + path) from e
            except httpx.TransportError as e:
                raise transport_error(e, method, self.base_url + path) from e
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Dict[str, Any]:
        r = self.request(method, path, **kwargs)
        try:
            body = r.json()
        except ValueError as e:
            raise ShoalError(
                f"the answer is not json: {r.text[:200]!r}", status=r.status_code, method=method, url=str(r.url)
            ) from e
        if not isinstance(body, dict):
            raise ShoalError("the answer is not a json object", status=r.status_code, method=method, url=str(r.url))
        return body

    # -- nodes ----------------------------------------------------------

    def health(self) -> Health:
        """``GET /v1/health``: liveness, the node's peer id, version and connected peers."""
        return Health.from_json(self._json("GET", "/v1/health"))

    def nodes(self) -> List[Node]:
        """``GET /v1/nodes``: the nodes this node knows (itself included, ``is_self``)."""
        body = self._json("GET", "/v1/nodes")
        return [Node.from_json(n) for n in body.get("nodes", []) if isinstance(n, Mapping)]

    def openapi(self) -> Dict[str, Any]:
        """``GET /openapi.json``: the node's OpenAPI document."""
        return self._json("GET", "/openapi.json")

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self.request("GET", "/metrics").text

    # -- jobs -----------------------------------------------------------

    def submit(self, spec: Union[Mapping[str, Any], str, bytes]) -> SubmitResult:
        """``POST /v1/jobs``: a spec as a mapping (sent as JSON) or as YAML/JSON text."""
        body, ctype = spec_body(spec)
        return SubmitResult.from_json(
            self._json("POST", "/v1/jobs", content=body, headers={"Content-Type": ctype})
        )

    def job(self, job_id: str) -> JobDetail:
        """``GET /v1/jobs/{id}``: the job and its executions."""
        return JobDetail.from_json(self._json("GET", job_path(job_id)))

    def jobs(self, state: Optional[str] = None, limit: int = 100) -> List[Job]:
        """``GET /v1/jobs``: jobs newest first, optionally in one state."""
        params: Dict[str, Union[str, int]] = {"limit": limit}
        if state:
            params["state"] = state
        body = self._json("GET", "/v1/jobs", params=params)
        return [Job.from_json(j) for j in body.get("jobs", []) if isinstance(j, Mapping)]

    def cancel(self, job_id: str) -> JobDetail:
        """``POST /v1/jobs/{id}/cancel``."""
        # No body: the node does not read this route's body, and an unread
        # body makes it drop the connection after answering (which a pooled
        # connection's next request then hits). X-Shoal-Request lets it through.
        return JobDetail.from_json(self._json("POST", job_path(job_id, "/cancel"), content=b""))

    def logs(self, job_id: str) -> JobLogs:
        """``GET /v1/jobs/{id}/logs``: each execution's stdout/stderr (None until the job ended)."""
        return JobLogs.from_json(self._json("GET", job_path(job_id, "/logs")))

    def wait(self, job_id: str, timeout: Optional[float] = None, *, poll: int = MAX_WAIT) -> JobDetail:
        """Waits until the job ends (completed, failed or cancelled) and returns it.

        Long polls ``GET /v1/jobs/{id}/wait`` for at most ``poll`` seconds
        each (1 to 300) until ``timeout`` seconds have passed (None: no
        deadline); past the deadline raises :class:`WaitTimeout` with the
        job as last seen.
        """
        if not 1 <= poll <= MAX_WAIT:
            raise ValueError(f"poll must be 1 to {MAX_WAIT} seconds")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                detail = self.job(job_id)
                if detail.ended:
                    return detail
                raise WaitTimeout(f"job {job_id} is still {detail.state} after {timeout} s", detail)
            s = wait_poll(remaining, poll)
            if s == 0 and remaining is not None:
                time.sleep(remaining)
                continue
            detail = JobDetail.from_json(
                self._json("GET", job_path(job_id, "/wait"), params={"timeout": s}, timeout=self.timeout + s)
            )
            if detail.ended:
                return detail

    def events(self, job_id: str) -> EventStream:
        """``GET /v1/jobs/{id}/events``: the job at once and after each change, until it ends.

        ``for detail in client.events(id): ...``; the last one yielded is
        the ended job (unless the stream broke off first).
        """
        path = job_path(job_id, "/events")
        req = self._http.build_request(
            "GET",
            path,
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(self.timeout, read=max(self.timeout, _EVENTS_READ_TIMEOUT)),
        )
        try:
            try:
                r = self._http.send(req, stream=True)
            except httpx.RemoteProtocolError:
                r = self._http.send(req, stream=True)  # a pooled connection the node had closed
        except httpx.TransportError as e:
            raise transport_error(e, "GET", self.base_url + path) from e
        if not r.is_success:
            try:
                r.read()
            finally:
                r.close()
            check(r)
        return EventStream(r)

    # -- data -----------------------------------------------------------

    def upload(self, src: FileSource, name: Optional[str] = None) -> UploadedFile:
        """``POST /v1/files?name=NAME``: imports one file (as ``shoal add`` would) and pins it.

        ``src`` is a path or the file's bytes; ``name`` defaults to the
        path's file name (``file`` for bytes).
        """
        headers = {"Content-Type": "application/octet-stream"}
        content: Union[bytes, Iterator[bytes]]
        if isinstance(src, (bytes, bytearray, memoryview)):
            content = bytes(src)
            name = name or "file"
        else:
            p = Path(os.fspath(src))
            if not p.is_file():
                raise FileNotFoundError(f"{p}: not a file (upload a directory as a CAR with upload_car)")
            name = name or p.name
            headers["Content-Length"] = str(p.stat().st_size)
            content = _file_chunks(p)
        return UploadedFile.from_json(
            self._json("POST", "/v1/files", params={"name": name}, content=content, headers=headers)
        )

    def upload_file(self, src: FileSource, name: Optional[str] = None) -> str:
        """Uploads one file (path or bytes) and returns its CID (see :meth:`upload`).

        A node that predates ``POST /v1/files`` gets a file below 256 KiB
        as a CAR instead (same CID); a larger one raises there.
        """
        try:
            return self.upload(src, name).cid
        except ShoalError as e:
            if not route_missing(e):
                raise
            data = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else Path(os.fspath(src)).read_bytes()
            if len(data) >= CHUNK_SIZE:
                raise ShoalError(
                    f"this node has no POST /v1/files; a file of {len(data)} bytes needs it "
                    f"(or upload a CAR with upload_car)",
                    status=e.status,
                    method=e.method,
                    url=e.url,
                ) from e
            cid, car = small_file_car(data)
            roots = self.upload_car(car)
            if roots != [cid]:
                raise ShoalError(f"the node imported {roots}, expected [{cid}]") from e
            return cid

    def upload_car(self, car: Union[bytes, str, "os.PathLike[str]"]) -> List[str]:
        """``POST /v1/car``: imports a CARv1 (bytes or a path), pins its roots, returns them."""
        data = bytes(car) if isinstance(car, (bytes, bytearray, memoryview)) else Path(os.fspath(car)).read_bytes()
        body = self._json("POST", "/v1/car", content=data, headers={"Content-Type": "application/vnd.ipld.car"})
        return [str(r) for r in body.get("roots", [])]

    def car(self, cid: str) -> bytes:
        """``GET /v1/car/{cid}``: the DAG as a CAR (the node fetches it from peers if need be)."""
        return self.request("GET", data_path("car", cid), headers={"Accept": "application/vnd.ipld.car"}).content

    def held(self, cid: str) -> bool:
        """``GET /v1/dags/{cid}``: whether the node holds the whole DAG."""
        root, _ = split_cid_path(cid)
        return bool(self._json("GET", data_path("dags", root)).get("held"))

    def ls(self, cid: str, path: str = "") -> Listing:
        """``GET /v1/ls/{cid}/{path}``: what is at ``cid/path`` (a directory's entries)."""
        return Listing.from_json(self._json("GET", data_path("ls", cid, path)))

    def cat(self, cid: str, path: str = "") -> bytes:
        """``GET /v1/cat/{cid}/{path}``: a file's bytes (at most 256 MiB)."""
        return self.request("GET", data_path("cat", cid, path), headers={"Accept": "*/*"}).content

    # -- convenience ----------------------------------------------------

    def _source_cid(self, src: InputSource, default_name: str) -> Dict[str, Any]:
        if isinstance(src, Mapping):
            return dict(src)
        if isinstance(src, (bytes, bytearray, memoryview)):
            return {"cid": self.upload_file(src, default_name)}
        s = os.fspath(src)
        if os.path.isdir(s):
            raise IsADirectoryError(f"{s}: a directory; upload it as a CAR (upload_car) and pass its cid")
        if os.path.exists(s):
            return {"cid": self.upload_file(s)}
        if isinstance(src, str):
            root, sub = split_cid_path(src)
            if looks_like_cid(root):
                return {"cid": root, "path": sub} if sub else {"cid": root}
        raise FileNotFoundError(f"{s}: no such file, nor a cid")

    def run(
        self,
        module: FileSource,
        inputs: Optional[Mapping[str, InputSource]] = None,
        args: Sequence[str] = (),
        redundancy: Optional[int] = 1,
        wait: bool = True,
        *,
        quorum: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        constraints: Optional[Sequence[str]] = None,
        spec: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> JobDetail:
        """Uploads a module and its inputs, submits the job, and (``wait``) waits for it.

        ``module`` is a path to a ``.wasm`` file, its bytes, or a CID.
        ``inputs`` maps a guest path (``/inputs/x.txt``) to a local file
        (path or bytes), a CID (``cid`` or ``cid/sub/path``), or an input
        mapping (``{"cid": ..., "path": ...}``). ``spec`` is a base spec
        for the other fields (limits, timeouts, ...). Returns the ended job
        (``wait``; :class:`WaitTimeout` past ``timeout`` seconds) or the job
        just submitted.
        """
        mod = self._source_cid(module, "module.wasm")
        if mod.get("path"):
            raise ValueError("the module must be a file's cid, without a path")
        mounted = {
            mount: self._source_cid(src, os.path.basename(mount.rstrip("/")) or "input")
            for mount, src in (inputs or {}).items()
        }
        job_spec = build_spec(mod["cid"], mounted, args, redundancy, quorum, env, constraints, spec)
        submitted = self.submit(job_spec)
        if not wait:
            return self.job(submitted.id)
        return self.wait(submitted.id, timeout)
