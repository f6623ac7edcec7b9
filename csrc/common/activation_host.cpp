#include "common/activation_host.h"

#include <cmath>

#include "common/checks.h"

namespace fastblocks {

const char* activation_name(Activation a) {
  return visit_activation(a, [](auto act) { return decltype(act)::kName; });
}

std::string activation_names() {
  std::string names;
#define FASTBLOCKS_ACTIVATION_NAME(E, F) names += std::string(names.empty() ? "\"" : ", \"") + F::kName + "\"";
  FASTBLOCKS_ACTIVATIONS(FASTBLOCKS_ACTIVATION_NAME)
#undef FASTBLOCKS_ACTIVATION_NAME
  return names;
}

ActivationSpec parse_activation(std::string_view name, double negative_slope, const char* op, const char* arg,
                                const char* slope_arg) {
  ActivationSpec spec;
  bool found = false;
#define FASTBLOCKS_ACTIVATION_PARSE(E, F) \
  if (!found && name == F::kName) {      \
    spec.kind = Activation::E;           \
    found = true;                        \
  }
  FASTBLOCKS_ACTIVATIONS(FASTBLOCKS_ACTIVATION_PARSE)
#undef FASTBLOCKS_ACTIVATION_PARSE
  FASTBLOCKS_CHECK_ARG(found, op, arg, "must be one of ", activation_names(), ", got \"", std::string(name), "\"");
  FASTBLOCKS_CHECK_ARG(std::isfinite(negative_slope), op, slope_arg, "must be a finite number, got ",
                       std::to_string(negative_slope));
  spec.negative_slope = negative_slope;
  return spec;
}

}  // namespace fastblocks
