// The architectures this extension's device code was compiled for (reported by pyfastblocks.build_info()).
#include "cuda/launchers.h"

// Variadic: __CUDA_ARCH_LIST__ is a comma-separated list ("800,860,900") when several archs are built.
#define FASTBLOCKS_STRINGIFY_(...) #__VA_ARGS__
#define FASTBLOCKS_STRINGIFY(...) FASTBLOCKS_STRINGIFY_(__VA_ARGS__)

namespace fastblocks::cuda {

const char* compiled_cuda_archs() {
#ifdef __CUDA_ARCH_LIST__
  return FASTBLOCKS_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

}  // namespace fastblocks::cuda
