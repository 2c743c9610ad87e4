"""The async client against the same devstack (plain asyncio.run, no plugin)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import Devstack, TokenNode
from shoal_client import AsyncClient, BadRequest, JobDetail, NotFound, Unauthorized


def test_async_client(devstack: Devstack, samples: Path) -> None:
    async def main() -> None:
        async with AsyncClient(devstack.apis[1]) as c:
            assert (await c.health()).ok
            assert len(await c.nodes()) == 3
            done = await c.run(
                samples / "wordcount.wasm",
                inputs={"/inputs/a.txt": b"one two\nthree\n"},
                redundancy=2,
                timeout=60,
            )
            assert done.succeeded and done.result
            counts = (await c.cat(done.result, "outputs/counts.tsv")).decode()
            assert "a.txt\t2\t3\t14" in counts.splitlines()
            assert {"exitCode", "stdout", "stderr", "outputs"} <= set((await c.ls(done.result)).names)

            failed = await c.run(samples / "exitcode.wasm", args=["7"], timeout=60)
            assert failed.state == "completed" and failed.outcome == "failed" and failed.exit_code == 7

            queued = await c.run(samples / "hello.wasm", wait=False)
            seen: list[JobDetail] = [d async for d in c.events(queued.id)]
            assert seen and seen[-1].ended and seen[-1].succeeded

            stuck = await c.run(samples / "hello.wasm", constraints=["zone=nowhere"], wait=False)
            assert stuck.state == "queued"
            assert (await c.cancel(stuck.id)).state == "cancelled"
            assert (await c.wait(stuck.id, timeout=5)).cancelled

            with pytest.raises(NotFound):
                await c.job("j-0000000000000000000000")
            with pytest.raises(NotFound):
                async with c.events("j-0000000000000000000000"):
                    pass
            with pytest.raises(BadRequest):
                await c.submit({"task": {}})

    asyncio.run(main())


def test_async_token(token_node: TokenNode) -> None:
    async def main() -> None:
        async with AsyncClient(token_node.api, token="") as anon:
            with pytest.raises(Unauthorized):
                await anon.health()
        async with AsyncClient(token_node.api, token=token_node.token) as c:
            assert (await c.health()).ok

    asyncio.run(main())
