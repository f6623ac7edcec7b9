// Every op's CPU kernel, compiled once per CPU capability (see kernels_default.cpp / kernels_avx2.cpp).
#include "cpu/add_relu_kernel.h"
#include "cpu/branch_concat_kernel.h"
#include "cpu/epilogue_kernel.h"
#include "cpu/depthwise_kernel.h"
