// Memory orders the kernels understand, and the rule that picks one (mirrored by pyfastblocks/_layout.py,
// which the fake impls use, so fake and real outputs have the same strides).
#pragma once

#include <ATen/core/Tensor.h>

#include "common/channel_view.h"

namespace fastblocks {

enum class ChannelOrder : int8_t {
  kFirst,  // NCHW-contiguous
  kLast,   // channels innermost (channels_last for 4-D, channels_last_3d for 5-D, same idea for any rank >= 3)
};

// Channels-last when x has rank >= 3, more than one channel, and dim 1 has a smaller stride than every other
// non-trivial dim but 0 (when every spatial dim has size 1: than every spatial dim); else channels-first. For a
// dense x that is its own order, so no copy is made.
ChannelOrder preferred_channel_order(const at::Tensor& x);
bool is_dense_in_order(const at::Tensor& t, ChannelOrder order);
at::Tensor empty_in_order(at::IntArrayRef sizes, const at::TensorOptions& options, ChannelOrder order);
// t itself when it is already dense in `order`, else a copy that is.
at::Tensor to_order(const at::Tensor& t, ChannelOrder order);
ChannelView make_channel_view(at::IntArrayRef sizes, ChannelOrder order);

}  // namespace fastblocks
