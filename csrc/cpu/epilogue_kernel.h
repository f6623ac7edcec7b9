// CPU building blocks of every epilogue (per-channel scale/bias, optional addend, activation) and the one
// backward all epilogues share (common/epilogue_args.h: EpilogueBackwardArgs). Loop shapes over a dense tensor
// (common/channel_view.h):
//   flat   - no per-channel parameter: one elementwise pass in chunks;
//   planes - channels-first: each (n, c) plane of `run` elements has one scale and bias;
//   rows   - channels-last (run == 1): each row holds all C channels, parameters load as vectors.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/epilogue.h"
#include "common/epilogue_args.h"
#include "common/switch.h"
#include "cpu/vec_math.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace epilogue_detail {

// out[i] = act(x[i] * s + b (+ r[i])) over n elements; s and b are per element (loaded from s_ptr/b_ptr) when
// PER_ELEMENT, else the constants s0/b0.
template <typename scalar_t, Activation A, bool PER_ELEMENT, bool RESIDUAL>
inline void forward_run(const scalar_t* x, const scalar_t* r, scalar_t* out, int64_t n, const acc_t<scalar_t>* s_ptr,
                        const acc_t<scalar_t>* b_ptr, acc_t<scalar_t> s0, acc_t<scalar_t> b0) {
  using C = Chunk<scalar_t>;
  using Vec = typename C::Vec;
  const Vec s_const(s0), b_const(b0);
  for (int64_t i = 0; i < n; i += C::kSize) {
    const int64_t m = std::min<int64_t>(C::kSize, n - i);
    const C xc = C::load(x + i, m);
    C rc;
    if constexpr (RESIDUAL) rc = C::load(r + i, m);
    C yc;
    for (int k = 0; k < C::kVecs; ++k) {
      Vec s = s_const, b = b_const;
      if constexpr (PER_ELEMENT) {
        const int64_t lanes = C::lanes_of(k, m);
        s = Vec::loadu(s_ptr + i + k * C::kLanes, lanes);
        b = Vec::loadu(b_ptr + i + k * C::kLanes, lanes);
      }
      if constexpr (RESIDUAL) {
        yc.v[k] = epilogue<A>(xc.v[k], s, b, rc.v[k]);
      } else {
        yc.v[k] = epilogue<A>(xc.v[k], s, b);
      }
    }
    yc.store(out + i, m);
  }
}

// Backward over n elements of one channel (or of no particular channel): g = act'(grad_out) from out;
// gr = g (when gr is given); gx = g * s (WRITE_GX); sum_g += sum g and sum_gx += sum g * x (REDUCE; x may be
// null).
template <typename scalar_t, Activation A, bool WRITE_GX, bool REDUCE>
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
      if constexpr (WRITE_GX) gxc.v[k] = g.v[k] * s;
      if constexpr (REDUCE) acc_g = acc_g + g.v[k];
    }
    if constexpr (REDUCE) {
      if (x != nullptr) {
        const C xc = C::load(x + i, m);
        for (int k = 0; k < C::kVecs; ++k) acc_gx = acc_gx + g.v[k] * xc.v[k];
      }
    }
    if (gr != nullptr) g.store(gr + i, m);
    if constexpr (WRITE_GX) gxc.store(gx + i, m);
  }
  if constexpr (REDUCE) {
    sum_g += sum_lanes(acc_g);
    sum_gx += sum_lanes(acc_gx);
  }
}

// Backward over n consecutive channels of one channels-last row; s, sum_g and sum_gx point at those channels.
template <typename scalar_t, Activation A, bool WRITE_GX, bool REDUCE>
inline void backward_row(const scalar_t* gy, const scalar_t* y, const scalar_t* x, scalar_t* gx, scalar_t* gr,
                         int64_t n, const acc_t<scalar_t>* s, acc_t<scalar_t>* sum_g, acc_t<scalar_t>* sum_gx) {
  using Ch = Chunk<scalar_t>;
  using Vec = typename Ch::Vec;
  for (int64_t i = 0; i < n; i += Ch::kSize) {
    const int64_t m = std::min<int64_t>(Ch::kSize, n - i);
    const Ch gyc = Ch::load(gy + i, m);
    const Ch yc = Ch::load(y + i, m);
    Ch g, gxc, xc;
    if (REDUCE && x != nullptr) xc = Ch::load(x + i, m);
    for (int k = 0; k < Ch::kVecs; ++k) {
      const int64_t c = i + k * Ch::kLanes;
      const int64_t lanes = Ch::lanes_of(k, m);
      g.v[k] = activation_grad<A>(gyc.v[k], yc.v[k]);
      if constexpr (WRITE_GX) gxc.v[k] = g.v[k] * Vec::loadu(s + c, lanes);
      if constexpr (REDUCE) {
        if (lanes > 0) {
          (Vec::loadu(sum_g + c, lanes) + g.v[k]).store(sum_g + c, lanes);
          if (x != nullptr) (Vec::loadu(sum_gx + c, lanes) + g.v[k] * xc.v[k]).store(sum_gx + c, lanes);
        }
      }
    }
    if (gr != nullptr) g.store(gr + i, m);
    if constexpr (WRITE_GX) gxc.store(gx + i, m);
  }
}

template <typename T>
T* branch_ptr(const BranchTable& t, int i) {
  return t.count > 0 ? static_cast<T*>(t.data[i]) : nullptr;
}

template <typename scalar_t, Activation A, bool WRITE_GX, bool REDUCE>
void backward_typed(const EpilogueBackwardArgs& a) {
  using acc = acc_t<scalar_t>;
  const auto* gy = static_cast<const scalar_t*>(a.grad_out);
  const auto* y = static_cast<const scalar_t*>(a.out);
  const auto* scale = static_cast<const acc*>(a.scale);
  auto* gr = static_cast<scalar_t*>(a.grad_residual);
  auto* grad_scale = static_cast<acc*>(a.grad_scale);
  auto* grad_bias = static_cast<acc*>(a.grad_bias);
  const ChannelView& v = a.view;
  const int64_t C = v.channels;
  const BranchTable branches = a.layout();
  const int64_t* begin = branches.channel_begin;

  if constexpr (!WRITE_GX && !REDUCE) {  // flat: grad_residual only
    at::parallel_for(0, v.numel, kGrainElements, [&](int64_t lo, int64_t hi) {
      acc unused_g = 0, unused_gx = 0;
      backward_run<scalar_t, A, false, false>(gy + lo, y + lo, nullptr, nullptr, gr + lo, hi - lo, 1, unused_g,
                                              unused_gx);
    });
    return;
  }

  if (v.run == 1) {  // rows: each row is split into its branches' channel ranges
    std::vector<acc> ones;
    if (scale == nullptr) scale = (ones.assign(C, acc(1)), ones.data());
    const int64_t rows = v.numel / C;
    auto do_row = [&](int64_t row, acc* sum_g, acc* sum_gx) {
      for (int i = 0; i < branches.count; ++i) {
        const int64_t ci = begin[i + 1] - begin[i];
        const int64_t o = row * C + begin[i];
        const scalar_t* xi = branch_ptr<const scalar_t>(a.x, i);
        scalar_t* gxi = branch_ptr<scalar_t>(a.grad_x, i);
        backward_row<scalar_t, A, WRITE_GX, REDUCE>(gy + o, y + o, xi ? xi + row * ci : nullptr,
                                                    gxi ? gxi + row * ci : nullptr, gr ? gr + o : nullptr, ci,
                                                    scale + begin[i], sum_g ? sum_g + begin[i] : nullptr,
                                                    sum_gx ? sum_gx + begin[i] : nullptr);
      }
    };
    if constexpr (REDUCE) {
      // Fixed blocks of rows, each summing into its own slice; slices are added in block order, so the
      // result does not depend on the thread count (deterministic).
      const int64_t block_rows = std::max<int64_t>(1, (4 * kGrainElements) / C);
      const int64_t blocks = (rows + block_rows - 1) / block_rows;
      std::vector<acc> partial(static_cast<size_t>(blocks) * 2 * C, acc(0));
      at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t blk = lo; blk < hi; ++blk) {
          acc* sum_g = partial.data() + blk * 2 * C;
          for (int64_t row = blk * block_rows; row < std::min(rows, (blk + 1) * block_rows); ++row) {
            do_row(row, sum_g, sum_g + C);
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
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / C), [&](int64_t lo, int64_t hi) {
        for (int64_t row = lo; row < hi; ++row) do_row(row, nullptr, nullptr);
      });
    }
    return;
  }

  // planes: plane (n, c) of the output is plane (n, c - begin[i]) of branch i.
  const int64_t run = v.run;
  const int64_t batch = v.numel / (run * C);
  auto do_plane = [&](int64_t n, int64_t c, acc& sum_g, acc& sum_gx) {
    const int i = branch_of(branches, c);
    const int64_t ci = begin[i + 1] - begin[i];
    const int64_t o = (n * C + c) * run;
    const int64_t bo = (n * ci + (c - begin[i])) * run;
    const scalar_t* xi = branch_ptr<const scalar_t>(a.x, i);
    scalar_t* gxi = branch_ptr<scalar_t>(a.grad_x, i);
    backward_run<scalar_t, A, WRITE_GX, REDUCE>(gy + o, y + o, xi ? xi + bo : nullptr, gxi ? gxi + bo : nullptr,
                                                gr ? gr + o : nullptr, run, scale ? scale[c] : acc(1), sum_g, sum_gx);
  };
  if constexpr (REDUCE) {
    // One task per channel walks that channel's planes in order: deterministic sums.
    at::parallel_for(0, C, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        acc total_g = 0, total_gx = 0;
        for (int64_t n = 0; n < batch; ++n) do_plane(n, c, total_g, total_gx);
        if (grad_bias) grad_bias[c] = total_g;
        if (grad_scale) grad_scale[c] = total_gx;
      }
    });
  } else {
    at::parallel_for(0, batch * C, std::max<int64_t>(1, kGrainElements / run), [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        acc unused_g = 0, unused_gx = 0;
        do_plane(p / C, p % C, unused_g, unused_gx);
      }
    });
  }
}

}  // namespace epilogue_detail

void epilogue_backward(const EpilogueBackwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "epilogue_backward_cpu", [&] {
    FASTBLOCKS_BOOL_SWITCH(a.relu, RELU, [&] {
      FASTBLOCKS_BOOL_SWITCH(a.grad_x.count > 0, WRITE_GX, [&] {
        FASTBLOCKS_BOOL_SWITCH(a.reduces(), REDUCE, [&] {
          epilogue_detail::backward_typed<scalar_t, RELU ? Activation::kReLU : Activation::kNone, WRITE_GX, REDUCE>(a);
        });
      });
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
