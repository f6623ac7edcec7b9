#include "common/checks.h"

#include <ATen/core/Tensor.h>

namespace fastblocks {

at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

std::string shape_string(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(sizes[i]);
  }
  return out + "]";
}

std::string sym_shape_string(c10::SymIntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) out += ", ";
    const auto value = sizes[i].maybe_as_int();
    out += value.has_value() ? std::to_string(*value) : std::string("s");
  }
  return out + "]";
}

void check_defined(const at::Tensor& t, const char* op, const char* arg) {
  FASTBLOCKS_CHECK_ARG(t.defined(), op, arg, "must be a tensor, got None (an undefined tensor)");
}

void check_same_device(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg,
                       const char* op) {
  check_defined(ref, op, ref_arg);
  check_defined(t, op, arg);
  FASTBLOCKS_CHECK_ARG(t.device() == ref.device(), op, arg, "must be on the same device as '", ref_arg, "' (",
                       ref.device(), "), got ", t.device());
}

void check_floating_tensor(const at::Tensor& t, const char* op, const char* arg) {
  const auto dtype = t.scalar_type();
  FASTBLOCKS_CHECK_ARG(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                       op, arg, "must be float32, float64, float16 or bfloat16, got ", dtype);
}

void check_same_dtype_device(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg,
                             const char* op) {
  check_same_device(t, arg, ref, ref_arg, op);
  FASTBLOCKS_CHECK_ARG(t.scalar_type() == ref.scalar_type(), op, arg, "must have the dtype of '", ref_arg, "' (",
                       ref.scalar_type(), "), got ", t.scalar_type());
}

at::Tensor channel_param(const std::optional<at::Tensor>& param, const char* arg, const at::Tensor& ref,
                         const char* ref_arg, int64_t channels, const char* op) {
  if (!param.has_value() || !param->defined()) {
    return at::Tensor();
  }
  const at::Tensor& p = *param;
  FASTBLOCKS_CHECK_ARG(p.dim() == 1 && p.size(0) == channels, op, arg,
                       "must be a 1-D tensor of one value per channel (shape [", std::to_string(channels), "]), got shape ",
                       shape_string(p.sizes()));
  FASTBLOCKS_CHECK_ARG(p.device() == ref.device(), op, arg, "must be on the device of '", ref_arg, "' (",
                       ref.device(), "), got ", p.device());
  FASTBLOCKS_CHECK_ARG(p.scalar_type() == ref.scalar_type() || p.scalar_type() == at::kFloat, op, arg,
                       "must have the dtype of '", ref_arg, "' (", ref.scalar_type(), ") or float32, got ",
                       p.scalar_type());
  return p.to(accumulation_dtype(ref.scalar_type())).contiguous();
}

}  // namespace fastblocks
