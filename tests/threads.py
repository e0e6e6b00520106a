"""Threads released together, for the race tests of the write path and the adapters."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_concurrently(n: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(0..n-1)`` on ``n`` threads released together; the exceptions they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
