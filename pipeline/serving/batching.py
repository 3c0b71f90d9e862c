"""Who joins the next batch: requests wait for the running forward pass, then a batch's worth go.

    await gate.enter()             # in the request, before Serve's batch queue
    try:
        ... await self.run_batch(map)      # @serve.batch; it calls gate.pass_starts() / gate.pass_ends()
    finally:
        await gate.leave()

Serve 2.60's `serve.batch` forms the next batch while one runs: --batch-wait-ms after the
first request that finds the queue empty it takes whatever has arrived, and that batch then
waits for the running one to end. When a forward pass takes longer than that wait, the
passes after the first carry a map or two each, every one padded to a full batch (an image
must not depend on its batch-mates), and throughput falls by the padding. So a request joins
Serve's queue only when no pass runs and fewer than a batch's worth of requests are in the
queue or in a pass: while a pass runs, the requests that arrive wait here; when it ends, up
to --max-batch-size of them join at once, in the order they came, and fill the next batch.
A request that finds the replica idle joins at once, and waits --batch-wait-ms for company.
"""
from __future__ import annotations

import asyncio


class BatchGate:
    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.inside = 0  # requests between enter() and leave(): queued or in a pass
        self.running = False  # a forward pass runs
        self.changed = asyncio.Condition()

    def _open(self) -> bool:
        return not self.running and self.inside < self.batch_size

    async def enter(self) -> None:
        async with self.changed:
            await self.changed.wait_for(self._open)
            self.inside += 1

    async def leave(self) -> None:
        async with self.changed:
            self.inside -= 1
            self.changed.notify_all()

    async def pass_starts(self) -> None:
        async with self.changed:
            self.running = True

    async def pass_ends(self) -> None:
        async with self.changed:
            self.running = False
            self.changed.notify_all()
