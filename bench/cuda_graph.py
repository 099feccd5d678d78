"""Shared by the benchmarks: capture a call in a CUDA graph, so timing its replays measures device time only."""

from __future__ import annotations

from typing import Callable


def graphed(fn: Callable[[], object]) -> Callable[[], None]:
    """`fn` captured once in a CUDA graph after three warm-up calls on a side stream (autotuning, compiles and
    allocator growth happen there, outside the capture); returns the graph's replay."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay
