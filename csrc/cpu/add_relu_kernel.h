// CPU kernels of fastblocks::add_relu: out = act(x * scale[c] + bias[c] + residual), and its backward.
// Three loop shapes over a dense tensor (common/channel_view.h):
//   flat   - no per-channel parameter: one elementwise pass in chunks;
//   planes - channels-first: each (n, c) plane of `run` elements has one scale and bias;
//   rows   - channels-last (run == 1): each row holds all C channels, parameters load as vectors.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/add_relu_args.h"
#include "common/epilogue.h"
#include "common/switch.h"
#include "cpu/vec_math.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace add_relu_detail {

// out[i] = act(x[i] * s + b + r[i]) over n elements; s and b are per element (loaded from s_ptr/b_ptr) when
// PER_ELEMENT, else the constants s0/b0.
template <typename scalar_t, Activation A, bool PER_ELEMENT>
inline void forward_run(const scalar_t* x, const scalar_t* r, scalar_t* out, int64_t n, const acc_t<scalar_t>* s_ptr,
                        const acc_t<scalar_t>* b_ptr, acc_t<scalar_t> s0, acc_t<scalar_t> b0) {
  using C = Chunk<scalar_t>;
  using Vec = typename C::Vec;
  const Vec s_const(s0), b_const(b0);
  for (int64_t i = 0; i < n; i += C::kSize) {
    const int64_t m = std::min<int64_t>(C::kSize, n - i);
    const C xc = C::load(x + i, m);
    const C rc = C::load(r + i, m);
    C yc;
    for (int k = 0; k < C::kVecs; ++k) {
      Vec s = s_const, b = b_const;
      if constexpr (PER_ELEMENT) {
        const int64_t lanes = C::lanes_of(k, m);
        s = Vec::loadu(s_ptr + i + k * C::kLanes, lanes);
        b = Vec::loadu(b_ptr + i + k * C::kLanes, lanes);
      }
      yc.v[k] = epilogue<A>(xc.v[k], s, b, rc.v[k]);
    }
    yc.store(out + i, m);
  }
}

template <typename scalar_t, Activation A>
void forward_typed(const AddReluForwardArgs& a) {
  using acc = acc_t<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto* r = static_cast<const scalar_t*>(a.residual);
  auto* out = static_cast<scalar_t*>(a.out);
  const auto* scale = static_cast<const acc*>(a.scale);
  const auto* bias = static_cast<const acc*>(a.bias);
  const ChannelView& v = a.view;

  if (scale == nullptr && bias == nullptr) {  // flat
    at::parallel_for(0, v.numel, kGrainElements, [&](int64_t begin, int64_t end) {
      forward_run<scalar_t, A, false>(x + begin, r + begin, out + begin, end - begin, nullptr, nullptr, 1, 0);
    });
  } else if (v.run == 1) {  // rows
    const int64_t C = v.channels;
    std::vector<acc> ones, zeros;
    if (scale == nullptr) scale = (ones.assign(C, acc(1)), ones.data());
    if (bias == nullptr) bias = (zeros.assign(C, acc(0)), zeros.data());
    at::parallel_for(0, v.numel / C, std::max<int64_t>(1, kGrainElements / C), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t o = row * C;
        forward_run<scalar_t, A, true>(x + o, r + o, out + o, C, scale, bias, 1, 0);
      }
    });
  } else {  // planes
    const int64_t run = v.run;
    at::parallel_for(0, v.numel / run, std::max<int64_t>(1, kGrainElements / run), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % v.channels;
        const int64_t o = plane * run;
        forward_run<scalar_t, A, false>(x + o, r + o, out + o, run, nullptr, nullptr, scale ? scale[c] : acc(1),
                                        bias ? bias[c] : acc(0));
      }
    });
  }
}

// Backward over n elements that share one channel (or need no channel): g = act'(grad_out) masked by out;
// grad_residual = g; grad_x = g * s (SCALE); the sums of g and g * x are added to sum_g / sum_gx (REDUCE).
template <typename scalar_t, Activation A, bool SCALE, bool REDUCE>
inline void backward_run(const scalar_t* gy, const scalar_t* y, const scalar_t* x, scalar_t* gx, scalar_t* gr,
                         int64_t n, acc_t<scalar_t> s0, acc_t<scalar_t>& sum_g, acc_t<scalar_t>& sum_gx) {
  using C = Chunk<scalar_t>;
  using Vec = typename C::Vec;
  const Vec s(s0);
  Vec acc_g(0), acc_gx(0);
  for (int64_t i = 0; i < n; i += C::kSize) {
    const int64_t m = std::min<int64_t>(C::kSize, n - i);
    const C gyc = C::load(gy + i, m);
    const C yc = C::load(y + i, m);
    C g, gxc;
    for (int k = 0; k < C::kVecs; ++k) {
      g.v[k] = activation_grad<A>(gyc.v[k], yc.v[k]);  // lanes past m are 0
      if constexpr (SCALE) gxc.v[k] = g.v[k] * s;
      if constexpr (REDUCE) acc_g = acc_g + g.v[k];
    }
    if constexpr (REDUCE) {
      if (x != nullptr) {
        const C xc = C::load(x + i, m);
        for (int k = 0; k < C::kVecs; ++k) acc_gx = acc_gx + g.v[k] * xc.v[k];
      }
    }
    g.store(gr + i, m);
    if constexpr (SCALE) gxc.store(gx + i, m);
  }
  if constexpr (REDUCE) {
    sum_g += sum_lanes(acc_g);
    sum_gx += sum_lanes(acc_gx);
  }
}

// Backward over one channels-last row of C elements; per-channel sums go to sum_g[C] / sum_gx[C].
template <typename scalar_t, Activation A, bool SCALE, bool REDUCE>
inline void backward_row(const scalar_t* gy, const scalar_t* y, const scalar_t* x, scalar_t* gx, scalar_t* gr,
                         int64_t C, const acc_t<scalar_t>* s, acc_t<scalar_t>* sum_g, acc_t<scalar_t>* sum_gx) {
  using Ch = Chunk<scalar_t>;
  using Vec = typename Ch::Vec;
  for (int64_t i = 0; i < C; i += Ch::kSize) {
    const int64_t m = std::min<int64_t>(Ch::kSize, C - i);
    const Ch gyc = Ch::load(gy + i, m);
    const Ch yc = Ch::load(y + i, m);
    Ch g, gxc, xc;
    if (REDUCE && x != nullptr) xc = Ch::load(x + i, m);
    for (int k = 0; k < Ch::kVecs; ++k) {
      const int64_t c = i + k * Ch::kLanes;
      const int64_t lanes = Ch::lanes_of(k, m);
      g.v[k] = activation_grad<A>(gyc.v[k], yc.v[k]);
      if constexpr (SCALE) gxc.v[k] = g.v[k] * Vec::loadu(s + c, lanes);
      if constexpr (REDUCE) {
        if (lanes > 0) {
          (Vec::loadu(sum_g + c, lanes) + g.v[k]).store(sum_g + c, lanes);
          if (x != nullptr) (Vec::loadu(sum_gx + c, lanes) + g.v[k] * xc.v[k]).store(sum_gx + c, lanes);
        }
      }
    }
    g.store(gr + i, m);
    if constexpr (SCALE) gxc.store(gx + i, m);
  }
}

template <typename scalar_t, Activation A, bool SCALE, bool REDUCE>
void backward_typed(const AddReluBackwardArgs& a) {
  using acc = acc_t<scalar_t>;
  const auto* gy = static_cast<const scalar_t*>(a.grad_out);
  const auto* y = static_cast<const scalar_t*>(a.out);
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto* scale = static_cast<const acc*>(a.scale);
  auto* gx = static_cast<scalar_t*>(a.grad_x);
  auto* gr = static_cast<scalar_t*>(a.grad_residual);
  auto* grad_scale = static_cast<acc*>(a.grad_scale);
  auto* grad_bias = static_cast<acc*>(a.grad_bias);
  const ChannelView& v = a.view;
  const int64_t C = v.channels;

  if constexpr (!SCALE && !REDUCE) {  // flat: grad_residual = grad_x = masked grad_out
    at::parallel_for(0, v.numel, kGrainElements, [&](int64_t begin, int64_t end) {
      acc unused_g = 0, unused_gx = 0;
      backward_run<scalar_t, A, false, false>(gy + begin, y + begin, nullptr, nullptr, gr + begin, end - begin, 1,
                                              unused_g, unused_gx);
    });
  } else if (v.run == 1) {  // rows
    std::vector<acc> ones;
    if (scale == nullptr) scale = (ones.assign(C, acc(1)), ones.data());
    const int64_t rows = v.numel / C;
    if constexpr (REDUCE) {
      // Fixed blocks of rows, each summing into its own slice; slices are added in block order, so the
      // result does not depend on the thread count (deterministic).
      const int64_t block_rows = std::max<int64_t>(1, (4 * kGrainElements) / C);
      const int64_t blocks = (rows + block_rows - 1) / block_rows;
      std::vector<acc> partial(static_cast<size_t>(blocks) * 2 * C, acc(0));
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end; ++blk) {
          acc* sum_g = partial.data() + blk * 2 * C;
          acc* sum_gx = sum_g + C;
          for (int64_t row = blk * block_rows; row < std::min(rows, (blk + 1) * block_rows); ++row) {
            const int64_t o = row * C;
            backward_row<scalar_t, A, SCALE, true>(gy + o, y + o, x ? x + o : nullptr, SCALE ? gx + o : nullptr,
                                                   gr + o, C, scale, sum_g, sum_gx);
          }
        }
      });
      for (int64_t c = 0; c < C; ++c) {
        acc total_g = 0, total_gx = 0;
        for (int64_t blk = 0; blk < blocks; ++blk) {
          total_g += partial[blk * 2 * C + c];
          total_gx += partial[blk * 2 * C + C + c];
        }
        if (grad_bias) grad_bias[c] = total_g;
        if (grad_scale) grad_scale[c] = total_gx;
      }
    } else {
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / C), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t o = row * C;
          backward_row<scalar_t, A, SCALE, false>(gy + o, y + o, nullptr, gx + o, gr + o, C, scale, nullptr, nullptr);
        }
      });
    }
  } else {  // planes
    const int64_t run = v.run;
    const int64_t planes = v.numel / run;
    if constexpr (REDUCE) {
      // One task per channel walks that channel's planes in order: deterministic sums.
      at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          acc total_g = 0, total_gx = 0;
          for (int64_t plane = c; plane < planes; plane += C) {
            const int64_t o = plane * run;
            backward_run<scalar_t, A, SCALE, true>(gy + o, y + o, x ? x + o : nullptr, SCALE ? gx + o : nullptr,
                                                   gr + o, run, scale ? scale[c] : acc(1), total_g, total_gx);
          }
          if (grad_bias) grad_bias[c] = total_g;
          if (grad_scale) grad_scale[c] = total_gx;
        }
      });
    } else {
      at::parallel_for(0, planes, std::max<int64_t>(1, kGrainElements / run), [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t o = plane * run;
          acc unused_g = 0, unused_gx = 0;
          backward_run<scalar_t, A, SCALE, false>(gy + o, y + o, nullptr, gx + o, gr + o, run,
                                                  scale ? scale[plane % C] : acc(1), unused_g, unused_gx);
        }
      });
    }
  }
}

}  // namespace add_relu_detail

void add_relu_forward(const AddReluForwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "add_relu_forward_cpu", [&] {
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      add_relu_detail::forward_typed<scalar_t, RELU ? Activation::kReLU : Activation::kNone>(a);
    });
  });
}

void add_relu_backward(const AddReluBackwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "add_relu_backward_cpu", [&] {
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      FASTBLOCKS_BOOL_SWITCH(a.grad_x != nullptr, SCALE, [&] {
        FASTBLOCKS_BOOL_SWITCH(a.grad_bias != nullptr || a.grad_scale != nullptr, REDUCE, [&] {
          add_relu_detail::backward_typed<scalar_t, RELU ? Activation::kReLU : Activation::kNone, SCALE, REDUCE>(a);
        });
      });
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
