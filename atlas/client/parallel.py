"""Run many calls at once and wait for all of them, results in order."""

from __future__ import annotations

import contextvars
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

DEFAULT_CONCURRENCY = 16

# A weak reference to the executor whose worker the current thread is (see executor=);
# weak, so that an executor nobody else holds can still be collected and its threads end.
_worker_of = threading.local()


def gather(
    *calls: Callable[[], T],
    concurrency: int = DEFAULT_CONCURRENCY,
    executor: Executor | None = None,
) -> list[T | Exception]:
    """Run zero-argument callables concurrently; return each result or raised exception, in order.

    At most ``concurrency`` run at once. Without ``executor`` the threads are
    started for this call and stopped after it; with one (``Session.map`` keeps
    one per session) its threads are reused, which saves starting a thread per
    call. Thread-safe; a call may itself call ``gather`` with the same executor.
    """
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
    # Each call runs in a copy of the caller's context so the bound request id
    # (and any other context variable) follows it into the worker thread.
    todo: queue.SimpleQueue[tuple[int, contextvars.Context, Callable[[], T]]] = queue.SimpleQueue()
    for index, call in enumerate(calls):
        todo.put((index, contextvars.copy_context(), call))

    def worker(pool: Executor | None) -> None:
        _worker_of.executor = weakref.ref(pool) if pool is not None else None
        while True:
            try:
                index, context, call = todo.get_nowait()
            except queue.Empty:
                return
            context.run(run, index, call)

    workers = min(concurrency, len(calls))
    mine = getattr(_worker_of, "executor", None)
    if executor is not None and (mine is None or mine() is not executor):
        futures = [executor.submit(worker, executor) for _ in range(workers)]
        for future in futures:
            future.result()
        return results
    # No executor, or called from one of its own workers (waiting on it could deadlock).
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atlas-client") as pool:
        for _ in range(workers):
            pool.submit(worker, None)
    return results
