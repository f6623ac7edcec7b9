// The portable build of the CPU depthwise_conv2d backward (at::vec's generic vectors, which the compiler maps to
// SSE2). Each kernel family is its own translation unit per capability, so they compile in parallel.
#define CPU_CAPABILITY DEFAULT
#include "cpu/depthwise_backward_kernel.h"
