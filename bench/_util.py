"""Shared benchmark helpers: interleaved timing, copy bandwidth, tables, JSON.

Rules (../shared/docs/PERFORMANCE.md): every claim is a ratio measured in one run;
implementations run alternately, round after round (in orders where each follows
every other equally often: snnops.cli.rounds), and we report the median of the
per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from snnops.cli.rounds import round_orders

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timeit(fn, min_time=0.02):
    """Seconds per call of ``fn``: repeated until ``min_time`` has passed (short ops)."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def interleave(fns: dict, rounds=15, warmup=2, min_time=0.02, settle=0.0):
    """Time every callable in ``fns`` alternately. Returns {name: [seconds per round]}.

    ``settle``: seconds of untimed calls at the start of each turn (at least one call
    when above 0), so that a turn times the callable's steady state rather than its
    first calls after a switch (measured in ../docs/lif.md).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for order in round_orders(names, rounds):
        for name in order:
            if settle > 0:
                timeit(fns[name], settle)
            times[name].append(timeit(fns[name], min_time))
    return times


def median_ratio(times, slow, fast):
    """Median over rounds of time[slow] / time[fast] (> 1: ``fast`` is faster)."""
    return statistics.median(a / b for a, b in zip(times[slow], times[fast]))


def copy_bandwidth(nbytes, rounds=15):
    """Achieved bytes/s of ``torch.empty_like(x).copy_(x)`` on ``nbytes`` of data (read +
    write counted; the fresh output's page faults included, as an op's output pays them)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    t = statistics.median(timeit(lambda: torch.empty_like(x).copy_(x)) for _ in range(rounds))
    return 2 * x.numel() * 4 / t


def copy_moving(nbytes):
    """(step, bytes): a copy that moves about ``nbytes`` (read + write counted) and the bytes
    it moves. Its working set is as large as an op's that moves as much, so an op streaming
    its tensors from memory is compared with a copy doing the same; a copy of one input
    that the last-level cache holds between calls measures the cache instead (on a 32 MB
    L3: 116-162 GB/s at 4-8 MB, 50 GB/s at 16 MB, 30-34 GB/s from 32 MB up). Its tensors
    are made once: above glibc's 32 MB mmap threshold ``torch.empty_like`` maps fresh
    pages on every call, and the copy would time page faults (6-7 GB/s)."""
    src = torch.randn(max(1, int(nbytes) // 8))
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 8 * src.numel()


def arg_parser(doc, shapes=None, rounds=15):
    """The options the op benchmarks share: --shapes (of ``shapes``), --rounds, --threads."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    if shapes is not None:
        p.add_argument("--shapes", nargs="+", default=list(shapes), choices=list(shapes))
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--threads", type=int, default=2)
    return p


def start(name, args, detail=""):
    """Sets the threads, prints the run's header (``detail`` appended) and returns
    ``machine()`` with the load average (the machine is shared: say how loaded it was)."""
    import snnops
    torch.set_num_threads(args.threads)
    info = machine()
    info["load_average"] = os.getloadavg()
    print(f"snnops {name} benchmark: threads={info['threads']}, torch {info['torch']}, "
          f"cpu kernels {snnops.cpu_isa()}, rounds={args.rounds}, load average {info['load_average'][0]:.1f}"
          + (f", {detail}" if detail else ""))
    return info


def machine():
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "processor": platform.processor() or platform.machine(),
    }


def print_table(rows, columns, title=None):
    """rows: list of dicts; columns: list of (key, header, format)."""
    cells = [[fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns]
             for row in rows]
    headers = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if title:
        print(title)
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def save_json(name, payload):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path
