// The emulated epilogue ops (see cpu/epilogue_emulation.h): the same plans and program choice as
// cuda/epilogue_kernel.cu, outputs and workspace NaN-filled first so that an element no thread writes shows.
#include "cpu/epilogue_emulation.h"

#include <ATen/ops/empty.h>

#include <limits>

#include "common/add_act_host.h"
#include "common/branch_concat_host.h"
#include "common/checks.h"
#include "common/epilogue_programs.h"
#include "cpu/program_emulator.h"

namespace fastblocks {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  FASTBLOCKS_CHECK_ARG(t.device().is_cpu(), op, name, "must be a CPU tensor (this emulates the CUDA programs)");
}

void nan_fill(std::initializer_list<at::Tensor*> tensors) {
  for (at::Tensor* t : tensors) {
    if (t->defined() && t->numel() > 0) t->fill_(kNaN);
  }
}

// The backward's programs with a NaN-filled workspace; returns their names.
std::vector<std::string> emulate_backward(const EpilogueBackwardArgs& a, const at::Tensor& like) {
  std::vector<std::string> names;
  const int64_t elems = epilogue_programs::epilogue_backward_workspace(a);
  at::Tensor workspace = at::empty({elems}, like.options().dtype(accumulation_dtype(like.scalar_type())));
  nan_fill({&workspace});
  epilogue_programs::with_epilogue_backward_programs(a, workspace.mutable_data_ptr(),
                                                     [&](const auto& p) { emulate_program(p, names); });
  return names;
}

}  // namespace

std::tuple<at::Tensor, std::vector<std::string>> emulate_add_act(const at::Tensor& x, const at::Tensor& residual,
                                                                 const std::optional<at::Tensor>& scale,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 const std::string& activation, double negative_slope) {
  check_cpu(x, "_emulate_add_act", "x");
  auto plan = plan_add_act_forward(x, residual, scale, bias, activation, negative_slope);
  nan_fill({&plan.out});
  std::vector<std::string> names;
  if (plan.out.numel() > 0) {
    epilogue_programs::with_add_act_forward_program(plan.args, [&](const auto& p) { emulate_program(p, names); });
  }
  return {plan.out, names};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<std::string>> emulate_add_act_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, const std::string& activation,
    double negative_slope, bool compute_param_grads) {
  check_cpu(grad_out, "_emulate_add_act_backward", "grad_out");
  auto plan = plan_add_act_backward(grad_out, x, residual, scale, bias, activation, negative_slope,
                                    compute_param_grads);
  std::vector<std::string> names;
  if (plan.grad_out.numel() > 0) {
    nan_fill({&plan.grad_x, &plan.grad_residual, &plan.grad_scale, &plan.grad_bias});
    names = emulate_backward(plan.args, plan.grad_out);
  }
  return {plan.grad_x, plan.grad_residual, plan.grad_scale, plan.grad_bias, names};
}

std::tuple<at::Tensor, std::vector<std::string>> emulate_branch_concat(const std::vector<at::Tensor>& inputs,
                                                                       const std::optional<at::Tensor>& scale,
                                                                       const std::optional<at::Tensor>& bias,
                                                                       const std::string& activation,
                                                                       double negative_slope) {
  if (!inputs.empty()) check_cpu(inputs[0], "_emulate_branch_concat", "inputs[0]");
  auto plan = plan_branch_concat_forward(inputs, scale, bias, activation, negative_slope);
  nan_fill({&plan.out});
  std::vector<std::string> names;
  if (plan.out.numel() > 0) {
    epilogue_programs::with_branch_concat_forward_program(plan.args,
                                                          [&](const auto& p) { emulate_program(p, names); });
  }
  return {plan.out, names};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, std::vector<std::string>> emulate_branch_concat_backward(
    const at::Tensor& grad_out, const std::vector<int64_t>& channels, const std::vector<at::Tensor>& inputs,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, const std::string& activation,
    double negative_slope, bool compute_param_grads, bool grad_at_preactivation) {
  check_cpu(grad_out, "_emulate_branch_concat_backward", "grad_out");
  auto plan = plan_branch_concat_backward(grad_out, channels, inputs, scale, bias, activation, negative_slope,
                                          compute_param_grads, grad_at_preactivation);
  std::vector<std::string> names;
  if (plan.grad_out.numel() > 0) {
    for (auto& g : plan.grad_inputs) nan_fill({&g});
    nan_fill({&plan.grad_scale, &plan.grad_bias});
    names = emulate_backward(plan.args, plan.grad_out);
  }
  return {plan.grad_inputs, plan.grad_scale, plan.grad_bias, names};
}

}  // namespace fastblocks
