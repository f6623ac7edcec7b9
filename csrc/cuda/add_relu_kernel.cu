// CUDA kernels of fastblocks::add_relu: out = act(x * scale[c] + bias[c] + residual), and the elementwise part
// of its backward (the backward with per-channel sums is epilogue_backward_kernel.cu). Memory-bound: each
// thread moves 16-byte packs (kIlp of them in flight); per-channel parameters come one load per pack
// (epilogue.cuh: ChannelMode).
#include "cuda/epilogue.cuh"
#include "cuda/launchers.h"

#include <algorithm>

#include <c10/cuda/CUDAException.h>

#include "common/switch.h"

namespace fastblocks::cuda {
namespace {

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

}  // namespace

void launch_add_relu_forward(const AddReluForwardArgs& a, cudaStream_t stream) {
  dispatch_dtype(a.dtype, "fastblocks::add_relu", [&](auto zero) {
    using T = decltype(zero);
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      forward_typed<T, RELU ? Activation::kReLU : Activation::kNone>(a, stream);
    });
  });
}

void launch_add_relu_backward_elementwise(const EpilogueBackwardArgs& a, cudaStream_t stream) {
  dispatch_dtype(a.dtype, "fastblocks::add_relu_backward", [&](auto zero) {
    using T = decltype(zero);
    using acc = acc_t<T>;
    const auto* gy = static_cast<const T*>(a.grad_out);
    const auto* y = static_cast<const T*>(a.out);
    auto* gx = a.grad_x.count > 0 ? static_cast<T*>(a.grad_x.data[0]) : nullptr;
    auto* gr = static_cast<T*>(a.grad_residual);
    const auto* scale = static_cast<const acc*>(a.scale);
    const ChannelView& v = a.view;
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      constexpr Activation A = RELU ? Activation::kReLU : Activation::kNone;
      with_vec<T>(pick_vec<T>(0, {gy, y, gx, gr}), [&](auto vec_constant) {
        constexpr int VEC = decltype(vec_constant)::value;
        with_channel_mode<VEC>(pick_channel_mode<T, VEC>(v, gx ? scale : nullptr, nullptr), [&](auto mode_constant) {
          constexpr ChannelMode M = decltype(mode_constant)::value;
          const int64_t blocks = std::max<int64_t>(1, ceil_div(v.numel / VEC, kThreads * kIlp));
          add_relu_backward_elementwise_kernel<T, VEC, A, M>
              <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(gy, y, gx, gr, scale, v);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  });
}

}  // namespace fastblocks::cuda
