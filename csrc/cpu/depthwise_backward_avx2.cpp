// The AVX2+FMA build of the CPU depthwise_conv2d backward, compiled with -mavx2 -mfma -mf16c by setup.py (files
// named *_avx2.cpp) and only called after a run-time check (cpu::use_avx2_kernels). setup.py links these objects
// last, so where an inline function from a shared header is emitted both here and in a portable file, the linker
// keeps the portable copy (it keeps the first definition it sees).
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY AVX2  // non-x86 builds: the portable kernels under the AVX2 name (never selected)
#endif
#include "cpu/depthwise_backward_kernel.h"
