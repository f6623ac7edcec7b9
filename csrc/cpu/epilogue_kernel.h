// CPU building blocks of every epilogue (per-channel scale/bias, optional addend, an activation of the table in
// common/activation.h) and the one backward all epilogues share (common/epilogue_args.h: EpilogueBackwardArgs).
// Loop shapes over a dense tensor (common/channel_view.h):
//   flat   - no per-channel parameter: one elementwise pass in chunks;
//   planes - channels-first: each (n, c) plane of `run` elements has one scale and bias;
//   rows   - channels-last (run == 1): each row holds all C channels, parameters load as vectors.
// The activation is a template parameter (a functor of the table): its vector code is inlined in the loops.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/epilogue.h"
#include "common/dtype_dispatch.h"
#include "common/epilogue_args.h"
#include "cpu/vec_math.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace epilogue_detail {

// z = x * s + b (+ r): the pre-activation, the same expression in the forward and in the backward's recompute.
template <typename V>
inline V preactivation(const V& x, const V& s, const V& b) {
  return x * s + b;
}
template <typename V>
inline V preactivation(const V& x, const V& s, const V& b, const V& r) {
  return x * s + b + r;
}

// out[i] = act(x[i] * s + b (+ r[i])) over n elements; s and b are per element (loaded from s_ptr/b_ptr) when
// PER_ELEMENT, else the constants s0/b0.
template <typename scalar_t, typename Act, bool PER_ELEMENT, bool RESIDUAL>
inline void forward_run(const Act& act, const scalar_t* x, const scalar_t* r, scalar_t* out, int64_t n,
                        const acc_t<scalar_t>* s_ptr, const acc_t<scalar_t>* b_ptr, acc_t<scalar_t> s0,
                        acc_t<scalar_t> b0, acc_t<scalar_t> slope) {
  using C = Chunk<scalar_t>;
  using Vec = typename C::Vec;
  const Vec s_const(s0), b_const(b0), sl(slope);
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
        yc.v[k] = act.value(preactivation(xc.v[k], s, b, rc.v[k]), sl);
      } else {
        yc.v[k] = act.value(preactivation(xc.v[k], s, b), sl);
      }
    }
    yc.store(out + i, m);
  }
}

// The inputs of one backward run: x (and r) where the pre-activation or grad_scale needs them.
template <typename scalar_t>
struct BackwardRun {
  const scalar_t* gy;
  const scalar_t* x;  // null: not read
  const scalar_t* r;  // null: no residual
  scalar_t* gx;       // null: not written
  scalar_t* gr;       // null: not written
  bool sum_gx;        // grad_scale wanted (x given)
  bool gx_scaled;     // gx = g * s (else g)
};

// g = act'(z) * grad_out with z recomputed from x (and r) unless the activation is "none". Lanes past the run's
// end load as zero and give g = 0.
// An activation chosen at run time (a switch per vector): what the float64 kernels use, so that the dtype kept for
// the tests does not instantiate every kernel once per activation (compile time).
struct RuntimeAct {
  ActivationSpec spec;
  template <typename V>
  V value(const V& z, const V&) const {
    return activate(spec, z);
  }
  template <typename V>
  V grad(const V& g, const V& z, const V&) const {
    return activation_grad(spec, g, z);
  }
};

// Whether the activation's gradient needs the pre-activation z: every one but "none" (known at compile time for a
// functor of the table, at run time for a RuntimeAct).
template <typename Act>
inline bool needs_preactivation(const Act& act) {
  if constexpr (std::is_same_v<Act, NoneAct>) {
    return false;
  } else if constexpr (std::is_same_v<Act, RuntimeAct>) {
    return act.spec.kind != Activation::kNone;
  } else {
    return true;
  }
}

template <typename scalar_t, typename Act>
inline typename Chunk<scalar_t>::Vec chunk_grad(const Act& act, const typename Chunk<scalar_t>::Vec& gy,
                                                 const typename Chunk<scalar_t>::Vec& x,
                                                 const typename Chunk<scalar_t>::Vec* r,
                                                 const typename Chunk<scalar_t>::Vec& s,
                                                 const typename Chunk<scalar_t>::Vec& b,
                                                 const typename Chunk<scalar_t>::Vec& slope) {
  if (!needs_preactivation(act)) return gy;
  const auto z = r != nullptr ? preactivation(x, s, b, *r) : preactivation(x, s, b);
  return act.grad(gy, z, slope);
}

// Backward over n elements of one channel (or of no particular channel) with constant s0/b0: writes gr = g and
// gx = g * s0 where asked; REDUCE: sum_g += sum g, sum_gx += sum g * x.
template <typename scalar_t, typename Act, bool REDUCE>
inline void backward_run(const Act& act, const BackwardRun<scalar_t>& io, int64_t n, acc_t<scalar_t> s0, acc_t<scalar_t> b0,
                         acc_t<scalar_t> slope, acc_t<scalar_t>& sum_g, acc_t<scalar_t>& sum_gx) {
  using C = Chunk<scalar_t>;
  using Vec = typename C::Vec;
  const bool needs_z = needs_preactivation(act);
  const Vec s(s0), b(b0), sl(slope);
  Vec acc_g(0), acc_gx(0);
  const bool load_x = needs_z || (REDUCE && io.sum_gx);
  for (int64_t i = 0; i < n; i += C::kSize) {
    const int64_t m = std::min<int64_t>(C::kSize, n - i);
    const C gyc = C::load(io.gy + i, m);
    C xc, rc, g, gxc;
    if (load_x) xc = C::load(io.x + i, m);
    const bool residual = needs_z && io.r != nullptr;
    if (residual) rc = C::load(io.r + i, m);
    for (int k = 0; k < C::kVecs; ++k) {
      g.v[k] = chunk_grad<scalar_t, Act>(act, gyc.v[k], xc.v[k], residual ? &rc.v[k] : nullptr, s, b, sl);
      if constexpr (REDUCE) {
        acc_g = acc_g + g.v[k];
        if (io.sum_gx) acc_gx = acc_gx + g.v[k] * xc.v[k];
      }
    }
    if (io.gr != nullptr) g.store(io.gr + i, m);
    if (io.gx != nullptr) {
      for (int k = 0; k < C::kVecs; ++k) gxc.v[k] = io.gx_scaled ? g.v[k] * s : g.v[k];
      gxc.store(io.gx + i, m);
    }
  }
  if constexpr (REDUCE) {
    sum_g += sum_lanes(acc_g);
    sum_gx += sum_lanes(acc_gx);
  }
}

// Backward over n consecutive channels of one channels-last row; s, b, sum_g and sum_gx point at those channels
// (sums only with REDUCE).
template <typename scalar_t, typename Act, bool REDUCE>
inline void backward_row(const Act& act, const BackwardRun<scalar_t>& io, int64_t n, const acc_t<scalar_t>* s,
                         const acc_t<scalar_t>* b, acc_t<scalar_t> slope, acc_t<scalar_t>* sum_g,
                         acc_t<scalar_t>* sum_gx) {
  using Ch = Chunk<scalar_t>;
  using Vec = typename Ch::Vec;
  const bool needs_z = needs_preactivation(act);
  const Vec sl(slope);
  const bool load_x = needs_z || (REDUCE && io.sum_gx);
  for (int64_t i = 0; i < n; i += Ch::kSize) {
    const int64_t m = std::min<int64_t>(Ch::kSize, n - i);
    const Ch gyc = Ch::load(io.gy + i, m);
    Ch xc, rc, g, gxc;
    if (load_x) xc = Ch::load(io.x + i, m);
    const bool residual = needs_z && io.r != nullptr;
    if (residual) rc = Ch::load(io.r + i, m);
    for (int k = 0; k < Ch::kVecs; ++k) {
      const int64_t c = i + k * Ch::kLanes;
      const int64_t lanes = Ch::lanes_of(k, m);
      const Vec sv = Vec::loadu(s + c, lanes);
      const Vec bv = needs_z ? Vec::loadu(b + c, lanes) : Vec(0);
      g.v[k] = chunk_grad<scalar_t, Act>(act, gyc.v[k], xc.v[k], residual ? &rc.v[k] : nullptr, sv, bv, sl);
      if (io.gx != nullptr) gxc.v[k] = io.gx_scaled ? g.v[k] * sv : g.v[k];
      if constexpr (REDUCE) {
        if (lanes > 0) {
          (Vec::loadu(sum_g + c, lanes) + g.v[k]).store(sum_g + c, lanes);
          if (io.sum_gx) (Vec::loadu(sum_gx + c, lanes) + g.v[k] * xc.v[k]).store(sum_gx + c, lanes);
        }
      }
    }
    if (io.gr != nullptr) g.store(io.gr + i, m);
    if (io.gx != nullptr) gxc.store(io.gx + i, m);
  }
}

template <typename T>
T* branch_ptr(const BranchTable& t, int i) {
  return t.count > 0 ? static_cast<T*>(t.data[i]) : nullptr;
}

// The per-channel scale and bias as arrays (1 and 0 where absent), for the row loops.
template <typename acc>
struct ChannelParams {
  std::vector<acc> ones, zeros;
  const acc* scale;
  const acc* bias;
  ChannelParams(const acc* s, const acc* b, int64_t C) : scale(s), bias(b) {
    if (scale == nullptr) scale = (ones.assign(C, acc(1)), ones.data());
    if (bias == nullptr) bias = (zeros.assign(C, acc(0)), zeros.data());
  }
};

template <typename scalar_t, typename Act, bool REDUCE>
void backward_typed(const Act& act, const EpilogueBackwardArgs& a) {
  using acc = acc_t<scalar_t>;
  const auto* gy = static_cast<const scalar_t*>(a.grad_out);
  const auto* r = static_cast<const scalar_t*>(a.residual);
  auto* gr = static_cast<scalar_t*>(a.grad_residual);
  auto* grad_scale = static_cast<acc*>(a.grad_scale);
  auto* grad_bias = static_cast<acc*>(a.grad_bias);
  const auto* scale = static_cast<const acc*>(a.scale);
  const auto* bias = static_cast<const acc*>(a.bias);
  const acc slope = static_cast<acc>(a.act.negative_slope);
  const ChannelView& v = a.view;
  const int64_t C = v.channels;
  const BranchTable branches = a.layout();
  const int64_t* begin = branches.channel_begin;
  const bool sum_gx = grad_scale != nullptr;

  if (!REDUCE && a.grad_x.count == 0 && scale == nullptr && bias == nullptr) {  // flat: grad_residual only
    const scalar_t* x = branch_ptr<const scalar_t>(a.x, 0);
    at::parallel_for(0, v.numel, kGrainElements, [&](int64_t lo, int64_t hi) {
      acc unused_g = 0, unused_gx = 0;
      const BackwardRun<scalar_t> io{gy + lo, x ? x + lo : nullptr, r ? r + lo : nullptr, nullptr, gr + lo, false,
                                     true};
      backward_run<scalar_t, Act, false>(act, io, hi - lo, 1, 0, slope, unused_g, unused_gx);
    });
    return;
  }

  if (v.run == 1) {  // rows: each row is split into its branches' channel ranges
    const ChannelParams<acc> params(scale, bias, C);
    const int64_t rows = v.numel / C;
    auto do_row = [&](int64_t row, acc* sum_g, acc* sum_gx_row) {
      for (int i = 0; i < branches.count; ++i) {
        const int64_t ci = begin[i + 1] - begin[i];
        const int64_t o = row * C + begin[i];
        const scalar_t* xi = branch_ptr<const scalar_t>(a.x, i);
        scalar_t* gxi = branch_ptr<scalar_t>(a.grad_x, i);
        const BackwardRun<scalar_t> io{gy + o, xi ? xi + row * ci : nullptr, r ? r + o : nullptr,
                                       gxi ? gxi + row * ci : nullptr, gr ? gr + o : nullptr, sum_gx,
                                       a.grad_x_scaled};
        backward_row<scalar_t, Act, REDUCE>(act, io, ci, params.scale + begin[i], params.bias + begin[i], slope,
                                            sum_g ? sum_g + begin[i] : nullptr,
                                            sum_gx_row ? sum_gx_row + begin[i] : nullptr);
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
  auto do_plane = [&](int64_t n, int64_t c, acc& sum_g, acc& sum_gx_c) {
    const int i = branch_of(branches, c);
    const int64_t ci = begin[i + 1] - begin[i];
    const int64_t o = (n * C + c) * run;
    const int64_t bo = (n * ci + (c - begin[i])) * run;
    const scalar_t* xi = branch_ptr<const scalar_t>(a.x, i);
    scalar_t* gxi = branch_ptr<scalar_t>(a.grad_x, i);
    const BackwardRun<scalar_t> io{gy + o, xi ? xi + bo : nullptr, r ? r + o : nullptr, gxi ? gxi + bo : nullptr,
                                   gr ? gr + o : nullptr, sum_gx, a.grad_x_scaled};
    backward_run<scalar_t, Act, REDUCE>(act, io, run, scale ? scale[c] : acc(1), bias ? bias[c] : acc(0), slope, sum_g,
                                        sum_gx_c);
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

// f(act) with act the activation's functor (compile-time: its vector code inlined in the loops) for float, half and
// bfloat16 data, and a RuntimeAct for float64.
template <typename scalar_t, typename F>
void visit_kernel_activation(const ActivationSpec& spec, F&& f) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    f(RuntimeAct{spec});
  } else {
    visit_activation(spec.kind, f);
  }
}


}  // namespace epilogue_detail
}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
