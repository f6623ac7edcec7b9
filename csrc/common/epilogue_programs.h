// The CUDA programs of the epilogue ops (fastblocks::add_act, fastblocks::branch_concat and their shared backward),
// written as C10_HOST_DEVICE programs (common/program.h) that the GPU runs (cuda/epilogue_kernel.cu) and the CPU
// emulator runs block by block and thread by thread (cpu/program_emulator.h; tests/test_epilogue_programs.py).
//
// Memory-bound: each thread moves 16-byte packs (VEC elements; kIlp packs in flight), the per-channel scale and bias
// of a pack come with one load where the layout allows (ChannelMode), math in the accumulation type (float for
// half/bfloat16/float, double for double), the activation from the table (common/activation.h) chosen at run time
// (a branch every thread takes the same way).
//   AddActForward            out = act(x * scale + bias + residual)
//   BranchConcatForward      out = act(cat(inputs) * scale + bias), threads walk the branches' packs one after
//                            another ("branch space"), so every load and store stays coalesced; one launch
//   AddActBackward           the backward without per-channel sums: grad_residual = g, grad_x = g * scale, with
//                            g = act'(z) * grad_out and z recomputed from the inputs
//   BranchConcatBackward     the same per branch (grad_inputs[i] = g * scale)
//   PlanesReduce / RowsReduce  the backward with per-channel sums (grad_bias = sum g, grad_scale = sum g * x) for
//                            channels-first / channels-last data, into per-block partials reduced in a fixed order
//                            in shared memory; ReduceFinish adds each channel's partials in a fixed order.
//                            Deterministic, and the partition depends on the shape only, so the GPU's sums equal the
//                            emulator's bit for bit.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/dtype_dispatch.h"
#include "common/epilogue.h"
#include "common/epilogue_args.h"
#include "common/program.h"

namespace fastblocks::epilogue_programs {

using namespace ::fastblocks::program;

constexpr int kIlp = 2;  // packs per thread per tensor

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  if constexpr (std::is_same_v<T, double>) return "double";
  if constexpr (std::is_same_v<T, c10::Half>) return "half";
  return "bfloat16";
}

// ---------------------------------------------------------------------------------------------------------------
// Per-channel parameters of one pack of VEC consecutive elements starting at flat index `first`. The mode is chosen
// on the host so that the common layouts need no per-element channel arithmetic.
enum class ChannelMode : int {
  kNone,        // no scale or bias: 1 and 0
  kPerPack,     // run % VEC == 0: the whole pack is in one channel (one load of each parameter)
  kRowVector,   // channels-last (run == 1), C % VEC == 0, parameters aligned: VEC consecutive channels
  kPerElement,  // anything else: a channel cursor per element
};

// Channel of consecutive flat elements (element i is in channel (i / run) % channels) without a division per element.
struct ChannelCursor {
  int64_t pos, channel;
  C10_HOST_DEVICE ChannelCursor(int64_t i, int64_t run, int64_t channels) {
    const int64_t q = quotient(i, run);
    pos = i - q * run;
    channel = q % channels;
  }
  C10_HOST_DEVICE void next(int64_t run, int64_t channels) {
    if (++pos == run) {
      pos = 0;
      if (++channel == channels) channel = 0;
    }
  }
};

template <typename acc, int VEC>
C10_HOST_DEVICE inline void pack_params(ChannelMode mode, const acc* scale, const acc* bias, int64_t first,
                                        const ChannelView& v, acc (&s)[VEC], acc (&b)[VEC]) {
  if (mode == ChannelMode::kPerPack) {
    const int64_t c = quotient(first, v.run) % v.channels;
    const acc s0 = scale ? scale[c] : acc(1), b0 = bias ? bias[c] : acc(0);
#pragma unroll
    for (int k = 0; k < VEC; ++k) s[k] = s0, b[k] = b0;
  } else if (mode == ChannelMode::kRowVector) {
    const int64_t c0 = first % v.channels;
    VecPack<acc, VEC> sp, bp;
#pragma unroll
    for (int k = 0; k < VEC; ++k) sp.v[k] = acc(1), bp.v[k] = acc(0);
    if (scale) sp = load_pack<VEC>(scale + c0);
    if (bias) bp = load_pack<VEC>(bias + c0);
#pragma unroll
    for (int k = 0; k < VEC; ++k) s[k] = sp.v[k], b[k] = bp.v[k];
  } else if (mode == ChannelMode::kPerElement) {
    ChannelCursor cur(first, v.run, v.channels);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      s[k] = scale ? scale[cur.channel] : acc(1);
      b[k] = bias ? bias[cur.channel] : acc(0);
      cur.next(v.run, v.channels);
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) s[k] = acc(1), b[k] = acc(0);
  }
}

template <typename T, int VEC>
ChannelMode pick_channel_mode(const ChannelView& v, const void* scale, const void* bias) {
  using acc = acc_t<T>;
  if (scale == nullptr && bias == nullptr) return ChannelMode::kNone;
  if (v.run % VEC == 0) return ChannelMode::kPerPack;
  const auto aligned = [](const void* p) {
    return p == nullptr || reinterpret_cast<uintptr_t>(p) % (sizeof(acc) * VEC) == 0;
  };
  if (v.run == 1 && v.channels % VEC == 0 && aligned(scale) && aligned(bias)) return ChannelMode::kRowVector;
  return ChannelMode::kPerElement;
}

inline const char* mode_name(ChannelMode m) {
  switch (m) {
    case ChannelMode::kNone: return "none";
    case ChannelMode::kPerPack: return "per_pack";
    case ChannelMode::kRowVector: return "row_vector";
    default: return "per_element";
  }
}

// 16 / sizeof(T) when every pointer is 16-byte aligned, else 1.
template <typename T>
int pick_vec(std::initializer_list<const void*> ptrs) {
  return aligned16(ptrs) ? 16 / static_cast<int>(sizeof(T)) : 1;
}

// z = x * s + b (+ r): the pre-activation, the same expression in every forward and backward program.
template <typename acc>
C10_HOST_DEVICE inline acc preactivation(acc x, acc s, acc b) {
  return x * s + b;
}
template <typename acc>
C10_HOST_DEVICE inline acc preactivation(acc x, acc s, acc b, acc r) {
  return x * s + b + r;
}

// g = act'(z) * gy; z recomputed from x (and r) unless the activation is "none" (x then not read).
template <typename acc>
C10_HOST_DEVICE inline acc element_grad(const ActivationSpec& act, acc gy, acc x, const acc* r, acc s, acc b) {
  if (act.kind == Activation::kNone) return gy;
  const acc z = r != nullptr ? preactivation(x, s, b, *r) : preactivation(x, s, b);
  return activation_grad(act, gy, z);
}

// Loads VEC elements of p at pack j, converted to acc (p may be null: zeros).
template <typename T, int VEC>
C10_HOST_DEVICE inline void load_acc(const T* p, int64_t j, acc_t<T> (&out)[VEC]) {
  if (p == nullptr) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = acc_t<T>(0);
    return;
  }
  const VecPack<T, VEC> pack = load_pack<VEC>(p + j * VEC);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = static_cast<acc_t<T>>(pack.v[k]);
}

template <typename T, int VEC>
C10_HOST_DEVICE inline void store_acc(T* p, int64_t j, const acc_t<T> (&in)[VEC]) {
  VecPack<T, VEC> pack;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pack.v[k] = static_cast<T>(in[k]);
  store_pack<VEC>(p + j * VEC, pack);
}

// ---------------------------------------------------------------------------------------------------------------
// Flat elementwise programs: block b covers packs [b * threads * kIlp, (b + 1) * threads * kIlp), thread t the packs
// first + u * threads (u < kIlp); block 0 also does the last numel % VEC elements one per thread.
struct FlatGrid {
  int64_t packs = 0, numel = 0;
  int vec = 1;
  int64_t blocks() const { return std::max<int64_t>(1, ceil_div(packs, int64_t(kBlockThreads) * kIlp)); }
  C10_HOST_DEVICE int64_t pack(int64_t block, int thread, int threads, int u) const {
    return block * threads * kIlp + thread + static_cast<int64_t>(u) * threads;
  }
  // The element of the tail a thread of block 0 takes (numel when none).
  C10_HOST_DEVICE int64_t tail(int64_t block, int thread) const {
    const int64_t i = packs * vec + thread;
    return block == 0 && i < numel ? i : numel;
  }
};

// out = act(x * scale + bias + residual).
template <typename T, int VEC>
struct AddActForward {
  using acc = acc_t<T>;
  using State = NoState;
  static constexpr int kPhases = 1;
  const T* x;
  const T* r;
  T* out;
  const acc* scale;
  const acc* bias;
  ChannelView view;
  ActivationSpec act;
  ChannelMode mode;
  FlatGrid grid;

  static AddActForward make(const AddActForwardArgs& a) {
    AddActForward p{static_cast<const T*>(a.x), static_cast<const T*>(a.residual), static_cast<T*>(a.out),
                    static_cast<const acc*>(a.scale), static_cast<const acc*>(a.bias), a.view, a.act,
                    pick_channel_mode<T, VEC>(a.view, a.scale, a.bias), {}};
    p.grid = FlatGrid{a.view.numel / VEC, a.view.numel, VEC};
    return p;
  }
  int64_t blocks() const { return grid.blocks(); }
  int threads() const { return kBlockThreads; }
  int64_t shared_elems() const { return 0; }
  std::string name() const {
    return std::string("add_act_forward<") + dtype_name<T>() + ",vec" + std::to_string(VEC) + "," + mode_name(mode) +
           ">";
  }

  C10_HOST_DEVICE void element(int64_t i) const {
    acc s[1], b[1];
    pack_params<acc, 1>(mode == ChannelMode::kNone ? mode : ChannelMode::kPerPack, scale, bias, i, view, s, b);
    out[i] = static_cast<T>(activate(act, preactivation(static_cast<acc>(x[i]), s[0], b[0], static_cast<acc>(r[i]))));
  }

  C10_HOST_DEVICE void phase(int, int64_t block, int thread, int threads, Shared, State&) const {
    acc xv[kIlp][VEC], rv[kIlp][VEC];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t j = grid.pack(block, thread, threads, u);
      if (j < grid.packs) {
        load_acc<T, VEC>(x, j, xv[u]);
        load_acc<T, VEC>(r, j, rv[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t j = grid.pack(block, thread, threads, u);
      if (j < grid.packs) {
        acc s[VEC], b[VEC], y[VEC];
        pack_params<acc, VEC>(mode, scale, bias, j * VEC, view, s, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) y[k] = activate(act, preactivation(xv[u][k], s[k], b[k], rv[u][k]));
        store_acc<T, VEC>(out, j, y);
      }
    }
    const int64_t i = grid.tail(block, thread);
    if (i < grid.numel) element(i);
  }
};

// The backward without per-channel sums of add_act, and of any one-input epilogue whose gradient goes to
// grad_residual (the activation mask of ops that apply an activation outside their kernels): grad_residual = g,
// grad_x = g * scale, g = act'(z) * grad_out, z = x * scale + bias (+ residual).
template <typename T, int VEC>
struct AddActBackward {
  using acc = acc_t<T>;
  using State = NoState;
  static constexpr int kPhases = 1;
  const T* gy;
  const T* x;  // null with activation "none"
  const T* r;  // null: no residual
  T* gx;       // null: not written
  T* gr;       // null: not written
  const acc* scale;
  const acc* bias;
  ChannelView view;
  ActivationSpec act;
  ChannelMode mode;
  FlatGrid grid;
  bool gx_scaled;

  static AddActBackward make(const EpilogueBackwardArgs& a) {
    AddActBackward p{static_cast<const T*>(a.grad_out),
                     a.x.count > 0 ? static_cast<const T*>(a.x.data[0]) : nullptr,
                     static_cast<const T*>(a.residual),
                     a.grad_x.count > 0 ? static_cast<T*>(a.grad_x.data[0]) : nullptr,
                     static_cast<T*>(a.grad_residual),
                     static_cast<const acc*>(a.scale),
                     static_cast<const acc*>(a.bias),
                     a.view,
                     a.act,
                     pick_channel_mode<T, VEC>(a.view, a.scale, a.bias),
                     {},
                     a.grad_x_scaled};
    if (a.act.kind == Activation::kNone) p.x = nullptr, p.r = nullptr;  // not read
    p.grid = FlatGrid{a.view.numel / VEC, a.view.numel, VEC};
    return p;
  }
  int64_t blocks() const { return grid.blocks(); }
  int threads() const { return kBlockThreads; }
  int64_t shared_elems() const { return 0; }
  std::string name() const {
    return std::string("add_act_backward<") + dtype_name<T>() + ",vec" + std::to_string(VEC) + "," +
           mode_name(mode) + ">";
  }

  template <int W>
  C10_HOST_DEVICE void run(int64_t j, ChannelMode m, const acc (&gv)[W], const acc (&xv)[W], const acc (&rv)[W],
                           int64_t first) const {
    acc s[W], b[W], g[W], gxv[W];
    pack_params<acc, W>(m, scale, bias, first, view, s, b);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      g[k] = element_grad(act, gv[k], xv[k], r != nullptr ? &rv[k] : nullptr, s[k], b[k]);
      gxv[k] = gx_scaled ? g[k] * s[k] : g[k];
    }
    if (gr != nullptr) store_acc<T, W>(gr, j, g);
    if (gx != nullptr) store_acc<T, W>(gx, j, gxv);
  }

  C10_HOST_DEVICE void phase(int, int64_t block, int thread, int threads, Shared, State&) const {
    acc gv[kIlp][VEC], xv[kIlp][VEC], rv[kIlp][VEC];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t j = grid.pack(block, thread, threads, u);
      if (j < grid.packs) {
        load_acc<T, VEC>(gy, j, gv[u]);
        load_acc<T, VEC>(x, j, xv[u]);
        load_acc<T, VEC>(r, j, rv[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t j = grid.pack(block, thread, threads, u);
      if (j < grid.packs) run<VEC>(j, mode, gv[u], xv[u], rv[u], j * VEC);
    }
    const int64_t i = grid.tail(block, thread);
    if (i < grid.numel) {
      acc g1[1], x1[1], r1[1];
      load_acc<T, 1>(gy, i, g1);
      load_acc<T, 1>(x, i, x1);
      load_acc<T, 1>(r, i, r1);
      run<1>(i, mode == ChannelMode::kNone ? mode : ChannelMode::kPerPack, g1, x1, r1, i);
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Branch space: the packs of branch 0, then those of branch 1, ... Each branch's [N, C_i, ...] data lands in one
// contiguous segment per outer index of the output (channels-first: one per sample, C_i * run long; channels-last:
// one per row, C_i long).
struct BranchPacks {
  int64_t start[kMaxBranches + 1] = {};  // packs of branch i: [start[i], start[i + 1])
  int count = 0;
  C10_HOST_DEVICE int64_t total() const { return start[count]; }
};

inline BranchPacks branch_packs(const BranchTable& t, const ChannelView& v, int vec) {
  BranchPacks packs;
  packs.count = t.count;
  const int64_t outer = v.channels > 0 ? v.numel / (v.channels * v.run) : 0;
  for (int i = 0; i < t.count; ++i) {
    packs.start[i + 1] = packs.start[i] + outer * (t.channel_begin[i + 1] - t.channel_begin[i]) * v.run / vec;
  }
  return packs;
}

// Output offset of element e of branch i.
C10_HOST_DEVICE inline int64_t output_offset(const BranchTable& t, int i, int64_t e, const ChannelView& v) {
  const int64_t begin = t.channel_begin[i];
  const int64_t segment = (t.channel_begin[i + 1] - begin) * v.run;
  const int64_t outer = quotient(e, segment);
  return outer * v.channels * v.run + begin * v.run + (e - outer * segment);
}

// 16-byte packs need every pointer aligned and every branch segment (C_i * run) a multiple of the width.
template <typename T>
int branch_vec(const BranchTable& t, const ChannelView& v, std::initializer_list<const void*> others) {
  constexpr int kWide = 16 / sizeof(T);
  bool wide = aligned16(others);
  for (int i = 0; i < t.count; ++i) {
    wide = wide && aligned16({t.data[i]}) && ((t.channel_begin[i + 1] - t.channel_begin[i]) * v.run) % kWide == 0;
  }
  return wide ? kWide : 1;
}

// out = act(cat(inputs, 1) * scale + bias).
template <typename T, int VEC>
struct BranchConcatForward {
  using acc = acc_t<T>;
  using State = NoState;
  static constexpr int kPhases = 1;
  BranchTable in;
  BranchPacks packs;
  T* out;
  const acc* scale;
  const acc* bias;
  ChannelView view;
  ActivationSpec act;
  ChannelMode mode;

  static BranchConcatForward make(const BranchConcatForwardArgs& a) {
    return {a.inputs, branch_packs(a.inputs, a.view, VEC), static_cast<T*>(a.out), static_cast<const acc*>(a.scale),
            static_cast<const acc*>(a.bias), a.view, a.act, pick_channel_mode<T, VEC>(a.view, a.scale, a.bias)};
  }
  int64_t blocks() const { return std::max<int64_t>(1, ceil_div(packs.total(), int64_t(kBlockThreads) * kIlp)); }
  int threads() const { return kBlockThreads; }
  int64_t shared_elems() const { return 0; }
  std::string name() const {
    return std::string("branch_concat_forward<") + dtype_name<T>() + ",vec" + std::to_string(VEC) + "," +
           mode_name(mode) + ">";
  }

  C10_HOST_DEVICE void phase(int, int64_t block, int thread, int threads, Shared, State&) const {
    const int64_t total = packs.total();
    const int64_t first = block * threads * kIlp + thread;
    acc xv[kIlp][VEC];
    int64_t o[kIlp];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t t = first + static_cast<int64_t>(u) * threads;
      if (t < total) {
        const int i = last_at_or_below(packs.start, in.count, t);
        const int64_t j = t - packs.start[i];
        load_acc<T, VEC>(static_cast<const T*>(in.data[i]), j, xv[u]);
        o[u] = output_offset(in, i, j * VEC, view);
      }
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      if (first + static_cast<int64_t>(u) * threads < total) {
        acc s[VEC], b[VEC], y[VEC];
        pack_params<acc, VEC>(mode, scale, bias, o[u], view, s, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) y[k] = activate(act, preactivation(xv[u][k], s[k], b[k]));
        store_acc<T, VEC>(out, o[u] / VEC, y);
      }
    }
  }
};

// grad_inputs[i] = act'(z) * grad_out * scale, z recomputed from inputs[i], at the output position of each branch
// element.
template <typename T, int VEC>
struct BranchConcatBackward {
  using acc = acc_t<T>;
  using State = NoState;
  static constexpr int kPhases = 1;
  const T* gy;
  BranchTable x;   // count 0 with activation "none"
  BranchTable gx;  // the layout
  BranchPacks packs;
  const acc* scale;
  const acc* bias;
  ChannelView view;
  ActivationSpec act;
  ChannelMode mode;
  bool gx_scaled;

  static BranchConcatBackward make(const EpilogueBackwardArgs& a) {
    BranchConcatBackward p{static_cast<const T*>(a.grad_out), a.x, a.grad_x, branch_packs(a.grad_x, a.view, VEC),
                           static_cast<const acc*>(a.scale), static_cast<const acc*>(a.bias), a.view, a.act,
                           pick_channel_mode<T, VEC>(a.view, a.scale, a.bias), a.grad_x_scaled};
    if (a.act.kind == Activation::kNone) p.x.count = 0;  // not read
    return p;
  }
  int64_t blocks() const { return std::max<int64_t>(1, ceil_div(packs.total(), int64_t(kBlockThreads) * kIlp)); }
  int threads() const { return kBlockThreads; }
  int64_t shared_elems() const { return 0; }
  std::string name() const {
    return std::string("branch_concat_backward<") + dtype_name<T>() + ",vec" + std::to_string(VEC) + "," +
           mode_name(mode) + ">";
  }

  C10_HOST_DEVICE void phase(int, int64_t block, int thread, int threads, Shared, State&) const {
    const int64_t total = packs.total();
    const int64_t first = block * threads * kIlp + thread;
    acc gv[kIlp][VEC], xv[kIlp][VEC];
    int64_t o[kIlp], j[kIlp];
    int br[kIlp];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t t = first + static_cast<int64_t>(u) * threads;
      if (t < total) {
        br[u] = last_at_or_below(packs.start, gx.count, t);
        j[u] = t - packs.start[br[u]];
        o[u] = output_offset(gx, br[u], j[u] * VEC, view);
        load_acc<T, VEC>(gy, o[u] / VEC, gv[u]);
        load_acc<T, VEC>(x.count > 0 ? static_cast<const T*>(x.data[br[u]]) : nullptr, j[u], xv[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      if (first + static_cast<int64_t>(u) * threads < total) {
        acc s[VEC], b[VEC], g[VEC];
        pack_params<acc, VEC>(mode, scale, bias, o[u], view, s, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          g[k] = element_grad(act, gv[u][k], xv[u][k], static_cast<const acc*>(nullptr), s[k], b[k]);
          if (gx_scaled) g[k] *= s[k];
        }
        store_acc<T, VEC>(static_cast<T*>(gx.data[br[u]]), j[u], g);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// The backward with per-channel sums. Both layouts write, per block, one partial sum of g (and of g * x) per
// channel into a [2, partials, C] workspace; ReduceFinish adds the partials of each channel in order.

// How many partial sums per channel: enough blocks to fill a large GPU (kTargetBlocks), from the shape alone.
constexpr int64_t kTargetBlocks = 1056;

// A block's per-thread sums are reduced in shared memory in a fixed order, in place of warp shuffles (which a
// phase-by-phase emulator cannot run): phase 1 folds the `threads` slots into kLanes (slot t adds slots t, t + 32,
// ... in order), phase 2 has one thread add those kLanes in order.
struct BlockFold {
  static constexpr int kLanes = 32;
};

template <typename T, int VEC>
struct PlanesReduce {
  using acc = acc_t<T>;
  using SharedScalar = acc;
  static constexpr int kPhases = 3;
  using State = NoState;
  const T* gy;
  const T* r;
  T* gr;
  const acc* scale;
  const acc* bias;
  BranchTable branches;  // the channel layout of x / grad_x
  BranchTable x;         // count 0: not read
  BranchTable gx;        // count 0: not written
  acc* partial_g;        // [partials, C]
  acc* partial_gx;       // [partials, C]; null: no grad_scale
  acc* grad_bias;
  acc* grad_scale;
  ChannelView view;
  ActivationSpec act;
  int64_t partials;
  bool gx_scaled;

  static int64_t partials_for(const ChannelView& v, int vec) {
    const int64_t per_channel_packs = (v.numel / v.channels) / vec;
    const int64_t p_max = std::max<int64_t>(1, ceil_div(per_channel_packs, kBlockThreads));
    return std::clamp<int64_t>(ceil_div(kTargetBlocks, v.channels), 1, p_max);
  }
  static PlanesReduce make(const EpilogueBackwardArgs& a, void* workspace) {
    PlanesReduce p{static_cast<const T*>(a.grad_out),
                   static_cast<const T*>(a.residual),
                   static_cast<T*>(a.grad_residual),
                   static_cast<const acc*>(a.scale),
                   static_cast<const acc*>(a.bias),
                   a.layout(),
                   a.x,
                   a.grad_x,
                   nullptr,
                   nullptr,
                   static_cast<acc*>(a.grad_bias),
                   static_cast<acc*>(a.grad_scale),
                   a.view,
                   a.act,
                   partials_for(a.view, VEC),
                   a.grad_x_scaled};
    p.partial_g = static_cast<acc*>(workspace);
    p.partial_gx = a.grad_scale != nullptr ? p.partial_g + p.partials * a.view.channels : nullptr;
    if (a.act.kind == Activation::kNone) p.r = nullptr;
    return p;
  }
  int64_t blocks() const { return partials * view.channels; }
  int threads() const { return kBlockThreads; }
  int64_t shared_elems() const { return 2 * kBlockThreads + 2 * BlockFold::kLanes; }
  std::string name() const {
    return std::string("planes_reduce<") + dtype_name<T>() + ",vec" + std::to_string(VEC) + ">";
  }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int threads, SharedArray<acc> s, State&) const {
    const int64_t C = view.channels;
    const int64_t c = block % C, p = block / C;
    const bool with_gx = partial_gx != nullptr;
    if (k == 0) {
      const int i = branch_of(branches, c);
      const int64_t ci = branches.channel_begin[i + 1] - branches.channel_begin[i];
      const int64_t cl = c - branches.channel_begin[i];
      const T* xi = x.count > 0 ? static_cast<const T*>(x.data[i]) : nullptr;
      T* gxi = gx.count > 0 ? static_cast<T*>(gx.data[i]) : nullptr;
      const int64_t packs_per_plane = view.run / VEC;
      const int64_t total = quotient(view.numel, view.run * C) * packs_per_plane;
      const acc s0 = scale ? scale[c] : acc(1), b0 = bias ? bias[c] : acc(0);
      acc sum_g = 0, sum_gx = 0;
      for (int64_t q = p * threads + thread; q < total; q += partials * threads) {
        const int64_t n = quotient(q, packs_per_plane);
        const int64_t w = q - n * packs_per_plane;
        const int64_t j = (n * C + c) * packs_per_plane + w;     // in the output
        const int64_t jb = (n * ci + cl) * packs_per_plane + w;  // in branch i
        acc gv[VEC], xv[VEC], rv[VEC], g[VEC], gxv[VEC];
        load_acc<T, VEC>(gy, j, gv);
        load_acc<T, VEC>(xi, jb, xv);
        load_acc<T, VEC>(r, j, rv);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          g[e] = element_grad(act, gv[e], xv[e], r != nullptr ? &rv[e] : nullptr, s0, b0);
          gxv[e] = gx_scaled ? g[e] * s0 : g[e];
          sum_g += g[e];
          sum_gx += g[e] * xv[e];
        }
        if (gr != nullptr) store_acc<T, VEC>(gr, j, g);
        if (gxi != nullptr) store_acc<T, VEC>(gxi, jb, gxv);
      }
      s.store(thread, sum_g);
      if (with_gx) s.store(threads + thread, sum_gx);
    } else if (k == 1) {
      if (thread >= BlockFold::kLanes) return;
      acc g = 0, gxs = 0;
      for (int t = thread; t < threads; t += BlockFold::kLanes) {
        g += s.load(t);
        if (with_gx) gxs += s.load(threads + t);
      }
      s.store(2 * threads + thread, g);
      if (with_gx) s.store(2 * threads + BlockFold::kLanes + thread, gxs);
    } else {
      if (thread != 0) return;
      acc g = 0, gxs = 0;
      for (int t = 0; t < BlockFold::kLanes; ++t) {
        g += s.load(2 * threads + t);
        if (with_gx) gxs += s.load(2 * threads + BlockFold::kLanes + t);
      }
      partial_g[p * C + c] = g;
      if (with_gx) partial_gx[p * C + c] = gxs;
    }
  }
};

// Channels-last rows ([rows, C], run == 1): thread t is (tx = t % tx_dim: a pack of VEC channels, ty = t / tx_dim: a
// row); block b is (bx = b % grid_x, p = b / grid_x): channel packs bx * tx_dim + tx over rows p * ty_dim + ty,
// strided by partials * ty_dim. Every branch's channel count is a multiple of VEC, so a pack lies in one branch.
template <typename T, int VEC>
struct RowsReduce {
  using acc = acc_t<T>;
  using SharedScalar = acc;
  static constexpr int kPhases = 3, kFold = 8;  // phase 1 folds the ty_dim rows of sums into kFold
  using State = NoState;
  const T* gy;
  const T* r;
  T* gr;
  const acc* scale;
  const acc* bias;
  BranchTable branches;
  BranchTable x;
  BranchTable gx;
  acc* partial_g;
  acc* partial_gx;
  ChannelView view;
  ActivationSpec act;
  bool gx_scaled = true;
  int tx_dim = 1, ty_dim = kBlockThreads;
  int64_t grid_x = 1, partials = 1;

  static RowsReduce make(const EpilogueBackwardArgs& a, void* workspace) {
    RowsReduce p{static_cast<const T*>(a.grad_out), static_cast<const T*>(a.residual),
                 static_cast<T*>(a.grad_residual), static_cast<const acc*>(a.scale), static_cast<const acc*>(a.bias),
                 a.layout(), a.x, a.grad_x, nullptr, nullptr, a.view, a.act, a.grad_x_scaled};
    const int64_t groups = a.view.channels / VEC;
    while (p.tx_dim < groups && p.tx_dim < 32) p.tx_dim *= 2;
    p.ty_dim = kBlockThreads / p.tx_dim;
    p.grid_x = ceil_div(groups, p.tx_dim);
    p.partials = partials_for(a.view, VEC);
    p.partial_g = static_cast<acc*>(workspace);
    p.partial_gx = a.grad_scale != nullptr ? p.partial_g + p.partials * a.view.channels : nullptr;
    if (a.act.kind == Activation::kNone) p.r = nullptr;
    return p;
  }
  static int64_t partials_for(const ChannelView& v, int vec) {
    const int64_t groups = v.channels / vec;
    int tx = 1;
    while (tx < groups && tx < 32) tx *= 2;
    const int ty = kBlockThreads / tx;
    const int64_t rows = v.numel / v.channels;
    const int64_t p_max = std::max<int64_t>(1, ceil_div(rows, ty));
    return std::clamp<int64_t>(ceil_div(kTargetBlocks, ceil_div(groups, tx)), 1, p_max);
  }
  int64_t blocks() const { return grid_x * partials; }
  int threads() const { return kBlockThreads; }
  int64_t shared_elems() const { return 2 * (kBlockThreads + kFold * tx_dim) * VEC; }
  std::string name() const {
    return std::string("rows_reduce<") + dtype_name<T>() + ",vec" + std::to_string(VEC) + ">";
  }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int threads, SharedArray<acc> s, State&) const {
    const int64_t C = view.channels;
    const int64_t groups = C / VEC;
    const int tx = thread % tx_dim, ty = thread / tx_dim;
    const int64_t bx = block % grid_x, p = block / grid_x;
    const int64_t group = bx * tx_dim + tx;
    const bool with_gx = partial_gx != nullptr;
    const int64_t fold_base = 2 * static_cast<int64_t>(threads) * VEC;  // second region: [2][kFold][tx_dim][VEC]
    if (k == 0) {
      acc sum_g[VEC], sum_gx[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) sum_g[e] = 0, sum_gx[e] = 0;
      if (group < groups) {
        const int i = branch_of(branches, group * VEC);
        const int64_t branch_groups = (branches.channel_begin[i + 1] - branches.channel_begin[i]) / VEC;
        const int64_t group_in_branch = group - branches.channel_begin[i] / VEC;
        const T* xi = x.count > 0 ? static_cast<const T*>(x.data[i]) : nullptr;
        T* gxi = gx.count > 0 ? static_cast<T*>(gx.data[i]) : nullptr;
        acc sv[VEC], bv[VEC];
        pack_params<acc, VEC>(scale || bias ? ChannelMode::kPerElement : ChannelMode::kNone, scale, bias,
                              group * VEC, view, sv, bv);
        const int64_t rows = view.numel / C;
        for (int64_t row = p * ty_dim + ty; row < rows; row += partials * ty_dim) {
          const int64_t j = row * groups + group;                     // in the output
          const int64_t jb = row * branch_groups + group_in_branch;  // in branch i
          acc gv[VEC], xv[VEC], rv[VEC], g[VEC], gxv[VEC];
          load_acc<T, VEC>(gy, j, gv);
          load_acc<T, VEC>(xi, jb, xv);
          load_acc<T, VEC>(r, j, rv);
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            g[e] = element_grad(act, gv[e], xv[e], r != nullptr ? &rv[e] : nullptr, sv[e], bv[e]);
            gxv[e] = gx_scaled ? g[e] * sv[e] : g[e];
            sum_g[e] += g[e];
            sum_gx[e] += g[e] * xv[e];
          }
          if (gr != nullptr) store_acc<T, VEC>(gr, j, g);
          if (gxi != nullptr) store_acc<T, VEC>(gxi, jb, gxv);
        }
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        s.store(static_cast<int64_t>(thread) * VEC + e, sum_g[e]);
        if (with_gx) s.store((static_cast<int64_t>(threads) + thread) * VEC + e, sum_gx[e]);
      }
    } else if (k == 1) {  // rows ty, ty + kFold, ... folded into slot (ty, tx) of the second region
      if (ty >= kFold) return;
      for (int e = 0; e < VEC; ++e) {
        acc g = 0, gxs = 0;
        for (int t = ty; t < ty_dim; t += kFold) {
          g += s.load((static_cast<int64_t>(t) * tx_dim + tx) * VEC + e);
          if (with_gx) gxs += s.load((static_cast<int64_t>(threads) + t * tx_dim + tx) * VEC + e);
        }
        s.store(fold_base + (static_cast<int64_t>(ty) * tx_dim + tx) * VEC + e, g);
        if (with_gx) s.store(fold_base + (static_cast<int64_t>(kFold + ty) * tx_dim + tx) * VEC + e, gxs);
      }
    } else {
      if (ty != 0 || group >= groups) return;
      for (int e = 0; e < VEC; ++e) {
        acc g = 0, gxs = 0;
        for (int f = 0; f < kFold; ++f) {
          g += s.load(fold_base + (static_cast<int64_t>(f) * tx_dim + tx) * VEC + e);
          if (with_gx) gxs += s.load(fold_base + (static_cast<int64_t>(kFold + f) * tx_dim + tx) * VEC + e);
        }
        partial_g[p * C + group * VEC + e] = g;
        if (with_gx) partial_gx[p * C + group * VEC + e] = gxs;
      }
    }
  }
};

// grad_bias[c] = sum_p partial_g[p, c]; grad_scale[c] = sum_p partial_gx[p, c], in order of p.
template <typename acc>
struct ReduceFinish {
  using State = NoState;
  static constexpr int kPhases = 1;
  const acc* partial_g;
  const acc* partial_gx;  // null: no grad_scale
  acc* grad_bias;
  acc* grad_scale;
  int64_t partials, channels;
  int64_t blocks() const { return ceil_div(channels, kBlockThreads); }
  int threads() const { return kBlockThreads; }
  int64_t shared_elems() const { return 0; }
  std::string name() const { return std::string("reduce_finish<") + (sizeof(acc) == 8 ? "double" : "float") + ">"; }
  C10_HOST_DEVICE void phase(int, int64_t block, int thread, int threads, Shared, State&) const {
    const int64_t c = block * threads + thread;
    if (c >= channels) return;
    acc g = 0, gxs = 0;
    for (int64_t p = 0; p < partials; ++p) {
      g += partial_g[p * channels + c];
      if (partial_gx != nullptr) gxs += partial_gx[p * channels + c];
    }
    if (grad_bias != nullptr) grad_bias[c] = g;
    if (grad_scale != nullptr) grad_scale[c] = gxs;
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Program choice, shared by the CUDA launcher and the emulator.


// Calls f(integral_constant<int, VEC>) with VEC the 16-byte width of T when vec says so, else 1.
template <typename T, typename F>
void with_vec(int vec, F&& f) {
  constexpr int kWide = 16 / sizeof(T);
  if (vec == kWide) {
    f(std::integral_constant<int, kWide>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

template <typename F>
void with_add_act_forward_program(const AddActForwardArgs& a, F&& f) {
  dispatch_floating(a.dtype, "fastblocks epilogue", [&](auto zero) {
    using T = decltype(zero);
    with_vec<T>(pick_vec<T>({a.x, a.residual, a.out}),
                [&](auto vec) { f(AddActForward<T, decltype(vec)::value>::make(a)); });
  });
}

template <typename F>
void with_branch_concat_forward_program(const BranchConcatForwardArgs& a, F&& f) {
  dispatch_floating(a.dtype, "fastblocks epilogue", [&](auto zero) {
    using T = decltype(zero);
    with_vec<T>(branch_vec<T>(a.inputs, a.view, {a.out}),
                [&](auto vec) { f(BranchConcatForward<T, decltype(vec)::value>::make(a)); });
  });
}

// Elements of workspace (accumulation dtype) the reducing backward needs: 2 * partials * channels; 0 when the
// backward has no per-channel sums.
inline int64_t reduce_partials(const EpilogueBackwardArgs& a, int vec) {
  return a.view.run == 1 ? RowsReduce<float, 1>::partials_for(a.view, vec) : PlanesReduce<float, 1>::partials_for(a.view, vec);
}

// The reducing backward's pack width: 16-byte packs when every tensor is aligned and a pack never straddles a
// branch (channels-last) or a plane (channels-first).
template <typename T>
int backward_vec(const EpilogueBackwardArgs& a) {
  constexpr int kWide = 16 / sizeof(T);
  const BranchTable branches = a.layout();
  bool wide = aligned16({a.grad_out, a.residual, a.grad_residual});
  for (int i = 0; i < branches.count; ++i) {
    wide = wide && aligned16({a.x.count ? a.x.data[i] : nullptr, a.grad_x.count ? a.grad_x.data[i] : nullptr});
    // a pack never straddles a branch (channels-last) or a plane (channels-first)
    if (a.view.run == 1) wide = wide && (branches.channel_begin[i + 1] - branches.channel_begin[i]) % kWide == 0;
  }
  if (a.view.run > 1) wide = wide && a.view.run % kWide == 0;
  return wide ? kWide : 1;
}

// The backward: the elementwise program, or the reducing program and ReduceFinish (f called twice). The
// workspace holds 2 * partials * channels values of the accumulation type (epilogue_backward_workspace).
inline int64_t epilogue_backward_workspace(const EpilogueBackwardArgs& a) {
  if (!a.reduces()) return 0;
  int64_t elems = 0;
  dispatch_floating(a.dtype, "fastblocks epilogue", [&](auto zero) {
    using T = decltype(zero);
    elems = 2 * reduce_partials(a, backward_vec<T>(a)) * a.view.channels;
  });
  return elems;
}

template <typename F>
void with_epilogue_backward_programs(const EpilogueBackwardArgs& a, void* workspace, F&& f) {
  dispatch_floating(a.dtype, "fastblocks epilogue", [&](auto zero) {
    using T = decltype(zero);
    using acc = acc_t<T>;
    if (!a.reduces()) {
      // One branch (add_act, a one-input branch_concat, an activation mask): the flat walk, whose packs may cross
      // channels (alignment is all it needs); several: branch space, each branch a whole number of packs.
      if (a.grad_x.count <= 1) {
        const void* x0 = a.x.count > 0 ? a.x.data[0] : nullptr;
        const void* gx0 = a.grad_x.count > 0 ? a.grad_x.data[0] : nullptr;
        with_vec<T>(pick_vec<T>({a.grad_out, x0, a.residual, gx0, a.grad_residual}),
                    [&](auto vec) { f(AddActBackward<T, decltype(vec)::value>::make(a)); });
      } else {
        with_vec<T>(branch_vec<T>(a.grad_x, a.view, {a.grad_out}), [&](auto vec) {
          bool aligned = true;
          for (int i = 0; i < a.x.count; ++i) aligned = aligned && aligned16({a.x.data[i]});
          if (decltype(vec)::value > 1 && !aligned) {
            f(BranchConcatBackward<T, 1>::make(a));
          } else {
            f(BranchConcatBackward<T, decltype(vec)::value>::make(a));
          }
        });
      }
      return;
    }
    with_vec<T>(backward_vec<T>(a), [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      int64_t partials = 0;
      if (a.view.run == 1) {
        const auto p = RowsReduce<T, VEC>::make(a, workspace);
        partials = p.partials;
        f(p);
      } else {
        const auto p = PlanesReduce<T, VEC>::make(a, workspace);
        partials = p.partials;
        f(p);
      }
      const auto* partial_g = static_cast<const acc*>(workspace);
      f(ReduceFinish<acc>{partial_g, a.grad_scale != nullptr ? partial_g + partials * a.view.channels : nullptr,
                          static_cast<acc*>(a.grad_bias), static_cast<acc*>(a.grad_scale), partials,
                          a.view.channels});
    });
  });
}

}  // namespace fastblocks::epilogue_programs
