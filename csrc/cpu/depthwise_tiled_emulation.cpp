// The CPU emulator of the tiled CUDA depthwise programs (see depthwise_tiled_emulation.h). It runs exactly what the
// kernels in cuda/depthwise_*_kernel.cu run: the same program choice, the same blocks, threads and phases; a block
// barrier is the end of a phase.
#include "cpu/depthwise_tiled_emulation.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <limits>

#include "common/activation_host.h"
#include "common/checks.h"
#include "common/depthwise_host.h"
#include "common/depthwise_tiled.h"
#include "cpu/program_emulator.h"

namespace fastblocks {
namespace {

constexpr const char* kOp = "_emulate_tiled_depthwise";

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

void check_cpu(const at::Tensor& t, const char* name) {
  FASTBLOCKS_CHECK_ARG(t.device().is_cpu(), kOp, name, "must be a CPU tensor (this emulates the CUDA programs)");
}

}  // namespace

std::tuple<at::Tensor, std::vector<std::string>> emulate_tiled_depthwise_forward(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation, const std::string& activation, bool input_relu,
    double negative_slope) {
  check_cpu(x, "x");
  auto plan = plan_depthwise_forward(x, weight, bias, stride, padding, dilation, activation, negative_slope, input_relu);
  plan.out.fill_(kNaN);  // every output the programs leave unwritten shows
  std::vector<std::string> names;
  if (plan.out.numel() == 0) return {plan.out, names};
  if (!tiled::with_forward_program(plan.args, [&](const auto& p) { emulate_program(p, names); })) {
    return {at::Tensor(), {"generic"}};
  }
  return {plan.out, names};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<std::string>> emulate_tiled_depthwise_backward(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
    std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
    const std::string& activation, bool input_relu, std::array<bool, 3> output_mask, double negative_slope) {
  check_cpu(x, "x");
  TORCH_CHECK(grad_from_output(parse_activation(activation, negative_slope, kOp)),
              "_emulate_tiled_depthwise_backward: the backward programs take activations whose gradient follows from "
              "the output; for the others the host masks grad_out first (test that through the op)");
  auto plan = plan_depthwise_backward(grad_out, out, x, weight, std::nullopt, stride, padding, dilation, activation,
                                      negative_slope, input_relu, output_mask);
  std::vector<std::string> names;
  bool params_generic = false;
  if (out.numel() > 0) {
    prepare_tiled_backward(plan);
    for (at::Tensor* t : {&plan.grad_input, &plan.grad_weight_acc, &plan.grad_bias, &plan.workspace}) {
      if (t->defined()) t->fill_(kNaN);
    }
    const auto& a = plan.args;
    if (a.grad_input != nullptr &&
        !tiled::with_input_grad_program(a, [&](const auto& p) { emulate_program(p, names); })) {
      names.push_back("generic");
      plan.grad_input = at::Tensor();
    }
    if ((a.grad_weight != nullptr || a.grad_bias != nullptr) &&
        !tiled::with_param_grad_programs(a, [&](const auto& p) { emulate_program(p, names); })) {
      names.push_back("generic");
      params_generic = true;
    }
  }
  finish_depthwise_backward(plan);
  if (params_generic) plan.grad_weight = plan.grad_bias = at::Tensor();
  return {plan.grad_input, plan.grad_weight, plan.grad_bias, names};
}

}  // namespace fastblocks
