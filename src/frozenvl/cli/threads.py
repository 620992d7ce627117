"""How many torch threads the command line uses: the cores that are actually free, at least one.

A laptop is never quiet. torch's default is one thread per core, and its OpenMP workers wait for each other at the
end of every parallel region: when another process holds one of two cores, the thread that shares it is
descheduled and the other one spins. Measured on a 2-core machine (``experiments/threads_busy.py``, the model's
64x576 @ 576x1536 matmul + GELU): with one other busy process, 2 threads took 57-96 s against 8-9 s for 1 thread,
while on the quiet machine 2 threads are faster. So the policy is

    threads = clamp(round(usable cores - other processes running), 1, usable cores)

where the usable cores are ``os.sched_getaffinity(0)`` and the other processes running are the kernel's count of
runnable tasks (``procs_running`` in ``/proc/stat``, this process excluded), averaged over a tenth of a second;
where that file does not exist, the 1-minute load average. ``FROZENVL_THREADS`` (or ``OMP_NUM_THREADS``) set by
the user wins, and so does a run config's ``train.threads``. Several processes on one machine (torchrun) share
the free cores.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_SAMPLES, _INTERVAL_S = 10, 0.01


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # torch threads per process
    cores: int  # cores this process may run on
    busy: float  # other runnable processes (or the load average), when measured
    reason: str  # how the number was chosen, for logs and reports

    def describe(self) -> str:
        return f"{self.threads} torch thread(s) on {self.cores} usable core(s): {self.reason}"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def other_running() -> tuple[float, str]:
    """Runnable processes besides this one: the mean of ``procs_running - 1`` over a tenth of a second, or the
    1-minute load average where ``/proc/stat`` does not exist. Returns (value, what it is)."""
    counts = []
    try:
        for i in range(_SAMPLES):
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("procs_running"):
                        counts.append(int(line.split()[1]) - 1)  # this process is running while it reads
                        break
            if i + 1 < _SAMPLES:
                time.sleep(_INTERVAL_S)
    except OSError:
        counts = []
    if counts:
        return max(0.0, sum(counts) / len(counts)), "other runnable processes"
    try:
        return os.getloadavg()[0], "1-min load average"
    except OSError:
        return 0.0, "no load information"


def choose_threads(processes: int = 1, requested: int | None = None) -> ThreadChoice:
    """The threads each of ``processes`` processes on this machine should use (``requested``: a config's explicit
    ``train.threads``, which wins)."""
    cores = usable_cores()
    if requested:
        return ThreadChoice(int(requested), cores, float("nan"), "set in the run config")
    for name in ("FROZENVL_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
            return ThreadChoice(int(value), cores, float("nan"), f"{name}={value}")
    busy, what = other_running()
    free = cores - busy
    threads = max(1, min(cores, round(free / max(1, processes))))
    return ThreadChoice(threads, cores, busy, f"{what} {busy:.1f}, so {max(free, 0.0):.1f} core(s) free"
                        + (f" for {processes} processes" if processes > 1 else ""))


def apply_thread_policy(processes: int = 1, requested: int | None = None) -> ThreadChoice:
    """:func:`choose_threads`, then ``torch.set_num_threads``; returns the choice (print ``describe()``)."""
    import torch

    choice = choose_threads(processes, requested)
    torch.set_num_threads(choice.threads)
    return choice
