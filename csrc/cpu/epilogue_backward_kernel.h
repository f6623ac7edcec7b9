// CPU backward of every epilogue op (fastblocks::add_act_backward, fastblocks::branch_concat_backward): the loops
// of cpu/epilogue_kernel.h, instantiated per dtype and activation.
#pragma once

#include "cpu/epilogue_kernel.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {

void epilogue_backward(const EpilogueBackwardArgs& a) {
  dispatch_floating(a.dtype, "fastblocks epilogue backward", [&](auto zero) {
    using scalar_t = decltype(zero);
    epilogue_detail::visit_kernel_activation<scalar_t>(a.act, [&](const auto& act) {
      using Act = std::decay_t<decltype(act)>;
      if (a.reduces()) {
        epilogue_detail::backward_typed<scalar_t, Act, true>(act, a);
      } else {
        epilogue_detail::backward_typed<scalar_t, Act, false>(act, a);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
