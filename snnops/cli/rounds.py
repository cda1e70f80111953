"""The order in which interleaved timings run their candidates, round after round.

A timed call is slowed by what ran just before it: a candidate that allocates or
streams a lot (a chain of library convolutions, a plain autograd loop) evicts the
next one's inputs and outputs from cache. Rotating one fixed order keeps the same
predecessor for each candidate in almost every round, so that cost falls unevenly:
with three candidates A, B, C rotated, A follows C in two rounds of three, B in one.
(The TT benchmark's HTT / PTT / separate-convolutions rounds, one call per timing,
HTT after the convolutions in two rounds of three: its median speed-up over PTT came
out 2-8% lower rotated than in the balanced orders below, blocks of both run
alternately in one process: 1.09 / 1.14 against 1.18 / 1.16 forward, 1.22 against
1.31 forward+backward.)

Williams' design (E. J. Williams, 1949) balances it: n rows of a Latin square in
which every candidate follows every other one equally often (n rows for even n,
2n with the mirrored rows for odd n), and every candidate takes every position.
"""
from __future__ import annotations

from typing import List, Sequence


def williams_rows(n: int) -> List[List[int]]:
    """The rows of Williams' carry-over balanced design for n candidates (indices)."""
    if n <= 0:
        return [[]]
    first, lo, hi = [0], 1, n - 1
    while lo <= hi:  # 0, 1, n-1, 2, n-2, ...
        first.append(lo)
        lo += 1
        if lo <= hi:
            first.append(hi)
            hi -= 1
    rows = [[(x + i) % n for x in first] for i in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return rows


def round_orders(names: Sequence, rounds: int) -> List[list]:
    """The order of ``names`` in each of ``rounds`` rounds, cycling through the design."""
    rows = williams_rows(len(names))
    return [[names[i] for i in rows[r % len(rows)]] for r in range(rounds)]
