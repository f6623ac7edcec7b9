// Argument checks whose messages name the op, the argument and what was expected.
//
// Numbers in messages go through std::to_string / shape_string, never std::ostream: on the H200 image this
// project is tested on (torch 2.11), streaming an integer into a TORCH_CHECK message from this extension
// crashed the process, while strings, dtypes and devices streamed fine.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/Exception.h>
#include <optional>

#include <string>

#define FASTBLOCKS_CHECK_ARG(COND, OP, ARG, ...) \
  TORCH_CHECK((COND), "fastblocks::", OP, ": argument '", ARG, "' ", __VA_ARGS__)

namespace fastblocks {

// "[2, 4, 3, 3]": sizes for messages, formatted without ostream templates.
std::string shape_string(at::IntArrayRef sizes);
// The same for sizes that may be symbolic (fake tensors under torch.compile/export): "[2, s, 3, 3]".
std::string sym_shape_string(c10::SymIntArrayRef sizes);
// A required tensor argument: None reaches C++ as an undefined tensor, which has no device, dtype or sizes.
void check_defined(const at::Tensor& t, const char* op, const char* arg);
// Same device as `ref` (named `ref_arg`); both must be defined.
void check_same_device(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg,
                       const char* op);
// float32, float64, float16 or bfloat16.
void check_floating_tensor(const at::Tensor& t, const char* op, const char* arg);
// Same dtype and device as `ref` (named `ref_arg`).
void check_same_dtype_device(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg,
                             const char* op);
// A per-channel parameter ([C], floating, on the device of `ref` (the data argument, named `ref_arg`), in its
// dtype or float32): returned as a contiguous tensor of the accumulation dtype (float64 for float64 data, else
// float32), or an undefined tensor when absent.
at::Tensor channel_param(const std::optional<at::Tensor>& param, const char* arg, const at::Tensor& ref,
                         const char* ref_arg, int64_t channels, const char* op);
// The dtype the kernels accumulate and keep per-channel parameters in.
at::ScalarType accumulation_dtype(at::ScalarType dtype);

}  // namespace fastblocks
