// The portable build of the CPU kernels of add_act and branch_concat forward (at::vec's generic vectors, which the compiler maps to
// SSE2). Each kernel family is its own translation unit per capability, so they compile in parallel.
#define CPU_CAPABILITY DEFAULT
#include "cpu/add_act_kernel.h"
#include "cpu/branch_concat_kernel.h"
