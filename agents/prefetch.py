"""A second Python thread for the parts of a gradient step that do not wait for the main thread's work.

A graph agent's DDPG/TD3 gradient step has parts that read no weight the step is changing: drawing the next replay
batch and unrolling its graphs into distinct node states (``agents.extractors``), the target networks' pass on the
next observations, and (once the critic has stepped) the critic's no-grad view of the states the actor loss
needs. :func:`helper_thread` runs such tasks in one worker thread, in the order they were handed over, while the
caller goes on with the rest; each task's result is taken where it is needed. The tasks are the same calls as
a plain loop's, so the draws and values are the same. Torch's intra-op pool is set to one thread meanwhile, so the
two Python threads use two cores in all: on by default only where torch was given at least two (see
:func:`prefetch_default`). The step then runs at one intra-op thread: the same parameters bit for bit as a plain
loop at one thread; against two, some kernels (the LSTM's) round differently.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")
Run = Callable[[Callable[[], T]], Future]


def prefetch_default(device: torch.device) -> bool:
    """Use a helper thread when the update runs on the CPU and torch may use two threads or more (a search given
    one thread, e.g. one of several run side by side, keeps to one)."""
    return device.type == "cpu" and torch.get_num_threads() >= 2


def _now(task: Callable[[], T]) -> Future:
    """``task()`` run at once, as a finished Future (its exception raised where the result is taken)."""
    done: Future = Future()
    try:
        done.set_result(task())
    except BaseException as error:  # noqa: BLE001  (re-raised by result(), as a worker's would be)
        done.set_exception(error)
    return done


@contextmanager
def helper_thread(enabled: bool) -> Iterator[Run]:
    """Yields ``run(task) -> Future``: with ``enabled``, tasks run one after another in one worker thread (torch at one
    intra-op thread in each of the two threads until the block ends); else each at once in the caller's thread.
    On leaving the block, the tasks handed over are waited for."""
    if not enabled:
        yield _now
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this thread and the worker: two threads in all
    pool = ThreadPoolExecutor(1, thread_name_prefix="agmc-helper")
    try:
        yield pool.submit
    finally:
        pool.shutdown(wait=True)  # an early exit waits for the task in flight
        torch.set_num_threads(threads)
