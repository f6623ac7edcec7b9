// Plain-data arguments of the epilogue kernels (CPU and CUDA alike). Every tensor pointer addresses a dense
// tensor in the one memory order described by `view` (the output's); per-channel arrays (scale, bias,
// grad_scale, grad_bias) hold view.channels values of the accumulation type (double for double data, else float).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "common/activation.h"
#include "common/channel_view.h"

namespace fastblocks {

// Inputs of one branch_concat: the most a DenseNet layer concatenates (densenet201's third block: 48 inputs) with
// room; the backward program holds two tables of this size as a kernel argument (under the 4 KB limit).
constexpr int kMaxBranches = 64;

// Tensors holding consecutive channel ranges of one logical [N, C, ...] tensor: branch i holds channels
// [channel_begin[i], channel_begin[i + 1]), as a dense [N, C_i, ...] tensor in the view's memory order.
// A plain tensor is one branch; count == 0 means "absent". Inputs are stored through the same (non-const)
// pointer type and only read.
struct BranchTable {
  int count = 0;
  void* data[kMaxBranches] = {};
  int64_t channel_begin[kMaxBranches + 1] = {};
};

// out = act(x * scale[c] + bias[c] + residual), all four tensors in the output's layout.
struct AddActForwardArgs {
  const void* x = nullptr;
  const void* residual = nullptr;
  void* out = nullptr;
  const void* scale = nullptr;  // null: 1
  const void* bias = nullptr;   // null: 0
  ChannelView view;
  c10::ScalarType dtype = c10::ScalarType::Float;
  ActivationSpec act;
};

// out = act(cat(inputs, 1) * scale[c] + bias[c]); view describes out.
struct BranchConcatForwardArgs {
  BranchTable inputs;
  void* out = nullptr;
  const void* scale = nullptr;  // null: 1
  const void* bias = nullptr;   // null: 0
  ChannelView view;
  c10::ScalarType dtype = c10::ScalarType::Float;
  ActivationSpec act;
};

// The backward of an epilogue y = act(z), z = x * scale[c] + bias[c] (+ residual). The pre-activation z is
// recomputed from the forward's inputs with the forward's arithmetic (no saved output: an output handed to the
// model may be changed in place by what follows), and g = act'(z) * grad_out:
//   grad_residual = g            (output layout; null: not written)
//   grad_x        = g * scale    (per branch of x; scale null means 1; count 0: not written)
//   grad_bias[c]  = sum g        (null: not wanted)
//   grad_scale[c] = sum g * x    (reads x; null: not wanted)
// x (and residual, for add_act) are read when the activation is not "none" (for z) or for grad_scale.
struct EpilogueBackwardArgs {
  const void* grad_out = nullptr;
  const void* scale = nullptr;     // null: 1
  const void* bias = nullptr;      // null: 0
  BranchTable x;                   // count 0: not given (activation "none" without grad_scale)
  const void* residual = nullptr;  // add_act's second input, read with x
  BranchTable grad_x;              // same branches as x when both are present
  void* grad_residual = nullptr;
  void* grad_scale = nullptr;
  void* grad_bias = nullptr;
  ChannelView view;
  c10::ScalarType dtype = c10::ScalarType::Float;
  ActivationSpec act;
  // grad_x = g * scale (the inputs' gradient); false: g itself, the gradient at the pre-activation (what a
  // BatchNorm tail hands to ATen's batch_norm backward).
  bool grad_x_scaled = true;

  bool reduces() const { return grad_scale != nullptr || grad_bias != nullptr; }
  // z is needed: every activation but "none".
  bool needs_preactivation() const { return act.kind != Activation::kNone; }
  // The branch layout (of grad_x, else x; one branch over all channels when neither is present).
  BranchTable layout() const {
    if (grad_x.count > 0) return grad_x;
    if (x.count > 0) return x;
    BranchTable single;
    single.count = 1;
    single.channel_begin[1] = view.channels;
    return single;
  }
};

// The last k < count with begin[k] <= v (begin ascending, begin[0] <= v; 0 when count is 0): which branch holds
// channel v, or which branch a flat pack index v falls in. A binary search over the count in use: a DenseNet layer
// has up to kMaxBranches inputs, an Inception block 3-6, and a scan over all N slots would cost every element N steps.
// Among equal starts (empty branches) it finds the last, the one that holds v.
template <int N>
C10_HOST_DEVICE inline int last_at_or_below(const int64_t (&begin)[N], int count, int64_t v) {
  int lo = 0;
  int hi = (count < N ? count : N) - 1;
  while (lo < hi) {  // the answer is in [lo, hi]
    const int mid = (lo + hi + 1) / 2;
    if (v >= begin[mid]) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Branch holding channel c.
C10_HOST_DEVICE inline int branch_of(const BranchTable& t, int64_t c) {
  return last_at_or_below(t.channel_begin, t.count, c);
}

}  // namespace fastblocks
