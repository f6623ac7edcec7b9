// Host side of the activation table: an op's `activation` / `negative_slope` arguments, checked.
#pragma once

#include <string>
#include <string_view>

#include "common/activation.h"

namespace fastblocks {

// The activation named `name` (one of the table's names) with its negative_slope (leaky_relu's; accepted and
// ignored by the others). Errors name the op and the argument.
ActivationSpec parse_activation(std::string_view name, double negative_slope, const char* op,
                                const char* arg = "activation", const char* slope_arg = "negative_slope");

// "\"none\", \"relu\", ...": the table's names, for messages.
std::string activation_names();

// The table name of an activation.
const char* activation_name(Activation a);

}  // namespace fastblocks
