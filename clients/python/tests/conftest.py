"""Fixtures that start real Shoal nodes (no mocks).

``SHOAL_BIN`` names the shoal binary (default ``<repo>/target/debug/shoal``);
the sample guests are built with ``make -C <repo>/samples``.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, List, Optional

import pytest

from shoal_client import Client

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def shoal_bin() -> Path:
    return Path(os.environ.get("SHOAL_BIN") or REPO / "target" / "debug" / "shoal")


@dataclass
class Proc:
    """A process we started, its stdout lines read by a thread."""

    popen: "subprocess.Popen[str]"
    name: str
    stderr_path: Path
    lines: "queue.Queue[Optional[str]]" = field(default_factory=queue.Queue)
    seen: List[str] = field(default_factory=list)

    def start_reader(self) -> None:
        out = self.popen.stdout
        assert out is not None

        def pump(f: IO[str]) -> None:
            for line in f:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        threading.Thread(target=pump, args=(out,), daemon=True).start()

    def read_until(self, done: Callable[[str], bool], timeout: float) -> List[str]:
        """Lines up to and including the first for which ``done`` holds."""
        deadline = time.monotonic() + timeout
        got: List[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: not ready after {timeout} s; stdout {self.seen}; {self.stderr()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.wait()}) before it was ready; stdout {self.seen}; {self.stderr()}"
                )
            self.seen.append(line)
            got.append(line)
            if done(line):
                return got

    def stderr(self) -> str:
        try:
            return "stderr: " + self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "no stderr"

    def stop(self) -> None:
        """SIGTERM (devstack stops its nodes), then SIGKILL to its process group."""
        p = self.popen
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group we made (orphaned nodes included).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass


def start(args: List[str], name: str, workdir: Path) -> Proc:
    binary = shoal_bin()
    if not binary.is_file():
        pytest.fail(f"no shoal binary at {binary}: build it (cargo build) or set SHOAL_BIN")
    stderr_path = workdir / f"{name}.stderr"
    with open(stderr_path, "w") as err:
        popen = subprocess.Popen(
            [str(binary), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group, killed in stop()
        )
    proc = Proc(popen=popen, name=name, stderr_path=stderr_path)
    proc.start_reader()
    return proc


def field_of(line: str, key: str) -> str:
    for part in line.split():
        if part.startswith(key + "="):
            return part[len(key) + 1 :]
    raise RuntimeError(f"no {key}= in {line!r}")


@pytest.fixture(scope="session")
def samples() -> Path:
    """The sample guests' directory, built once."""
    build = REPO / "samples" / "build"
    r = subprocess.run(["make", "-C", str(REPO / "samples")], capture_output=True, text=True, timeout=300)
    needed = ["wordcount.wasm", "hello.wasm", "exitcode.wasm"]
    missing = [n for n in needed if not (build / n).is_file()]
    if missing:
        pytest.fail(f"samples {missing} missing after make -C samples (rc {r.returncode}): {r.stderr[-2000:]}")
    return build


@dataclass
class Devstack:
    apis: List[str]
    peers: List[str]
    home: Path


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devstack]:
    """``shoal devstack --nodes 3``: three real nodes, peered."""
    home = tmp_path_factory.mktemp("devstack")
    proc = start(["--home", str(home), "devstack", "--nodes", "3"], "devstack", home)
    try:
        lines = proc.read_until(lambda line: line.strip() == "ready", START_TIMEOUT)
        nodes = [line for line in lines if line.startswith("node ")]
        stack = Devstack(
            apis=[field_of(line, "api") for line in nodes],
            peers=[field_of(line, "peer") for line in nodes],
            home=home,
        )
        assert len(stack.apis) == 3, lines
        # Every node knows the others (announcements arrive shortly after
        # start; the two later nodes learn of each other through the first).
        for i, api in enumerate(stack.apis):
            with Client(api, timeout=10) as c:
                deadline = time.monotonic() + 30
                while len([n for n in c.nodes() if n.compute]) < 3:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {i} knows {c.nodes()} after 30 s")
                    time.sleep(0.1)
        yield stack
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def client(devstack: Devstack) -> Iterator[Client]:
    with Client(devstack.apis[0], timeout=30) as c:
        yield c


@dataclass
class TokenNode:
    api: str
    token: str


@pytest.fixture(scope="session")
def token_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenNode]:
    """A lone node started with ``--require-token --no-compute``."""
    home = tmp_path_factory.mktemp("token-node")
    proc = start(["--home", str(home), "node", "--require-token", "--no-compute"], "token-node", home)
    try:
        line = proc.read_until(lambda line: line.startswith("ready "), START_TIMEOUT)[-1]
        token = (home / "api-token").read_text().strip()
        assert token
        yield TokenNode(api=field_of(line, "api"), token=token)
    finally:
        proc.stop()
