// CPU kernels, each built twice: portable (namespace DEFAULT, cpu/*_default.cpp) and for AVX2+FMA (namespace AVX2,
// cpu/*_avx2.cpp).
#pragma once

#include "common/depthwise.h"
#include "common/epilogue_args.h"

namespace fastblocks::cpu {

#define FASTBLOCKS_DECLARE_CPU_KERNELS                           \
  void add_act_forward(const AddActForwardArgs& args);           \
  void branch_concat_forward(const BranchConcatForwardArgs& args); \
  void epilogue_backward(const EpilogueBackwardArgs& args);       \
  void depthwise_forward(const DepthwiseForwardArgs& args);       \
  void depthwise_backward(const DepthwiseBackwardArgs& args);

namespace DEFAULT {
FASTBLOCKS_DECLARE_CPU_KERNELS
}
namespace AVX2 {
FASTBLOCKS_DECLARE_CPU_KERNELS
}

// True where this CPU can run the AVX2 kernels, as ATen decides for its own (honours ATEN_CPU_CAPABILITY).
bool use_avx2_kernels();
// "avx2" or "default": the kernels this process runs.
const char* cpu_kernel_capability();

// Calls the AVX2 or the portable build of a kernel.
#define FASTBLOCKS_CPU_KERNEL(NAME, ...) \
  (::fastblocks::cpu::use_avx2_kernels() ? ::fastblocks::cpu::AVX2::NAME(__VA_ARGS__) : ::fastblocks::cpu::DEFAULT::NAME(__VA_ARGS__))

}  // namespace fastblocks::cpu
