// CUDA backward of every epilogue that needs per-channel sums (common/epilogue_args.h:
// EpilogueBackwardArgs): g = act'(grad_out) from the saved output; grad_residual = g; grad_x = g * scale,
// written into each branch's own tensor; grad_bias = sum g, grad_scale = sum g * x. Deterministic two-stage
// reduction: fixed partitions write a [2, P, C] workspace, then a fixed-order sum over P.
#include "cuda/epilogue.cuh"
#include "cuda/launchers.h"

#include <algorithm>

#include <c10/cuda/CUDAException.h>

#include "common/switch.h"

namespace fastblocks::cuda {
namespace {

// The per-pack math of both layouts: g = act'(grad_out) from the output; grad_residual = g; grad_x = g * s;
// the sums of g and g * x.
template <typename T, int VEC, Activation A, bool WRITE_GX, bool HAS_X>
__device__ __forceinline__ void backward_pack(const Pack<T, VEC>& gv, const Pack<T, VEC>& yv, const Pack<T, VEC>& xv,
                                              const acc_t<T> (&s)[VEC], Pack<T, VEC>& grv, Pack<T, VEC>& gxv,
                                              acc_t<T> (&sum_g)[VEC], acc_t<T> (&sum_gx)[VEC]) {
  using acc = acc_t<T>;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const acc g = activation_grad<A>(static_cast<acc>(gv.v[e]), static_cast<acc>(yv.v[e]));
    grv.v[e] = static_cast<T>(g);
    if constexpr (WRITE_GX) gxv.v[e] = static_cast<T>(g * s[e]);
    sum_g[e] += g;
    if constexpr (HAS_X) sum_gx[e] += g * static_cast<acc>(xv.v[e]);
  }
}

// Channels-first (run > 1): block (c, p) covers the packs of channel c whose index within the channel is
// p * blockDim.x + tid, strided by P * blockDim.x, over all N planes. Plane (n, c) of the output is plane
// (n, c - begin[i]) of branch i.
template <typename T, int VEC, Activation A, bool WRITE_GX, bool HAS_X>
__global__ void __launch_bounds__(kThreads)
    epilogue_backward_planes_kernel(const T* __restrict__ gy, const T* __restrict__ y, T* __restrict__ gr,
                                    const acc_t<T>* __restrict__ scale, BranchTable branches, BranchTable x,
                                    BranchTable gx, acc_t<T>* __restrict__ partial_g,
                                    acc_t<T>* __restrict__ partial_gx, ChannelView view) {
  using acc = acc_t<T>;
  using P = Pack<T, VEC>;
  __shared__ acc scratch[32];
  const int64_t C = view.channels;
  const int64_t c = blockIdx.x;
  const int64_t p = blockIdx.y;
  const int i = branch_of(branches, c);
  const int64_t ci = branches.channel_begin[i + 1] - branches.channel_begin[i];
  const int64_t cl = c - branches.channel_begin[i];
  const P* xi = HAS_X ? static_cast<const P*>(x.data[i]) : nullptr;
  P* gxi = WRITE_GX ? static_cast<P*>(gx.data[i]) : nullptr;
  const int64_t packs_per_plane = view.run / VEC;
  const int64_t planes = view.numel / (view.run * C);
  const int64_t total = planes * packs_per_plane;
  acc s[VEC], sum_g[VEC], sum_gx[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    s[e] = scale ? scale[c] : acc(1);
    sum_g[e] = 0;
    sum_gx[e] = 0;
  }
  for (int64_t k = p * blockDim.x + threadIdx.x; k < total; k += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t n = k / packs_per_plane;
    const int64_t w = k - n * packs_per_plane;
    const int64_t j = (n * C + c) * packs_per_plane + w;     // in the output
    const int64_t jb = (n * ci + cl) * packs_per_plane + w;  // in branch i
    P xv, grv, gxv;
    if constexpr (HAS_X) xv = xi[jb];
    backward_pack<T, VEC, A, WRITE_GX, HAS_X>(reinterpret_cast<const P*>(gy)[j], reinterpret_cast<const P*>(y)[j], xv,
                                              s, grv, gxv, sum_g, sum_gx);
    if (gr != nullptr) reinterpret_cast<P*>(gr)[j] = grv;
    if constexpr (WRITE_GX) gxi[jb] = gxv;
  }
  acc total_g = 0, total_gx = 0;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    total_g += sum_g[e];
    total_gx += sum_gx[e];
  }
  total_g = block_sum(total_g, scratch);
  if (threadIdx.x == 0) partial_g[p * C + c] = total_g;
  if constexpr (HAS_X) {
    total_gx = block_sum(total_gx, scratch);
    if (threadIdx.x == 0) partial_gx[p * C + c] = total_gx;
  }
}

// Channels-last rows ([rows, C], run == 1): a 2-D block of (tx: pack of VEC channels, ty: row); block (bx, p)
// covers channel packs bx * blockDim.x + tx over rows p * blockDim.y + ty, strided by gridDim.y * blockDim.y.
// Every branch's channel count is a multiple of VEC, so a pack lies in one branch. Sums are reduced over ty in
// shared memory by a fixed tree.
template <typename T, int VEC, Activation A, bool WRITE_GX, bool HAS_X>
__global__ void __launch_bounds__(kThreads)
    epilogue_backward_rows_kernel(const T* __restrict__ gy, const T* __restrict__ y, T* __restrict__ gr,
                                  const acc_t<T>* __restrict__ scale, BranchTable branches, BranchTable x,
                                  BranchTable gx, acc_t<T>* __restrict__ partial_g, acc_t<T>* __restrict__ partial_gx,
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
    s[e] = (scale != nullptr && group < groups) ? scale[group * VEC + e] : acc(1);
  }
  if (group < groups) {
    const int i = branch_of(branches, group * VEC);
    const int64_t branch_groups = (branches.channel_begin[i + 1] - branches.channel_begin[i]) / VEC;
    const int64_t group_in_branch = group - branches.channel_begin[i] / VEC;
    const P* xi = HAS_X ? static_cast<const P*>(x.data[i]) : nullptr;
    P* gxi = WRITE_GX ? static_cast<P*>(gx.data[i]) : nullptr;
    for (int64_t row = static_cast<int64_t>(p) * blockDim.y + threadIdx.y; row < rows;
         row += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      const int64_t j = row * groups + group;                     // in the output
      const int64_t jb = row * branch_groups + group_in_branch;  // in branch i
      P xv, grv, gxv;
      if constexpr (HAS_X) xv = xi[jb];
      backward_pack<T, VEC, A, WRITE_GX, HAS_X>(reinterpret_cast<const P*>(gy)[j], reinterpret_cast<const P*>(y)[j],
                                                xv, s, grv, gxv, sum_g, sum_gx);
      if (gr != nullptr) reinterpret_cast<P*>(gr)[j] = grv;
      if constexpr (WRITE_GX) gxi[jb] = gxv;
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
__global__ void epilogue_finalize_kernel(const acc* __restrict__ partial_g, const acc* __restrict__ partial_gx,
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

// How the reduction is laid out: shared by the workspace query and the launch.
struct ReduceGeometry {
  int vec = 1;
  dim3 grid, block;
  int64_t partials = 0;
};

template <typename T>
ReduceGeometry reduce_geometry(const EpilogueBackwardArgs& a, int device) {
  constexpr int kWide = 16 / sizeof(T);
  ReduceGeometry geo;
  const ChannelView& v = a.view;
  const int64_t C = v.channels;
  const BranchTable branches = a.layout();
  // 16-byte packs when every tensor is aligned and a pack never straddles a plane (channels-first) or a
  // branch (channels-last).
  bool wide = pick_vec<T>(0, {a.grad_out, a.out, a.grad_residual}) == kWide;
  for (int i = 0; i < branches.count; ++i) {
    wide = wide && pick_vec<T>(0, {a.x.count ? a.x.data[i] : nullptr, a.grad_x.count ? a.grad_x.data[i] : nullptr}) == kWide;
    if (v.run == 1) wide = wide && (branches.channel_begin[i + 1] - branches.channel_begin[i]) % kWide == 0;
  }
  if (v.run > 1) wide = wide && v.run % kWide == 0;
  geo.vec = wide ? kWide : 1;

  const int64_t target_blocks = 8LL * multiprocessor_count(device);
  if (v.run > 1) {
    const int64_t per_channel_packs = (v.numel / C) / geo.vec;
    const int64_t p_max = std::max<int64_t>(1, ceil_div(per_channel_packs, kThreads));
    geo.partials = std::clamp<int64_t>(ceil_div(target_blocks, C), 1, std::min<int64_t>(p_max, 65535));
    geo.grid = dim3(static_cast<unsigned>(C), static_cast<unsigned>(geo.partials));
    geo.block = dim3(kThreads);
  } else {
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

template <typename T, Activation A, bool WRITE_GX>
void reduce_typed(const EpilogueBackwardArgs& a, void* workspace, int64_t partials, int device, cudaStream_t stream) {
  using acc = acc_t<T>;
  const ChannelView& v = a.view;
  const ReduceGeometry geo = reduce_geometry<T>(a, device);
  TORCH_CHECK(geo.partials == partials, "fastblocks: internal error, epilogue backward workspace size mismatch");
  auto* partial_g = static_cast<acc*>(workspace);
  auto* partial_gx = partial_g + partials * v.channels;
  const auto* gy = static_cast<const T*>(a.grad_out);
  const auto* y = static_cast<const T*>(a.out);
  auto* gr = static_cast<T*>(a.grad_residual);
  const auto* scale = static_cast<const acc*>(a.scale);
  const BranchTable branches = a.layout();
  FASTBLOCKS_BOOL_SWITCH(a.x.count > 0, HAS_X, [&] {
    with_vec<T>(geo.vec, [&](auto vec_constant) {
      constexpr int VEC = decltype(vec_constant)::value;
      if (v.run > 1) {
        epilogue_backward_planes_kernel<T, VEC, A, WRITE_GX, HAS_X><<<geo.grid, geo.block, 0, stream>>>(
            gy, y, gr, scale, branches, a.x, a.grad_x, partial_g, partial_gx, v);
      } else {
        epilogue_backward_rows_kernel<T, VEC, A, WRITE_GX, HAS_X><<<geo.grid, geo.block, 0, stream>>>(
            gy, y, gr, scale, branches, a.x, a.grad_x, partial_g, partial_gx, v);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  epilogue_finalize_kernel<acc><<<static_cast<unsigned>(ceil_div(v.channels, kThreads)), kThreads, 0, stream>>>(
      partial_g, partial_gx, static_cast<acc*>(a.grad_bias), static_cast<acc*>(a.grad_scale), partials, v.channels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

int64_t epilogue_backward_partials(const EpilogueBackwardArgs& a, int device) {
  if (!a.reduces()) return 0;
  int64_t partials = 0;
  dispatch_dtype(a.dtype, "fastblocks epilogue backward",
                 [&](auto zero) { partials = reduce_geometry<decltype(zero)>(a, device).partials; });
  return partials;
}

void launch_epilogue_backward_reduce(const EpilogueBackwardArgs& a, void* workspace, int64_t partials, int device,
                                     cudaStream_t stream) {
  dispatch_dtype(a.dtype, "fastblocks epilogue backward", [&](auto zero) {
    using T = decltype(zero);
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      FASTBLOCKS_BOOL_SWITCH(a.grad_x.count > 0, WRITE_GX, [&] {
        reduce_typed<T, RELU ? Activation::kReLU : Activation::kNone, WRITE_GX>(a, workspace, partials, device, stream);
      });
    });
  });
}

}  // namespace fastblocks::cuda
