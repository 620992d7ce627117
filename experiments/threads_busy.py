"""How many torch threads on a machine whose cores are not all free? A loop of the demo model's matmul + GELU sizes
(tokens x 576 @ 576 x 1536, SmolLM2-135M's MLP) timed with 1, 2, ... threads, interleaved round by round so that a
change of load hits every setting alike.

``--busy N`` starts N processes that spin on a core each for the duration (a laptop that is never quiet); without
it the machine's own load is what it is. Prints the cores this process may use (``os.sched_getaffinity``), the load
average, the seconds per setting, and what ``frozenvl.cli.threads.choose_threads`` picks under that load.

    python experiments/threads_busy.py                # the machine as it is
    python experiments/threads_busy.py --busy 1       # one core taken by a spinning process

Ends with ``headline: <threads> threads / 1 thread = <ratio>x`` (time ratio of the most threads to one).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def loop_seconds(threads: int, repeats: int, tokens: int = 64) -> float:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, 576, generator=g)
    w = torch.randn(576, 1536, generator=g) / 24
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.gelu(x @ w)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=0, help="spinning processes to start (default 0)")
    parser.add_argument("--repeats", type=int, default=2000, help="matmul + GELU per timing")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from frozenvl.cli.threads import choose_threads

    cores = len(os.sched_getaffinity(0))
    settings = list(range(1, cores + 1))
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        if spinners:
            time.sleep(2.0)  # let the load average see them
        choice = choose_threads()
        times: dict[int, list[float]] = {n: [] for n in settings}
        for _ in range(args.rounds):
            for n in settings:
                times[n].append(loop_seconds(n, args.repeats))
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=5)
    print(f"cores usable: {cores}, load average (1 min): {os.getloadavg()[0]:.2f}, spinning processes: {args.busy}")
    for n in settings:
        med = sorted(times[n])[len(times[n]) // 2]
        runs = ", ".join(f"{t:.2f}" for t in times[n])
        print(f"{n} thread(s): median {med:.2f} s over {args.rounds} rounds ({runs})")
    print(f"choose_threads() picks {choice.threads} ({choice.reason})")
    most = settings[-1]
    ratio = sorted(times[most])[args.rounds // 2] / sorted(times[1])[args.rounds // 2]
    print(f"headline: {most} threads / 1 thread = {ratio:.2f}x")


if __name__ == "__main__":
    main()
