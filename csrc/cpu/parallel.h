// Work sharing on the at::parallel_for threads (one thread pool: torch's).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cpu/simd.h"

namespace snnops {

// Runs fn(t0, t1) over [0, n) in pieces of `grain`, handed out from a shared counter
// to the at::parallel_for threads. The thread that calls starts at once and takes
// pieces until the others join, so a worker that is slow to start (asleep between our
// calls, or descheduled on a shared machine) no longer holds back a fixed half of the
// work, as at::parallel_for's static split does (measured up to 2x slower under load).
// Only for work whose result does not depend on which thread runs a piece. (Used where
// a piece is compute-heavy; on the bandwidth-bound LIF it measured no better than the
// static split.) Small n runs inline.
template <typename F>
void parallel_pieces(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t pieces = ceil_div(n, grain);
  const int64_t threads = std::min<int64_t>(pieces, at::get_num_threads());
  if (threads <= 1 || at::in_parallel_region()) return fn(0, n);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t p = next++; p < pieces; p = next++) fn(p * grain, std::min(n, (p + 1) * grain));
  });
}

}  // namespace snnops
