// CUDA kernels of fastblocks::add_relu: out = act(x * scale[c] + bias[c] + residual), and its backward.
// Memory-bound: each thread moves 16-byte packs (kIlp of them in flight), the channel of each element is
// tracked by a cursor (one division per pack), per-channel sums are reduced deterministically in two stages
// (fixed partitions into a [2, P, C] workspace, then a fixed-order sum over P).
#include <cuda_runtime.h>

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "common/add_relu_args.h"
#include "common/epilogue.h"
#include "common/switch.h"
#include "cuda/kernel_utils.cuh"
#include "cuda/launchers.h"

#define FASTBLOCKS_STRINGIFY_(x) #x
#define FASTBLOCKS_STRINGIFY(x) FASTBLOCKS_STRINGIFY_(x)

namespace fastblocks::cuda {

const char* compiled_cuda_archs() {
#ifdef __CUDA_ARCH_LIST__
  return FASTBLOCKS_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

namespace {

constexpr int kThreads = 256;
constexpr int kIlp = 2;  // packs per thread per tensor

// Calls f(integral_constant<int, VEC>) with VEC the 16-byte width of T when vec says so, else 1: two
// instantiations per kernel (a misaligned or odd-sized tensor takes the scalar path).
template <typename T, typename F>
void with_vec(int vec, F&& f) {
  constexpr int kWide = 16 / sizeof(T);
  if (vec == kWide) {
    f(std::integral_constant<int, kWide>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// ---------------------------------------------------------------------------------------------------------
// Per-channel parameters of one pack of VEC consecutive elements starting at flat index `first`.
// The mode is chosen on the host so the common layouts need no per-element channel arithmetic.
enum class ChannelMode : int {
  kNone,        // no scale or bias: 1 and 0
  kPerPack,     // run % VEC == 0: the whole pack is in one channel (one load of each parameter)
  kRowVector,   // channels-last (run == 1), C % VEC == 0, parameters aligned: VEC consecutive channels
  kPerElement,  // anything else: a channel cursor per element
};

template <typename acc, int VEC, ChannelMode M>
__device__ __forceinline__ void pack_params(const acc* __restrict__ scale, const acc* __restrict__ bias, int64_t first,
                                            const ChannelView& v, acc (&s)[VEC], acc (&b)[VEC]) {
  if constexpr (M == ChannelMode::kNone) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) s[k] = acc(1), b[k] = acc(0);
  } else if constexpr (M == ChannelMode::kPerPack) {
    const int64_t c = (first / v.run) % v.channels;
    const acc s0 = scale ? scale[c] : acc(1), b0 = bias ? bias[c] : acc(0);
#pragma unroll
    for (int k = 0; k < VEC; ++k) s[k] = s0, b[k] = b0;
  } else if constexpr (M == ChannelMode::kRowVector) {
    const int64_t c0 = first % v.channels;
    if (scale) {
      const auto sp = *reinterpret_cast<const Pack<acc, VEC>*>(scale + c0);
#pragma unroll
      for (int k = 0; k < VEC; ++k) s[k] = sp.v[k];
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) s[k] = acc(1);
    }
    if (bias) {
      const auto bp = *reinterpret_cast<const Pack<acc, VEC>*>(bias + c0);
#pragma unroll
      for (int k = 0; k < VEC; ++k) b[k] = bp.v[k];
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) b[k] = acc(0);
    }
  } else {
    ChannelCursor cur(first, v.run, v.channels);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      s[k] = scale ? scale[cur.channel] : acc(1);
      b[k] = bias ? bias[cur.channel] : acc(0);
      cur.next(v.run, v.channels);
    }
  }
}

template <typename T, int VEC>
ChannelMode pick_channel_mode(const ChannelView& v, const void* scale, const void* bias) {
  using acc = acc_t<T>;
  if (scale == nullptr && bias == nullptr) return ChannelMode::kNone;
  if (v.run % VEC == 0) return ChannelMode::kPerPack;
  const auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % (sizeof(acc) * VEC) == 0; };
  if (v.run == 1 && v.channels % VEC == 0 && aligned(scale) && aligned(bias)) return ChannelMode::kRowVector;
  return ChannelMode::kPerElement;
}

// Calls f(integral_constant<ChannelMode, M>) for the mode; with VEC == 1 every pack is one element, so
// kPerPack covers all affine cases and the other modes are not instantiated.
template <int VEC, typename F>
void with_channel_mode(ChannelMode mode, F&& f) {
  using M = ChannelMode;
  if (mode == M::kNone) return f(std::integral_constant<M, M::kNone>{});
  if constexpr (VEC == 1) {
    return f(std::integral_constant<M, M::kPerPack>{});
  } else {
    switch (mode) {
      case M::kPerPack: return f(std::integral_constant<M, M::kPerPack>{});
      case M::kRowVector: return f(std::integral_constant<M, M::kRowVector>{});
      default: return f(std::integral_constant<M, M::kPerElement>{});
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Forward.
template <typename T, int VEC, Activation A, ChannelMode M>
__global__ void __launch_bounds__(kThreads)
    add_relu_forward_kernel(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ out,
                            const acc_t<T>* __restrict__ scale, const acc_t<T>* __restrict__ bias, ChannelView view) {
  using acc = acc_t<T>;
  using P = Pack<T, VEC>;
  const int64_t packs = view.numel / VEC;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads * kIlp + threadIdx.x;
  P xv[kIlp], rv[kIlp];
#pragma unroll
  for (int u = 0; u < kIlp; ++u) {
    const int64_t j = first + u * kThreads;
    if (j < packs) {
      xv[u] = reinterpret_cast<const P*>(x)[j];
      rv[u] = reinterpret_cast<const P*>(r)[j];
    }
  }
#pragma unroll
  for (int u = 0; u < kIlp; ++u) {
    const int64_t j = first + u * kThreads;
    if (j < packs) {
      acc s[VEC], b[VEC];
      pack_params<acc, VEC, M>(scale, bias, j * VEC, view, s, b);
      P yv;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        yv.v[k] = static_cast<T>(epilogue<A>(static_cast<acc>(xv[u].v[k]), s[k], b[k], static_cast<acc>(rv[u].v[k])));
      }
      reinterpret_cast<P*>(out)[j] = yv;
    }
  }
  // The last numel % VEC elements, one per thread of block 0.
  if (blockIdx.x == 0) {
    const int64_t i = packs * VEC + threadIdx.x;
    if (i < view.numel) {
      acc s[1], b[1];
      pack_params<acc, 1, M == ChannelMode::kNone ? M : ChannelMode::kPerPack>(scale, bias, i, view, s, b);
      out[i] = static_cast<T>(epilogue<A>(static_cast<acc>(x[i]), s[0], b[0], static_cast<acc>(r[i])));
    }
  }
}

template <typename T, Activation A>
void forward_typed(const AddReluForwardArgs& a, cudaStream_t stream) {
  const int vec = pick_vec<T>(0, {a.x, a.residual, a.out});
  with_vec<T>(vec, [&](auto vec_constant) {
    constexpr int VEC = decltype(vec_constant)::value;
    with_channel_mode<VEC>(pick_channel_mode<T, VEC>(a.view, a.scale, a.bias), [&](auto mode_constant) {
      constexpr ChannelMode M = decltype(mode_constant)::value;
      const int64_t blocks = std::max<int64_t>(1, ceil_div(a.view.numel / VEC, kThreads * kIlp));
      add_relu_forward_kernel<T, VEC, A, M><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          static_cast<const T*>(a.x), static_cast<const T*>(a.residual), static_cast<T*>(a.out),
          static_cast<const acc_t<T>*>(a.scale), static_cast<const acc_t<T>*>(a.bias), a.view);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// Backward, elementwise only (no per-channel sums): grad_residual = act'(grad_out); grad_x = that * scale
// (M == kNone: no scale, grad_x is not written).
template <typename T, int VEC, Activation A, ChannelMode M>
__global__ void __launch_bounds__(kThreads)
    add_relu_backward_elementwise_kernel(const T* __restrict__ gy, const T* __restrict__ y, T* __restrict__ gx,
                                         T* __restrict__ gr, const acc_t<T>* __restrict__ scale, ChannelView view) {
  using acc = acc_t<T>;
  using P = Pack<T, VEC>;
  constexpr bool kScale = M != ChannelMode::kNone;
  const int64_t packs = view.numel / VEC;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads * kIlp + threadIdx.x;
  P gv[kIlp], yv[kIlp];
#pragma unroll
  for (int u = 0; u < kIlp; ++u) {
    const int64_t j = first + u * kThreads;
    if (j < packs) {
      gv[u] = reinterpret_cast<const P*>(gy)[j];
      yv[u] = reinterpret_cast<const P*>(y)[j];
    }
  }
#pragma unroll
  for (int u = 0; u < kIlp; ++u) {
    const int64_t j = first + u * kThreads;
    if (j < packs) {
      acc s[VEC], unused[VEC];
      pack_params<acc, VEC, M>(scale, nullptr, j * VEC, view, s, unused);
      P grv, gxv;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const acc g = activation_grad<A>(static_cast<acc>(gv[u].v[k]), static_cast<acc>(yv[u].v[k]));
        grv.v[k] = static_cast<T>(g);
        if constexpr (kScale) gxv.v[k] = static_cast<T>(g * s[k]);
      }
      reinterpret_cast<P*>(gr)[j] = grv;
      if constexpr (kScale) reinterpret_cast<P*>(gx)[j] = gxv;
    }
  }
  if (blockIdx.x == 0) {
    const int64_t i = packs * VEC + threadIdx.x;
    if (i < view.numel) {
      acc s[1], unused[1];
      pack_params<acc, 1, kScale ? ChannelMode::kPerPack : ChannelMode::kNone>(scale, nullptr, i, view, s, unused);
      const acc g = activation_grad<A>(static_cast<acc>(gy[i]), static_cast<acc>(y[i]));
      gr[i] = static_cast<T>(g);
      if constexpr (kScale) gx[i] = static_cast<T>(g * s[0]);
    }
  }
}

// Backward with per-channel sums, channels-first (run > 1): block (c, p) covers the packs of channel c whose
// index within the channel is p, p + P, ... (blockDim.x-strided), over all N planes.
template <typename T, int VEC, Activation A, bool SCALE, bool HAS_X>
__global__ void __launch_bounds__(kThreads)
    add_relu_backward_planes_kernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                    T* __restrict__ gx, T* __restrict__ gr, const acc_t<T>* __restrict__ scale,
                                    acc_t<T>* __restrict__ partial_g, acc_t<T>* __restrict__ partial_gx,
                                    ChannelView view) {
  using acc = acc_t<T>;
  using P = Pack<T, VEC>;
  __shared__ acc scratch[32];
  const int64_t C = view.channels;
  const int64_t c = blockIdx.x;
  const int64_t p = blockIdx.y;
  const int64_t packs_per_plane = view.run / VEC;
  const int64_t planes = view.numel / (view.run * C);
  const int64_t total = planes * packs_per_plane;
  const acc s = SCALE ? scale[c] : acc(1);
  acc sum_g = 0, sum_gx = 0;
  for (int64_t k = p * blockDim.x + threadIdx.x; k < total; k += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t n = k / packs_per_plane;
    const int64_t j = (n * C + c) * packs_per_plane + (k - n * packs_per_plane);
    const P gv = reinterpret_cast<const P*>(gy)[j];
    const P yv = reinterpret_cast<const P*>(y)[j];
    P xv;
    if constexpr (HAS_X) xv = reinterpret_cast<const P*>(x)[j];
    P grv, gxv;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const acc g = activation_grad<A>(static_cast<acc>(gv.v[e]), static_cast<acc>(yv.v[e]));
      grv.v[e] = static_cast<T>(g);
      if constexpr (SCALE) gxv.v[e] = static_cast<T>(g * s);
      sum_g += g;
      if constexpr (HAS_X) sum_gx += g * static_cast<acc>(xv.v[e]);
    }
    reinterpret_cast<P*>(gr)[j] = grv;
    if constexpr (SCALE) reinterpret_cast<P*>(gx)[j] = gxv;
  }
  sum_g = block_sum(sum_g, scratch);
  if (threadIdx.x == 0) partial_g[p * C + c] = sum_g;
  if constexpr (HAS_X) {
    sum_gx = block_sum(sum_gx, scratch);
    if (threadIdx.x == 0) partial_gx[p * C + c] = sum_gx;
  }
}

// Backward with per-channel sums, channels-last rows ([rows, C], run == 1): a 2-D block of (tx: pack of VEC
// channels, ty: row); block (gx, p) covers channel packs gx * blockDim.x + tx over rows p * blockDim.y + ty,
// strided by gridDim.y * blockDim.y. Sums are reduced over ty in shared memory by a fixed tree.
template <typename T, int VEC, Activation A, bool SCALE, bool HAS_X>
__global__ void __launch_bounds__(kThreads)
    add_relu_backward_rows_kernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                  T* __restrict__ gx, T* __restrict__ gr, const acc_t<T>* __restrict__ scale,
                                  acc_t<T>* __restrict__ partial_g, acc_t<T>* __restrict__ partial_gx,
                                  ChannelView view) {
  using acc = acc_t<T>;
  using P = Pack<T, VEC>;
  __shared__ acc smem_g[kThreads * VEC];
  __shared__ acc smem_gx[HAS_X ? kThreads * VEC : 1];
  const int64_t C = view.channels;
  const int64_t groups = C / VEC;
  const int64_t rows = view.numel / C;
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int p = blockIdx.y;
  acc sum_g[VEC], sum_gx[VEC], s[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    sum_g[e] = 0;
    sum_gx[e] = 0;
    s[e] = (SCALE && group < groups) ? scale[group * VEC + e] : acc(1);
  }
  if (group < groups) {
    for (int64_t row = static_cast<int64_t>(p) * blockDim.y + threadIdx.y; row < rows;
         row += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      const int64_t j = row * groups + group;
      const P gv = reinterpret_cast<const P*>(gy)[j];
      const P yv = reinterpret_cast<const P*>(y)[j];
      P xv;
      if constexpr (HAS_X) xv = reinterpret_cast<const P*>(x)[j];
      P grv, gxv;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const acc g = activation_grad<A>(static_cast<acc>(gv.v[e]), static_cast<acc>(yv.v[e]));
        grv.v[e] = static_cast<T>(g);
        if constexpr (SCALE) gxv.v[e] = static_cast<T>(g * s[e]);
        sum_g[e] += g;
        if constexpr (HAS_X) sum_gx[e] += g * static_cast<acc>(xv.v[e]);
      }
      reinterpret_cast<P*>(gr)[j] = grv;
      if constexpr (SCALE) reinterpret_cast<P*>(gx)[j] = gxv;
    }
  }
  // Tree over ty (blockDim.y is a power of two).
  const int slot = (threadIdx.y * blockDim.x + threadIdx.x) * VEC;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    smem_g[slot + e] = sum_g[e];
    if constexpr (HAS_X) smem_gx[slot + e] = sum_gx[e];
  }
  __syncthreads();
  for (int stride = blockDim.y / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.y) < stride) {
      const int other = slot + stride * blockDim.x * VEC;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        smem_g[slot + e] += smem_g[other + e];
        if constexpr (HAS_X) smem_gx[slot + e] += smem_gx[other + e];
      }
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && group < groups) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      partial_g[p * C + group * VEC + e] = smem_g[slot + e];
      if constexpr (HAS_X) partial_gx[p * C + group * VEC + e] = smem_gx[slot + e];
    }
  }
}

// grad_bias[c] = sum_p partial_g[p, c]; grad_scale[c] = sum_p partial_gx[p, c] (fixed order).
template <typename acc>
__global__ void add_relu_finalize_kernel(const acc* __restrict__ partial_g, const acc* __restrict__ partial_gx,
                                         acc* __restrict__ grad_bias, acc* __restrict__ grad_scale, int64_t partials,
                                         int64_t C) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  acc total_g = 0, total_gx = 0;
  for (int64_t p = 0; p < partials; ++p) {
    total_g += partial_g[p * C + c];
    if (grad_scale) total_gx += partial_gx[p * C + c];
  }
  if (grad_bias) grad_bias[c] = total_g;
  if (grad_scale) grad_scale[c] = total_gx;
}

// How the reducing backward is laid out: shared by the workspace query and the launch.
struct ReduceGeometry {
  int vec = 1;
  dim3 grid, block;
  int64_t partials = 0;
};

template <typename T>
ReduceGeometry reduce_geometry(const AddReluBackwardArgs& a, int device) {
  ReduceGeometry geo;
  const ChannelView& v = a.view;
  const int64_t C = v.channels;
  const int64_t target_blocks = 8LL * multiprocessor_count(device);
  if (v.run > 1) {
    geo.vec = pick_vec<T>(v.run, {a.grad_out, a.out, a.x, a.grad_x, a.grad_residual});
    const int64_t per_channel_packs = (v.numel / C) / geo.vec;
    const int64_t p_max = std::max<int64_t>(1, ceil_div(per_channel_packs, kThreads));
    geo.partials = std::clamp<int64_t>(ceil_div(target_blocks, C), 1, std::min<int64_t>(p_max, 65535));
    geo.grid = dim3(static_cast<unsigned>(C), static_cast<unsigned>(geo.partials));
    geo.block = dim3(kThreads);
  } else {
    geo.vec = pick_vec<T>(C, {a.grad_out, a.out, a.x, a.grad_x, a.grad_residual});
    const int64_t groups = C / geo.vec;
    int tx = 1;
    while (tx < groups && tx < 32) tx *= 2;
    const int ty = kThreads / tx;
    const int64_t rows = v.numel / C;
    const int64_t grid_x = ceil_div(groups, tx);
    const int64_t p_max = std::max<int64_t>(1, ceil_div(rows, ty));
    geo.partials = std::clamp<int64_t>(ceil_div(target_blocks, grid_x), 1, std::min<int64_t>(p_max, 65535));
    geo.grid = dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(geo.partials));
    geo.block = dim3(tx, ty);
  }
  return geo;
}

template <typename T, Activation A, bool SCALE>
void backward_typed(const AddReluBackwardArgs& a, void* workspace, int64_t partials, int device,
                    cudaStream_t stream) {
  using acc = acc_t<T>;
  const auto* gy = static_cast<const T*>(a.grad_out);
  const auto* y = static_cast<const T*>(a.out);
  const auto* x = static_cast<const T*>(a.x);
  auto* gx = static_cast<T*>(a.grad_x);
  auto* gr = static_cast<T*>(a.grad_residual);
  const auto* scale = static_cast<const acc*>(a.scale);
  const ChannelView& v = a.view;
  const bool reduce = a.grad_bias != nullptr || a.grad_scale != nullptr;

  if (!reduce) {
    const int vec = pick_vec<T>(0, {gy, y, gx, gr});
    with_vec<T>(vec, [&](auto vec_constant) {
      constexpr int VEC = decltype(vec_constant)::value;
      with_channel_mode<VEC>(pick_channel_mode<T, VEC>(v, SCALE ? scale : nullptr, nullptr), [&](auto mode_constant) {
        constexpr ChannelMode M = decltype(mode_constant)::value;
        const int64_t blocks = std::max<int64_t>(1, ceil_div(v.numel / VEC, kThreads * kIlp));
        add_relu_backward_elementwise_kernel<T, VEC, A, M>
            <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(gy, y, gx, gr, scale, v);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    return;
  }

  const ReduceGeometry geo = reduce_geometry<T>(a, device);
  TORCH_CHECK(geo.partials == partials, "fastblocks::add_relu_backward: internal error, workspace size mismatch");
  auto* partial_g = static_cast<acc*>(workspace);
  auto* partial_gx = partial_g + partials * v.channels;
  // x is passed only for grad_scale, which needs a scale: HAS_X implies SCALE.
  FASTBLOCKS_BOOL_SWITCH(SCALE && x != nullptr, HAS_X_VALUE, [&] {
    constexpr bool HAS_X = SCALE && HAS_X_VALUE;
    with_vec<T>(geo.vec, [&](auto vec_constant) {
      constexpr int VEC = decltype(vec_constant)::value;
      if (v.run > 1) {
        add_relu_backward_planes_kernel<T, VEC, A, SCALE, HAS_X>
            <<<geo.grid, geo.block, 0, stream>>>(gy, y, x, gx, gr, scale, partial_g, partial_gx, v);
      } else {
        add_relu_backward_rows_kernel<T, VEC, A, SCALE, HAS_X>
            <<<geo.grid, geo.block, 0, stream>>>(gy, y, x, gx, gr, scale, partial_g, partial_gx, v);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  add_relu_finalize_kernel<acc><<<static_cast<unsigned>(ceil_div(v.channels, kThreads)), kThreads, 0, stream>>>(
      partial_g, partial_gx, static_cast<acc*>(a.grad_bias), static_cast<acc*>(a.grad_scale), partials, v.channels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// float, double, half, bfloat16 -> the kernel's element type.
template <typename F>
void dispatch_dtype(c10::ScalarType dtype, const char* name, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float: return f(float{});
    case c10::ScalarType::Double: return f(double{});
    case c10::ScalarType::Half: return f(c10::Half{});
    case c10::ScalarType::BFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, name, ": unsupported dtype ", dtype);
  }
}

}  // namespace

void launch_add_relu_forward(const AddReluForwardArgs& a, cudaStream_t stream) {
  dispatch_dtype(a.dtype, "fastblocks::add_relu", [&](auto zero) {
    using T = decltype(zero);
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      forward_typed<T, RELU ? Activation::kReLU : Activation::kNone>(a, stream);
    });
  });
}

int64_t add_relu_backward_partials(const AddReluBackwardArgs& a, int device) {
  if (a.grad_bias == nullptr && a.grad_scale == nullptr) return 0;
  int64_t partials = 0;
  dispatch_dtype(a.dtype, "fastblocks::add_relu_backward",
                 [&](auto zero) { partials = reduce_geometry<decltype(zero)>(a, device).partials; });
  return partials;
}

void launch_add_relu_backward(const AddReluBackwardArgs& a, void* workspace, int64_t partials, int device,
                              cudaStream_t stream) {
  dispatch_dtype(a.dtype, "fastblocks::add_relu_backward", [&](auto zero) {
    using T = decltype(zero);
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      FASTBLOCKS_BOOL_SWITCH(a.grad_x != nullptr, SCALE, [&] {
        backward_typed<T, RELU ? Activation::kReLU : Activation::kNone, SCALE>(a, workspace, partials, device,
                                                                               stream);
      });
    });
  });
}

}  // namespace fastblocks::cuda
