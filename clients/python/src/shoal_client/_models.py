"""The API's JSON shapes as typed dataclasses.

Every class keeps the JSON it was made from in ``raw``, so fields a newer
node adds are never lost; fields an older node lacks get their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from ._errors import JobFailed

__all__ = [
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

JOB_STATES = ("queued", "running", "completed", "failed", "cancelled")
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})
EXECUTION_STATES = (
    "bid_asked",
    "accepted",
    "running",
    "committed",
    "revealed",
    "completed",
    "rejected",
    "failed",
    "lost",
)

Json = Dict[str, Any]


def _obj(v: Any) -> Json:
    return dict(v) if isinstance(v, Mapping) else {}


def _list(v: Any) -> List[Any]:
    return list(v) if isinstance(v, list) else []


@dataclass(frozen=True)
class Health:
    """``GET /v1/health``."""

    ok: bool
    peer: str
    version: str
    connected_peers: int
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Health:
        return cls(
            ok=bool(d.get("ok")),
            peer=d.get("peer", ""),
            version=d.get("version", ""),
            connected_peers=int(d.get("connected_peers") or 0),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: Optional[int]
    software: bool
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Gpu:
        return cls(
            name=d.get("name", ""),
            memory_bytes=d.get("memory_bytes"),
            software=bool(d.get("software")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class NodeStats:
    agreed: int = 0
    dissented: int = 0
    lost: int = 0
    failed: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NodeStats:
        return cls(
            agreed=int(d.get("agreed") or 0),
            dissented=int(d.get("dissented") or 0),
            lost=int(d.get("lost") or 0),
            failed=int(d.get("failed") or 0),
        )


@dataclass(frozen=True)
class Node:
    """One entry of ``GET /v1/nodes``: the node's view (``id``, ``labels``,
    ...) with the entry's ``api`` URL and ``is_self`` (the JSON ``self``)."""

    id: str
    labels: Dict[str, str]
    compute: bool
    slots_total: int
    slots_free: int
    memory_bytes: int
    gpu: Optional[Gpu]
    version: str
    last_seen_ms: int
    holds: List[str]
    stats: NodeStats
    api: Optional[str]
    is_self: bool
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Node:
        n = _obj(d.get("node"))
        gpu = n.get("gpu")
        return cls(
            id=n.get("id", ""),
            labels={str(k): str(v) for k, v in _obj(n.get("labels")).items()},
            compute=bool(n.get("compute")),
            slots_total=int(n.get("slots_total") or 0),
            slots_free=int(n.get("slots_free") or 0),
            memory_bytes=int(n.get("memory_bytes") or 0),
            gpu=Gpu.from_json(gpu) if isinstance(gpu, Mapping) else None,
            version=n.get("version", ""),
            last_seen_ms=int(n.get("last_seen_ms") or 0),
            holds=[str(h) for h in _list(n.get("holds"))],
            stats=NodeStats.from_json(_obj(n.get("stats"))),
            api=d.get("api"),
            is_self=bool(d.get("self")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class TimelineStep:
    """A state an execution entered, and when (milliseconds since the epoch)."""

    state: str
    ms: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TimelineStep:
        return cls(state=d.get("state", ""), ms=int(d.get("ms") or 0))


@dataclass(frozen=True)
class Execution:
    """One run of a job on one node.

    ``result``, ``stdout`` and ``stderr`` stay None until the job has
    ended (they are sealed while nodes could still copy each other).
    """

    id: str
    job: str
    node: str
    state: str
    created_ms: int
    updated_ms: int
    started_ms: Optional[int] = None
    commitment: Optional[str] = None
    result: Optional[str] = None
    error: Optional[str] = None
    stdout: Optional[str] = None
    stderr: Optional[str] = None
    exit_code: Optional[int] = None
    extra: bool = False
    nonce: Optional[str] = None
    meta: Optional[Json] = None
    timeline: List[TimelineStep] = field(default_factory=list)
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Execution:
        meta = d.get("meta")
        return cls(
            id=d["id"],
            job=d.get("job", ""),
            node=d.get("node", ""),
            state=d["state"],
            created_ms=int(d.get("created_ms") or 0),
            updated_ms=int(d.get("updated_ms") or 0),
            started_ms=d.get("started_ms"),
            commitment=d.get("commitment"),
            result=d.get("result"),
            error=d.get("error"),
            stdout=d.get("stdout"),
            stderr=d.get("stderr"),
            exit_code=d.get("exit_code"),
            extra=bool(d.get("extra")),
            nonce=d.get("nonce"),
            meta=dict(meta) if isinstance(meta, Mapping) else None,
            timeline=[TimelineStep.from_json(s) for s in _list(d.get("timeline")) if isinstance(s, Mapping)],
            raw=dict(d),
        )


def _submitter_key(v: Any) -> Optional[str]:
    """The key of a job's submitter claim (``{"key": ..., ...}``), if any."""
    if isinstance(v, Mapping) and isinstance(v.get("key"), str):
        return str(v["key"])
    return None


@dataclass(frozen=True)
class Job:
    """A job as the API shows it.

    ``state`` says how the network did (``completed``: the nodes agreed on
    a result); ``outcome`` says how the guest did, once completed
    (``succeeded`` or ``failed``, with ``exit_code`` and ``failure``).
    """

    id: str
    spec: Json
    state: str
    created_ms: int
    updated_ms: int
    started_ms: Optional[int] = None
    result: Optional[str] = None
    error: Optional[str] = None
    extra_used: int = 0
    exit_code: Optional[int] = None
    failure: Optional[str] = None
    outcome: Optional[str] = None
    #: The CID of the job's signed receipt (docs/receipts.md).
    receipt: Optional[str] = None
    #: Answered from the result cache: the receipt of the earlier run.
    cached: Optional[str] = None
    #: The submitter's key (a peer id), when the submission was signed.
    submitter: Optional[str] = None
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Job:
        return cls(
            id=d["id"],
            spec=_obj(d.get("spec")),
            state=d["state"],
            created_ms=int(d.get("created_ms") or 0),
            updated_ms=int(d.get("updated_ms") or 0),
            started_ms=d.get("started_ms"),
            result=d.get("result"),
            error=d.get("error"),
            extra_used=int(d.get("extra_used") or 0),
            exit_code=d.get("exit_code"),
            failure=d.get("failure"),
            outcome=d.get("outcome"),
            receipt=d.get("receipt"),
            cached=d.get("cached"),
            submitter=_submitter_key(d.get("submitter")),
            raw=dict(d),
        )

    @property
    def ended(self) -> bool:
        """Completed, failed or cancelled: it will not change any more."""
        return self.state in TERMINAL_STATES

    @property
    def completed(self) -> bool:
        """The nodes agreed on a result (whatever the guest did)."""
        return self.state == "completed"

    @property
    def succeeded(self) -> bool:
        """Completed, and the guest exited 0 without a failure.

        A job completed by a node that predates outcomes (``outcome`` null)
        counts as succeeded unless it reports an exit code or a failure.
        """
        if self.state != "completed":
            return False
        if self.outcome is None:
            return not self.exit_code and not self.failure
        return self.outcome == "succeeded"

    @property
    def guest_failed(self) -> bool:
        """Completed, but the guest failed (non-zero exit code, trap, limit)."""
        return self.state == "completed" and not self.succeeded

    @property
    def cancelled(self) -> bool:
        return self.state == "cancelled"


@dataclass(frozen=True)
class JobDetail:
    """``GET /v1/jobs/{id}`` (also the answer of cancel, wait and each event)."""

    job: Job
    executions: List[Execution]
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobDetail:
        return cls(
            job=Job.from_json(_obj(d.get("job"))),
            executions=[Execution.from_json(e) for e in _list(d.get("executions")) if isinstance(e, Mapping)],
            raw=dict(d),
        )

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def state(self) -> str:
        return self.job.state

    @property
    def outcome(self) -> Optional[str]:
        return self.job.outcome

    @property
    def result(self) -> Optional[str]:
        return self.job.result

    @property
    def exit_code(self) -> Optional[int]:
        return self.job.exit_code

    @property
    def failure(self) -> Optional[str]:
        return self.job.failure

    @property
    def error(self) -> Optional[str]:
        return self.job.error

    @property
    def ended(self) -> bool:
        return self.job.ended

    @property
    def completed(self) -> bool:
        return self.job.completed

    @property
    def succeeded(self) -> bool:
        return self.job.succeeded

    @property
    def guest_failed(self) -> bool:
        return self.job.guest_failed

    @property
    def cancelled(self) -> bool:
        return self.job.cancelled

    def check(self) -> JobDetail:
        """Returns self when the job succeeded; raises :class:`JobFailed` otherwise."""
        if not self.succeeded:
            raise JobFailed(self)
        return self


@dataclass(frozen=True)
class SubmitResult:
    """``POST /v1/jobs``: the new job's id and the node's warnings."""

    id: str
    warnings: List[str]
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SubmitResult:
        return cls(id=d["id"], warnings=[str(w) for w in _list(d.get("warnings"))], raw=dict(d))


@dataclass(frozen=True)
class ExecutionLog:
    execution: str
    node: str
    state: str
    exit_code: Optional[int]
    stdout: Optional[str]
    stderr: Optional[str]
    error: Optional[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExecutionLog:
        return cls(
            execution=d.get("execution", ""),
            node=d.get("node", ""),
            state=d.get("state", ""),
            exit_code=d.get("exit_code"),
            stdout=d.get("stdout"),
            stderr=d.get("stderr"),
            error=d.get("error"),
        )


@dataclass(frozen=True)
class JobLogs:
    """``GET /v1/jobs/{id}/logs``: output is None until the job has ended."""

    job: str
    executions: List[ExecutionLog]
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobLogs:
        return cls(
            job=d.get("job", ""),
            executions=[ExecutionLog.from_json(e) for e in _list(d.get("executions")) if isinstance(e, Mapping)],
            raw=dict(d),
        )


@dataclass(frozen=True)
class UploadedFile:
    """``POST /v1/files``."""

    cid: str
    name: str
    size: int
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> UploadedFile:
        return cls(cid=d["cid"], name=d.get("name", ""), size=int(d.get("size") or 0), raw=dict(d))


@dataclass(frozen=True)
class LsEntry:
    name: str
    cid: str
    kind: str
    size: Optional[int]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LsEntry:
        return cls(name=d.get("name", ""), cid=d.get("cid", ""), kind=d.get("kind", ""), size=d.get("size"))


@dataclass(frozen=True)
class Listing:
    """``GET /v1/ls/{cid}[/{path}]``: what is at ``root/path``."""

    root: str
    path: str
    cid: str
    kind: str
    size: Optional[int]
    entries: List[LsEntry]
    truncated: bool
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Listing:
        return cls(
            root=d.get("root", ""),
            path=d.get("path", ""),
            cid=d.get("cid", ""),
            kind=d.get("kind", ""),
            size=d.get("size"),
            entries=[LsEntry.from_json(e) for e in _list(d.get("entries")) if isinstance(e, Mapping)],
            truncated=bool(d.get("truncated")),
            raw=dict(d),
        )

    @property
    def names(self) -> List[str]:
        return [e.name for e in self.entries]

    def entry(self, name: str) -> Optional[LsEntry]:
        for e in self.entries:
            if e.name == name:
                return e
        return None
