#include <ATen/Version.h>

#include <string>

#include "cpu/kernels.h"

namespace fastblocks::cpu {

bool use_avx2_kernels() {
#if defined(__x86_64__) || defined(__i386__)
  // ATen's choice (cpuinfo, lowered by ATEN_CPU_CAPABILITY), and the instructions the AVX2 file is built with.
  static const bool avx2 = [] {
    const std::string cap = at::get_cpu_capability();
    return (cap == "AVX2" || cap == "AVX512") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return avx2;
#else
  return false;
#endif
}

const char* cpu_kernel_capability() { return use_avx2_kernels() ? "avx2" : "default"; }

}  // namespace fastblocks::cpu
