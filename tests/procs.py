"""Worker processes for the multi-process tests: ``python -m tests.procs <command> ...``.

* ``append URL WORKER COUNT GO``: wait for the file GO, then append COUNT events,
  one per append, to ``worker:WORKER`` with exact expected versions.
* ``late URL COUNT``: append COUNT events to ``late``, one at a time.
* ``crash URL RUN READY SYNCHRONOUS``: append recognisable batches forever
  (metadata ``batch`` and ``size``; some span two streams); touch READY after
  the first commit. Meant to be killed with SIGKILL.
"""

from __future__ import annotations

import random
import sys

import anyio

from eventstore import AppendRequest, SignalPushed, open_store


def event(n: int) -> SignalPushed:
    return SignalPushed(signal_id=n, notion_page_id=f"page-{n}")


async def append(url: str, worker: int, count: int, go: str) -> None:
    async with open_store(url, actor=f"worker-{worker}") as log:
        while not await anyio.Path(go).exists():  # noqa: ASYNC110 - the test process creates it
            await anyio.sleep(0.005)
        for seq in range(count):
            await log.append(
                f"worker:{worker}", [event(seq + 1)], expected_version=seq, metadata={"worker": worker, "seq": seq}
            )


async def late(url: str, count: int) -> None:
    async with open_store(url, actor="late") as log:
        for seq in range(count):
            await log.append("late", [event(seq + 1)], metadata={"seq": seq})
            await anyio.sleep(0.002)


async def crash(url: str, run: int, ready: str, synchronous: str) -> None:
    rng = random.Random(run)
    async with open_store(url, actor=f"crash-{run}", synchronous=synchronous) as log:
        batch = 0
        while True:
            size = rng.randint(1, 40)
            meta = {"batch": f"{run}-{batch}", "size": size}
            split = rng.randint(0, size) if rng.random() < 0.3 else size
            requests = [AppendRequest(stream=f"crash:{batch % 7}", events=[event(n + 1) for n in range(split)])]
            if split < size:
                requests.append(AppendRequest(stream="crash:other", events=[event(n + 1) for n in range(split, size)]))
            requests = [r for r in requests if r.events]
            requests = [AppendRequest(stream=r.stream, events=r.events, metadata=meta) for r in requests]
            await log.append_batch(requests)
            if batch == 0:
                await anyio.Path(ready).touch()
            batch += 1


def main(argv: list[str]) -> None:
    command, url, *args = argv
    if command == "append":
        anyio.run(append, url, int(args[0]), int(args[1]), args[2])
    elif command == "late":
        anyio.run(late, url, int(args[0]))
    elif command == "crash":
        anyio.run(crash, url, int(args[0]), args[1], args[2])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
