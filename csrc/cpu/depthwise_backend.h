// The CPU backend choice of fastblocks::depthwise_conv2d (see cpu/depthwise_cpu.cpp): "auto" (oneDNN through ATen
// where it is faster, this project's kernels elsewhere) or "fastblocks" (this project's kernels always).
// Process-wide; exposed as pyfastblocks.ops.set_cpu_depthwise_backend.
#pragma once

#include <string>

namespace fastblocks {

void set_cpu_depthwise_backend(const std::string& backend);
std::string cpu_depthwise_backend();

}  // namespace fastblocks
