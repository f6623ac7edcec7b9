// The portable build of the CPU kernels (at::vec's generic vectors, which the compiler maps to SSE2).
#define CPU_CAPABILITY DEFAULT
#include "cpu/kernels_all.h"
