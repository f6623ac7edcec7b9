// CPU forward of fastblocks::add_relu: out = act(x * scale[c] + bias[c] + residual) (backward: the shared
// epilogue_backward in cpu/epilogue_kernel.h).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/epilogue_args.h"
#include "common/switch.h"
#include "cpu/epilogue_kernel.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace add_relu_detail {

using epilogue_detail::forward_run;

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
      forward_run<scalar_t, A, false, true>(x + begin, r + begin, out + begin, end - begin, nullptr, nullptr, 1, 0);
    });
  } else if (v.run == 1) {  // rows
    const int64_t C = v.channels;
    std::vector<acc> ones, zeros;
    if (scale == nullptr) scale = (ones.assign(C, acc(1)), ones.data());
    if (bias == nullptr) bias = (zeros.assign(C, acc(0)), zeros.data());
    at::parallel_for(0, v.numel / C, std::max<int64_t>(1, kGrainElements / C), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t o = row * C;
        forward_run<scalar_t, A, true, true>(x + o, r + o, out + o, C, scale, bias, 1, 0);
      }
    });
  } else {  // planes
    const int64_t run = v.run;
    at::parallel_for(0, v.numel / run, std::max<int64_t>(1, kGrainElements / run), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % v.channels;
        const int64_t o = plane * run;
        forward_run<scalar_t, A, false, true>(x + o, r + o, out + o, run, nullptr, nullptr, scale ? scale[c] : acc(1),
                                              bias ? bias[c] : acc(0));
      }
    });
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

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
