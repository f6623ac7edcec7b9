// CPU forward of fastblocks::add_act: out = act(x * scale[c] + bias[c] + residual) (backward: the shared
// epilogue_backward in cpu/epilogue_kernel.h).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "common/epilogue_args.h"
#include "cpu/epilogue_kernel.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace add_act_detail {

using epilogue_detail::forward_run;

template <typename scalar_t, typename Act>
void forward_typed(const Act& act, const AddActForwardArgs& a) {
  using acc = acc_t<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto* r = static_cast<const scalar_t*>(a.residual);
  auto* out = static_cast<scalar_t*>(a.out);
  const auto* scale = static_cast<const acc*>(a.scale);
  const auto* bias = static_cast<const acc*>(a.bias);
  const acc slope = static_cast<acc>(a.act.negative_slope);
  const ChannelView& v = a.view;

  if (scale == nullptr && bias == nullptr) {  // flat
    at::parallel_for(0, v.numel, kGrainElements, [&](int64_t begin, int64_t end) {
      forward_run<scalar_t, Act, false, true>(act, x + begin, r + begin, out + begin, end - begin, nullptr, nullptr, 1, 0,
                                              slope);
    });
  } else if (v.run == 1) {  // rows
    const int64_t C = v.channels;
    const epilogue_detail::ChannelParams<acc> params(scale, bias, C);
    at::parallel_for(0, v.numel / C, std::max<int64_t>(1, kGrainElements / C), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t o = row * C;
        forward_run<scalar_t, Act, true, true>(act, x + o, r + o, out + o, C, params.scale, params.bias, 1, 0, slope);
      }
    });
  } else {  // planes
    const int64_t run = v.run;
    at::parallel_for(0, v.numel / run, std::max<int64_t>(1, kGrainElements / run), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % v.channels;
        const int64_t o = plane * run;
        forward_run<scalar_t, Act, false, true>(act, x + o, r + o, out + o, run, nullptr, nullptr,
                                                scale ? scale[c] : acc(1), bias ? bias[c] : acc(0), slope);
      }
    });
  }
}

}  // namespace add_act_detail

void add_act_forward(const AddActForwardArgs& a) {
  dispatch_floating(a.dtype, "fastblocks::add_act", [&](auto zero) {
    using scalar_t = decltype(zero);
    epilogue_detail::visit_kernel_activation<scalar_t>(
        a.act, [&](const auto& act) { add_act_detail::forward_typed<scalar_t>(act, a); });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
