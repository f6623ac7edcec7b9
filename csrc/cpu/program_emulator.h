// The CPU emulator of the CUDA programs (common/program.h): it runs exactly what cuda/program.cuh runs, the same
// blocks, threads and phases, a block barrier being the end of a phase. Blocks run one after another; within a phase,
// threads run one after another (in reverse order on odd blocks, so that an order dependence shows). Shared memory
// starts NaN-filled for every block and the tracker rejects reads of unwritten elements and reads or writes that
// would race on the GPU; vector loads and stores assert their alignment (common/program.h). Test hooks only.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "common/program.h"

namespace fastblocks {

template <class P>
void emulate_program(const P& program, std::vector<std::string>& names) {
  using S = program::shared_scalar_t<P>;
  names.push_back(program.name());
  const int threads = program.threads();
  TORCH_CHECK(threads > 0 && threads <= program::kBlockThreads && threads % 32 == 0, program.name(), ": block of ",
              threads, " threads");
  const int64_t shared = program.shared_elems();
  TORCH_CHECK(shared * static_cast<int64_t>(sizeof(S)) <= program::kMaxSharedBytes, program.name(), ": ", shared,
              " elements of shared memory");
  std::vector<S> smem(static_cast<size_t>(std::max<int64_t>(shared, 1)));
  std::vector<typename P::State> states(static_cast<size_t>(threads));
  program::SharedTracker tracker;
  const program::SharedArray<S> view{smem.data(), shared, &tracker};
  for (int64_t b = 0; b < program.blocks(); ++b) {
    std::fill(smem.begin(), smem.end(), std::numeric_limits<S>::quiet_NaN());
    std::fill(states.begin(), states.end(), typename P::State{});
    tracker.begin_block(shared);
    for (int k = 0; k < P::kPhases; ++k) {
      tracker.begin_phase();
      for (int i = 0; i < threads; ++i) {
        const int t = b % 2 == 0 ? i : threads - 1 - i;
        tracker.thread = t;
        program.phase(k, b, t, threads, view, states[t]);
      }
    }
  }
}

}  // namespace fastblocks
