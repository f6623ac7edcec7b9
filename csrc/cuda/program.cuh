// The CUDA kernel that runs any program of common/program.h: each block runs the program's phases with a barrier
// after each (the barrier also guards the shared memory between the blocks a grid-stride loop gives one CUDA block).
// The emulator (cpu/program_emulator.h) runs the same programs on the CPU.
#pragma once

#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#include "common/program.h"

namespace fastblocks::cuda {

template <class Program>
__global__ void __launch_bounds__(program::kBlockThreads)
    program_kernel(const Program program, int64_t blocks, int64_t shared_elems) {
  using S = program::shared_scalar_t<Program>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const program::SharedArray<S> smem{reinterpret_cast<S*>(shared_bytes), shared_elems, nullptr};
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    typename Program::State state{};
#pragma unroll
    for (int phase = 0; phase < Program::kPhases; ++phase) {
      program.phase(phase, block, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x), smem, state);
      __syncthreads();
    }
  }
}

template <class Program>
void launch_program(const Program& program, cudaStream_t stream) {
  static_assert(sizeof(Program) <= 4096, "a program is passed by value as the kernel's argument: at most 4 KB");
  const int64_t blocks = program.blocks();
  if (blocks == 0) return;
  using S = program::shared_scalar_t<Program>;
  const int64_t shared_bytes = program.shared_elems() * static_cast<int64_t>(sizeof(S));
  TORCH_INTERNAL_ASSERT(program.threads() > 0 && program.threads() <= program::kBlockThreads &&
                            shared_bytes <= program::kMaxSharedBytes,
                        program.name(), ": block of ", program.threads(), " threads, ", shared_bytes,
                        " bytes of shared memory");
  const auto grid = static_cast<unsigned>(std::min<int64_t>(blocks, int64_t(1) << 30));
  program_kernel<Program><<<grid, program.threads(), static_cast<size_t>(shared_bytes), stream>>>(
      program, blocks, program.shared_elems());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastblocks::cuda
