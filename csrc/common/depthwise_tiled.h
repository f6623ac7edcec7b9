// The tiled depthwise-convolution programs of the CUDA backend, written as C10_HOST_DEVICE code so that the CPU can
// run them too.
//
// A program is a block's work split into phases separated by block barriers (common/program.h): the CUDA kernel
// (cuda/program.cuh) runs them with __syncthreads() between phases; the emulator (cpu/program_emulator.h, test
// hooks in cpu/depthwise_tiled_emulation.cpp) runs the same phases thread by thread on the CPU with tracked shared
// memory, so the CPU tests check the exact tiling, indexing and arithmetic the GPU runs
// (tests/test_depthwise_tiled.py).
//
// Programs (float, half, bfloat16; float32 accumulation; the generic kernels keep float64 and the cases below):
//   NchwForward     a block = `planes` (n, oc) planes x a tile of outputs; the input halo tile (input ReLU and zero
//                   padding applied) is staged in shared memory as float; each thread computes kRows outputs of one
//                   column with the kernel's weights in registers; the epilogue (bias + activation) on the way out.
//   NhwcForward     a thread = VEC channels (one 16-byte load) x kCols outputs of one row, each input vector loaded
//                   once for every output it reaches; the block's weights staged in shared memory as [tap][channel];
//                   multiplier 1.
//   NchwInputGrad   the transposed convolution as a gather: the activation-masked grad_out tile of the m output
//                   planes of an input plane staged in shared memory; no atomics.
//   NhwcInputGrad   VEC channels x a strip of input columns per thread (stride 1; else one pixel), gathered from
//                   grad_out; multiplier 1.
//   Nchw/NhwcParamGrad  weight and bias gradients of one channel (block of 32 channels) over a chunk of the batch's
//                   positions, all taps at once, reduced in the block in a fixed order into per-chunk partials;
//   ParamGradFinish adds each (channel, tap)'s partials in a fixed order. Deterministic always, and independent of
//                   the device (the chunking depends on the shape only).
// Kernel size and stride are compile-time for 3x3 and 5x5 with stride 1 or 2 and dilation 1 (otherwise all come
// from the geometry at run time). y (the saved output) is read only when there is an activation to mask with; the
// backward programs see only activations whose gradient follows from the output (grad_from_output): the host plan
// turns the others into "none" on an already masked grad_out (common/depthwise_host.cpp).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/depthwise.h"
#include "common/program.h"

namespace fastblocks::tiled {

// The program machinery (Shared, SharedTracker, VecPack, load_vec, ...) is common/program.h.
using namespace ::fastblocks::program;

// act'(grad) from the saved output; y is not read when there is no activation.
template <typename T>
C10_HOST_DEVICE inline float masked_grad(const ActivationSpec& act, const T* gy, const T* y, int64_t off) {
  return masked_grad_out(act, gy, y, off);
}

C10_HOST_DEVICE inline float input_value(float v, bool input_relu) {
  return input_relu ? relu(v) : v;
}

// Compile-time kernel size and stride (dilation 1); 0 = from the geometry.
template <int KH_, int KW_, int SH_, int SW_>
struct KernelShape {
  static constexpr int KH = KH_, KW = KW_, SH = SH_, SW = SW_;
  static constexpr bool kStatic = KH_ > 0;
};
using DynamicShape = KernelShape<0, 0, 0, 0>;

inline bool dilation_one(const DepthwiseGeometry& g) { return g.dil_h == 1 && g.dil_w == 1; }

// f(KernelShape<...>{}) for the geometry's kernel: 3x3 and 5x5 at stride 1 or 2 with dilation 1 compile-time,
// everything else dynamic.
template <typename F>
void with_kernel_shape(const DepthwiseGeometry& g, F&& f) {
  if (dilation_one(g) && g.kernel_h == g.kernel_w && g.stride_h == g.stride_w) {
    const int64_t k = g.kernel_h, s = g.stride_h;
    if (k == 3 && s == 1) return f(KernelShape<3, 3, 1, 1>{});
    if (k == 3 && s == 2) return f(KernelShape<3, 3, 2, 2>{});
    if (k == 5 && s == 1) return f(KernelShape<5, 5, 1, 1>{});
    if (k == 5 && s == 2) return f(KernelShape<5, 5, 2, 2>{});
  }
  return f(DynamicShape{});
}

template <typename S>
std::string shape_name(const DepthwiseGeometry& g) {
  if constexpr (S::kStatic) {
    return std::to_string(S::KH) + "x" + std::to_string(S::KW) + "s" + std::to_string(S::SH);
  } else {
    (void)g;
    return "dynamic";
  }
}

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  if constexpr (std::is_same_v<T, c10::Half>) return "half";
  return "bfloat16";
}

// Kernel extent and stride of a program, compile-time where S says so.
template <typename S>
struct Taps {
  const DepthwiseGeometry& g;
  C10_HOST_DEVICE int64_t kh() const { return S::kStatic ? S::KH : g.kernel_h; }
  C10_HOST_DEVICE int64_t kw() const { return S::kStatic ? S::KW : g.kernel_w; }
  C10_HOST_DEVICE int64_t sh() const { return S::kStatic ? S::SH : g.stride_h; }
  C10_HOST_DEVICE int64_t sw() const { return S::kStatic ? S::SW : g.stride_w; }
  C10_HOST_DEVICE int64_t dh() const { return S::kStatic ? 1 : g.dil_h; }
  C10_HOST_DEVICE int64_t dw() const { return S::kStatic ? 1 : g.dil_w; }
};

// Tiles of a plane: kRows rows x tile_w columns per thread group; `planes` planes per block.
struct PlaneTiling {
  int tile_w = 0, row_groups = 0, planes = 0;  // used threads: planes * row_groups * tile_w
  int64_t tiles_w = 0, tiles_h = 0, plane_groups = 0;
  int shared_h = 0, shared_w = 0, copies = 1;  // a plane's shared tile; `copies` of it per plane

  C10_HOST_DEVICE int64_t shared_floats() const { return static_cast<int64_t>(planes) * copies * shared_h * shared_w; }

  C10_HOST_DEVICE int used_threads() const { return planes * row_groups * tile_w; }
  int64_t blocks() const { return plane_groups * tiles_h * tiles_w; }
  int threads() const { return round_up(used_threads(), 32); }

  // Position of a block: first plane, first row, first column of its tile.
  struct Origin {
    int64_t plane0, row0, col0;
  };
  C10_HOST_DEVICE Origin origin(int64_t block, int rows) const {
    const int64_t tw = block % tiles_w;
    const int64_t rest = block / tiles_w;
    return {(rest / tiles_h) * planes, (rest % tiles_h) * row_groups * rows, tw * tile_w};
  }
  // A thread's plane (within the block), row group and column.
  struct Slot {
    int plane, row_group, col;
  };
  C10_HOST_DEVICE Slot slot(int thread) const {
    const int per_plane = row_groups * tile_w;
    const int rem = thread % per_plane;
    return {thread / per_plane, rem / tile_w, rem % tile_w};
  }

  // Tiling of a plane of height x width elements, `rows` rows per thread; extent(tile rows, tile columns) is the
  // (rows, columns) of the shared tile a plane's tile needs, `copies` of it per plane. planes = 0: nothing fits in
  // shared memory (use the generic kernels).
  template <typename ExtentFn>
  static PlaneTiling make(int64_t plane_count, int64_t height, int64_t width, int rows, int64_t copies,
                          ExtentFn extent) {
    PlaneTiling t;
    const auto floats = [&](const PlaneTiling& u) {
      const auto e = extent(u.row_groups * rows, u.tile_w);
      return u.planes * copies * e.first * e.second;
    };
    t.tile_w = static_cast<int>(std::min<int64_t>(width, 32));
    t.row_groups = static_cast<int>(std::min<int64_t>(ceil_div(height, rows), std::max(1, kBlockThreads / t.tile_w)));
    t.planes = static_cast<int>(
        std::clamp<int64_t>(kBlockThreads / (t.row_groups * t.tile_w), 1, std::max<int64_t>(plane_count, 1)));
    while (floats(t) > kMaxSharedFloats) {
      if (t.planes > 1) {
        t.planes = (t.planes + 1) / 2;
      } else if (t.row_groups > 1) {
        t.row_groups = (t.row_groups + 1) / 2;
      } else {
        t.planes = 0;
        return t;
      }
    }
    t.tiles_w = ceil_div(width, t.tile_w);
    t.tiles_h = ceil_div(height, static_cast<int64_t>(t.row_groups) * rows);
    t.plane_groups = ceil_div(plane_count, t.planes);
    const auto e = extent(t.row_groups * rows, t.tile_w);
    t.shared_h = static_cast<int>(e.first);
    t.shared_w = static_cast<int>(e.second);
    t.copies = static_cast<int>(copies);
    return t;
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Forward, NCHW.
template <typename T, typename S>
struct NchwForward {
  static constexpr int kRows = 4, kPhases = 2;
  using State = NoState;
  const T* x;
  const T* w;         // [C * m, kh, kw]
  const float* bias;  // [C * m] or null
  T* out;
  DepthwiseGeometry g;
  ActivationSpec act;
  bool input_relu;
  PlaneTiling tiling;  // shared: the input tile of each plane

  static NchwForward make(const DepthwiseForwardArgs& a) {
    NchwForward p{static_cast<const T*>(a.x), static_cast<const T*>(a.weight), static_cast<const float*>(a.bias),
                  static_cast<T*>(a.out), a.geo, a.activation, a.input_relu, {}};
    const Taps<S> k{p.g};
    p.tiling = PlaneTiling::make(p.g.batch * p.g.out_channels(), p.g.out_h, p.g.out_w, kRows, 1, [&](int rows, int cols) {
      return std::pair<int64_t, int64_t>{(rows - 1) * k.sh() + (k.kh() - 1) * k.dh() + 1,
                                         (cols - 1) * k.sw() + (k.kw() - 1) * k.dw() + 1};
    });
    return p;
  }
  bool ok() const { return tiling.planes > 0; }
  int64_t blocks() const { return tiling.blocks(); }
  int threads() const { return tiling.threads(); }
  C10_HOST_DEVICE int64_t shared_elems() const { return tiling.shared_floats(); }
  std::string name() const { return std::string("nchw_forward<") + dtype_name<T>() + "," + shape_name<S>(g) + ">"; }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int threads, Shared s, State&) const {
    const Taps<S> t{g};
    const auto o = tiling.origin(block, kRows);
    const int64_t plane_count = g.batch * g.out_channels();
    const int in_tile_w = tiling.shared_w, plane_floats = tiling.shared_h * in_tile_w;
    if (k == 0) {  // stage the input tiles
      const int64_t ih0 = o.row0 * t.sh() - g.pad_h, iw0 = o.col0 * t.sw() - g.pad_w;
      for (int i = thread; i < tiling.planes * plane_floats; i += threads) {
        const int p = i / plane_floats;
        const int r = (i - p * plane_floats) / in_tile_w;
        const int c = i % in_tile_w;
        const int64_t plane = o.plane0 + p, ih = ih0 + r, iw = iw0 + c;
        float v = 0.f;
        if (plane < plane_count && ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) {
          const int64_t n = quotient(plane, g.out_channels());
          const int64_t ic = quotient(plane - n * g.out_channels(), g.multiplier);
          v = input_value(static_cast<float>(x[((n * g.channels + ic) * g.in_h + ih) * g.in_w + iw]), input_relu);
        }
        s.store(i, v);
      }
      return;
    }
    if (thread >= tiling.used_threads()) return;
    const auto sl = tiling.slot(thread);
    const int64_t plane = o.plane0 + sl.plane, ow = o.col0 + sl.col, oh0 = o.row0 + sl.row_group * kRows;
    if (plane >= plane_count || ow >= g.out_w || oh0 >= g.out_h) return;
    const int64_t oc = plane % g.out_channels();
    const int64_t base = static_cast<int64_t>(sl.plane) * plane_floats +
                         sl.row_group * kRows * t.sh() * in_tile_w + sl.col * t.sw();
    float acc[kRows] = {};
    if constexpr (S::kStatic) {
      float wr[S::KH][S::KW];
#pragma unroll
      for (int kh = 0; kh < S::KH; ++kh)
#pragma unroll
        for (int kw = 0; kw < S::KW; ++kw) wr[kh][kw] = static_cast<float>(w[(oc * S::KH + kh) * S::KW + kw]);
#pragma unroll
      for (int j = 0; j < kRows; ++j)
#pragma unroll
        for (int kh = 0; kh < S::KH; ++kh)
#pragma unroll
          for (int kw = 0; kw < S::KW; ++kw) acc[j] += s.load(base + (j * S::SH + kh) * in_tile_w + kw) * wr[kh][kw];
    } else {
      for (int64_t kh = 0; kh < t.kh(); ++kh) {
        for (int64_t kw = 0; kw < t.kw(); ++kw) {
          const float wv = static_cast<float>(w[(oc * t.kh() + kh) * t.kw() + kw]);
#pragma unroll
          for (int j = 0; j < kRows; ++j) acc[j] += s.load(base + (j * t.sh() + kh * t.dh()) * in_tile_w + kw * t.dw()) * wv;
        }
      }
    }
    const float b = bias != nullptr ? bias[oc] : 0.f;
    T* dst = out + plane * g.out_h * g.out_w + ow;
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      if (oh0 + j < g.out_h) dst[(oh0 + j) * g.out_w] = static_cast<T>(activate(act, acc[j] + b));
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// NHWC (channels_last), multiplier 1: a block = `lanes` consecutive channel vectors (the fastest index: a warp's
// loads are contiguous) x `rows` work items (output column strips, or input pixels). Phase 0 stages the block's
// channels' weights in shared memory as [tap][channel] floats, read from the weight's own [C, taps] layout (one
// contiguous range, so no transposed copy is made per call); phase 1 computes.
struct ChannelGroups {
  int lanes = 0, rows = 0;  // lanes * rows <= kBlockThreads
  int vec = 1, cols = 1;    // channels per lane, columns per strip
  int64_t channels = 0, taps = 0, height = 0, strips = 0;  // of the image rows the items walk
  int64_t vecs = 0, groups = 0, items = 0, item_blocks = 0;

  // Work items = strips of `cols` columns of the batch x height x width image rows.
  static ChannelGroups make(int64_t channels, int vec, int64_t batch, int64_t height, int64_t width, int cols,
                            int64_t taps) {
    ChannelGroups c;
    c.vec = vec;
    c.cols = cols;
    c.channels = channels;
    c.taps = taps;
    c.height = height;
    c.strips = ceil_div(width, cols);
    c.vecs = channels / vec;
    c.lanes = static_cast<int>(std::min<int64_t>(c.vecs, 32));
    while (c.lanes > 1 && taps * c.lanes * vec > kMaxSharedFloats) c.lanes /= 2;
    if (taps * c.lanes * vec > kMaxSharedFloats) {
      c.lanes = 0;
      return c;
    }
    c.rows = kBlockThreads / c.lanes;
    c.groups = ceil_div(c.vecs, c.lanes);
    c.items = batch * height * c.strips;
    c.item_blocks = ceil_div(c.items, c.rows);
    return c;
  }
  bool ok() const { return lanes > 0; }
  int64_t blocks() const { return groups * item_blocks; }
  int threads() const { return round_up(lanes * rows, 32); }
  C10_HOST_DEVICE int width() const { return lanes * vec; }  // channels of a group: a row of the shared weights
  C10_HOST_DEVICE int64_t shared_floats() const { return taps * width(); }

  // A thread's work: `vec` channels x a strip of `cols` columns of one image row: the lane's first channel in the
  // group's shared weights (cl) and in the tensor (c0), the strip's first column, the row and the image.
  // active = false: the thread idles.
  struct Strip {
    bool active;
    int cl;
    int64_t c0, col0, row, n;
  };
  C10_HOST_DEVICE Strip strip(int64_t block, int thread) const {
    const int64_t group = block % groups;
    const int lane = thread % lanes, row_in_block = thread / lanes;
    const int64_t vector = group * lanes + lane, item = (block / groups) * rows + row_in_block;
    if (row_in_block >= rows || item >= items || vector >= vecs) return {false, 0, 0, 0, 0, 0};
    const int64_t image_row = item / strips;
    return {true, lane * vec, vector * vec, (item % strips) * cols, image_row % height, image_row / height};
  }

  // Phase 0: weights of the group's channels [c_lo, c_lo + width) as shared[tap * width + channel]; channels past
  // C read as 0.
  template <typename T>
  C10_HOST_DEVICE void stage_weights(const T* w, int64_t block, int thread, int threads, Shared s) const {
    const int64_t c_lo = (block % groups) * width();
    for (int64_t i = thread; i < taps * width(); i += threads) {
      const int64_t c = i / taps, tap = i - c * taps;  // i runs along the weight's memory: coalesced
      s.store(tap * width() + c, c_lo + c < channels ? static_cast<float>(w[(c_lo + c) * taps + tap]) : 0.f);
    }
  }
};

template <typename T, int VEC, typename S>
struct NhwcForward {
  static constexpr int kCols = S::kStatic ? 4 : 1, kPhases = 2;
  using State = NoState;
  const T* x;
  const T* w;  // [C, kh * kw]
  const float* bias;
  T* out;
  DepthwiseGeometry g;
  ActivationSpec act;
  bool input_relu;
  ChannelGroups cg;  // items: strips of kCols outputs of the output rows

  static NhwcForward make(const DepthwiseForwardArgs& a) {
    const DepthwiseGeometry& g = a.geo;
    return {static_cast<const T*>(a.x), static_cast<const T*>(a.weight), static_cast<const float*>(a.bias),
            static_cast<T*>(a.out), g, a.activation, a.input_relu,
            ChannelGroups::make(g.channels, VEC, g.batch, g.out_h, g.out_w, kCols, g.taps())};
  }
  bool ok() const { return cg.ok(); }
  int64_t blocks() const { return cg.blocks(); }
  int threads() const { return cg.threads(); }
  C10_HOST_DEVICE int64_t shared_elems() const { return cg.shared_floats(); }
  std::string name() const {
    return std::string("nhwc_forward<") + dtype_name<T>() + ",vec" + std::to_string(VEC) + "," + shape_name<S>(g) + ">";
  }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int threads, Shared s, State&) const {
    if (k == 0) return cg.stage_weights(w, block, thread, threads, s);
    const auto st = cg.strip(block, thread);
    if (!st.active) return;
    const Taps<S> t{g};
    const int width = cg.width(), cl = st.cl;
    const int64_t C = g.channels, c0 = st.c0, ow0 = st.col0, oh = st.row, n = st.n;
    float acc[kCols][VEC] = {};
    const int64_t iw0 = ow0 * t.sw() - g.pad_w;
    for (int64_t kh = 0; kh < t.kh(); ++kh) {
      const int64_t ih = oh * t.sh() - g.pad_h + kh * t.dh();
      if (ih < 0 || ih >= g.in_h) continue;
      const T* src = x + (n * g.in_h + ih) * g.in_w * C + c0;
      if constexpr (S::kStatic) {
        float wr[S::KW][VEC];
#pragma unroll
        for (int kw = 0; kw < S::KW; ++kw)
#pragma unroll
          for (int v = 0; v < VEC; ++v) wr[kw][v] = s.load((kh * S::KW + kw) * width + cl + v);
        // Input columns iw0 .. iw0 + (kCols - 1) * SW + KW - 1, each loaded once and used by every output it reaches.
#pragma unroll
        for (int q = 0; q < (kCols - 1) * S::SW + S::KW; ++q) {
          const int64_t iw = iw0 + q;
          if (iw < 0 || iw >= g.in_w) continue;
          float xv[VEC];
          load_vec<VEC>(src + iw * C, xv);
#pragma unroll
          for (int v = 0; v < VEC; ++v) xv[v] = input_value(xv[v], input_relu);
#pragma unroll
          for (int j = 0; j < kCols; ++j) {
            const int kw = q - j * S::SW;
            if (kw < 0 || kw >= S::KW) continue;
#pragma unroll
            for (int v = 0; v < VEC; ++v) acc[j][v] += xv[v] * wr[kw][v];
          }
        }
      } else {
        for (int64_t kw = 0; kw < t.kw(); ++kw) {
          const int64_t iw = iw0 + kw * t.dw();
          if (iw < 0 || iw >= g.in_w) continue;
          float xv[VEC];
          load_vec<VEC>(src + iw * C, xv);
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            acc[0][v] += input_value(xv[v], input_relu) * s.load((kh * t.kw() + kw) * width + cl + v);
          }
        }
      }
    }
    float b[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) b[v] = bias != nullptr ? bias[c0 + v] : 0.f;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      if (ow0 + j >= g.out_w) break;
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[j][v] = activate(act, acc[j][v] + b[v]);
      store_vec<VEC>(out + ((n * g.out_h + oh) * g.out_w + ow0 + j) * C + c0, acc[j]);
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// grad_input, NCHW: a block = `planes` input planes x a tile of input positions.
template <typename T, typename S>
struct NchwInputGrad {
  static constexpr int kRows = 4, kPhases = 2;
  using State = NoState;
  const T* gy;
  const T* y;
  const T* x;
  const T* w;
  T* gi;
  DepthwiseGeometry g;
  ActivationSpec act;
  bool input_relu;
  PlaneTiling tiling;  // shared: the grad_out tile of each of the m output planes of each input plane

  static NchwInputGrad make(const DepthwiseBackwardArgs& a) {
    NchwInputGrad p{static_cast<const T*>(a.grad_out), static_cast<const T*>(a.out), static_cast<const T*>(a.x),
                    static_cast<const T*>(a.weight), static_cast<T*>(a.grad_input), a.geo, a.activation,
                    a.input_relu, {}};
    const Taps<S> k{p.g};
    // Input rows ih0 .. ih0 + rows - 1 are read by output rows ceil((ih0 + ph - (kh - 1) dh) / sh) ..
    // floor((ih0 + rows - 1 + ph) / sh): at most (rows - 1 + (kh - 1) dh) / sh + 1 of them.
    p.tiling = PlaneTiling::make(p.g.batch * p.g.channels, p.g.in_h, p.g.in_w, kRows, p.g.multiplier,
                                 [&](int rows, int cols) {
                                   return std::pair<int64_t, int64_t>{(rows - 1 + (k.kh() - 1) * k.dh()) / k.sh() + 1,
                                                                      (cols - 1 + (k.kw() - 1) * k.dw()) / k.sw() + 1};
                                 });
    return p;
  }
  bool ok() const { return tiling.planes > 0; }
  int64_t blocks() const { return tiling.blocks(); }
  int threads() const { return tiling.threads(); }
  C10_HOST_DEVICE int64_t shared_elems() const { return tiling.shared_floats(); }
  std::string name() const {
    return std::string("nchw_input_grad<") + dtype_name<T>() + "," + shape_name<S>(g) + ">";
  }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int threads, Shared s, State&) const {
    const Taps<S> t{g};
    const auto o = tiling.origin(block, kRows);
    const int64_t plane_count = g.batch * g.channels, m = g.multiplier, oc_count = g.out_channels();
    const int64_t oh_lo = ceil_div_signed(o.row0 + g.pad_h - (t.kh() - 1) * t.dh(), t.sh());
    const int64_t ow_lo = ceil_div_signed(o.col0 + g.pad_w - (t.kw() - 1) * t.dw(), t.sw());
    const int out_tile_w = tiling.shared_w, tile_floats = tiling.shared_h * out_tile_w;
    if (k == 0) {  // stage act'(grad_out) of the m output planes of each input plane
      const int total = static_cast<int>(shared_elems());  // <= kMaxSharedFloats
      for (int i = thread; i < total; i += threads) {
        const int pj = i / tile_floats;  // plane * m + j
        const int r = (i - pj * tile_floats) / out_tile_w;
        const int c = i % out_tile_w;
        const int64_t pq = quotient(pj, m), plane = o.plane0 + pq, oh = oh_lo + r, ow = ow_lo + c;
        float v = 0.f;
        if (plane < plane_count && oh >= 0 && oh < g.out_h && ow >= 0 && ow < g.out_w) {
          const int64_t n = quotient(plane, g.channels), oc = (plane - n * g.channels) * m + (pj - pq * m);
          const int64_t off = ((n * oc_count + oc) * g.out_h + oh) * g.out_w + ow;
          v = masked_grad(act, gy, y, off);
        }
        s.store(i, v);
      }
      return;
    }
    if (thread >= tiling.used_threads()) return;
    const auto sl = tiling.slot(thread);
    const int64_t plane = o.plane0 + sl.plane, iw = o.col0 + sl.col, ih0 = o.row0 + sl.row_group * kRows;
    if (plane >= plane_count || iw >= g.in_w || ih0 >= g.in_h) return;
    const int64_t ic = plane % g.channels;
    float acc[kRows] = {};
    for (int64_t j = 0; j < m; ++j) {
      const int64_t oc = ic * m + j;
      const int64_t tile = (static_cast<int64_t>(sl.plane) * m + j) * tile_floats;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int64_t ih = ih0 + r;
#pragma unroll
        for (int64_t kh = 0; kh < t.kh(); ++kh) {
          // u > -sh by the choice of oh_lo, and a negative u is never a multiple of sh: r = u / sh >= 0.
          const int64_t u = ih + g.pad_h - kh * t.dh() - oh_lo * t.sh();
          if (u % t.sh() != 0) continue;
#pragma unroll
          for (int64_t kw = 0; kw < t.kw(); ++kw) {
            const int64_t v = iw + g.pad_w - kw * t.dw() - ow_lo * t.sw();
            if (v % t.sw() != 0) continue;
            acc[r] += s.load(tile + (u / t.sh()) * out_tile_w + v / t.sw()) *
                      static_cast<float>(w[(oc * t.kh() + kh) * t.kw() + kw]);
          }
        }
      }
    }
    const int64_t first = (plane * g.in_h + ih0) * g.in_w + iw;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (ih0 + r >= g.in_h) break;
      const int64_t off = first + r * g.in_w;
      if (input_relu && !(static_cast<float>(x[off]) > 0.f)) acc[r] = 0.f;
      gi[off] = static_cast<T>(acc[r]);
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// grad_input, NHWC, multiplier 1, gathered from grad_out; the weights staged as in NhwcForward. A thread = VEC
// channels x kCols input columns of one row: at stride 1 (compile-time shapes) each act'(grad_out) vector is loaded
// once for all the columns it reaches; otherwise one pixel per thread.
template <typename T, int VEC, typename S>
struct NhwcInputGrad {
  static constexpr int kCols = (S::kStatic && S::SH == 1 && S::SW == 1) ? 4 : 1, kPhases = 2;
  using State = NoState;
  const T* gy;
  const T* y;
  const T* x;
  const T* w;
  T* gi;
  DepthwiseGeometry g;
  ActivationSpec act;
  bool input_relu;
  ChannelGroups cg;  // items: strips of kCols pixels of the input rows

  static NhwcInputGrad make(const DepthwiseBackwardArgs& a) {
    const DepthwiseGeometry& g = a.geo;
    return {static_cast<const T*>(a.grad_out), static_cast<const T*>(a.out), static_cast<const T*>(a.x),
            static_cast<const T*>(a.weight), static_cast<T*>(a.grad_input), g, a.activation, a.input_relu,
            ChannelGroups::make(g.channels, VEC, g.batch, g.in_h, g.in_w, kCols, g.taps())};
  }
  bool ok() const { return cg.ok(); }
  int64_t blocks() const { return cg.blocks(); }
  int threads() const { return cg.threads(); }
  C10_HOST_DEVICE int64_t shared_elems() const { return cg.shared_floats(); }
  std::string name() const {
    return std::string("nhwc_input_grad<") + dtype_name<T>() + ",vec" + std::to_string(VEC) + "," +
           shape_name<S>(g) + ">";
  }

  // act'(grad_out) at output (n, oh, ow), channels c0 .. c0 + VEC - 1.
  C10_HOST_DEVICE void masked_vec(int64_t off, float (&out)[VEC]) const {
    load_vec<VEC>(gy + off, out);
    if (act.kind != Activation::kNone) {
      float yv[VEC];
      load_vec<VEC>(y + off, yv);
#pragma unroll
      for (int v = 0; v < VEC; ++v) out[v] = activation_grad(act, out[v], yv[v]);
    }
  }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int threads, Shared s, State&) const {
    if (k == 0) return cg.stage_weights(w, block, thread, threads, s);
    const auto st = cg.strip(block, thread);
    if (!st.active) return;
    const Taps<S> t{g};
    const int width = cg.width(), cl = st.cl;
    const int64_t C = g.channels, c0 = st.c0, iw0 = st.col0, ih = st.row, n = st.n;
    float acc[kCols][VEC] = {};
    if constexpr (kCols > 1) {
      // Output columns ow0 .. ow0 + kCols + KW - 2 reach input columns iw0 .. iw0 + kCols - 1 (stride 1).
      const int64_t ow0 = iw0 + g.pad_w - (S::KW - 1);
#pragma unroll
      for (int kh = 0; kh < S::KH; ++kh) {
        const int64_t oh = ih + g.pad_h - kh;
        if (oh < 0 || oh >= g.out_h) continue;
        float wr[S::KW][VEC];
#pragma unroll
        for (int kw = 0; kw < S::KW; ++kw)
#pragma unroll
          for (int v = 0; v < VEC; ++v) wr[kw][v] = s.load((kh * S::KW + kw) * width + cl + v);
        const int64_t row_off = (n * g.out_h + oh) * g.out_w;
#pragma unroll
        for (int q = 0; q < kCols + S::KW - 1; ++q) {
          const int64_t ow = ow0 + q;
          if (ow < 0 || ow >= g.out_w) continue;
          float gv[VEC];
          masked_vec((row_off + ow) * C + c0, gv);
#pragma unroll
          for (int j = 0; j < kCols; ++j) {
            const int kw = j + S::KW - 1 - q;  // input column iw0 + j = ow - pad_w + kw
            if (kw < 0 || kw >= S::KW) continue;
#pragma unroll
            for (int v = 0; v < VEC; ++v) acc[j][v] += gv[v] * wr[kw][v];
          }
        }
      }
    } else {
#pragma unroll
      for (int64_t kh = 0; kh < t.kh(); ++kh) {
        const int64_t uh = ih + g.pad_h - kh * t.dh();
        if (uh < 0 || uh % t.sh() != 0 || uh / t.sh() >= g.out_h) continue;
        const int64_t row_off = (n * g.out_h + uh / t.sh()) * g.out_w;
#pragma unroll
        for (int64_t kw = 0; kw < t.kw(); ++kw) {
          const int64_t uw = iw0 + g.pad_w - kw * t.dw();
          if (uw < 0 || uw % t.sw() != 0 || uw / t.sw() >= g.out_w) continue;
          float gv[VEC];
          masked_vec((row_off + uw / t.sw()) * C + c0, gv);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[0][v] += gv[v] * s.load((kh * t.kw() + kw) * width + cl + v);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      if (iw0 + j >= g.in_w) break;
      const int64_t off = ((n * g.in_h + ih) * g.in_w + iw0 + j) * C + c0;
      if (input_relu) {
        float xv[VEC];
        load_vec<VEC>(x + off, xv);
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[j][v] = xv[v] > 0.f ? acc[j][v] : 0.f;
      }
      store_vec<VEC>(gi + off, acc[j]);
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Weight and bias gradients. Positions q = (n * out_h + oh) * out_w + ow of one output channel are cut into
// `chunks` ranges of chunk_len; partial[((oc * (taps + 1) + tap) * chunks + chunk] (tap == taps: the bias) holds a
// chunk's sum, and ParamGradFinish adds each (oc, tap)'s chunks in a fixed order.
struct ParamGradChunks {
  int64_t chunks = 1, chunk_len = 0;
  static ParamGradChunks make(int64_t positions, int64_t column_blocks, int64_t min_len) {
    ParamGradChunks c;
    c.chunks = std::max<int64_t>(1, std::min(ceil_div(2048, std::max<int64_t>(column_blocks, 1)),
                                             ceil_div(positions, min_len)));
    c.chunk_len = std::max<int64_t>(ceil_div(positions, c.chunks), 1);
    return c;
  }
};

inline int64_t param_grad_partial_floats(const DepthwiseGeometry& g, const ParamGradChunks& c) {
  return c.chunks * g.out_channels() * (g.taps() + 1);
}

// Output position (n, oh, ow) of flat position q, advanced by a fixed step without a division per step.
struct PositionWalk {
  int64_t n, oh, ow, d_n, d_oh, d_ow;
  C10_HOST_DEVICE PositionWalk(int64_t q, int64_t step, const DepthwiseGeometry& g) {
    ow = q % g.out_w;
    const int64_t r = q / g.out_w;
    oh = r % g.out_h;
    n = r / g.out_h;
    d_ow = step % g.out_w;
    const int64_t dr = step / g.out_w;
    d_oh = dr % g.out_h;
    d_n = dr / g.out_h;
  }
  C10_HOST_DEVICE void advance(const DepthwiseGeometry& g) {
    ow += d_ow;
    oh += d_oh;
    n += d_n;
    if (ow >= g.out_w) ow -= g.out_w, ++oh;
    if (oh >= g.out_h) oh -= g.out_h, ++n;
  }
};

// One output position's terms: acc[tap] += grad * x'(tap's input), acc[taps] += grad. `plane` is the input
// channel's plane of image n; row and column strides in elements.
template <int KH, int KW, typename T>
C10_HOST_DEVICE inline void accumulate_param_grad(float (&acc)[KH * KW + 1], float grad, const T* plane,
                                                  int64_t row_stride, int64_t col_stride, const DepthwiseGeometry& g,
                                                  int64_t oh, int64_t ow, bool input_relu) {
  acc[KH * KW] += grad;
#pragma unroll
  for (int kh = 0; kh < KH; ++kh) {
    const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dil_h;
    if (ih < 0 || ih >= g.in_h) continue;
    const T* row = plane + ih * row_stride;
#pragma unroll
    for (int kw = 0; kw < KW; ++kw) {
      const int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dil_w;
      if (iw < 0 || iw >= g.in_w) continue;
      acc[kh * KW + kw] += grad * input_value(static_cast<float>(row[iw * col_stride]), input_relu);
    }
  }
}

// What the weight-gradient programs read and write.
template <typename T>
struct ParamGradIO {
  const T* gy;
  const T* y;
  const T* x;
  float* partial;
  DepthwiseGeometry g;
  ActivationSpec act;
  bool input_relu;
  static ParamGradIO of(const DepthwiseBackwardArgs& a) {
    return {static_cast<const T*>(a.grad_out), static_cast<const T*>(a.out), static_cast<const T*>(a.x),
            static_cast<float*>(a.workspace), a.geo, a.activation, a.input_relu};
  }
};

// NCHW: a block = one output channel x one chunk; 256 threads stride over the chunk. The block's 256 x (taps + 1)
// sums are reduced in shared memory in a fixed order: 8 parts per (tap, lane) first, then the 32 lanes of a tap.
template <typename T, int KH, int KW>
struct NchwParamGrad {
  static constexpr int kTaps = KH * KW + 1, kLanes = 32, kParts = kBlockThreads / kLanes, kPhases = 3;
  using State = NoState;
  ParamGradIO<T> io;
  ParamGradChunks chunking;

  static ParamGradChunks chunks_for(const DepthwiseGeometry& g) {
    return ParamGradChunks::make(g.batch * g.out_h * g.out_w, g.out_channels(), 1024);
  }
  static NchwParamGrad make(const DepthwiseBackwardArgs& a) { return {ParamGradIO<T>::of(a), chunks_for(a.geo)}; }
  bool ok() const { return true; }
  int64_t blocks() const { return chunking.chunks * io.g.out_channels(); }
  int threads() const { return kBlockThreads; }
  C10_HOST_DEVICE int64_t shared_elems() const { return kTaps * (kBlockThreads + kLanes); }
  std::string name() const {
    return std::string("nchw_param_grad<") + dtype_name<T>() + "," + std::to_string(KH) + "x" + std::to_string(KW) +
           ">";
  }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int threads, Shared s, State&) const {
    const auto& [gy, y, x, partial, g, act, input_relu] = io;
    const int64_t chunk = block % chunking.chunks, oc = block / chunking.chunks;
    const int64_t lane_sums = kTaps * kBlockThreads;  // second region: [lane][tap]
    if (k == 0) {
      float acc[kTaps] = {};
      const int64_t begin = chunk * chunking.chunk_len + thread;
      const int64_t end = min64(g.batch * g.out_h * g.out_w, (chunk + 1) * chunking.chunk_len);
      if (begin < end) {
        PositionWalk p(begin, threads, g);
        const int64_t ic = oc / g.multiplier, plane = g.in_h * g.in_w;
        for (int64_t q = begin; q < end; q += threads, p.advance(g)) {
          const int64_t off = ((p.n * g.out_channels() + oc) * g.out_h + p.oh) * g.out_w + p.ow;
          accumulate_param_grad<KH, KW>(acc, masked_grad(act, gy, y, off), x + (p.n * g.channels + ic) * plane,
                                        g.in_w, 1, g, p.oh, p.ow, input_relu);
        }
      }
#pragma unroll
      for (int tap = 0; tap < kTaps; ++tap) s.store(tap * kBlockThreads + thread, acc[tap]);
    } else if (k == 1) {
      for (int i = thread; i < kTaps * kLanes; i += threads) {  // consecutive threads: consecutive lanes
        const int tap = i / kLanes, lane = i % kLanes;
        float sum = 0.f;
        for (int part = 0; part < kParts; ++part) sum += s.load(tap * kBlockThreads + part * kLanes + lane);
        s.store(lane_sums + lane * kTaps + tap, sum);
      }
    } else {
      for (int tap = thread; tap < kTaps; tap += threads) {
        float sum = 0.f;
        for (int lane = 0; lane < kLanes; ++lane) sum += s.load(lane_sums + lane * kTaps + tap);
        partial[(oc * kTaps + tap) * chunking.chunks + chunk] = sum;
      }
    }
  }
};

// NHWC: a block = 32 consecutive output channels (one per lane: coalesced loads) x 8 position groups x one chunk.
template <typename T, int KH, int KW>
struct NhwcParamGrad {
  static constexpr int kTaps = KH * KW + 1, kLanes = 32, kGroups = kBlockThreads / kLanes, kPhases = 2;
  using State = NoState;
  ParamGradIO<T> io;
  ParamGradChunks chunking;

  static ParamGradChunks chunks_for(const DepthwiseGeometry& g) {
    return ParamGradChunks::make(g.batch * g.out_h * g.out_w, ceil_div(g.out_channels(), kLanes), 512);
  }
  static NhwcParamGrad make(const DepthwiseBackwardArgs& a) { return {ParamGradIO<T>::of(a), chunks_for(a.geo)}; }
  bool ok() const { return true; }
  int64_t blocks() const { return chunking.chunks * ceil_div(io.g.out_channels(), kLanes); }
  int threads() const { return kBlockThreads; }
  C10_HOST_DEVICE int64_t shared_elems() const { return kTaps * kBlockThreads; }
  std::string name() const {
    return std::string("nhwc_param_grad<") + dtype_name<T>() + "," + std::to_string(KH) + "x" + std::to_string(KW) +
           ">";
  }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int threads, Shared s, State&) const {
    const auto& [gy, y, x, partial, g, act, input_relu] = io;
    const int64_t chunk = block % chunking.chunks, oc0 = (block / chunking.chunks) * kLanes;
    const int64_t OC = g.out_channels();
    if (k == 0) {
      const int lane = thread % kLanes, group = thread / kLanes;
      const int64_t oc = oc0 + lane;
      float acc[kTaps] = {};
      const int64_t begin = chunk * chunking.chunk_len + group;
      const int64_t end = min64(g.batch * g.out_h * g.out_w, (chunk + 1) * chunking.chunk_len);
      if (oc < OC && begin < end) {
        PositionWalk p(begin, kGroups, g);
        const int64_t ic = oc / g.multiplier, image = g.in_h * g.in_w * g.channels;
        for (int64_t q = begin; q < end; q += kGroups, p.advance(g)) {
          accumulate_param_grad<KH, KW>(acc, masked_grad(act, gy, y, q * OC + oc), x + p.n * image + ic,
                                        g.in_w * g.channels, g.channels, g, p.oh, p.ow, input_relu);
        }
      }
#pragma unroll
      for (int tap = 0; tap < kTaps; ++tap) s.store((tap * kGroups + group) * kLanes + lane, acc[tap]);
      return;
    }
    for (int i = thread; i < kTaps * kLanes; i += threads) {
      const int tap = i / kLanes, lane = i % kLanes;
      const int64_t oc = oc0 + lane;
      if (oc >= OC) continue;
      float sum = 0.f;
      for (int group = 0; group < kGroups; ++group) sum += s.load((tap * kGroups + group) * kLanes + lane);
      partial[(oc * kTaps + tap) * chunking.chunks + chunk] = sum;
    }
  }
};

// grad_weight[oc, tap] and grad_bias[oc]: a block = 8 (oc, tap) items x 32 lanes; lane l adds chunks l, l + 32, ...
// in order (coalesced), then the item's 32 lane sums are added in order.
struct ParamGradFinish {
  static constexpr int kLanes = 32, kItems = kBlockThreads / kLanes, kPhases = 2;
  using State = NoState;
  const float* partial;
  float* grad_weight;  // [OC, taps] or null
  float* grad_bias;    // [OC] or null
  int64_t out_channels, taps, chunks;

  bool ok() const { return true; }
  int64_t blocks() const { return ceil_div(out_channels * (taps + 1), kItems); }
  int threads() const { return kBlockThreads; }
  C10_HOST_DEVICE int64_t shared_elems() const { return kBlockThreads; }
  std::string name() const { return "param_grad_finish"; }

  C10_HOST_DEVICE void phase(int k, int64_t block, int thread, int, Shared s, State&) const {
    const int64_t items = out_channels * (taps + 1);
    if (k == 0) {
      const int64_t item = block * kItems + thread / kLanes;
      float sum = 0.f;
      if (item < items) {
        for (int64_t c = thread % kLanes; c < chunks; c += kLanes) sum += partial[item * chunks + c];
      }
      s.store(thread, sum);
      return;
    }
    const int64_t item = block * kItems + thread;
    if (thread >= kItems || item >= items) return;
    float sum = 0.f;
    for (int lane = 0; lane < kLanes; ++lane) sum += s.load(thread * kLanes + lane);
    const int64_t oc = item / (taps + 1), tap = item % (taps + 1);
    if (tap == taps) {
      if (grad_bias != nullptr) grad_bias[oc] = sum;
    } else if (grad_weight != nullptr) {
      grad_weight[oc * taps + tap] = sum;
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Program choice, shared by the CUDA launcher and the emulator. Each `with_*` calls f(program) and returns true, or
// returns false when no tiled program applies (float64, or a case listed below): the generic kernels run.

template <typename F>
bool with_tiled_dtype(c10::ScalarType dtype, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float: f(float{}); return true;
    case c10::ScalarType::Half: f(c10::Half{}); return true;
    case c10::ScalarType::BFloat16: f(c10::BFloat16{}); return true;
    default: return false;
  }
}

// Calls f with the NHWC program P<T, VEC, shape> (16-byte channel vectors when `aligned`, else one channel at a time
// with the dynamic shape); false when the multiplier is not 1 or the weights do not fit in shared memory.
template <template <typename, int, typename> class P, typename T, typename Args, typename F>
bool with_nhwc_program(const Args& a, bool aligned, F&& f) {
  if (a.geo.multiplier != 1) return false;
  constexpr int kWide = 16 / sizeof(T);
  bool launched = false;
  const auto run = [&](const auto& program) {
    if (program.ok()) {
      f(program);
      launched = true;
    }
  };
  if (aligned && a.geo.channels % kWide == 0) {
    with_kernel_shape(a.geo, [&](auto shape) { run(P<T, kWide, decltype(shape)>::make(a)); });
  } else {
    run(P<T, 1, DynamicShape>::make(a));
  }
  return launched;
}

// Calls f with the NCHW program P<T, shape>; false when its tile does not fit in shared memory.
template <template <typename, typename> class P, typename T, typename Args, typename F>
bool with_nchw_program(const Args& a, F&& f) {
  bool launched = false;
  with_kernel_shape(a.geo, [&](auto shape) {
    const auto program = P<T, decltype(shape)>::make(a);
    if (program.ok()) {
      f(program);
      launched = true;
    }
  });
  return launched;
}

template <typename F>
bool with_forward_program(const DepthwiseForwardArgs& a, F&& f) {
  bool launched = false;
  with_tiled_dtype(a.dtype, [&](auto zero) {
    using T = decltype(zero);
    launched = a.geo.channels_last ? with_nhwc_program<NhwcForward, T>(a, aligned16({a.x, a.out}), f)
                                   : with_nchw_program<NchwForward, T>(a, f);
  });
  return launched;
}

template <typename F>
bool with_input_grad_program(const DepthwiseBackwardArgs& a, F&& f) {
  if (a.grad_input == nullptr) return false;
  bool launched = false;
  with_tiled_dtype(a.dtype, [&](auto zero) {
    using T = decltype(zero);
    launched = a.geo.channels_last
                   ? with_nhwc_program<NhwcInputGrad, T>(a, aligned16({a.grad_out, a.out, a.x, a.grad_input}), f)
                   : with_nchw_program<NchwInputGrad, T>(a, f);
  });
  return launched;
}

// The weight/bias gradient programs cover 3x3 and 5x5 kernels (any stride, padding, dilation, multiplier).
inline bool param_grad_tiled_ok(const DepthwiseBackwardArgs& a) {
  const DepthwiseGeometry& g = a.geo;
  const bool sized = (g.kernel_h == 3 && g.kernel_w == 3) || (g.kernel_h == 5 && g.kernel_w == 5);
  return (a.grad_weight != nullptr || a.grad_bias != nullptr) && sized && a.dtype != c10::ScalarType::Double;
}

// Floats of workspace the weight/bias gradient programs need (0: they do not apply).
inline int64_t param_grad_workspace_floats(const DepthwiseBackwardArgs& a) {
  if (!param_grad_tiled_ok(a)) return 0;
  const DepthwiseGeometry& g = a.geo;
  // chunks_for does not depend on T or the kernel size.
  const ParamGradChunks c =
      g.channels_last ? NhwcParamGrad<float, 3, 3>::chunks_for(g) : NchwParamGrad<float, 3, 3>::chunks_for(g);
  return param_grad_partial_floats(g, c);
}

// f is called twice: with the per-chunk program, then with ParamGradFinish.
template <typename F>
bool with_param_grad_programs(const DepthwiseBackwardArgs& a, F&& f) {
  if (!param_grad_tiled_ok(a) || a.workspace == nullptr) return false;
  const DepthwiseGeometry& g = a.geo;
  int64_t chunks = 0;
  const bool typed = with_tiled_dtype(a.dtype, [&](auto zero) {
    using T = decltype(zero);
    const auto run = [&](auto program) {
      chunks = program.chunking.chunks;
      f(program);
    };
    if (g.kernel_h == 3) {
      g.channels_last ? run(NhwcParamGrad<T, 3, 3>::make(a)) : run(NchwParamGrad<T, 3, 3>::make(a));
    } else {
      g.channels_last ? run(NhwcParamGrad<T, 5, 5>::make(a)) : run(NchwParamGrad<T, 5, 5>::make(a));
    }
  });
  if (!typed) return false;
  f(ParamGradFinish{static_cast<const float*>(a.workspace), static_cast<float*>(a.grad_weight),
                    static_cast<float*>(a.grad_bias), g.out_channels(), g.taps(), chunks});
  return true;
}

}  // namespace fastblocks::tiled
