"""Replay batches drawn one gradient step ahead, in a second Python thread.

A graph agent's gradient step spends ~40 % of its time on work that reads no weight: drawing the batch from the
replay buffer and unrolling its graphs into distinct node states (``agents.extractors``). :func:`prefetched` runs
that part for step i + 1 in a worker thread while the caller runs step i. The draws are the same calls in the same
order as a plain loop (the worker is the only thread that samples), so the batches are the same. Torch's intra-op
pool is set to one thread meanwhile, so the two Python threads use two cores in all: on by default only where torch
was given at least two (see :func:`prefetch_default`). The gradient step then runs at one intra-op thread: the same
parameters bit for bit as a plain loop at one thread; against two, some kernels (the LSTM's) round differently.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


def prefetch_default(device: torch.device) -> bool:
    """Prefetch when the update runs on the CPU and torch may use two threads or more (a search given one
    thread, e.g. one of several run side by side, keeps to one)."""
    return device.type == "cpu" and torch.get_num_threads() >= 2


def prefetched(draw: Callable[[], T], count: int) -> Iterator[T]:
    """``draw()`` ``count`` times, in order, each call in one worker thread: the next one runs while the caller works
    on the previous result. An exception in ``draw`` is raised where its result is taken."""
    if count <= 0:
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this thread and the worker: two threads in all
    pool = ThreadPoolExecutor(1, thread_name_prefix="agmc-prefetch")
    try:
        ahead = pool.submit(draw)
        for i in range(count):
            item = ahead.result()
            if i + 1 < count:
                ahead = pool.submit(draw)
            yield item
    finally:
        pool.shutdown(wait=True)  # an early exit waits for the draw in flight
        torch.set_num_threads(threads)
