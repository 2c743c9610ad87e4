"""What the sync and async clients share: URLs, headers, errors, specs."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlsplit

import httpx

from ._errors import NotFound, ShoalError, TransportError, error_for

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_WAIT",
    "USER_AGENT",
    "FileSource",
    "InputSource",
    "normalize_base_url",
    "resolve_token",
    "default_headers",
    "check",
    "transport_error",
    "job_path",
    "data_path",
    "spec_body",
    "wait_poll",
    "looks_like_cid",
    "split_cid_path",
    "build_spec",
    "route_missing",
    "RETRY_METHODS",
]

from ._version import __version__

DEFAULT_TIMEOUT = 30.0
#: Requests sent again, once, when a kept-alive connection turns out to have
#: been closed by the node before it answered (the node never saw them).
RETRY_METHODS = frozenset({"GET", "HEAD"})
#: The longest long poll the API takes (`GET /v1/jobs/{id}/wait?timeout=S`, S <= 300).
MAX_WAIT = 300
USER_AGENT = f"shoal-client-python/{__version__}"

#: A local file (path) or its bytes.
FileSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
#: A job input: a local file (path or bytes, uploaded), a CID (``cid`` or
#: ``cid/sub/path``), or an input mapping as the spec has it
#: (``{"cid": ..., "path": ...}``; ``mount`` comes from the key).
InputSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Mapping[str, Any]]

_CID_RE = re.compile(r"^(Qm[1-9A-HJ-NP-Za-km-z]{44}|b[a-z2-7]{50,}|z[1-9A-HJ-NP-Za-km-z]{40,}|f[0-9a-f]{60,})$")


def normalize_base_url(base_url: Optional[str]) -> str:
    """``http://h:p`` stays; ``h:p`` means ``http://h:p``; a trailing ``/`` goes.

    None takes the ``SHOAL_NODE`` environment variable (as the CLI does).
    """
    if base_url is None:
        base_url = os.environ.get("SHOAL_NODE")
        if not base_url:
            raise ValueError("no node given: pass base_url (http://HOST:PORT) or set SHOAL_NODE")
    url = base_url.strip()
    if not url:
        raise ValueError("empty base_url; give http://HOST:PORT")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"unsupported scheme {parts.scheme!r} in {base_url!r}; give http://HOST:PORT")
    if not parts.netloc:
        raise ValueError(f"no host in {base_url!r}; give http://HOST:PORT")
    return url.rstrip("/")


def resolve_token(token: Optional[str]) -> Optional[str]:
    """The token given, else ``SHOAL_TOKEN``; empty means none."""
    if token is None:
        token = os.environ.get("SHOAL_TOKEN")
    token = (token or "").strip()
    return token or None


def default_headers(token: Optional[str], extra: Optional[Mapping[str, str]]) -> Dict[str, str]:
    h = {"X-Shoal-Request": "1", "User-Agent": USER_AGENT, "Accept": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if extra:
        h.update(extra)
    return h


def check(response: httpx.Response) -> httpx.Response:
    """The response when 2xx; else raises its :class:`ShoalError` (body must be read)."""
    if response.is_success:
        return response
    raise error_for(response)


def transport_error(e: httpx.TransportError, method: str, url: str) -> TransportError:
    kind = "timed out" if isinstance(e, httpx.TimeoutException) else "failed"
    return TransportError(f"request {kind}: {e or type(e).__name__}", method=method, url=url)


def _seg(s: str) -> str:
    return quote(s, safe="")


def job_path(job_id: str, tail: str = "") -> str:
    if not job_id:
        raise ValueError("empty job id")
    return f"/v1/jobs/{_seg(job_id)}{tail}"


def split_cid_path(cid: str, path: str = "") -> Tuple[str, str]:
    """``("cid/a/b", "")`` -> ``("cid", "a/b")``; ``("cid", "/a/b/")`` -> ``("cid", "a/b")``."""
    cid = cid.strip()
    if cid.startswith("/ipfs/"):
        cid = cid[len("/ipfs/"):]
    head, _, rest = cid.partition("/")
    if not head:
        raise ValueError("empty cid")
    segs = [s for s in (rest + "/" + path).split("/") if s]
    return head, "/".join(segs)


def data_path(route: str, cid: str, path: str = "") -> str:
    """``/v1/{route}/{cid}[/{path}]`` with each segment escaped."""
    root, sub = split_cid_path(cid, path)
    url = f"/v1/{route}/{_seg(root)}"
    if sub:
        url += "/" + "/".join(_seg(s) for s in sub.split("/"))
    return url


def spec_body(spec: Union[Mapping[str, Any], str, bytes]) -> Tuple[bytes, str]:
    """A job spec as a request body and its content type."""
    if isinstance(spec, Mapping):
        return json.dumps(spec).encode(), "application/json"
    text = spec.decode() if isinstance(spec, bytes) else spec
    ctype = "application/json" if text.lstrip().startswith("{") else "application/yaml"
    return text.encode(), ctype


def wait_poll(remaining: Optional[float], poll: int) -> int:
    """Whole seconds to ask one long poll for (the API takes whole seconds):
    at most ``poll``, never past the deadline; 0 when less than a second is
    left (then the caller sleeps it out and looks once more)."""
    if remaining is None:
        return poll
    return max(0, min(poll, int(math.floor(remaining))))


def looks_like_cid(s: str) -> bool:
    return bool(_CID_RE.match(s))


def route_missing(e: ShoalError) -> bool:
    """The node has no such route at all (an older node): not the API's own 404."""
    if not (isinstance(e, NotFound) or e.status == 405):
        return False
    # Older nodes answer an unknown route with an empty body; newer ones
    # with {"error": "no route POST /v1/files; ..."}.
    return e.api_error is None or e.api_error.startswith("no route ")


def build_spec(
    module: str,
    inputs: Mapping[str, Mapping[str, Any]],
    args: Sequence[str],
    redundancy: Optional[int],
    quorum: Optional[int],
    env: Optional[Mapping[str, str]],
    constraints: Optional[Sequence[str]],
    spec: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    """A job spec: ``spec`` (a base, copied) with the module, inputs and the rest set."""
    out: Dict[str, Any] = json.loads(json.dumps(spec)) if spec else {}
    task = out.setdefault("task", {})
    task["module"] = module
    if args:
        task["args"] = [str(a) for a in args]
    if env:
        task["env"] = {**task.get("env", {}), **env}
    if inputs:
        listed: List[Dict[str, Any]] = list(task.get("inputs", []))
        for mount, inp in inputs.items():
            listed.append({**inp, "mount": mount})
        task["inputs"] = listed
    if redundancy is not None or quorum is not None:
        red = out.setdefault("redundancy", {})
        if redundancy is not None:
            red["count"] = redundancy
        if quorum is not None:
            red["quorum"] = quorum
    if constraints:
        out["constraints"] = list(constraints)
    return out
