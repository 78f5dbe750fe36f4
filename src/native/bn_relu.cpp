// The loops of the fused training BatchNorm (+ residual) + ReLU (src/native/shim.cpp's
// selfsup_bn_relu_train) over channels-last activations, a [rows, C] matrix: rows = N * H * W,
// C contiguous. Plain C++ without libtorch, compiled at -O3 (build.rs): the loops over a range
// of rows are cloned per instruction set (AVX-512, AVX2, baseline; the loader picks one for the
// CPU at start) and written for fixed channel counts, so the compiler vectorises the inner loop
// over channels; the drivers at the end split the rows among libtorch's OpenMP threads.
// bfloat16 values are the upper halves of float32 ones (uint16_t here).
//
// Forward: one pass for the per-channel sums, one that writes relu(x * scale + shift (+ res)).
// Backward: one pass for the two per-channel sums of the gradient past the ReLU, one that writes
// the input's gradient (and the residual's). The ReLU's mask is recomputed from the input, so
// nothing but the input (and residual) is kept for the backward pass. libtorch makes three
// passes forward in batch_norm (mean, variance, output), one in relu (and one in add), one in
// relu's backward and two in batch_norm's.
#include "bn_relu.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  uint32_t u = uint32_t(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
// Round to nearest even, as PyTorch's float -> bfloat16; NaN stays NaN.
inline void store(uint16_t* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  p[i] = uint16_t(v != v ? 0x7FC0u : rounded);
}

// The normalised value before the ReLU, the same expression forward and backward so that the
// backward pass's mask is the forward pass's.
inline float pre(float x, float scale, float shift) { return x * scale + shift; }

// Rows are summed in float in blocks of this many, each block's sums added in double: float's
// speed, double's accuracy over hundreds of thousands of rows.
constexpr int64_t kBlock = 64;

// Each loop is written once for a channel count CC known when compiling (the common widths:
// the compiler unrolls the loop over channels and keeps the per-channel values in registers)
// and for CC = 0, the count given at run time.
#define SELFSUP_WIDTH(CC, C_rt) const int64_t C = (CC) > 0 ? (CC) : (C_rt)

// Per-block float sums of the rows [b, e): s, q of length C.
template <int64_t CC, typename F>
__attribute__((always_inline)) inline void in_blocks(int64_t r0, int64_t r1, int64_t C_rt, double* __restrict sum,
                                                     double* __restrict sumsq, F&& rows) {
  SELFSUP_WIDTH(CC, C_rt);
  constexpr int64_t kFixed = CC > 0 ? CC : 1;
  float s_fixed[kFixed], q_fixed[kFixed];
  std::vector<float> s_any, q_any;
  float* __restrict s = s_fixed;
  float* __restrict q = q_fixed;
  if constexpr (CC == 0) {
    s_any.resize(C);
    q_any.resize(C);
    s = s_any.data();
    q = q_any.data();
  }
  for (int64_t b = r0; b < r1; b += kBlock) {
    const int64_t e = b + kBlock < r1 ? b + kBlock : r1;
    for (int64_t c = 0; c < C; ++c) s[c] = q[c] = 0.f;
    rows(b, e, s, q);
    for (int64_t c = 0; c < C; ++c) {
      sum[c] += s[c];
      sumsq[c] += q[c];
    }
  }
}

template <typename T, int64_t CC, bool Res>
__attribute__((always_inline)) inline void stats(const T* __restrict x, int64_t r0, int64_t r1, int64_t C_rt,
                                                 const float* __restrict shift, double* sum, double* sumsq) {
  SELFSUP_WIDTH(CC, C_rt);
  in_blocks<CC>(r0, r1, C, sum, sumsq, [&](int64_t b, int64_t e, float* __restrict s, float* __restrict q) {
    for (int64_t r = b; r < e; ++r) {
      const T* __restrict row = x + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const float d = load(row, c) - shift[c];
        s[c] += d;
        q[c] += d * d;
      }
    }
  });
}

// The value before the ReLU: the normalised x, plus the residual's value where there is one
// (Res: a ResNet block's shortcut, added before its last ReLU).
template <bool Res, typename T>
__attribute__((always_inline)) inline float before_relu(const T* __restrict res_row, int64_t c, float xv, float scale,
                                                        float shift) {
  float v = pre(xv, scale, shift);
  if constexpr (Res) v += load(res_row, c);
  return v;
}

template <typename T, int64_t CC, bool Res>
__attribute__((always_inline)) inline void forward(const T* __restrict x, const T* __restrict res, T* __restrict y,
                                                   int64_t r0, int64_t r1, int64_t C_rt, const float* __restrict scale,
                                                   const float* __restrict shift) {
  SELFSUP_WIDTH(CC, C_rt);
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict in = x + r * C;
    const T* __restrict res_row = Res ? res + r * C : nullptr;
    T* __restrict out = y + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float v = before_relu<Res>(res_row, c, load(in, c), scale[c], shift[c]);
      store(out, c, v < 0.f ? 0.f : v);  // NaN passes, as in torch.relu
    }
  }
}

template <typename T, int64_t CC, bool Res>
__attribute__((always_inline)) inline void backward_sums(const T* __restrict gy, const T* __restrict x,
                                                         const T* __restrict res, int64_t r0, int64_t r1, int64_t C_rt,
                                                         const float* __restrict scale, const float* __restrict shift,
                                                         const float* __restrict mean, double* sum_g, double* sum_gx) {
  SELFSUP_WIDTH(CC, C_rt);
  in_blocks<CC>(r0, r1, C, sum_g, sum_gx, [&](int64_t b, int64_t e, float* __restrict s, float* __restrict q) {
    for (int64_t r = b; r < e; ++r) {
      const T* __restrict g = gy + r * C;
      const T* __restrict in = x + r * C;
      const T* __restrict res_row = Res ? res + r * C : nullptr;
      for (int64_t c = 0; c < C; ++c) {
        const float xv = load(in, c);
        const float gv = before_relu<Res>(res_row, c, xv, scale[c], shift[c]) > 0.f ? load(g, c) : 0.f;
        s[c] += gv;
        q[c] += gv * (xv - mean[c]);
      }
    }
  });
}

template <typename T, int64_t CC, bool Res>
__attribute__((always_inline)) inline void backward_grad(const T* __restrict gy, const T* __restrict x,
                                                         const T* __restrict res, T* __restrict gx,
                                                         T* __restrict gres, int64_t r0, int64_t r1, int64_t C_rt,
                                                         const float* __restrict scale, const float* __restrict shift,
                                                         const float* __restrict a, const float* __restrict b,
                                                         const float* __restrict c0) {
  SELFSUP_WIDTH(CC, C_rt);
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict g = gy + r * C;
    const T* __restrict in = x + r * C;
    const T* __restrict res_row = Res ? res + r * C : nullptr;
    T* __restrict out = gx + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float xv = load(in, c);
      const float gv = before_relu<Res>(res_row, c, xv, scale[c], shift[c]) > 0.f ? load(g, c) : 0.f;
      store(out, c, gv * a[c] + xv * b[c] + c0[c]);
      if constexpr (Res) store(gres + r * C, c, gv);  // the shortcut's gradient: the ReLU's
    }
  }
}

// Calls KERNEL<T, CC, RES>(args...) with CC the channel count where it is a common width, else 0.
#define SELFSUP_BY_WIDTH(KERNEL, T, RES, C, ...) \
  switch (C) {                                   \
    case 16:                                     \
      return KERNEL<T, 16, RES>(__VA_ARGS__);    \
    case 32:                                     \
      return KERNEL<T, 32, RES>(__VA_ARGS__);    \
    case 64:                                     \
      return KERNEL<T, 64, RES>(__VA_ARGS__);    \
    case 128:                                    \
      return KERNEL<T, 128, RES>(__VA_ARGS__);   \
    case 256:                                    \
      return KERNEL<T, 256, RES>(__VA_ARGS__);   \
    case 512:                                    \
      return KERNEL<T, 512, RES>(__VA_ARGS__);   \
    default:                                     \
      return KERNEL<T, 0, RES>(__VA_ARGS__);     \
  }
// The same, RES true where `res` is given.
#define SELFSUP_BY_WIDTH_RES(KERNEL, T, res, C, ...)   \
  if (res) {                                           \
    SELFSUP_BY_WIDTH(KERNEL, T, true, C, __VA_ARGS__)  \
  } else {                                             \
    SELFSUP_BY_WIDTH(KERNEL, T, false, C, __VA_ARGS__) \
  }

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SELFSUP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SELFSUP_CLONES
#endif

#define SELFSUP_BN_RELU_KERNELS(T)                                                                          \
  SELFSUP_CLONES void rows_stats(const T* x, int64_t r0, int64_t r1, int64_t C, const float* shift,        \
                                 double* sum, double* sumsq) {                                            \
    SELFSUP_BY_WIDTH(stats, T, false, C, x, r0, r1, C, shift, sum, sumsq)                                 \
  }                                                                                                       \
  SELFSUP_CLONES void rows_forward(const T* x, const T* res, T* y, int64_t r0, int64_t r1, int64_t C,     \
                                   const float* scale, const float* shift) {                              \
    SELFSUP_BY_WIDTH_RES(forward, T, res, C, x, res, y, r0, r1, C, scale, shift)                          \
  }                                                                                                       \
  SELFSUP_CLONES void rows_backward_sums(const T* gy, const T* x, const T* res, int64_t r0, int64_t r1,    \
                                         int64_t C, const float* scale, const float* shift,               \
                                         const float* mean, double* sum_g, double* sum_gx) {              \
    SELFSUP_BY_WIDTH_RES(backward_sums, T, res, C, gy, x, res, r0, r1, C, scale, shift, mean, sum_g,      \
                         sum_gx)                                                                          \
  }                                                                                                       \
  SELFSUP_CLONES void rows_backward_grad(const T* gy, const T* x, const T* res, T* gx, T* gres, int64_t r0, \
                                         int64_t r1, int64_t C, const float* scale, const float* shift,   \
                                         const float* a, const float* b, const float* c0) {               \
    SELFSUP_BY_WIDTH_RES(backward_grad, T, res, C, gy, x, res, gx, gres, r0, r1, C, scale, shift, a, b, c0) \
  }

SELFSUP_BN_RELU_KERNELS(float)
SELFSUP_BN_RELU_KERNELS(uint16_t)

// Runs f(r0, r1) on the rows [0, M) cut into one part per thread of libtorch's OpenMP
// pool (the same runtime: one libgomp.so.1 in the process), split as ATen's parallel_for splits,
// without a num_threads clause. For element-wise loops, whose values do not depend on the cut.
template <typename F>
void in_parallel(int64_t M, F&& f) {
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), tid = omp_get_thread_num();
    f(M * tid / threads, M * (tid + 1) / threads);
  }
}

// Sums over the rows in fixed parts of kPart rows, each part's added up in part order after the
// parallel region: the same result whatever the number of threads (deterministic runs do not
// depend on --threads).
constexpr int64_t kPart = 2048;
template <typename F>
void summed(int64_t M, int64_t C, double* sum_a, double* sum_b, F&& rows) {
  const int64_t parts = (M + kPart - 1) / kPart;
  std::vector<double> part_sums(parts * 2 * C, 0.0);
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), tid = omp_get_thread_num();
    for (int64_t p = parts * tid / threads; p < parts * (tid + 1) / threads; ++p) {
      double* mine = part_sums.data() + p * 2 * C;
      rows(p * kPart, std::min(M, (p + 1) * kPart), mine, mine + C);
    }
  }
  for (int64_t c = 0; c < C; ++c) sum_a[c] = sum_b[c] = 0.0;
  for (int64_t p = 0; p < parts; ++p)
    for (int64_t c = 0; c < C; ++c) {
      sum_a[c] += part_sums[p * 2 * C + c];
      sum_b[c] += part_sums[p * 2 * C + C + c];
    }
}

}  // namespace

namespace selfsup_kernels {

#define SELFSUP_BN_RELU_DRIVERS(T)                                                                          \
  void bn_relu_stats(const T* x, int64_t M, int64_t C, const float* shift, double* sum, double* sumsq) {     \
    summed(M, C, sum, sumsq, [&](int64_t r0, int64_t r1, double* s, double* q) {                              \
      rows_stats(x, r0, r1, C, shift, s, q);                                                                  \
    });                                                                                                       \
  }                                                                                                           \
  void bn_relu_forward(const T* x, const T* res, T* y, int64_t M, int64_t C, const float* scale,              \
                       const float* shift) {                                                                  \
    in_parallel(M, [&](int64_t r0, int64_t r1) { rows_forward(x, res, y, r0, r1, C, scale, shift); }); \
  }                                                                                                           \
  void bn_relu_backward_sums(const T* gy, const T* x, const T* res, int64_t M, int64_t C, const float* scale,  \
                             const float* shift, const float* mean, double* sum_g, double* sum_gx) {          \
    summed(M, C, sum_g, sum_gx, [&](int64_t r0, int64_t r1, double* s, double* q) {                           \
      rows_backward_sums(gy, x, res, r0, r1, C, scale, shift, mean, s, q);                                    \
    });                                                                                                       \
  }                                                                                                           \
  void bn_relu_backward_grad(const T* gy, const T* x, const T* res, T* gx, T* gres, int64_t M, int64_t C,     \
                             const float* scale, const float* shift, const float* a, const float* b,          \
                             const float* c0) {                                                               \
    in_parallel(M, [&](int64_t r0, int64_t r1) {                                                              \
      rows_backward_grad(gy, x, res, gx, gres, r0, r1, C, scale, shift, a, b, c0);                            \
    });                                                                                                       \
  }

SELFSUP_BN_RELU_DRIVERS(float)
SELFSUP_BN_RELU_DRIVERS(uint16_t)

}  // namespace selfsup_kernels
