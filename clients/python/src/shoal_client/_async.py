"""The asynchronous client (same methods as :class:`Client`, awaited)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Sequence, Type, Union

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
from ._models import Health, Job, JobDetail, JobLogs, Listing, Node, SubmitResult, UploadedFile
from ._sse import SseEvent, aparse_sse
from ._unixfs import CHUNK_SIZE, small_file_car

__all__ = ["AsyncClient", "AsyncEventStream"]

_EVENTS_READ_TIMEOUT = 60.0


async def _read_source(src: FileSource) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    return await asyncio.to_thread(Path(os.fspath(src)).read_bytes)


class AsyncEventStream:
    """The ``job`` events of a job, as :class:`JobDetail`: ``async for d in client.events(id)``
    (or ``async with client.events(id) as s: async for d in s``). The request
    is made on entering or on the first iteration."""

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self._client = client
        self._path = job_path(job_id, "/events")
        self._response: Optional[httpx.Response] = None
        self._events: Optional[AsyncIterator[SseEvent]] = None
        self._done = False
        self.last: Optional[JobDetail] = None

    async def open(self) -> AsyncEventStream:
        if self._response is not None or self._done:
            return self
        c = self._client
        req = c._http.build_request(
            "GET",
            self._path,
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(c.timeout, read=max(c.timeout, _EVENTS_READ_TIMEOUT)),
        )
        try:
            try:
                r = await c._http.send(req, stream=True)
            except httpx.RemoteProtocolError:
                r = await c._http.send(req, stream=True)  # a pooled connection the node had closed
        except httpx.TransportError as e:
            raise transport_error(e, "GET", c.base_url + self._path) from e
        if not r.is_success:
            try:
                await r.aread()
            finally:
                await r.aclose()
            check(r)
        self._response = r
        self._events = aparse_sse(r.aiter_lines())
        return self

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> JobDetail:
        if self._done:
            raise StopAsyncIteration
        await self.open()
        assert self._events is not None
        try:
            async for ev in self._events:
                if ev.event == "job":
                    self.last = JobDetail.from_json(json.loads(ev.data))
                    return self.last
        except httpx.TransportError as e:
            await self.aclose()
            raise transport_error(e, "GET", self._client.base_url + self._path) from e
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._done = True
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()


class AsyncClient:
    """The asynchronous twin of :class:`shoal_client.Client` (same arguments and methods)."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        headers: Optional[Mapping[str, str]] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.timeout = float(timeout)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=default_headers(resolve_token(token), headers),
            timeout=self.timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = 2 if method.upper() in RETRY_METHODS else 1
        for attempt in range(attempts):
            try:
                return check(await self._http.request(method, path, **kwargs))
            except httpx.RemoteProtocolError as e:
                # A pooled connection the node closed after its last answer.
                if attempt + 1 < attempts:
                    continue
                raise transport_error(e, method, self.base_url + path) from e
            except httpx.TransportError as e:
                raise transport_error(e, method, self.base_url + path) from e
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Dict[str, Any]:
        r = await self.request(method, path, **kwargs)
        try:
            body = r.json()
        except ValueError as e:
            raise ShoalError(
                f"the answer is not json: {r.text[:200]!r}", status=r.status_code, method=method, url=str(r.url)
            ) from e
        if not isinstance(body, dict):
            raise ShoalError("the answer is not a json object", status=r.status_code, method=method, url=str(r.url))
        return body

    async def health(self) -> Health:
        return Health.from_json(await self._json("GET", "/v1/health"))

    async def nodes(self) -> List[Node]:
        body = await self._json("GET", "/v1/nodes")
        return [Node.from_json(n) for n in body.get("nodes", []) if isinstance(n, Mapping)]

    async def openapi(self) -> Dict[str, Any]:
        return await self._json("GET", "/openapi.json")

    async def metrics(self) -> str:
        return (await self.request("GET", "/metrics")).text

    async def submit(self, spec: Union[Mapping[str, Any], str, bytes]) -> SubmitResult:
        body, ctype = spec_body(spec)
        return SubmitResult.from_json(
            await self._json("POST", "/v1/jobs", content=body, headers={"Content-Type": ctype})
        )

    async def job(self, job_id: str) -> JobDetail:
        return JobDetail.from_json(await self._json("GET", job_path(job_id)))

    async def jobs(self, state: Optional[str] = None, limit: int = 100) -> List[Job]:
        params: Dict[str, Union[str, int]] = {"limit": limit}
        if state:
            params["state"] = state
        body = await self._json("GET", "/v1/jobs", params=params)
        return [Job.from_json(j) for j in body.get("jobs", []) if isinstance(j, Mapping)]

    async def cancel(self, job_id: str) -> JobDetail:
        # No body: the node does not read this route's body, and an unread
        # body makes it drop the connection after answering (which a pooled
        # connection's next request then hits). X-Shoal-Request lets it through.
        return JobDetail.from_json(await self._json("POST", job_path(job_id, "/cancel"), content=b""))

    async def logs(self, job_id: str) -> JobLogs:
        return JobLogs.from_json(await self._json("GET", job_path(job_id, "/logs")))

    async def wait(self, job_id: str, timeout: Optional[float] = None, *, poll: int = MAX_WAIT) -> JobDetail:
        if not 1 <= poll <= MAX_WAIT:
            raise ValueError(f"poll must be 1 to {MAX_WAIT} seconds")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                detail = await self.job(job_id)
                if detail.ended:
                    return detail
                raise WaitTimeout(f"job {job_id} is still {detail.state} after {timeout} s", detail)
            s = wait_poll(remaining, poll)
            if s == 0 and remaining is not None:
                await asyncio.sleep(remaining)
                continue
            detail = JobDetail.from_json(
                await self._json("GET", job_path(job_id, "/wait"), params={"timeout": s}, timeout=self.timeout + s)
            )
            if detail.ended:
                return detail

    def events(self, job_id: str) -> AsyncEventStream:
        return AsyncEventStream(self, job_id)

    async def upload(self, src: FileSource, name: Optional[str] = None) -> UploadedFile:
        if isinstance(src, (bytes, bytearray, memoryview)):
            name = name or "file"
        else:
            p = Path(os.fspath(src))
            if not p.is_file():
                raise FileNotFoundError(f"{p}: not a file (upload a directory as a CAR with upload_car)")
            name = name or p.name
        data = await _read_source(src)
        return UploadedFile.from_json(
            await self._json(
                "POST",
                "/v1/files",
                params={"name": name},
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
        )

    async def upload_file(self, src: FileSource, name: Optional[str] = None) -> str:
        try:
            return (await self.upload(src, name)).cid
        except ShoalError as e:
            if not route_missing(e):
                raise
            data = await _read_source(src)
            if len(data) >= CHUNK_SIZE:
                raise ShoalError(
                    f"this node has no POST /v1/files; a file of {len(data)} bytes needs it "
                    f"(or upload a CAR with upload_car)",
                    status=e.status,
                    method=e.method,
                    url=e.url,
                ) from e
            cid, car = small_file_car(data)
            roots = await self.upload_car(car)
            if roots != [cid]:
                raise ShoalError(f"the node imported {roots}, expected [{cid}]") from e
            return cid

    async def upload_car(self, car: Union[bytes, str, "os.PathLike[str]"]) -> List[str]:
        data = await _read_source(car)
        body = await self._json(
            "POST", "/v1/car", content=data, headers={"Content-Type": "application/vnd.ipld.car"}
        )
        return [str(r) for r in body.get("roots", [])]

    async def car(self, cid: str) -> bytes:
        r = await self.request("GET", data_path("car", cid), headers={"Accept": "application/vnd.ipld.car"})
        return r.content

    async def held(self, cid: str) -> bool:
        root, _ = split_cid_path(cid)
        return bool((await self._json("GET", data_path("dags", root))).get("held"))

    async def ls(self, cid: str, path: str = "") -> Listing:
        return Listing.from_json(await self._json("GET", data_path("ls", cid, path)))

    async def cat(self, cid: str, path: str = "") -> bytes:
        return (await self.request("GET", data_path("cat", cid, path), headers={"Accept": "*/*"})).content

    async def _source_cid(self, src: InputSource, default_name: str) -> Dict[str, Any]:
        if isinstance(src, Mapping):
            return dict(src)
        if isinstance(src, (bytes, bytearray, memoryview)):
            return {"cid": await self.upload_file(src, default_name)}
        s = os.fspath(src)
        if os.path.isdir(s):
            raise IsADirectoryError(f"{s}: a directory; upload it as a CAR (upload_car) and pass its cid")
        if os.path.exists(s):
            return {"cid": await self.upload_file(s)}
        if isinstance(src, str):
            root, sub = split_cid_path(src)
            if looks_like_cid(root):
                return {"cid": root, "path": sub} if sub else {"cid": root}
        raise FileNotFoundError(f"{s}: no such file, nor a cid")

    async def run(
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
        mod = await self._source_cid(module, "module.wasm")
        if mod.get("path"):
            raise ValueError("the module must be a file's cid, without a path")
        mounted = {
            mount: await self._source_cid(src, os.path.basename(mount.rstrip("/")) or "input")
            for mount, src in (inputs or {}).items()
        }
        job_spec = build_spec(mod["cid"], mounted, args, redundancy, quorum, env, constraints, spec)
        submitted = await self.submit(job_spec)
        if not wait:
            return await self.job(submitted.id)
        return await self.wait(submitted.id, timeout)
