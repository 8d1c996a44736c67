"""Run many calls at once and wait for all of them, results in order."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

DEFAULT_CONCURRENCY = 16


def gather(*calls: Callable[[], T], concurrency: int = DEFAULT_CONCURRENCY) -> list[T | Exception]:
    """Run zero-argument callables concurrently; return each result or raised exception, in order."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    results: list[T | Exception] = [ValueError("not run")] * len(calls)

    def run(index: int, call: Callable[[], T]) -> None:
        try:
            results[index] = call()
        except Exception as exc:
            results[index] = exc

    if len(calls) == 1:
        run(0, calls[0])
        return results
    if not calls:
        return results
    with ThreadPoolExecutor(
        max_workers=min(concurrency, len(calls)), thread_name_prefix="atlas-client"
    ) as pool:
        # Each call runs in a copy of the caller's context so the bound request id
        # (and any other context variable) follows it into the worker thread.
        for index, call in enumerate(calls):
            pool.submit(contextvars.copy_context().run, run, index, call)
    return results
