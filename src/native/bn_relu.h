// The loops of the fused training BatchNorm + ReLU over a channels-last [M, C] matrix (M rows of
// C channels; src/native/bn_relu.cpp), each split among the threads of libtorch's OpenMP pool.
// T: float, or uint16_t holding bfloat16.
#pragma once
#include <cstdint>

namespace selfsup_kernels {

// sum[c] = sum of (x - shift[c]), sumsq[c] = sum of (x - shift[c])^2 over the rows.
// y = relu(x * scale[c] + shift[c] + res), res (a residual of x's layout) optional: null for none.
// With g = gy where x * scale[c] + shift[c] + res > 0, else 0 (the ReLU's gradient):
// sum_g[c] = sum of g, sum_gx[c] = sum of g (x - mean[c]).
// gx = g a[c] + x b[c] + c0[c] (BatchNorm's gradient, its per-channel terms folded into a, b, c0),
// and with a residual gres = g.
#define SELFSUP_BN_RELU_DECLARE(T)                                                                            \
  void bn_relu_stats(const T* x, int64_t M, int64_t C, const float* shift, double* sum, double* sumsq);      \
  void bn_relu_forward(const T* x, const T* res, T* y, int64_t M, int64_t C, const float* scale,              \
                       const float* shift);                                                                  \
  void bn_relu_backward_sums(const T* gy, const T* x, const T* res, int64_t M, int64_t C, const float* scale, \
                             const float* shift, const float* mean, double* sum_g, double* sum_gx);          \
  void bn_relu_backward_grad(const T* gy, const T* x, const T* res, T* gx, T* gres, int64_t M, int64_t C,     \
                             const float* scale, const float* shift, const float* a, const float* b,          \
                             const float* c0);
SELFSUP_BN_RELU_DECLARE(float)
SELFSUP_BN_RELU_DECLARE(uint16_t)
#undef SELFSUP_BN_RELU_DECLARE

}  // namespace selfsup_kernels
