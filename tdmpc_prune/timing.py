"""Timing that stays meaningful on a shared machine: the calling thread's CPU time beside wall time.

On CPU with one torch thread every kernel runs in the calling thread, so its CPU time
(`time.thread_time`) measures the work done and is not inflated when other processes share the
cores; wall time is what a user waits.  On CUDA (or with several threads) only wall time, taken
between two device synchronisations, measures the work.  `Timing.ms` picks the one that measures
the work; benchmarks report both.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Union

import torch


def synchronize(device: Union[torch.device, str]) -> None:
    """Wait for queued CUDA work on `device` (no-op elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_time_measures_work(device: Union[torch.device, str]) -> bool:
    """True when the calling thread's CPU time is the work: a CPU device and one torch thread."""
    return torch.device(device).type == "cpu" and torch.get_num_threads() == 1


@dataclass
class Timing:
    """Per-call times in milliseconds."""

    cpu: List[float]
    wall: List[float]
    use_cpu: bool

    @property
    def ms(self) -> float:
        """Median of the clock that measures the work (CPU time on one CPU thread, else wall)."""
        return statistics.median(self.cpu if self.use_cpu else self.wall)

    @property
    def wall_ms(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_ms(self) -> float:
        return statistics.median(self.cpu)

    def extend(self, other: "Timing") -> "Timing":
        self.cpu += other.cpu
        self.wall += other.wall
        return self


def time_calls(fn: Callable[[], object], device: Union[torch.device, str], repeats: int = 1, warmup: int = 0) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed (CUDA synchronised around each)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    cpu, wall = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        synchronize(device)
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - t) * 1e3)
    return Timing(cpu, wall, cpu_time_measures_work(device))
