"""Python client for the HTTP API of Shoal nodes.

>>> from shoal_client import Client
>>> with Client("http://127.0.0.1:8080") as c:
...     done = c.run("wordcount.wasm", inputs={"/inputs/book.txt": "book.txt"}, redundancy=2)
...     print(done.succeeded, c.cat(done.result, "outputs/counts.tsv").decode())
"""

from ._async import AsyncClient, AsyncEventStream
from ._client import Client, EventStream
from ._errors import (
    BadRequest,
    Forbidden,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    ShoalError,
    TransportError,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    WaitTimeout,
)
from ._models import (
    EXECUTION_STATES,
    JOB_STATES,
    TERMINAL_STATES,
    Execution,
    ExecutionLog,
    Gpu,
    Health,
    Job,
    JobDetail,
    JobLogs,
    Listing,
    LsEntry,
    Node,
    NodeStats,
    SubmitResult,
    TimelineStep,
    UploadedFile,
)
from ._version import __version__

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "EventStream",
    "AsyncEventStream",
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
    "JOB_STATES",
    "TERMINAL_STATES",
    "EXECUTION_STATES",
    "Health",
    "Gpu",
    "NodeStats",
    "Node",
    "TimelineStep",
    "Execution",
    "Job",
    "JobDetail",
    "SubmitResult",
    "ExecutionLog",
    "JobLogs",
    "UploadedFile",
    "LsEntry",
    "Listing",
]
