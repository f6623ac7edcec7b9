// Plain-data arguments of the add_relu kernels (CPU and CUDA alike). Every tensor pointer addresses a dense
// tensor in the one memory order described by `view`; the per-channel arrays (scale, bias, grad_scale,
// grad_bias) hold `channels` values of the accumulation type (double for double data, else float).
#pragma once

#include <c10/core/ScalarType.h>

#include "common/channel_view.h"

namespace fastblocks {

struct AddReluForwardArgs {
  const void* x = nullptr;
  const void* residual = nullptr;
  void* out = nullptr;
  const void* scale = nullptr;  // null: 1
  const void* bias = nullptr;   // null: 0
  ChannelView view;
  c10::ScalarType dtype = c10::ScalarType::Float;
  bool relu = true;
};

struct AddReluBackwardArgs {
  const void* grad_out = nullptr;
  const void* out = nullptr;    // the forward's output: its sign is the ReLU mask
  const void* x = nullptr;      // needed only for grad_scale
  const void* scale = nullptr;  // null: 1
  void* grad_x = nullptr;       // null when scale is null (grad_x then equals grad_residual)
  void* grad_residual = nullptr;
  void* grad_scale = nullptr;   // null: not wanted
  void* grad_bias = nullptr;    // null: not wanted
  ChannelView view;
  c10::ScalarType dtype = c10::ScalarType::Float;
  bool relu = true;
};

}  // namespace fastblocks
