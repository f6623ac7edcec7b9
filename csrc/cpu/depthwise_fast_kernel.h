// Fast CPU paths of fastblocks::depthwise_conv2d (float, half and bfloat16 data; float32 math), forward and
// backward, for both layouts. The idea that keeps them short: copy each input plane (NCHW) or each 8-channel
// block of an image (NHWC) into a zero-padded float scratch, applying the input ReLU on the way, so the inner
// loops need no bounds checks, no dtype conversions and no masks; the kernel taps are then plain vector
// multiply-adds with the weights held in registers (3x3 and 5x5 are compile-time, others run-time).
//
// - NCHW vectorizes along output columns (stride 1: contiguous loads; stride 2: deinterleaved loads; other
//   strides: gathered), NHWC along channels.
// - grad_input is the same correlation run over the activation-masked grad_out scattered (zero-inserted for
//   strides > 1) into a padded scratch, with the kernel flipped.
// - grad_weight / grad_bias: one task per channel (NCHW) or channel block (NHWC) sums over the batch in a fixed
//   order, so results do not depend on the thread count: deterministic.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

#include "common/depthwise.h"
#include "cpu/vec_math.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace depthwise_fast {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kL = Vec::size();

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t ceil_div(int64_t v, int64_t m) { return (v + m - 1) / m; }

template <typename T>
inline void store_lanes(T* p, const Vec& v, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, n);
  }
}

// The activation (common/activation.h) is chosen at run time, a predictable branch per vector or element:
// templating it too would multiply the instantiations of these kernels by the table's size.
inline float relu_rt(float v, bool relu) { return relu && !(v > 0.f || v != v) ? 0.f : v; }

// Lanes p[0], p[s], p[2s], ... of a float row.
template <int S>
inline Vec load_every(const float* p, int64_t s) {
  if constexpr (S == 1) {
    return Vec::loadu(p);
  } else if constexpr (S == 2) {
    return at::vec::deinterleave2(Vec::loadu(p), Vec::loadu(p + kL)).first;
  } else {
    alignas(64) float lanes[kL];
    for (int64_t l = 0; l < kL; ++l) lanes[l] = p[l * s];
    return Vec::loadu(lanes);
  }
}

// The kernel taps of one channel, compile-time for 3x3 and 5x5 (KH = KW = 0: run-time).
template <int KH, int KW>
struct Taps {
  int64_t kh, kw;
  static constexpr bool kFixed = KH > 0;
  int64_t h() const { return kFixed ? KH : kh; }
  int64_t w() const { return kFixed ? KW : kw; }
  int64_t count() const { return h() * w(); }
};

// A channel's (or channel block's) tap weights as vectors: held in registers when the kernel size is
// compile-time, read from memory otherwise.
template <int KH, int KW>
struct TapWeights {
  static constexpr int kRegs = Taps<KH, KW>::kFixed ? KH * KW : 1;
  Vec regs[kRegs];
  const Vec* mem;
  explicit TapWeights(const Vec* w) : mem(w) {
    if constexpr (Taps<KH, KW>::kFixed) {
      for (int t = 0; t < kRegs; ++t) regs[t] = w[t];
    }
  }
  Vec operator[](int64_t t) const {
    if constexpr (Taps<KH, KW>::kFixed) {
      return regs[t];
    } else {
      return mem[t];
    }
  }
};

// Padded float scratch of one NCHW plane: rows [pad_h, pad_h + in_h), columns [pad_w, pad_w + in_w) hold x (or
// relu(x)); the rest stays zero (zeroed once; later planes overwrite only the interior).
struct PlaneScratch {
  int64_t rows = 0, ld = 0;
  std::vector<float> data;
  void init(int64_t r, int64_t l) {
    rows = r;
    ld = l;
    data.assign(static_cast<size_t>(r * l), 0.f);
  }
  template <typename T>
  void fill(const T* src, int64_t in_h, int64_t in_w, int64_t pad_h, int64_t pad_w, bool relu) {
    for (int64_t ih = 0; ih < in_h; ++ih) {
      float* dst = data.data() + (ih + pad_h) * ld + pad_w;
      const T* s = src + ih * in_w;
      for (int64_t iw = 0; iw < in_w; ++iw) {
        dst[iw] = relu_rt(static_cast<float>(s[iw]), relu);
      }
    }
  }
};

// NCHW correlation over a padded plane: for every output row oh and every vector of kL outputs starting at
// ow0 (the last one may run past out_w), emit(oh, ow0, sum_t w[t] * src[(oh*sh + kh*dh) * ld + (ow0 + l)*sw +
// kw*dw]). Four vectors at a time keep four independent FMA chains in flight.
template <int KH, int KW, int SW, typename Emit>
inline void correlate_plane(const float* src, int64_t ld, Taps<KH, KW> taps, int64_t sh, int64_t sw, int64_t dh,
                            int64_t dw, const Vec* w, int64_t out_h, int64_t out_w, Emit&& emit) {
  constexpr int64_t kU = 4;
  const int64_t stride_w = SW > 0 ? SW : sw;
  const int64_t nvec = ceil_div(out_w, kL);
  const TapWeights<KH, KW> weight(w);
  for (int64_t oh = 0; oh < out_h; ++oh) {
    const float* rows = src + oh * sh * ld;
    int64_t v = 0;
    for (; v + kU <= nvec; v += kU) {
      Vec acc[kU];
      for (int64_t u = 0; u < kU; ++u) acc[u] = Vec(0.f);
      for (int64_t kh = 0; kh < taps.h(); ++kh) {
        const float* row = rows + kh * dh * ld + v * kL * stride_w;
        for (int64_t kw = 0; kw < taps.w(); ++kw) {
          const Vec wt = weight[kh * taps.w() + kw];
          const float* p = row + kw * dw;
          for (int64_t u = 0; u < kU; ++u) acc[u] = at::vec::fmadd(load_every<SW>(p + u * kL * stride_w, stride_w), wt, acc[u]);
        }
      }
      for (int64_t u = 0; u < kU; ++u) emit(oh, (v + u) * kL, acc[u]);
    }
    for (; v < nvec; ++v) {
      Vec acc(0.f);
      for (int64_t kh = 0; kh < taps.h(); ++kh) {
        const float* row = rows + kh * dh * ld + v * kL * stride_w;
        for (int64_t kw = 0; kw < taps.w(); ++kw) {
          acc = at::vec::fmadd(load_every<SW>(row + kw * dw, stride_w), weight[kh * taps.w() + kw], acc);
        }
      }
      emit(oh, v * kL, acc);
    }
  }
}

// Row pitch of a padded plane read by correlate_plane for out_w outputs (every vector, and a deinterleaved
// load's second half, stays inside the row).
inline int64_t plane_ld(int64_t padded_w, int64_t out_w, int64_t sw, int64_t span_w) {
  return round_up(std::max(padded_w, ceil_div(out_w, kL) * kL * sw + span_w + kL), kL);
}

// Where the activation-masked grad_out lands in the grad_input correlation's scratch: element (oh, ow) goes to
// row oh*sh + (kh-1)*dh - pad_h, column ow*sw + (kw-1)*dw - pad_w (positions outside the scratch feed no input
// element and are dropped). The flipped kernel then maps the scratch onto grad_input with stride 1.
struct Scatter {
  int64_t row_off, col_off;
  static Scatter of(const DepthwiseGeometry& g) {
    return {(g.kernel_h - 1) * g.dil_h - g.pad_h, (g.kernel_w - 1) * g.dil_w - g.pad_w};
  }
};


template <typename T, int KH, int KW, int SW>
void forward_nchw(const DepthwiseForwardArgs& a) {
  const DepthwiseGeometry& g = a.geo;
  const auto* x = static_cast<const T*>(a.x);
  const auto* w = static_cast<const T*>(a.weight);
  const auto* bias = static_cast<const float*>(a.bias);
  auto* out = static_cast<T*>(a.out);
  const Taps<KH, KW> taps{g.kernel_h, g.kernel_w};
  const int64_t m = g.multiplier, in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t ld = plane_ld(g.in_w + 2 * g.pad_w, g.out_w, g.stride_w, (g.kernel_w - 1) * g.dil_w);
  const int64_t work = std::max<int64_t>(1, out_plane * m * g.taps());
  at::parallel_for(0, g.batch * g.channels, std::max<int64_t>(1, 65536 / work), [&](int64_t lo, int64_t hi) {
    PlaneScratch xs;
    xs.init(g.in_h + 2 * g.pad_h, ld);
    std::vector<Vec> wf(static_cast<size_t>(g.taps()));
    for (int64_t plane = lo; plane < hi; ++plane) {
      const int64_t n = plane / g.channels, ic = plane % g.channels;
      xs.fill(x + plane * in_plane, g.in_h, g.in_w, g.pad_h, g.pad_w, a.input_relu);
      for (int64_t j = 0; j < m; ++j) {
        const int64_t oc = ic * m + j;
        for (int64_t t = 0; t < g.taps(); ++t) wf[t] = Vec(static_cast<float>(w[oc * g.taps() + t]));
        const Vec b(bias ? bias[oc] : 0.f);
        T* op = out + (n * g.out_channels() + oc) * out_plane;
        correlate_plane<KH, KW, SW>(xs.data.data(), ld, taps, g.stride_h, g.stride_w, g.dil_h, g.dil_w, wf.data(),
                                    g.out_h, g.out_w, [&](int64_t oh, int64_t ow0, const Vec& acc) {
                                      store_lanes(op + oh * g.out_w + ow0, activate(a.activation, acc + b),
                                                  std::min(kL, g.out_w - ow0));
                                    });
      }
    }
  });
}

// The backward kernels' typed views of DepthwiseBackwardArgs.
template <typename T>
struct BackwardData {
  const T* gy;
  const T* y;
  const T* x;
  const T* w;
  T* grad_input;       // null: not wanted
  float* grad_weight;  // [C * m, taps], null: not wanted
  float* grad_bias;    // null: not wanted
  explicit BackwardData(const DepthwiseBackwardArgs& a)
      : gy(static_cast<const T*>(a.grad_out)),
        y(static_cast<const T*>(a.out)),
        x(static_cast<const T*>(a.x)),
        w(static_cast<const T*>(a.weight)),
        grad_input(static_cast<T*>(a.grad_input)),
        grad_weight(static_cast<float*>(a.grad_weight)),
        grad_bias(static_cast<float*>(a.grad_bias)) {}
  bool param_grads() const { return grad_weight != nullptr || grad_bias != nullptr; }
};

template <typename T, int KH, int KW, int SW>
void backward_nchw(const DepthwiseBackwardArgs& a) {
  const DepthwiseGeometry& g = a.geo;
  const BackwardData<T> io(a);
  const Taps<KH, KW> taps{g.kernel_h, g.kernel_w};
  const int64_t T_ = g.taps(), m = g.multiplier, in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t ld = plane_ld(g.in_w + 2 * g.pad_w, g.out_w, g.stride_w, (g.kernel_w - 1) * g.dil_w);
  const int64_t gld = round_up(g.out_w, kL);                        // grad_out rows, zero past out_w
  const int64_t sld = plane_ld(g.in_w + (g.kernel_w - 1) * g.dil_w, g.in_w, 1, (g.kernel_w - 1) * g.dil_w);
  const int64_t srows = g.in_h + (g.kernel_h - 1) * g.dil_h;
  const Scatter sc = Scatter::of(g);
  // One task per input channel: its m output channels' weight/bias sums run over the batch in a fixed order.
  at::parallel_for(0, g.channels, 1, [&](int64_t lo, int64_t hi) {
    PlaneScratch xs, gs;
    xs.init(g.in_h + 2 * g.pad_h, ld);
    if (io.grad_input) gs.init(srows, sld);
    std::vector<float> gbuf(static_cast<size_t>(g.out_h * gld), 0.f), gi(io.grad_input ? in_plane : 0);
    std::vector<Vec> wflip(static_cast<size_t>(T_));
    std::vector<Vec> acc_w(static_cast<size_t>(m * T_)), acc_b(static_cast<size_t>(m));
    for (int64_t ic = lo; ic < hi; ++ic) {
      std::fill(acc_w.begin(), acc_w.end(), Vec(0.f));
      std::fill(acc_b.begin(), acc_b.end(), Vec(0.f));
      for (int64_t n = 0; n < g.batch; ++n) {
        const int64_t xplane = n * g.channels + ic;
        if (io.param_grads()) xs.fill(io.x + xplane * in_plane, g.in_h, g.in_w, g.pad_h, g.pad_w, a.input_relu);
        if (io.grad_input) std::fill(gi.begin(), gi.end(), 0.f);
        for (int64_t j = 0; j < m; ++j) {
          const int64_t oc = ic * m + j;
          const int64_t oplane = (n * g.out_channels() + oc) * out_plane;
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              const int64_t o = oplane + oh * g.out_w + ow;
              gbuf[oh * gld + ow] = static_cast<float>(masked_grad_out(a.activation, io.gy, io.y, o));
            }
          }
          if (io.param_grads()) {
            Vec* aw = acc_w.data() + j * T_;
            for (int64_t oh = 0; oh < g.out_h; ++oh) {
              const float* rows = xs.data.data() + oh * g.stride_h * ld;
              for (int64_t v = 0; v < gld; v += kL) {
                const Vec gv = Vec::loadu(gbuf.data() + oh * gld + v);
                acc_b[j] = acc_b[j] + gv;
                for (int64_t kh = 0; kh < taps.h(); ++kh) {
                  const float* row = rows + kh * g.dil_h * ld + v * (SW > 0 ? SW : g.stride_w);
                  for (int64_t kw = 0; kw < taps.w(); ++kw) {
                    const int64_t t = kh * taps.w() + kw;
                    aw[t] = at::vec::fmadd(gv, load_every<SW>(row + kw * g.dil_w, g.stride_w), aw[t]);
                  }
                }
              }
            }
          }
          if (io.grad_input) {
            for (int64_t oh = 0; oh < g.out_h; ++oh) {
              const int64_t r = oh * g.stride_h + sc.row_off;
              if (r < 0 || r >= srows) continue;
              for (int64_t ow = 0; ow < g.out_w; ++ow) {
                const int64_t c = ow * g.stride_w + sc.col_off;
                if (c >= 0 && c < sld) gs.data[r * sld + c] = gbuf[oh * gld + ow];
              }
            }
            for (int64_t t = 0; t < T_; ++t) wflip[t] = Vec(static_cast<float>(io.w[oc * T_ + T_ - 1 - t]));
            correlate_plane<KH, KW, 1>(gs.data.data(), sld, taps, 1, 1, g.dil_h, g.dil_w, wflip.data(), g.in_h,
                                       g.in_w, [&](int64_t ih, int64_t iw0, const Vec& acc) {
                                         float* p = gi.data() + ih * g.in_w + iw0;
                                         const int64_t cnt = std::min(kL, g.in_w - iw0);
                                         (Vec::loadu(p, cnt) + acc).store(p, cnt);
                                       });
          }
        }
        if (io.grad_input) {
          const T* xp = io.x + xplane * in_plane;
          T* gp = io.grad_input + xplane * in_plane;
          for (int64_t i = 0; i < in_plane; ++i) {
            float v = gi[i];
            if (a.input_relu) v = static_cast<float>(xp[i]) > 0.f ? v : 0.f;
            gp[i] = static_cast<T>(v);
          }
        }
      }
      for (int64_t j = 0; j < m; ++j) {
        const int64_t oc = ic * m + j;
        if (io.grad_weight) {
          for (int64_t t = 0; t < T_; ++t) io.grad_weight[oc * T_ + t] = sum_lanes(acc_w[j * T_ + t]);
        }
        if (io.grad_bias) io.grad_bias[oc] = sum_lanes(acc_b[j]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// NHWC (channels_last), multiplier 1: vectors run over a block of kL channels. The scratch holds one image's
// padded [rows][cols][kL] block of those channels.

struct BlockScratch {
  int64_t rows = 0, cols = 0;
  std::vector<float> data;
  void init(int64_t r, int64_t c) {
    rows = r;
    cols = c;
    data.assign(static_cast<size_t>(r * c * kL), 0.f);
  }
  float* at(int64_t r, int64_t c) { return data.data() + (r * cols + c) * kL; }
  // Copies channels [c0, c0 + cnt) of image rows [0, h) x [0, w) (channel stride 1, pixel stride C) to rows
  // offset by (r0, q0); lanes past cnt stay zero.
  template <typename T>
  void fill(const T* img, int64_t h, int64_t w, int64_t C, int64_t c0, int64_t cnt, int64_t r0, int64_t q0,
            bool relu) {
    for (int64_t i = 0; i < h; ++i) {
      for (int64_t j = 0; j < w; ++j) {
        const T* s = img + (i * w + j) * C + c0;
        float* d = at(i + r0, j + q0);
        if constexpr (std::is_same_v<T, float>) {
          if (cnt == kL) {
            Vec v = Vec::loadu(s);
            if (relu) v = fastblocks::relu(v);
            v.store(d);
            continue;
          }
        }
        for (int64_t l = 0; l < cnt; ++l) {
          d[l] = relu_rt(static_cast<float>(s[l]), relu);
        }
      }
    }
  }
};

// Weights of channels [c0, c0 + cnt) as one vector per tap (lanes past cnt zero), optionally flipped.
template <typename T>
inline void block_weights(const T* w, int64_t taps, int64_t c0, int64_t cnt, bool flip, std::vector<Vec>& out) {
  alignas(64) float lanes[kL];
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t src_tap = flip ? taps - 1 - t : t;
    for (int64_t l = 0; l < kL; ++l) lanes[l] = l < cnt ? static_cast<float>(w[(c0 + l) * taps + src_tap]) : 0.f;
    out[t] = Vec::loadu(lanes);
  }
}

// Forward NHWC: one task per band of output rows of one image. The band's input rows, all channels, are copied
// into a zero-padded float scratch of about 128 KB laid out as [channel block][rows][cols][kL], so a tap's
// vector for the next output column is a compile-time offset away; each output row is then computed for every
// channel block in turn, so input and output are read and written in whole rows.
template <int KH, int KW, int SW, typename Emit>
inline void correlate_row_nhwc(const float* src, int64_t row_ld, Taps<KH, KW> taps, int64_t sw, int64_t dh,
                               int64_t dw, const Vec* w, const Vec& init, int64_t out_w, Emit&& emit) {
  constexpr int64_t kU = 4;
  const TapWeights<KH, KW> weight(w);
  const int64_t col_step = (SW > 0 ? SW : sw) * kL;
  int64_t ow = 0;
  for (; ow + kU <= out_w; ow += kU) {
    Vec acc[kU];
    for (int64_t u = 0; u < kU; ++u) acc[u] = init;
    const float* base = src + ow * col_step;
    for (int64_t kh = 0; kh < taps.h(); ++kh) {
      for (int64_t kw = 0; kw < taps.w(); ++kw) {
        const Vec wt = weight[kh * taps.w() + kw];
        const float* p = base + kh * dh * row_ld + kw * dw * kL;
        for (int64_t u = 0; u < kU; ++u) acc[u] = at::vec::fmadd(Vec::loadu(p + u * col_step), wt, acc[u]);
      }
    }
    for (int64_t u = 0; u < kU; ++u) emit(ow + u, acc[u]);
  }
  for (; ow < out_w; ++ow) {
    Vec acc = init;
    const float* base = src + ow * col_step;
    for (int64_t kh = 0; kh < taps.h(); ++kh) {
      for (int64_t kw = 0; kw < taps.w(); ++kw) {
        acc = at::vec::fmadd(Vec::loadu(base + kh * dh * row_ld + kw * dw * kL), weight[kh * taps.w() + kw], acc);
      }
    }
    emit(ow, acc);
  }
}

template <typename T, int KH, int KW, int SW>
void forward_nhwc(const DepthwiseForwardArgs& a) {
  const DepthwiseGeometry& g = a.geo;
  const auto* x = static_cast<const T*>(a.x);
  const auto* w = static_cast<const T*>(a.weight);
  auto* out = static_cast<T*>(a.out);
  const Taps<KH, KW> taps{g.kernel_h, g.kernel_w};
  const int64_t C = g.channels, Cp = round_up(C, kL), blocks = Cp / kL, T_ = g.taps();
  const int64_t cols = g.in_w + 2 * g.pad_w, row_ld = cols * kL, span_h = (g.kernel_h - 1) * g.dil_h;
  const int64_t band = std::clamp<int64_t>((32768 / (cols * Cp) - span_h) / g.stride_h, 1, g.out_h);
  const int64_t bands = ceil_div(g.out_h, band);
  // Weights as [block][tap] vectors and bias as [block] vectors, float, zero past C.
  std::vector<Vec> wv(static_cast<size_t>(T_ * blocks)), bv(static_cast<size_t>(blocks));
  {
    std::vector<float> lanes(static_cast<size_t>(Cp), 0.f);
    for (int64_t t = 0; t < T_; ++t) {
      for (int64_t c = 0; c < C; ++c) lanes[c] = static_cast<float>(w[c * T_ + t]);
      for (int64_t b = 0; b < blocks; ++b) wv[b * T_ + t] = Vec::loadu(lanes.data() + b * kL);
    }
    std::fill(lanes.begin(), lanes.end(), 0.f);
    for (int64_t c = 0; c < C && a.bias; ++c) lanes[c] = static_cast<const float*>(a.bias)[c];
    for (int64_t b = 0; b < blocks; ++b) bv[b] = Vec::loadu(lanes.data() + b * kL);
  }
  at::parallel_for(0, g.batch * bands, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> xs;
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t n = task / bands, oh0 = (task % bands) * band, oh1 = std::min(g.out_h, oh0 + band);
      const int64_t ih0 = oh0 * g.stride_h - g.pad_h, rows = (oh1 - 1 - oh0) * g.stride_h + span_h + 1;
      const int64_t block_ld = rows * row_ld;
      xs.assign(static_cast<size_t>(blocks * block_ld), 0.f);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t ih = ih0 + r;
        if (ih < 0 || ih >= g.in_h) continue;
        const T* src = x + (n * g.in_h + ih) * g.in_w * C;
        float* dst = xs.data() + r * row_ld + g.pad_w * kL;
        for (int64_t iw = 0; iw < g.in_w; ++iw) {
          const T* s = src + iw * C;
          float* d = dst + iw * kL;
          int64_t c = 0;
          if constexpr (std::is_same_v<T, float>) {
            for (; c + kL <= C; c += kL) {
              Vec v = Vec::loadu(s + c);
              if (a.input_relu) v = relu(v);
              v.store(d + (c / kL) * block_ld);
            }
          }
          for (; c < C; ++c) d[(c / kL) * block_ld + c % kL] = relu_rt(static_cast<float>(s[c]), a.input_relu);
        }
      }
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const float* base = xs.data() + (oh - oh0) * g.stride_h * row_ld;
        T* orow = out + (n * g.out_h + oh) * g.out_w * C;
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t c0 = b * kL, cnt = std::min(kL, C - c0);
          correlate_row_nhwc<KH, KW, SW>(base + b * block_ld, row_ld, taps, g.stride_w, g.dil_h, g.dil_w,
                                         wv.data() + b * T_, bv[b], g.out_w, [&](int64_t ow, const Vec& acc) {
                                           store_lanes(orow + ow * C + c0, activate(a.activation, acc), cnt);
                                         });
        }
      }
    }
  });
}

template <typename T, int KH, int KW>
void backward_nhwc(const DepthwiseBackwardArgs& a) {
  const DepthwiseGeometry& g = a.geo;
  const BackwardData<T> io(a);
  const Taps<KH, KW> taps{g.kernel_h, g.kernel_w};
  const int64_t C = g.channels, blocks = ceil_div(C, kL), T_ = g.taps();
  const int64_t srows = g.in_h + (g.kernel_h - 1) * g.dil_h, scols = g.in_w + (g.kernel_w - 1) * g.dil_w;
  const Scatter sc = Scatter::of(g);
  // One task per channel block: its weight/bias sums run over the batch in a fixed order.
  at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
    BlockScratch xs, gb, gs;
    xs.init(g.in_h + 2 * g.pad_h, g.in_w + 2 * g.pad_w);
    gb.init(g.out_h, g.out_w);
    if (io.grad_input) gs.init(srows, scols);
    std::vector<Vec> wflip(static_cast<size_t>(T_)), acc_w(static_cast<size_t>(T_));
    for (int64_t blk = lo; blk < hi; ++blk) {
      const int64_t c0 = blk * kL, cnt = std::min(kL, C - c0);
      if (io.grad_input) block_weights(io.w, T_, c0, cnt, true, wflip);
      std::fill(acc_w.begin(), acc_w.end(), Vec(0.f));
      Vec acc_b(0.f);
      for (int64_t n = 0; n < g.batch; ++n) {
        const int64_t ooff = n * g.out_h * g.out_w * C + c0;
        for (int64_t p = 0; p < g.out_h * g.out_w; ++p) {
          float* d = gb.data.data() + p * kL;
          for (int64_t l = 0; l < cnt; ++l) {
            const int64_t o = ooff + p * C + l;
            d[l] = static_cast<float>(masked_grad_out(a.activation, io.gy, io.y, o));
          }
        }
        const T* img = io.x + n * g.in_h * g.in_w * C;
        if (io.param_grads()) {
          xs.fill(img, g.in_h, g.in_w, C, c0, cnt, g.pad_h, g.pad_w, a.input_relu);
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              const Vec gv = Vec::loadu(gb.at(oh, ow));
              acc_b = acc_b + gv;
              for (int64_t kh = 0; kh < taps.h(); ++kh) {
                const float* row = xs.at(oh * g.stride_h + kh * g.dil_h, ow * g.stride_w);
                for (int64_t kw = 0; kw < taps.w(); ++kw) {
                  const int64_t t = kh * taps.w() + kw;
                  acc_w[t] = at::vec::fmadd(gv, Vec::loadu(row + kw * g.dil_w * kL), acc_w[t]);
                }
              }
            }
          }
        }
        if (io.grad_input) {
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const int64_t r = oh * g.stride_h + sc.row_off;
            if (r < 0 || r >= srows) continue;
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              const int64_t c = ow * g.stride_w + sc.col_off;
              if (c >= 0 && c < scols) Vec::loadu(gb.at(oh, ow)).store(gs.at(r, c));
            }
          }
          T* gi = io.grad_input + n * g.in_h * g.in_w * C + c0;
          const T* xi = img + c0;
          for (int64_t ih = 0; ih < g.in_h; ++ih) {
            correlate_row_nhwc<KH, KW, 1>(gs.at(ih, 0), gs.cols * kL, taps, 1, g.dil_h, g.dil_w, wflip.data(),
                                          Vec(0.f), g.in_w, [&](int64_t iw, const Vec& acc) {
                                    const int64_t off = (ih * g.in_w + iw) * C;
                                    if (a.input_relu) {
                                      alignas(64) float lanes[kL];
                                      acc.store(lanes);
                                      for (int64_t l = 0; l < cnt; ++l) {
                                        gi[off + l] = static_cast<T>(static_cast<float>(xi[off + l]) > 0.f ? lanes[l] : 0.f);
                                      }
                                    } else {
                                      store_lanes(gi + off, acc, cnt);
                                    }
                                  });
          }
        }
      }
      alignas(64) float lanes[kL];
      for (int64_t t = 0; t < T_ && io.grad_weight; ++t) {
        acc_w[t].store(lanes);
        for (int64_t l = 0; l < cnt; ++l) io.grad_weight[(c0 + l) * T_ + t] = lanes[l];
      }
      if (io.grad_bias) {
        acc_b.store(lanes);
        for (int64_t l = 0; l < cnt; ++l) io.grad_bias[c0 + l] = lanes[l];
      }
    }
  });
}

// Compile-time kernel sizes (3x3, 5x5; else run-time) and NCHW column strides (1, 2; else gathered).
template <typename F>
inline void with_kernel_size(int64_t kh, int64_t kw, F&& f) {
  if (kh == 3 && kw == 3) {
    f(std::integral_constant<int, 3>{});
  } else if (kh == 5 && kw == 5) {
    f(std::integral_constant<int, 5>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

template <typename F>
inline void with_column_stride(int64_t sw, F&& f) {
  if (sw == 1) {
    f(std::integral_constant<int, 1>{});
  } else if (sw == 2) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

template <typename T>
void forward(const DepthwiseForwardArgs& a) {
  with_kernel_size(a.geo.kernel_h, a.geo.kernel_w, [&](auto K) {
    constexpr int k = decltype(K)::value;
    with_column_stride(a.geo.stride_w, [&](auto S) {
      if (a.geo.channels_last) {
        forward_nhwc<T, k, k, decltype(S)::value>(a);
      } else {
        forward_nchw<T, k, k, decltype(S)::value>(a);
      }
    });
  });
}

template <typename T>
void backward(const DepthwiseBackwardArgs& a) {
  with_kernel_size(a.geo.kernel_h, a.geo.kernel_w, [&](auto K) {
    constexpr int k = decltype(K)::value;
    if (a.geo.channels_last) {
      backward_nhwc<T, k, k>(a);
    } else {
      with_column_stride(a.geo.stride_w, [&](auto S) { backward_nchw<T, k, k, decltype(S)::value>(a); });
    }
  });
}

}  // namespace depthwise_fast
}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
