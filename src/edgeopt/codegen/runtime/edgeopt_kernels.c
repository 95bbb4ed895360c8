/* edgeopt int8 kernels (C99, no malloc).
 *
 * Requantization: ONNX Runtime's int8 kernels (QLinearConv, QGemm, QLinearMul) turn the int32
 * accumulator into float, multiply by a float32 scale and round half to even. We reproduce that
 * product exactly with integers: the scale is stored as a 24-bit mantissa and a power of two,
 * and both float roundings (int32 -> float, float * float) are emulated. That keeps the int8
 * path free of floating point and bit-exact with ORT.
 *
 * Add, average pooling and softmax follow ORT's float formulas (ORT computes them in float32;
 * there is no integer formulation that gives the same bits), so they use single-precision
 * float, which Cortex-M4F/M7 execute in hardware. Build with -ffp-contract=off: fused
 * multiply-adds appear only where ORT uses them (fmaf). */
#include "edgeopt_kernels.h"

#include <math.h>
#include <string.h>

static int32_t eo_bitlen64(uint64_t u)
{
#if defined(__GNUC__)
    return u ? 64 - __builtin_clzll(u) : 0; /* one CLZ per word on Cortex-M */
#else
    int32_t n = 0;
    while (u >= 65536u) { u >>= 16; n += 16; }
    while (u) { u >>= 1; n += 1; }
    return n;
#endif
}

/* round u / 2^k to nearest, ties to even (k >= 1) */
static uint64_t eo_rne_shift(uint64_t u, int32_t k)
{
    uint64_t q, rem, half;
    if (k >= 64) return 0;
    q = u >> k;
    rem = u & ((((uint64_t)1) << k) - 1u);
    half = ((uint64_t)1) << (k - 1);
    if (rem > half || (rem == half && (q & 1u))) q += 1u;
    return q;
}

/* keep the 24 most significant bits (float32 significand), ties to even; returns the shift */
static uint64_t eo_round24(uint64_t u, int32_t *shift)
{
    int32_t n = eo_bitlen64(u);
    if (n <= 24) { *shift = 0; return u; }
    *shift = n - 24;
    return eo_rne_shift(u, n - 24);
}

static int32_t eo_requant(int32_t acc, int32_t mant, int32_t expo, int32_t zp, int32_t qmin, int32_t qmax)
{
    int32_t s1, s2, total, v;
    uint64_t u = (uint64_t)(acc < 0 ? -(int64_t)acc : (int64_t)acc);
    uint64_t p;
    u = eo_round24(u, &s1);                      /* (float)acc */
    p = eo_round24(u * (uint64_t)mant, &s2);     /* (float)acc * scale */
    total = s1 + s2 + expo;
    if (total >= 0) {
        p = (total > 31 || p > (((uint64_t)1) << 31)) ? (((uint64_t)1) << 31) : (p << total);
        if (p > (((uint64_t)1) << 31)) p = ((uint64_t)1) << 31;
    } else {
        p = eo_rne_shift(p, -total);             /* round half to even, as cvtps2dq */
    }
    if (p > 0x7fffffffu) p = 0x7fffffffu;
    v = acc < 0 ? -(int32_t)p : (int32_t)p;
    v += zp;
    return v < qmin ? qmin : (v > qmax ? qmax : v);
}

/* float -> nearest integer, ties to even, for |v| < 2^22 (inputs are clamped first) */
static int32_t eo_rne_float(float v)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float t;                         /* IEEE semantics (no -ffast-math): not folded away */
    if (v > 4194304.0f) v = 4194304.0f;
    if (v < -4194304.0f) v = -4194304.0f;
    t = v + magic;
    return (int32_t)(t - magic);
}

static int32_t eo_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

static void eo_store(eo_act_t *y, int32_t at, int32_t q, const eo_add_epilogue *add)
{
    if (add) {
        const float o = (float)add->other[at];
        const float qa = add->conv_is_a ? (float)q : o;
        const float qb = add->conv_is_a ? o : (float)q;
        y[at] = (eo_act_t)eo_clamp(eo_rne_float(fmaf(qa, add->ratio_a, fmaf(qb, add->ratio_b, add->fixed))),
                                   add->qmin, add->qmax);
    } else {
        y[at] = (eo_act_t)q;
    }
}

/* 1x1 convolution without padding: a dot product over channels per pixel. The input zero point
 * is folded into the bias (sum over c of (x - zp) * w = sum x * w - zp * sum w). */
static void eo_conv_pointwise(const eo_act_t *x, eo_shape3 in, int32_t x_zp, const int8_t *w,
                              const int32_t *bias, int32_t stride_h, int32_t stride_w, eo_act_t *y,
                              eo_shape3 out, const int32_t *mant, const int8_t *expo, int32_t y_zp,
                              int32_t qmin, int32_t qmax, const eo_add_epilogue *add)
{
    const int32_t hw = in.h * in.w;
    int32_t m, oy, ox, c;
    for (m = 0; m < out.c; ++m) {
        const int8_t *wm = w + m * in.c;
        int32_t wsum = 0, base;
        for (c = 0; c < in.c; ++c) wsum += wm[c];
        base = bias[m] - x_zp * wsum;
        for (oy = 0; oy < out.h; ++oy) {
            for (ox = 0; ox < out.w; ++ox) {
                const eo_act_t *xp = x + oy * stride_h * in.w + ox * stride_w;
                int32_t acc = base;
                for (c = 0; c + 4 <= in.c; c += 4) {
                    acc += (int32_t)xp[0] * wm[c] + (int32_t)xp[hw] * wm[c + 1]
                         + (int32_t)xp[2 * hw] * wm[c + 2] + (int32_t)xp[3 * hw] * wm[c + 3];
                    xp += 4 * hw;
                }
                for (; c < in.c; ++c) { acc += (int32_t)xp[0] * wm[c]; xp += hw; }
                eo_store(y, (m * out.h + oy) * out.w + ox, eo_requant(acc, mant[m], expo[m], y_zp, qmin, qmax), add);
            }
        }
    }
}

void eo_conv(const eo_act_t *x, eo_shape3 in, int32_t x_zp,
             const int8_t *w, const int32_t *bias, int32_t kh, int32_t kw, int32_t group,
             int32_t stride_h, int32_t stride_w, int32_t pad_top, int32_t pad_left,
             eo_act_t *y, eo_shape3 out, const int32_t *mant, const int8_t *expo,
             int32_t y_zp, int32_t qmin, int32_t qmax, const eo_add_epilogue *add)
{
    const int32_t cin_g = in.c / group;
    const int32_t cout_g = out.c / group;
    int32_t m, oy, ox, c, ky, kx;
    if (kh == 1 && kw == 1 && pad_top == 0 && pad_left == 0 && group == 1) {
        eo_conv_pointwise(x, in, x_zp, w, bias, stride_h, stride_w, y, out, mant, expo, y_zp, qmin, qmax, add);
        return;
    }
    for (m = 0; m < out.c; ++m) {
        const int32_t g = m / cout_g;
        const int8_t *wm = w + (int32_t)m * cin_g * kh * kw;
        int32_t wsum = 0, full_base;
        for (c = 0; c < cin_g * kh * kw; ++c) wsum += wm[c];
        full_base = bias[m] - x_zp * wsum; /* a window inside the image: zero point folded */
        for (oy = 0; oy < out.h; ++oy) {
            const int32_t iy0 = oy * stride_h - pad_top;
            const int32_t ky0 = iy0 < 0 ? -iy0 : 0;
            const int32_t ky1 = (iy0 + kh > in.h) ? in.h - iy0 : kh;
            for (ox = 0; ox < out.w; ++ox) {
                const int32_t ix0 = ox * stride_w - pad_left;
                const int32_t kx0 = ix0 < 0 ? -ix0 : 0;
                const int32_t kx1 = (ix0 + kw > in.w) ? in.w - ix0 : kw;
                int32_t acc;
                if (ky0 == 0 && kx0 == 0 && ky1 == kh && kx1 == kw) {
                    acc = full_base;
                    if (kh == 3 && kw == 3) { /* the common case, unrolled */
                        const int32_t iw = in.w;
                        for (c = 0; c < cin_g; ++c) {
                            const eo_act_t *xr = x + (int32_t)(g * cin_g + c) * in.h * in.w + iy0 * in.w + ix0;
                            const int8_t *wr = wm + c * 9;
                            acc += (int32_t)xr[0] * wr[0] + (int32_t)xr[1] * wr[1] + (int32_t)xr[2] * wr[2]
                                 + (int32_t)xr[iw] * wr[3] + (int32_t)xr[iw + 1] * wr[4] + (int32_t)xr[iw + 2] * wr[5]
                                 + (int32_t)xr[2 * iw] * wr[6] + (int32_t)xr[2 * iw + 1] * wr[7] + (int32_t)xr[2 * iw + 2] * wr[8];
                        }
                    } else {
                        for (c = 0; c < cin_g; ++c) {
                            const eo_act_t *xr = x + (int32_t)(g * cin_g + c) * in.h * in.w + iy0 * in.w + ix0;
                            const int8_t *wr = wm + c * kh * kw;
                            for (ky = 0; ky < kh; ++ky, xr += in.w, wr += kw)
                                for (kx = 0; kx < kw; ++kx) acc += (int32_t)xr[kx] * wr[kx];
                        }
                    }
                } else {
                    acc = bias[m];
                    for (c = 0; c < cin_g; ++c) {
                        const eo_act_t *xc = x + (int32_t)(g * cin_g + c) * in.h * in.w;
                        const int8_t *wc = wm + c * kh * kw;
                        for (ky = ky0; ky < ky1; ++ky) {
                            const eo_act_t *xr = xc + (iy0 + ky) * in.w + ix0;
                            const int8_t *wr = wc + ky * kw;
                            for (kx = kx0; kx < kx1; ++kx) acc += ((int32_t)xr[kx] - x_zp) * (int32_t)wr[kx];
                        }
                    }
                }
                eo_store(y, (m * out.h + oy) * out.w + ox, eo_requant(acc, mant[m], expo[m], y_zp, qmin, qmax), add);
            }
        }
    }
}

void eo_gemm(const eo_act_t *x, int32_t rows, int32_t k, int32_t n, int32_t x_zp,
             const int8_t *w, const int32_t *bias, eo_act_t *y,
             const int32_t *mant, const int8_t *expo, int32_t y_zp, int32_t qmin, int32_t qmax)
{
    int32_t r, j, i;
    for (r = 0; r < rows; ++r) {
        const eo_act_t *xr = x + r * k;
        for (j = 0; j < n; ++j) {
            const int8_t *wj = w + j * k;
            int32_t acc = 0;
            for (i = 0; i < k; ++i) acc += ((int32_t)xr[i] - x_zp) * (int32_t)wj[i];
            y[r * n + j] = (eo_act_t)eo_requant(acc + bias[j], mant[j], expo[j], y_zp, qmin, qmax);
        }
    }
}

void eo_add(const eo_act_t *a, const eo_act_t *b, eo_act_t *y, int32_t n, int32_t mode, int32_t blen,
            float ratio_a, float ratio_b, float fixed, int32_t qmin, int32_t qmax)
{
    int32_t i;
    /* ORT (AVX2 kernel): c = cvt(fma(a, ra, fma(b, rb, zc - (ra*za + rb*zb)))) */
    if (mode == 2 || mode == 3) {
        const eo_act_t *s = mode == 2 ? b : a;
        const eo_act_t *v = mode == 2 ? a : b;
        const float rs = mode == 2 ? ratio_b : ratio_a;
        const float rv = mode == 2 ? ratio_a : ratio_b;
        const float f = fixed + (float)s[0] * rs;
        for (i = 0; i < n; ++i) y[i] = (eo_act_t)eo_clamp(eo_rne_float(fmaf((float)v[i], rv, f)), qmin, qmax);
        return;
    }
    for (i = 0; i < n; ++i) {
        const eo_act_t av = mode == 4 ? a[i % blen] : a[i];
        const eo_act_t bv = mode == 1 ? b[i % blen] : b[i];
        const float t = fmaf((float)bv, ratio_b, fixed);
        y[i] = (eo_act_t)eo_clamp(eo_rne_float(fmaf((float)av, ratio_a, t)), qmin, qmax);
    }
}

void eo_mul(const eo_act_t *a, const eo_act_t *b, eo_act_t *y, int32_t n, int32_t mode, int32_t blen,
            int32_t a_zp, int32_t b_zp, int32_t m_mant, int32_t m_exp, int32_t y_zp, int32_t qmin, int32_t qmax)
{
    /* ORT: cvt(float((a-za)*(b-zb)) * (sa*sb/sc)) + zc; the product is exact, so reuse eo_requant */
    int32_t i;
    for (i = 0; i < n; ++i) {
        const int32_t av = (int32_t)(mode == 3 ? a[0] : (mode == 4 ? a[i % blen] : a[i])) - a_zp;
        const int32_t bv = (int32_t)(mode == 2 ? b[0] : (mode == 1 ? b[i % blen] : b[i])) - b_zp;
        y[i] = (eo_act_t)eo_requant(av * bv, m_mant, m_exp, y_zp, qmin, qmax);
    }
}

void eo_avgpool(const eo_act_t *x, eo_shape3 in, float x_scale, int32_t x_zp,
                int32_t kh, int32_t kw, int32_t stride_h, int32_t stride_w, int32_t pad_top, int32_t pad_left,
                int32_t count_include_pad, eo_act_t *y, eo_shape3 out, float y_scale, int32_t y_zp,
                int32_t qmin, int32_t qmax)
{
    /* ORT QLinearAveragePool: dequantize, sum in float (row-major window order), divide, quantize */
    int32_t c, oy, ox, iy, ix;
    for (c = 0; c < out.c; ++c) {
        const eo_act_t *xc = x + c * in.h * in.w;
        for (oy = 0; oy < out.h; ++oy) {
            int32_t hs = oy * stride_h - pad_top;
            int32_t he = hs + kh < in.h ? hs + kh : in.h;
            if (hs < 0) hs = 0;
            for (ox = 0; ox < out.w; ++ox) {
                int32_t ws = ox * stride_w - pad_left;
                int32_t we = ws + kw < in.w ? ws + kw : in.w;
                float sum = 0.0f, avg;
                int32_t count;
                if (ws < 0) ws = 0;
                for (iy = hs; iy < he; ++iy)
                    for (ix = ws; ix < we; ++ix) sum += x_scale * (float)((int32_t)xc[iy * in.w + ix] - x_zp);
                count = count_include_pad ? kh * kw : (he - hs) * (we - ws);
                avg = sum / (float)count;
                y[(c * out.h + oy) * out.w + ox] = (eo_act_t)eo_clamp(eo_rne_float(avg / y_scale + (float)y_zp), qmin, qmax);
            }
        }
    }
}

void eo_maxpool(const eo_act_t *x, eo_shape3 in, int32_t kh, int32_t kw, int32_t stride_h, int32_t stride_w,
                int32_t pad_top, int32_t pad_left, eo_act_t *y, eo_shape3 out)
{
    int32_t c, oy, ox, iy, ix;
    for (c = 0; c < out.c; ++c) {
        const eo_act_t *xc = x + c * in.h * in.w;
        for (oy = 0; oy < out.h; ++oy) {
            int32_t hs = oy * stride_h - pad_top;
            int32_t he = hs + kh < in.h ? hs + kh : in.h;
            if (hs < 0) hs = 0;
            for (ox = 0; ox < out.w; ++ox) {
                int32_t ws = ox * stride_w - pad_left;
                int32_t we = ws + kw < in.w ? ws + kw : in.w;
                eo_act_t best;
                if (ws < 0) ws = 0;
                best = xc[hs * in.w + ws];
                for (iy = hs; iy < he; ++iy)
                    for (ix = ws; ix < we; ++ix)
                        if (xc[iy * in.w + ix] > best) best = xc[iy * in.w + ix];
                y[(c * out.h + oy) * out.w + ox] = best;
            }
        }
    }
}

void eo_softmax(const eo_act_t *x, eo_act_t *y, int32_t rows, int32_t depth, const float *table,
                float y_scale_inv, int32_t y_zp, int32_t qmin, int32_t qmax)
{
    /* ORT QLinearSoftmax: exp lookup table aligned so the row maximum maps to the top entry,
     * float sum, float divide, round to nearest. (ORT's int8 variant wraps a result of 128 to
     * -128; we saturate instead; see docs/codegen.md.) */
    int32_t r, i;
    for (r = 0; r < rows; ++r) {
        const eo_act_t *xr = x + r * depth;
        eo_act_t *yr = y + r * depth;
        eo_act_t xmax = xr[0];
        float sum = 0.0f;
        for (i = 1; i < depth; ++i) if (xr[i] > xmax) xmax = xr[i];
        for (i = 0; i < depth; ++i) sum += table[255 - (int32_t)xmax + (int32_t)xr[i]];
        for (i = 0; i < depth; ++i) {
            const float vt = table[255 - (int32_t)xmax + (int32_t)xr[i]];
            yr[i] = (eo_act_t)eo_clamp(eo_rne_float((vt * y_scale_inv) / sum) + y_zp, qmin, qmax);
        }
    }
}

void eo_lut(const eo_act_t *x, eo_act_t *y, int32_t n, const eo_act_t *table)
{
    int32_t i;
#if EO_ACT_SIGNED
    for (i = 0; i < n; ++i) y[i] = table[(int32_t)x[i] + 128];
#else
    for (i = 0; i < n; ++i) y[i] = table[x[i]];
#endif
}

void eo_transpose4(const eo_act_t *x, eo_act_t *y, const int32_t *in_shape, const int32_t *perm)
{
    int32_t stride[4], out_shape[4], ostride[4], i0, i1, i2, i3;
    stride[3] = 1;
    stride[2] = in_shape[3];
    stride[1] = in_shape[3] * in_shape[2];
    stride[0] = stride[1] * in_shape[1];
    for (i0 = 0; i0 < 4; ++i0) { out_shape[i0] = in_shape[perm[i0]]; ostride[i0] = stride[perm[i0]]; }
    for (i0 = 0; i0 < out_shape[0]; ++i0)
        for (i1 = 0; i1 < out_shape[1]; ++i1)
            for (i2 = 0; i2 < out_shape[2]; ++i2)
                for (i3 = 0; i3 < out_shape[3]; ++i3)
                    *y++ = x[i0 * ostride[0] + i1 * ostride[1] + i2 * ostride[2] + i3 * ostride[3]];
}

void eo_copy(const eo_act_t *x, eo_act_t *y, int32_t n)
{
    if (x != y) memmove(y, x, (size_t)n);
}

void eo_concat_part(const eo_act_t *x, eo_act_t *y, int32_t outer, int32_t in_inner, int32_t out_inner,
                    const eo_act_t *table)
{
    int32_t o, i;
    for (o = 0; o < outer; ++o) {
        const eo_act_t *xs = x + o * in_inner;
        eo_act_t *ys = y + o * out_inner;
        if (table) {
#if EO_ACT_SIGNED
            for (i = 0; i < in_inner; ++i) ys[i] = table[(int32_t)xs[i] + 128];
#else
            for (i = 0; i < in_inner; ++i) ys[i] = table[xs[i]];
#endif
        } else {
            memcpy(ys, xs, (size_t)in_inner);
        }
    }
}

void eo_global_avgpool(const eo_act_t *x, int32_t channels, int32_t image_size, int32_t x_zp,
                       int32_t mant, int32_t expo, eo_act_t *y, int32_t y_zp, int32_t qmin, int32_t qmax)
{
    /* ORT (MlasQLinearGlobalAveragePool): integer sum, then the float requantization with
     * scale = x_scale / (y_scale * image_size) */
    int32_t c, i;
    for (c = 0; c < channels; ++c) {
        const eo_act_t *xc = x + c * image_size;
        int32_t acc = -x_zp * image_size;
        for (i = 0; i < image_size; ++i) acc += (int32_t)xc[i];
        y[c] = (eo_act_t)eo_requant(acc, mant, expo, y_zp, qmin, qmax);
    }
}
