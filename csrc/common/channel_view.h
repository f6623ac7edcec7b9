// How a dense tensor's flat elements map to channels (dim 1). Plain data: shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

namespace fastblocks {

// Element i of a dense tensor belongs to channel (i / run) % channels.
//   channels-first (NCHW-contiguous): run = prod(sizes[2:]), the elements of one (n, c) plane;
//   channels-last (C innermost):      run = 1.
// A channels-first tensor with run == 1 ([N, C] or 1x1 spatial) has the channels-last memory order too.
struct ChannelView {
  int64_t numel = 0;
  int64_t channels = 1;
  int64_t run = 1;
};

}  // namespace fastblocks
