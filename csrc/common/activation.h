// The activation table: every activation a fastblocks epilogue applies, its value and its derivative, written once
// as templates over the value type so that the same code runs as float/double on the CPU and the GPU
// (C10_HOST_DEVICE) and as at::vec::Vectorized in the CPU vector loops (cpu/vec_math.h gives ActMath for vectors).
// Names are torch's own functional names; the Python mirror is pyfastblocks/activations.py.
//
// Adding an activation: a struct below with kName, value(), grad() and grad_from_output(), and one line in
// FASTBLOCKS_ACTIVATIONS (plus its entry in pyfastblocks/activations.py and the tests). Every op, CPU and CUDA,
// dispatches through this list.
#pragma once

#include <c10/macros/Macros.h>
#include <math.h>

#include <cstdint>

namespace fastblocks {

// Activation code is always inlined into the loops that call it: a call per vector (with vector arguments passed
// through memory) would cost more than the activation itself.
#if defined(__CUDACC__)
#define FASTBLOCKS_ACT_INLINE C10_HOST_DEVICE __forceinline__
#else
#define FASTBLOCKS_ACT_INLINE C10_ALWAYS_INLINE
#endif

// The scalar primitives the activations are written in (float and double; cpu/vec_math.h specializes ActMath for
// at::vec::Vectorized). Comparisons are the value type's own operators (bool for scalars, a lane mask for vectors).
template <typename V>
struct ActMath;

template <typename S>
struct ScalarActMath {
  using Scalar = S;
  C10_HOST_DEVICE static S constant(double v) { return static_cast<S>(v); }
  C10_HOST_DEVICE static S select(bool mask, S a, S b) { return mask ? a : b; }
  // max(v, lo) and min(v, hi) with a NaN v propagated, as torch.relu / torch.clamp do.
  C10_HOST_DEVICE static S clamp_min(S v, S lo) { return v < lo ? lo : v; }
  C10_HOST_DEVICE static S clamp_max(S v, S hi) { return v > hi ? hi : v; }
  C10_HOST_DEVICE static S reciprocal(S v) { return S(1) / v; }
};

template <>
struct ActMath<float> : ScalarActMath<float> {
  C10_HOST_DEVICE static float exp(float v) { return ::expf(v); }
  C10_HOST_DEVICE static float erf(float v) { return ::erff(v); }
  C10_HOST_DEVICE static float tanh(float v) { return ::tanhf(v); }
};

template <>
struct ActMath<double> : ScalarActMath<double> {
  C10_HOST_DEVICE static double exp(double v) { return ::exp(v); }
  C10_HOST_DEVICE static double erf(double v) { return ::erf(v); }
  C10_HOST_DEVICE static double tanh(double v) { return ::tanh(v); }
};

// A value of the activation's type from a double constant.
template <typename V>
C10_HOST_DEVICE inline V act_constant(double v) {
  return ActMath<V>::constant(v);
}

// ---------------------------------------------------------------------------------------------------------------
// The activations. value(z, slope) is the activation of the pre-activation z; grad(g, z, slope) is g * act'(z).
// grad_from_output(slope): grad(g, act(z), slope) equals grad(g, z, slope), so a backward may use the saved output
// instead of the pre-activation (ReLU-like activations). `slope` is leaky_relu's negative_slope (ignored by the
// others). The formulas follow ATen's CPU kernels (torch.nn.functional), NaN propagating as there.

struct NoneAct {
  static constexpr const char* kName = "none";
  C10_HOST_DEVICE static constexpr bool grad_from_output(double) { return true; }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V value(V z, V) {
    return z;
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V grad(V g, V, V) {
    return g;
  }
};

struct ReLUAct {
  static constexpr const char* kName = "relu";
  C10_HOST_DEVICE static constexpr bool grad_from_output(double) { return true; }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V value(V z, V) {
    return ActMath<V>::clamp_min(z, act_constant<V>(0));
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V grad(V g, V z, V) {
    const V zero = act_constant<V>(0);
    return ActMath<V>::select(z > zero, g, zero);
  }
};

// F.relu6 = hardtanh(z, 0, 6); its gradient passes strictly inside (0, 6), as hardtanh_backward.
struct ReLU6Act {
  static constexpr const char* kName = "relu6";
  C10_HOST_DEVICE static constexpr bool grad_from_output(double) { return true; }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V value(V z, V) {
    return ActMath<V>::clamp_max(ActMath<V>::clamp_min(z, act_constant<V>(0)), act_constant<V>(6));
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V grad(V g, V z, V) {
    const V zero = act_constant<V>(0);
    return ActMath<V>::select((z > zero) & (z < act_constant<V>(6)), g, zero);
  }
};

struct LeakyReLUAct {
  static constexpr const char* kName = "leaky_relu";
  // The output's sign is the input's only for a non-negative slope.
  C10_HOST_DEVICE static constexpr bool grad_from_output(double slope) { return slope >= 0; }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V value(V z, V slope) {
    return ActMath<V>::select(z > act_constant<V>(0), z, z * slope);
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V grad(V g, V z, V slope) {
    return ActMath<V>::select(z > act_constant<V>(0), g, g * slope);
  }
};

// z * sigmoid(z). exp's argument is capped at 80 so that 1 + exp(-z) stays finite for a reciprocal (the vector
// one may be an approximation refined by a Newton step, which an infinity would turn into NaN); below z = -80
// sigmoid(z) < 2e-35, so the cap changes nothing that float32 can tell.
struct SiLUAct {
  static constexpr const char* kName = "silu";
  C10_HOST_DEVICE static constexpr bool grad_from_output(double) { return false; }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V sigmoid(V z) {
    const V e = ActMath<V>::exp(ActMath<V>::clamp_max(act_constant<V>(0) - z, act_constant<V>(80)));  // NaN: kept
    return ActMath<V>::reciprocal(act_constant<V>(1) + e);
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V value(V z, V) {
    return z * sigmoid(z);
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V grad(V g, V z, V) {
    const V one = act_constant<V>(1);
    const V s = sigmoid(z);
    return g * s * (one + z * (one - s));
  }
};

// z * clamp(z + 3, 0, 6) / 6; gradient 0 up to -3, z / 3 + 1/2 strictly between -3 and 3, 1 from 3 on (as
// torch's hardswish_backward decides the end points).
struct HardswishAct {
  static constexpr const char* kName = "hardswish";
  C10_HOST_DEVICE static constexpr bool grad_from_output(double) { return false; }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V value(V z, V) {
    const V r6 = ActMath<V>::clamp_max(ActMath<V>::clamp_min(z + act_constant<V>(3), act_constant<V>(0)),
                                       act_constant<V>(6));
    return z * r6 / act_constant<V>(6);
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V grad(V g, V z, V) {
    const V three = act_constant<V>(3);
    const V middle = g * (z / three + act_constant<V>(0.5));
    return ActMath<V>::select(z <= act_constant<V>(-3), act_constant<V>(0), ActMath<V>::select(z < three, middle, g));
  }
};

// The exact GELU: z * Phi(z) = z / 2 * (1 + erf(z / sqrt(2))) (F.gelu, approximate="none").
struct GELUAct {
  static constexpr const char* kName = "gelu";
  C10_HOST_DEVICE static constexpr bool grad_from_output(double) { return false; }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V value(V z, V) {
    return z * act_constant<V>(0.5) * (act_constant<V>(1) + ActMath<V>::erf(z * act_constant<V>(M_SQRT1_2)));
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V grad(V g, V z, V) {
    const V cdf = act_constant<V>(0.5) * (act_constant<V>(1) + ActMath<V>::erf(z * act_constant<V>(M_SQRT1_2)));
    const V pdf = ActMath<V>::exp(act_constant<V>(-0.5) * z * z) * act_constant<V>(M_2_SQRTPI * M_SQRT1_2 * 0.5);
    return g * (cdf + z * pdf);
  }
};

// The tanh approximation (F.gelu, approximate="tanh"): z / 2 * (1 + tanh(sqrt(2 / pi) * (z + 0.044715 z^3))).
struct GELUTanhAct {
  static constexpr const char* kName = "gelu_tanh";
  static constexpr double kBeta = M_SQRT2 * M_2_SQRTPI * 0.5;
  static constexpr double kKappa = 0.044715;
  C10_HOST_DEVICE static constexpr bool grad_from_output(double) { return false; }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V value(V z, V) {
    const V inner = act_constant<V>(kBeta) * (z + act_constant<V>(kKappa) * z * z * z);
    return act_constant<V>(0.5) * z * (act_constant<V>(1) + ActMath<V>::tanh(inner));
  }
  template <typename V>
  FASTBLOCKS_ACT_INLINE static V grad(V g, V z, V) {
    const V one = act_constant<V>(1);
    const V z2 = z * z;
    const V inner = act_constant<V>(kBeta) * (z + act_constant<V>(kKappa) * z2 * z);
    const V t = ActMath<V>::tanh(inner);
    const V left = act_constant<V>(0.5) * z;
    const V right = one + t;
    const V left_derivative = act_constant<V>(0.5) * right;
    const V right_derivative = (one - t * t) * act_constant<V>(kBeta) * (one + act_constant<V>(3 * kKappa) * z2);
    return g * (left_derivative + left * right_derivative);
  }
};

// X(enumerator, functor): the one list every dispatch below is generated from.
#define FASTBLOCKS_ACTIVATIONS(X) \
  X(kNone, NoneAct)               \
  X(kReLU, ReLUAct)               \
  X(kReLU6, ReLU6Act)             \
  X(kLeakyReLU, LeakyReLUAct)     \
  X(kSiLU, SiLUAct)               \
  X(kHardswish, HardswishAct)     \
  X(kGELU, GELUAct)               \
  X(kGELUTanh, GELUTanhAct)

enum class Activation : int8_t {
#define FASTBLOCKS_ACTIVATION_ENUM(E, F) E,
  FASTBLOCKS_ACTIVATIONS(FASTBLOCKS_ACTIVATION_ENUM)
#undef FASTBLOCKS_ACTIVATION_ENUM
};

// An activation with its argument, as every op's plain-data arguments carry it.
struct ActivationSpec {
  Activation kind = Activation::kNone;
  double negative_slope = 0.01;  // leaky_relu only
};

// ---------------------------------------------------------------------------------------------------------------
// Run-time dispatch, for code that applies the activation once per output (the CUDA programs, the depthwise
// kernels): a switch on a value that is the same for every thread.

template <typename V>
C10_HOST_DEVICE inline V activate(const ActivationSpec& a, V z) {
  const V slope = act_constant<V>(a.negative_slope);
  switch (a.kind) {
#define FASTBLOCKS_ACTIVATION_VALUE(E, F) \
  case Activation::E:                     \
    return F::value(z, slope);
    FASTBLOCKS_ACTIVATIONS(FASTBLOCKS_ACTIVATION_VALUE)
#undef FASTBLOCKS_ACTIVATION_VALUE
  }
  return z;
}

// g * act'(v), v the pre-activation (or the output where grad_from_output(a) holds).
template <typename V>
C10_HOST_DEVICE inline V activation_grad(const ActivationSpec& a, V g, V v) {
  const V slope = act_constant<V>(a.negative_slope);
  switch (a.kind) {
#define FASTBLOCKS_ACTIVATION_GRAD(E, F) \
  case Activation::E:                    \
    return F::grad(g, v, slope);
    FASTBLOCKS_ACTIVATIONS(FASTBLOCKS_ACTIVATION_GRAD)
#undef FASTBLOCKS_ACTIVATION_GRAD
  }
  return g;
}

// Whether a backward may derive the gradient from the saved output (else it needs the pre-activation).
C10_HOST_DEVICE inline bool grad_from_output(const ActivationSpec& a) {
  switch (a.kind) {
#define FASTBLOCKS_ACTIVATION_FROM_OUTPUT(E, F) \
  case Activation::E:                           \
    return F::grad_from_output(a.negative_slope);
    FASTBLOCKS_ACTIVATIONS(FASTBLOCKS_ACTIVATION_FROM_OUTPUT)
#undef FASTBLOCKS_ACTIVATION_FROM_OUTPUT
  }
  return false;
}

// Host code: f(F{}) with F the activation's functor type, for kernels templated on the activation.
template <typename Fn>
decltype(auto) visit_activation(Activation a, Fn&& f) {
  switch (a) {
#define FASTBLOCKS_ACTIVATION_VISIT(E, F) \
  case Activation::E:                     \
    return f(F{});
    FASTBLOCKS_ACTIVATIONS(FASTBLOCKS_ACTIVATION_VISIT)
#undef FASTBLOCKS_ACTIVATION_VISIT
  }
  return f(NoneAct{});
}

}  // namespace fastblocks
