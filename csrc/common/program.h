// The CUDA backend's kernels written as "programs": C10_HOST_DEVICE code that the GPU runs and that the CPU can run
// too, so the CPU tests check the exact indexing and arithmetic the GPU runs.
//
// A program is a block's work split into phases separated by block barriers. It presents
//   kPhases, State (per-thread registers kept across phases), SharedScalar (optional; float by default),
//   int64_t blocks(), int threads() (a multiple of 32, <= kBlockThreads), int64_t shared_elems(), std::string name(),
//   void phase(int k, int64_t block, int thread, int threads, SharedArray<SharedScalar> s, State& st) const.
// The CUDA kernel (cuda/program.cuh) runs `phase` for every thread of a block with __syncthreads() between phases;
// the emulator (cpu/program_emulator.h, test hooks) runs the same phases thread by thread on the CPU, with
// NaN-filled, bounds-checked shared memory whose every access is tracked (a read of an element no thread wrote, or
// of one another thread wrote in the same phase, is an error), NaN-filled outputs, and alignment-checked vector
// loads and stores. Program choice (which program, which template arguments) is shared by both.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace fastblocks::program {

constexpr int kBlockThreads = 256;
constexpr int64_t kMaxSharedBytes = 48 * 1024;                // the default per-block limit, no opt-in needed
constexpr int64_t kMaxSharedFloats = kMaxSharedBytes / 4;

// Host-only bookkeeping of the emulator: which thread wrote each shared element in the current phase, and whether
// it was ever written in this block. A read of an element another thread wrote in the same phase (no barrier
// between: a race on the GPU), two writers in one phase, or a read before any write is an error.
struct SharedTracker {
  std::vector<int> writer;
  std::vector<char> written;
  int thread = 0;
  void begin_block(int64_t size) {
    writer.assign(static_cast<size_t>(size), -1);
    written.assign(static_cast<size_t>(size), 0);
  }
  void begin_phase() { std::fill(writer.begin(), writer.end(), -1); }
  void on_store(int64_t i) {
    TORCH_CHECK(writer[i] == -1 || writer[i] == thread, "CUDA program: threads ", writer[i], " and ", thread,
                " write shared element ", i, " in one phase");
    writer[i] = thread;
    written[i] = 1;
  }
  void on_load(int64_t i) const {
    TORCH_CHECK(written[i], "CUDA program: thread ", thread, " reads shared element ", i, " that no thread wrote");
    TORCH_CHECK(writer[i] == -1 || writer[i] == thread, "CUDA program: thread ", thread, " reads shared element ", i,
                " that thread ", writer[i], " wrote in the same phase (no barrier)");
  }
};

// Shared memory as a program sees it: a plain pointer on the GPU; bounds-checked and tracked in the emulator.
template <typename S>
struct SharedArray {
  S* data;
  int64_t size;
  SharedTracker* tracker;  // emulator only; null on the GPU
  C10_HOST_DEVICE S load(int64_t i) const {
#if !defined(__CUDA_ARCH__)
    check(i);
    if (tracker != nullptr) tracker->on_load(i);
#endif
    return data[i];
  }
  C10_HOST_DEVICE void store(int64_t i, S v) const {
#if !defined(__CUDA_ARCH__)
    check(i);
    if (tracker != nullptr) tracker->on_store(i);
#endif
    data[i] = v;
  }
#if !defined(__CUDA_ARCH__)
  void check(int64_t i) const {
    TORCH_CHECK(i >= 0 && i < size, "CUDA program: shared-memory index ", i, " outside [0, ", size, ")");
  }
#endif
};
using Shared = SharedArray<float>;

// The element type of a program's shared memory: P::SharedScalar, float when the program does not say.
template <typename P, typename = void>
struct SharedScalarOf {
  using type = float;
};
template <typename P>
struct SharedScalarOf<P, std::void_t<typename P::SharedScalar>> {
  using type = typename P::SharedScalar;
};
template <typename P>
using shared_scalar_t = typename SharedScalarOf<P>::type;

struct NoState {};

C10_HOST_DEVICE inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
C10_HOST_DEVICE inline int64_t ceil_div_signed(int64_t a, int64_t b) { return floor_div(a + b - 1, b); }
C10_HOST_DEVICE inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
// a / b, in 32-bit arithmetic when both fit (a 64-bit division costs several times more instructions on the GPU).
C10_HOST_DEVICE inline int64_t quotient(int64_t a, int64_t b) {
  return ((a | b) >> 31) == 0 ? static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b)) : a / b;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int round_up(int a, int b) { return (a + b - 1) / b * b; }

// VEC consecutive elements moved as one aligned load or store.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) VecPack {
  T v[VEC];
};

// One aligned VEC-wide load or store (alignment asserted in the emulator).
template <int VEC, typename T>
C10_HOST_DEVICE inline VecPack<T, VEC> load_pack(const T* p) {
  VecPack<T, VEC> pack;
#if defined(__CUDA_ARCH__)
  pack = *reinterpret_cast<const VecPack<T, VEC>*>(p);
#else
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % alignof(VecPack<T, VEC>) == 0, "CUDA program: misaligned ",
              sizeof(pack), "-byte load");
  std::memcpy(&pack, p, sizeof(pack));
#endif
  return pack;
}

template <int VEC, typename T>
C10_HOST_DEVICE inline void store_pack(T* p, const VecPack<T, VEC>& pack) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<VecPack<T, VEC>*>(p) = pack;
#else
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % alignof(VecPack<T, VEC>) == 0, "CUDA program: misaligned ",
              sizeof(pack), "-byte store");
  std::memcpy(p, &pack, sizeof(pack));
#endif
}

// The same, converting to / from float registers.
template <int VEC, typename T>
C10_HOST_DEVICE inline void load_vec(const T* p, float (&out)[VEC]) {
  const VecPack<T, VEC> pack = load_pack<VEC>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = static_cast<float>(pack.v[k]);
}

template <int VEC, typename T>
C10_HOST_DEVICE inline void store_vec(T* p, const float (&in)[VEC]) {
  VecPack<T, VEC> pack;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pack.v[k] = static_cast<T>(in[k]);
  store_pack<VEC>(p, pack);
}

inline bool aligned16(std::initializer_list<const void*> ptrs) {
  bool ok = true;
  for (const void* p : ptrs) ok = ok && (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0);
  return ok;
}

}  // namespace fastblocks::program
