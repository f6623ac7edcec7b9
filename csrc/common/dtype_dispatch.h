// The one dtype dispatch of the kernels (CPU, CUDA launchers, programs, emulator): f(value of the element type) for
// float, double, half and bfloat16 (no ATen: it serves the .cu files too).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace fastblocks {

template <typename F>
void dispatch_floating(c10::ScalarType dtype, const char* name, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float: return f(float{});
    case c10::ScalarType::Double: return f(double{});
    case c10::ScalarType::Half: return f(c10::Half{});
    case c10::ScalarType::BFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, name, ": unsupported dtype ", dtype);
  }
}

}  // namespace fastblocks
