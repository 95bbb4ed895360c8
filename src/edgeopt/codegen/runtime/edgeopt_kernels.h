/* edgeopt int8 kernels: plain C99, no malloc, arithmetic chosen to match ONNX Runtime's int8 ops.
 * The activation type (int8_t or uint8_t) is set by model_config.h, written by the generator. */
#ifndef EDGEOPT_KERNELS_H
#define EDGEOPT_KERNELS_H

#include <stdint.h>
#include "model_config.h"

#if EO_ACT_SIGNED
typedef int8_t eo_act_t;
#else
typedef uint8_t eo_act_t;
#endif

typedef struct {
    int32_t c, h, w;
} eo_shape3;

/* A residual Add fused into the convolution that feeds it: each requantized output value is
 * added to `other` at once (ORT's QLinearAdd formula), so the convolution's own output never
 * needs a buffer; y may be `other` itself (in place). */
typedef struct {
    const eo_act_t *other;
    int32_t conv_is_a;  /* the convolution output is the Add's first operand */
    float ratio_a, ratio_b, fixed;
    int32_t qmin, qmax;
} eo_add_epilogue;

void eo_conv(const eo_act_t *x, eo_shape3 in, int32_t x_zp,
             const int8_t *w, const int32_t *bias, int32_t kh, int32_t kw, int32_t group,
             int32_t stride_h, int32_t stride_w, int32_t pad_top, int32_t pad_left,
             eo_act_t *y, eo_shape3 out, const int32_t *mant, const int8_t *expo,
             int32_t y_zp, int32_t qmin, int32_t qmax, const eo_add_epilogue *add);

void eo_gemm(const eo_act_t *x, int32_t rows, int32_t k, int32_t n, int32_t x_zp,
             const int8_t *w, const int32_t *bias, eo_act_t *y,
             const int32_t *mant, const int8_t *expo, int32_t y_zp, int32_t qmin, int32_t qmax);

/* mode: 0 same shape, 1 b broadcast over the tail (b has blen values), 2 b scalar, 3 a scalar, 4 a tail */
void eo_add(const eo_act_t *a, const eo_act_t *b, eo_act_t *y, int32_t n, int32_t mode, int32_t blen,
            float ratio_a, float ratio_b, float fixed, int32_t qmin, int32_t qmax);

void eo_mul(const eo_act_t *a, const eo_act_t *b, eo_act_t *y, int32_t n, int32_t mode, int32_t blen,
            int32_t a_zp, int32_t b_zp, int32_t m_mant, int32_t m_exp, int32_t y_zp, int32_t qmin, int32_t qmax);

void eo_avgpool(const eo_act_t *x, eo_shape3 in, float x_scale, int32_t x_zp,
                int32_t kh, int32_t kw, int32_t stride_h, int32_t stride_w, int32_t pad_top, int32_t pad_left,
                int32_t count_include_pad, eo_act_t *y, eo_shape3 out, float y_scale, int32_t y_zp,
                int32_t qmin, int32_t qmax);

void eo_global_avgpool(const eo_act_t *x, int32_t channels, int32_t image_size, int32_t x_zp,
                       int32_t mant, int32_t expo, eo_act_t *y, int32_t y_zp, int32_t qmin, int32_t qmax);

void eo_maxpool(const eo_act_t *x, eo_shape3 in, int32_t kh, int32_t kw, int32_t stride_h, int32_t stride_w,
                int32_t pad_top, int32_t pad_left, eo_act_t *y, eo_shape3 out);

void eo_softmax(const eo_act_t *x, eo_act_t *y, int32_t rows, int32_t depth, const float *table,
                float y_scale_inv, int32_t y_zp, int32_t qmin, int32_t qmax);

void eo_lut(const eo_act_t *x, eo_act_t *y, int32_t n, const eo_act_t *table);

void eo_transpose4(const eo_act_t *x, eo_act_t *y, const int32_t *in_shape, const int32_t *perm);

void eo_copy(const eo_act_t *x, eo_act_t *y, int32_t n);

void eo_concat_part(const eo_act_t *x, eo_act_t *y, int32_t outer, int32_t in_inner, int32_t out_inner,
                    const eo_act_t *table);

#endif
