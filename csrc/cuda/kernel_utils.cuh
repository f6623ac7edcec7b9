// Small device helpers shared by the CUDA kernels.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>

#include <c10/cuda/CUDAException.h>

namespace fastblocks::cuda {

// VEC elements that move as one aligned load/store (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// 16 / sizeof(T) when every pointer is 16-byte aligned and `multiple_of` is a multiple of that width (0: no
// constraint, for flat loops whose tail is handled separately), else 1.
template <typename T>
inline int pick_vec(int64_t multiple_of, std::initializer_list<const void*> ptrs) {
  constexpr int kWide = 16 / static_cast<int>(sizeof(T));
  bool ok = multiple_of % kWide == 0;
  for (const void* p : ptrs) ok = ok && (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0);
  return ok ? kWide : 1;
}

// Channel of consecutive flat elements (element i is in channel (i / run) % channels) without a division
// per element.
struct ChannelCursor {
  int64_t pos, channel;
  __device__ __forceinline__ ChannelCursor(int64_t i, int64_t run, int64_t channels) {
    const int64_t q = i / run;
    pos = i - q * run;
    channel = q % channels;
  }
  __device__ __forceinline__ void next(int64_t run, int64_t channels) {
    if (++pos == run) {
      pos = 0;
      if (++channel == channels) channel = 0;
    }
  }
};

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

inline int multiprocessor_count(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) device = 0;
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace fastblocks::cuda
