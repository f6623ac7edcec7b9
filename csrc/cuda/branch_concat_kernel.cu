// CUDA kernels of fastblocks::branch_concat: out = act(cat(inputs, 1) * scale[c] + bias[c]) in ONE launch for
// all branches (the branch table travels by value), and the elementwise part of its backward (one gradient
// tensor per branch; the backward with per-channel sums is epilogue_backward_kernel.cu).
//
// Threads walk the packs of the branches one after another ("branch space"); each branch's [N, C_i, ...] data
// lands in one contiguous segment per outer index of the output (channels-first: one per sample, C_i * run
// long; channels-last: one per row, C_i long), so loads and stores stay coalesced.
#include "cuda/epilogue.cuh"
#include "cuda/launchers.h"

#include <algorithm>

#include <c10/cuda/CUDAException.h>

#include "common/switch.h"

namespace fastblocks::cuda {
namespace {

// Packs of branch i are [start[i], start[i + 1]).
struct BranchPacks {
  int64_t start[kMaxBranches + 1] = {};
};

// Output offset of element e of branch i.
__device__ __forceinline__ int64_t output_offset(const BranchTable& t, int i, int64_t e, const ChannelView& v) {
  const int64_t begin = t.channel_begin[i];
  const int64_t segment = (t.channel_begin[i + 1] - begin) * v.run;
  const int64_t outer = e / segment;
  return outer * v.channels * v.run + begin * v.run + (e - outer * segment);
}

template <typename T, int VEC, Activation A, ChannelMode M>
__global__ void __launch_bounds__(kThreads)
    branch_concat_forward_kernel(BranchTable in, BranchPacks packs, T* __restrict__ out,
                                 const acc_t<T>* __restrict__ scale, const acc_t<T>* __restrict__ bias,
                                 ChannelView view) {
  using acc = acc_t<T>;
  using P = Pack<T, VEC>;
  const int64_t total = packs.start[in.count];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads * kIlp + threadIdx.x;
  P xv[kIlp];
  int64_t o[kIlp];
#pragma unroll
  for (int u = 0; u < kIlp; ++u) {
    const int64_t t = first + u * kThreads;
    if (t < total) {
      const int i = last_at_or_below(packs.start, in.count, t);
      const int64_t j = t - packs.start[i];
      xv[u] = static_cast<const P*>(in.data[i])[j];
      o[u] = output_offset(in, i, j * VEC, view);
    }
  }
#pragma unroll
  for (int u = 0; u < kIlp; ++u) {
    if (first + u * kThreads < total) {
      acc s[VEC], b[VEC];
      pack_params<acc, VEC, M>(scale, bias, o[u], view, s, b);
      P yv;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        yv.v[k] = static_cast<T>(epilogue<A>(static_cast<acc>(xv[u].v[k]), s[k], b[k]));
      }
      reinterpret_cast<P*>(out)[o[u] / VEC] = yv;
    }
  }
}

// grad_inputs[i] = act'(grad_out) * scale, read at the output position of each branch element.
template <typename T, int VEC, Activation A, ChannelMode M>
__global__ void __launch_bounds__(kThreads)
    branch_concat_backward_kernel(const T* __restrict__ gy, const T* __restrict__ y, BranchTable gx,
                                  BranchPacks packs, const acc_t<T>* __restrict__ scale, ChannelView view) {
  using acc = acc_t<T>;
  using P = Pack<T, VEC>;
  const int64_t total = packs.start[gx.count];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads * kIlp + threadIdx.x;
  P gv[kIlp], yv[kIlp];
  int64_t o[kIlp], j[kIlp];
  int br[kIlp];
#pragma unroll
  for (int u = 0; u < kIlp; ++u) {
    const int64_t t = first + u * kThreads;
    if (t < total) {
      br[u] = last_at_or_below(packs.start, gx.count, t);
      j[u] = t - packs.start[br[u]];
      o[u] = output_offset(gx, br[u], j[u] * VEC, view);
      gv[u] = reinterpret_cast<const P*>(gy)[o[u] / VEC];
      yv[u] = reinterpret_cast<const P*>(y)[o[u] / VEC];
    }
  }
#pragma unroll
  for (int u = 0; u < kIlp; ++u) {
    if (first + u * kThreads < total) {
      acc s[VEC], unused[VEC];
      pack_params<acc, VEC, M>(scale, nullptr, o[u], view, s, unused);
      P gxv;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const acc g = activation_grad<A>(static_cast<acc>(gv[u].v[k]), static_cast<acc>(yv[u].v[k]));
        gxv.v[k] = static_cast<T>(g * s[k]);
      }
      static_cast<P*>(gx.data[br[u]])[j[u]] = gxv;
    }
  }
}

// 16-byte packs need every pointer aligned and every branch segment (C_i * run) a multiple of the width.
template <typename T>
int branch_vec(const BranchTable& t, const ChannelView& v, std::initializer_list<const void*> others) {
  constexpr int kWide = 16 / sizeof(T);
  bool wide = pick_vec<T>(0, others) == kWide;
  for (int i = 0; i < t.count; ++i) {
    wide = wide && pick_vec<T>(0, {t.data[i]}) == kWide &&
           ((t.channel_begin[i + 1] - t.channel_begin[i]) * v.run) % kWide == 0;
  }
  return wide ? kWide : 1;
}

BranchPacks branch_packs(const BranchTable& t, const ChannelView& v, int vec) {
  BranchPacks packs;
  const int64_t outer = v.channels > 0 ? v.numel / (v.channels * v.run) : 0;
  for (int i = 0; i < t.count; ++i) {
    packs.start[i + 1] = packs.start[i] + outer * (t.channel_begin[i + 1] - t.channel_begin[i]) * v.run / vec;
  }
  return packs;
}

}  // namespace

void launch_branch_concat_forward(const BranchConcatForwardArgs& a, cudaStream_t stream) {
  dispatch_dtype(a.dtype, "fastblocks::branch_concat", [&](auto zero) {
    using T = decltype(zero);
    using acc = acc_t<T>;
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      constexpr Activation A = RELU ? Activation::kReLU : Activation::kNone;
      with_vec<T>(branch_vec<T>(a.inputs, a.view, {a.out}), [&](auto vec_constant) {
        constexpr int VEC = decltype(vec_constant)::value;
        const BranchPacks packs = branch_packs(a.inputs, a.view, VEC);
        with_channel_mode<VEC>(pick_channel_mode<T, VEC>(a.view, a.scale, a.bias), [&](auto mode_constant) {
          constexpr ChannelMode M = decltype(mode_constant)::value;
          const int64_t blocks = std::max<int64_t>(1, ceil_div(packs.start[a.inputs.count], kThreads * kIlp));
          branch_concat_forward_kernel<T, VEC, A, M><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
              a.inputs, packs, static_cast<T*>(a.out), static_cast<const acc*>(a.scale),
              static_cast<const acc*>(a.bias), a.view);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  });
}

void launch_branch_concat_backward_elementwise(const EpilogueBackwardArgs& a, cudaStream_t stream) {
  dispatch_dtype(a.dtype, "fastblocks::branch_concat_backward", [&](auto zero) {
    using T = decltype(zero);
    using acc = acc_t<T>;
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      constexpr Activation A = RELU ? Activation::kReLU : Activation::kNone;
      with_vec<T>(branch_vec<T>(a.grad_x, a.view, {a.grad_out, a.out}), [&](auto vec_constant) {
        constexpr int VEC = decltype(vec_constant)::value;
        const BranchPacks packs = branch_packs(a.grad_x, a.view, VEC);
        with_channel_mode<VEC>(pick_channel_mode<T, VEC>(a.view, a.scale, nullptr), [&](auto mode_constant) {
          constexpr ChannelMode M = decltype(mode_constant)::value;
          const int64_t blocks = std::max<int64_t>(1, ceil_div(packs.start[a.grad_x.count], kThreads * kIlp));
          branch_concat_backward_kernel<T, VEC, A, M><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
              static_cast<const T*>(a.grad_out), static_cast<const T*>(a.out), a.grad_x, packs,
              static_cast<const acc*>(a.scale), a.view);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  });
}

}  // namespace fastblocks::cuda
