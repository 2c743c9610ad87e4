"""Exceptions raised by the Shoal client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Type

import httpx

if TYPE_CHECKING:
    from ._models import JobDetail

__all__ = [
    "ShoalError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "Unprocessable",
    "ServiceUnavailable",
    "ServerError",
    "TransportError",
    "WaitTimeout",
    "JobFailed",
]


class ShoalError(Exception):
    """A request the node refused or could not answer.

    ``status`` is the HTTP status (None when no answer came back, see
    :class:`TransportError`), ``message`` the API's ``{"error": ...}``
    message (or a description of the answer when it was not in that form),
    ``api_error`` the API's message alone (None when the body was not the
    API's error form, e.g. a route the node does not have).
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        api_error: Optional[str] = None,
        method: Optional[str] = None,
        url: Optional[str] = None,
        body: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.api_error = api_error
        self.method = method
        self.url = url
        self.body = body

    def __str__(self) -> str:
        where = f"{self.method} {self.url}: " if self.method and self.url else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{where}{status}{self.message}".strip()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r})"


class BadRequest(ShoalError):
    """400: a malformed request (a bad job spec, a malformed CID or id)."""


class Unauthorized(ShoalError):
    """401: the node requires a bearer token and none, or a wrong one, was sent."""


class Forbidden(ShoalError):
    """403: refused by the node's browser-safety guard (Host, Origin)."""


class NotFound(ShoalError):
    """404: no such job, CID or path (or a route the node does not have)."""


class PayloadTooLarge(ShoalError):
    """413: a body or a file over the node's limits."""


class UnsupportedMediaType(ShoalError):
    """415: a content type the node does not take."""


class Unprocessable(ShoalError):
    """422: a valid spec the node cannot run (data found nowhere, inputs that cannot be mounted)."""


class ServiceUnavailable(ShoalError):
    """503: the node is busy (too many jobs or event streams); retry later."""


class ServerError(ShoalError):
    """Any other 5xx answer."""


class TransportError(ShoalError):
    """No answer: the connection failed or timed out."""


class WaitTimeout(ShoalError, TimeoutError):
    """:meth:`Client.wait` reached its deadline before the job ended.

    ``detail`` is the job as last seen.
    """

    def __init__(self, message: str, detail: "JobDetail") -> None:
        super().__init__(message)
        self.detail = detail


class JobFailed(Exception):
    """Raised by :meth:`JobDetail.check` for a job that did not succeed."""

    def __init__(self, detail: "JobDetail") -> None:
        job = detail.job
        if job.state == "completed":
            what = f"the guest failed (exit code {job.exit_code})"
            if job.failure:
                what += f": {job.failure}"
        else:
            what = f"the job is {job.state}"
            if job.error:
                what += f": {job.error}"
        super().__init__(f"job {job.id}: {what}")
        self.detail = detail


_BY_STATUS: Dict[int, Type[ShoalError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    503: ServiceUnavailable,
}


def error_for(response: httpx.Response) -> ShoalError:
    """The exception for a non-2xx answer (its body must have been read)."""
    status = response.status_code
    text = response.text
    api_error: Optional[str] = None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        api_error = body["error"]
    if api_error is not None:
        message = api_error
    else:
        message = response.reason_phrase or "error"
        if text.strip():
            message += f": {text.strip()[:500]}"
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ShoalError
    return cls(
        message,
        status=status,
        api_error=api_error,
        method=response.request.method,
        url=str(response.request.url),
        body=text,
    )
