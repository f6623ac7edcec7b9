// Small device helpers of the CUDA kernels that are not programs (the generic depthwise kernels).
#pragma once

#include <cuda_runtime.h>

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "common/dtype_dispatch.h"

namespace fastblocks::cuda {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block in a fixed order (deterministic); the result is valid in thread 0. `scratch` holds 32
// values; the block is 1-D with a multiple of 32 threads.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = (static_cast<int>(threadIdx.x) < static_cast<int>(blockDim.x / 32)) ? scratch[lane] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of kThreads for one thread per element (grid-stride loops past 2^30 blocks).
inline unsigned grid_for(int64_t numel) {
  const int64_t blocks = ceil_div(numel, kThreads);
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > (int64_t(1) << 30) ? (int64_t(1) << 30) : blocks));
}


}  // namespace fastblocks::cuda
