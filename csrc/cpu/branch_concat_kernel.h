// CPU forward of fastblocks::branch_concat: out = act(cat(inputs, 1) * scale[c] + bias[c]) in one pass, each
// input written straight into its channel range of the output (backward: cpu/epilogue_kernel.h).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "common/epilogue_args.h"
#include "cpu/epilogue_kernel.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace branch_concat_detail {

using epilogue_detail::forward_run;

template <typename scalar_t, typename Act>
void forward_typed(const Act& act, const BranchConcatForwardArgs& a) {
  using acc = acc_t<scalar_t>;
  auto* out = static_cast<scalar_t*>(a.out);
  const auto* scale = static_cast<const acc*>(a.scale);
  const auto* bias = static_cast<const acc*>(a.bias);
  const acc slope = static_cast<acc>(a.act.negative_slope);
  const ChannelView& v = a.view;
  const int64_t C = v.channels;
  const BranchTable& in = a.inputs;
  const int64_t* begin = in.channel_begin;

  if (v.run == 1) {  // rows: row r of the output is the rows r of the inputs, side by side
    const epilogue_detail::ChannelParams<acc> params(scale, bias, C);
    at::parallel_for(0, v.numel / C, std::max<int64_t>(1, kGrainElements / C), [&](int64_t lo, int64_t hi) {
      for (int64_t row = lo; row < hi; ++row) {
        for (int i = 0; i < in.count; ++i) {
          const int64_t ci = begin[i + 1] - begin[i];
          const auto* xi = static_cast<const scalar_t*>(in.data[i]) + row * ci;
          forward_run<scalar_t, Act, true, false>(act, xi, nullptr, out + row * C + begin[i], ci, params.scale + begin[i],
                                                  params.bias + begin[i], 1, 0, slope);
        }
      }
    });
    return;
  }
  // planes: output plane (n, c) is plane (n, c - begin[i]) of input i.
  const int64_t run = v.run;
  at::parallel_for(0, v.numel / run, std::max<int64_t>(1, kGrainElements / run), [&](int64_t lo, int64_t hi) {
    for (int64_t plane = lo; plane < hi; ++plane) {
      const int64_t n = plane / C, c = plane % C;
      const int i = branch_of(in, c);
      const int64_t ci = begin[i + 1] - begin[i];
      const auto* xi = static_cast<const scalar_t*>(in.data[i]) + (n * ci + (c - begin[i])) * run;
      forward_run<scalar_t, Act, false, false>(act, xi, nullptr, out + plane * run, run, nullptr, nullptr,
                                               scale ? scale[c] : acc(1), bias ? bias[c] : acc(0), slope);
    }
  });
}

}  // namespace branch_concat_detail

void branch_concat_forward(const BranchConcatForwardArgs& a) {
  dispatch_floating(a.dtype, "fastblocks::branch_concat", [&](auto zero) {
    using scalar_t = decltype(zero);
    epilogue_detail::visit_kernel_activation<scalar_t>(
        a.act, [&](const auto& act) { branch_concat_detail::forward_typed<scalar_t>(act, a); });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
