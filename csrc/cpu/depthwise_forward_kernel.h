// CPU forward of fastblocks::depthwise_conv2d: the entry the capability translation units (cpu/depthwise_forward_*.cpp)
// compile, over the kernels of cpu/depthwise_kernel.h.
#pragma once

#include "cpu/depthwise_kernel.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {

void depthwise_forward(const DepthwiseForwardArgs& a) {
  if (depthwise_detail::has_fast_path(a.dtype, a.geo)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "depthwise_forward_cpu", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) depthwise_fast::forward<scalar_t>(a);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "depthwise_forward_cpu", [&] {
    FASTBLOCKS_BOOL_SWITCH(a.input_relu, INPUT_RELU, [&] { depthwise_detail::forward_typed<scalar_t, INPUT_RELU>(a); });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
