/* The engine's native decode kernels (x86-64; elsewhere the build fails and PyTorch's kernels are used).
 *
 * gr_gemv_bf16: y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) (+ residual[m, n]) for 1 <= m <= 16 rows (32 with AMX)
 * and bf16 weights, with an optional RMS norm or SwiGLU applied to x on the way in. Decoding one token reads every
 * weight once and does two flops per weight, so it is bound by memory bandwidth, not arithmetic. PyTorch's CPU bf16
 * GEMV does not stream weights at the machine's bandwidth (about a third of it here), so this kernel does the one thing
 * that matters: stream each weight row once, widen bf16 to fp32 with a shift (bf16 is the top half of an fp32), and
 * accumulate in fp32 with FMAs, several weight rows at a time, prefetching ahead. Fusing the norm, the SwiGLU and the
 * residual saves the half-dozen small PyTorch ops around each projection (a few microseconds each, 30 layers).
 *
 * gr_attn_decode: RoPE, KV-cache write and attention of a step's tokens (decodes and prefill chunks) over the
 * paged cache, in one call instead of a dozen PyTorch ops per layer.
 *
 * gr_moe_bf16: the routed experts of a decode batch. gr_attn_block, gr_mlp_block, gr_moe_block: a layer's blocks
 * (projections, attention or experts, residual) as one call each.
 *
 * Activations are fp32 or bf16 (round to nearest even, at the same points as the PyTorch code). Built once by
 * native.py with the system C compiler; AVX-512 and AVX2 versions are selected at run time, with a portable C
 * version underneath. Work is split across OpenMP threads (the process's OpenMP runtime: PyTorch's libgomp is
 * already loaded under the same soname).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_M 32        /* activation rows: AMX */
#define MAX_M_VECTOR 16 /* activation rows: the vector kernels */
/* From this many activation rows on, AMX (where the CPU has it) beats the vector kernels. */
#define AMX_ROWS 4
/* Software prefetch, AHEAD weight rows ahead (two blocks of four): measured here, one thread streaming 256 MB of
 * weights, it lifts the kernel from ~0.6 to ~0.9 of the bandwidth of a plain sum; the hardware prefetcher alone
 * does not keep enough lines in flight for four interleaved rows. A prefetch past the end of w never faults. */
#define AHEAD 8
/* From this many activation rows on, the dpbf16 kernel (where the CPU has it) beats the widening one. */
#define DPBF16_ROWS 2

typedef struct {
    const float *x;    /* [M, K] fp32 (converted from bf16 by the caller of the row kernels) */
    const uint16_t *xb; /* [M, K] the same in bf16 (dpbf16 kernels only) */
    const uint16_t *xv; /* the same in AMX's layout (AMX kernel only) */
    const uint16_t *w; /* [N, K] bf16 */
    long M, N, K;
} Problem;

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* ---- portable ---------------------------------------------------------------------------------------------- */

static void rows_c(const Problem *p, long n0, long n1, float *acc /* [M, N] */) {
    for (long n = n0; n < n1; n++) {
        const uint16_t *row = p->w + n * p->K;
        for (long m = 0; m < p->M; m++) {
            const float *x = p->x + m * p->K;
            float s = 0.f;
            for (long k = 0; k < p->K; k++) s += x[k] * bf16_to_f32(row[k]);
            acc[m * p->N + n] = s;
        }
    }
}

/* ---- AVX2 + FMA: 8 lanes --------------------------------------------------------------------------------------- */

__attribute__((target("avx2,fma"))) static inline __m256 load8_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define ROWS_AVX2(MM, RR)                                                                                            \
    __attribute__((target("avx2,fma"))) static void rows_avx2_##MM(const Problem *p, long n0, long n1, float *acc) { \
        const long K = p->K, N = p->N, k8 = K & ~7L;                                                              \
        long n = n0;                                                                                              \
        for (; n + RR <= n1; n += RR) {                                                                             \
            __m256 a[MM][RR];                                                                                      \
            for (int m = 0; m < MM; m++)                                                                          \
                for (int r = 0; r < RR; r++) a[m][r] = _mm256_setzero_ps();                                        \
            const uint16_t *w0 = p->w + n * K;                                                                    \
            for (long k = 0; k < k8; k += 8) {                                                                    \
                if (!(k & 31))                                                                                    \
                    for (int r = 0; r < RR; r++) _mm_prefetch((const char *)(w0 + (r + AHEAD) * K + k), _MM_HINT_T0); \
                __m256 w[RR];                                                                                      \
                for (int r = 0; r < RR; r++) w[r] = load8_bf16(w0 + r * K + k);                                   \
                for (int m = 0; m < MM; m++) {                                                                    \
                    __m256 xv = _mm256_loadu_ps(p->x + m * K + k);                                                \
                    for (int r = 0; r < RR; r++) a[m][r] = _mm256_fmadd_ps(w[r], xv, a[m][r]);                     \
                }                                                                                                 \
            }                                                                                                     \
            for (int m = 0; m < MM; m++)                                                                          \
                for (int r = 0; r < RR; r++) {                                                                     \
                    float s = hsum8(a[m][r]);                                                                     \
                    for (long k = k8; k < K; k++) s += p->x[m * K + k] * bf16_to_f32(w0[r * K + k]);              \
                    acc[m * N + n + r] = s;                                                                       \
                }                                                                                                 \
        }                                                                                                         \
        if (n < n1) rows_c(p, n, n1, acc);                                                                        \
    }
/* Accumulators: MM x RR of the 16 ymm registers (plus RR weights and one x). */
ROWS_AVX2(1, 4)
ROWS_AVX2(2, 4)
ROWS_AVX2(3, 2)
ROWS_AVX2(4, 2)
ROWS_AVX2(5, 2)
ROWS_AVX2(6, 2)
ROWS_AVX2(7, 1)
ROWS_AVX2(8, 1)
ROWS_AVX2(9, 1)
ROWS_AVX2(10, 1)
ROWS_AVX2(11, 1)
ROWS_AVX2(12, 1)
ROWS_AVX2(13, 1)
ROWS_AVX2(14, 1)
ROWS_AVX2(15, 1)
ROWS_AVX2(16, 1)

/* ---- AVX-512: 16 lanes, masked tail ------------------------------------------------------------------------------ */

__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline __m512 load16_bf16(const uint16_t *p, __mmask16 k) {
    __m256i h = _mm256_maskz_loadu_epi16(k, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#define ROWS_AVX512(MM, RR)                                                                                           \
    __attribute__((target("avx512f,avx512bw,avx512vl"))) static void rows_avx512_##MM(const Problem *p, long n0,   \
                                                                                      long n1, float *acc) {      \
        const long K = p->K, N = p->N, k16 = K & ~15L;                                                            \
        const __mmask16 tail = (__mmask16)((1u << (K - k16)) - 1u);                                               \
        long n = n0;                                                                                              \
        for (; n + RR <= n1; n += RR) {                                                                             \
            __m512 a[MM][RR];                                                                                      \
            for (int m = 0; m < MM; m++)                                                                          \
                for (int r = 0; r < RR; r++) a[m][r] = _mm512_setzero_ps();                                        \
            const uint16_t *w0 = p->w + n * K;                                                                    \
            for (long k = 0; k < k16; k += 16) {                                                                  \
                if (!(k & 31))                                                                                    \
                    for (int r = 0; r < RR; r++) _mm_prefetch((const char *)(w0 + (r + AHEAD) * K + k), _MM_HINT_T0); \
                __m512 w[RR];                                                                                      \
                for (int r = 0; r < RR; r++) w[r] = load16_bf16(w0 + r * K + k, 0xffff);                          \
                for (int m = 0; m < MM; m++) {                                                                    \
                    __m512 xv = _mm512_loadu_ps(p->x + m * K + k);                                                \
                    for (int r = 0; r < RR; r++) a[m][r] = _mm512_fmadd_ps(w[r], xv, a[m][r]);                     \
                }                                                                                                 \
            }                                                                                                     \
            if (tail) {                                                                                           \
                __m512 w[RR];                                                                                      \
                for (int r = 0; r < RR; r++) w[r] = load16_bf16(w0 + r * K + k16, tail);                           \
                for (int m = 0; m < MM; m++) {                                                                    \
                    __m512 xv = _mm512_maskz_loadu_ps(tail, p->x + m * K + k16);                                  \
                    for (int r = 0; r < RR; r++) a[m][r] = _mm512_fmadd_ps(w[r], xv, a[m][r]);                     \
                }                                                                                                 \
            }                                                                                                     \
            for (int m = 0; m < MM; m++)                                                                          \
                for (int r = 0; r < RR; r++) acc[m * N + n + r] = _mm512_reduce_add_ps(a[m][r]);                   \
        }                                                                                                         \
        if (n < n1) rows_c(p, n, n1, acc);                                                                        \
    }
/* Accumulators: MM x RR of the 32 zmm registers (plus RR weights and one x). */
ROWS_AVX512(1, 4)
ROWS_AVX512(2, 4)
ROWS_AVX512(3, 4)
ROWS_AVX512(4, 4)
ROWS_AVX512(5, 2)
ROWS_AVX512(6, 2)
ROWS_AVX512(7, 2)
ROWS_AVX512(8, 2)
ROWS_AVX512(9, 2)
ROWS_AVX512(10, 2)
ROWS_AVX512(11, 2)
ROWS_AVX512(12, 2)
ROWS_AVX512(13, 1)
ROWS_AVX512(14, 1)
ROWS_AVX512(15, 1)
ROWS_AVX512(16, 1)

/* ---- AVX-512 BF16: bf16 activations, two products per lane per instruction (dpbf16), no widening ------------------
 * For several activation rows the widening FMA kernel above runs out of arithmetic before memory; VDPBF16PS does 32
 * multiply-adds of bf16 pairs per instruction straight from the loaded weights. Only for bf16 activations, which
 * are exactly representable (the caller's x is bf16), so the products are the same; the sums are fp32. */

#define ROWS_DPBF16(MM, RR)                                                                                          \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void rows_dpbf16_##MM(                  \
        const Problem *p, long n0, long n1, float *acc) {                                                         \
        const long K = p->K, N = p->N, k32 = K & ~31L;                                                            \
        const __mmask32 tail = (__mmask32)((K - k32) ? (1u << (K - k32)) - 1u : 0u);                              \
        const uint16_t *xb = p->xb;                                                                               \
        long n = n0;                                                                                              \
        for (; n + RR <= n1; n += RR) {                                                                           \
            __m512 a[MM][RR];                                                                                     \
            for (int m = 0; m < MM; m++)                                                                          \
                for (int r = 0; r < RR; r++) a[m][r] = _mm512_setzero_ps();                                       \
            const uint16_t *w0 = p->w + n * K;                                                                    \
            for (long k = 0; k < k32; k += 32) {                                                                  \
                for (int r = 0; r < RR; r++) _mm_prefetch((const char *)(w0 + (r + AHEAD) * K + k), _MM_HINT_T0); \
                __m512bh w[RR];                                                                                   \
                for (int r = 0; r < RR; r++) w[r] = (__m512bh)_mm512_loadu_si512(w0 + r * K + k);                 \
                for (int m = 0; m < MM; m++) {                                                                    \
                    __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + m * K + k);                                   \
                    for (int r = 0; r < RR; r++) a[m][r] = _mm512_dpbf16_ps(a[m][r], w[r], xv);                   \
                }                                                                                                 \
            }                                                                                                     \
            if (tail) {                                                                                           \
                __m512bh w[RR];                                                                                   \
                for (int r = 0; r < RR; r++) w[r] = (__m512bh)_mm512_maskz_loadu_epi16(tail, w0 + r * K + k32);   \
                for (int m = 0; m < MM; m++) {                                                                    \
                    __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail, xb + m * K + k32);                     \
                    for (int r = 0; r < RR; r++) a[m][r] = _mm512_dpbf16_ps(a[m][r], w[r], xv);                   \
                }                                                                                                 \
            }                                                                                                     \
            for (int m = 0; m < MM; m++)                                                                          \
                for (int r = 0; r < RR; r++) acc[m * N + n + r] = _mm512_reduce_add_ps(a[m][r]);                  \
        }                                                                                                         \
        if (n < n1) rows_c(p, n, n1, acc);                                                                        \
    }
/* Accumulators: MM x RR of the 32 zmm registers (plus RR weights and one x). */
ROWS_DPBF16(1, 4)
ROWS_DPBF16(2, 4)
ROWS_DPBF16(3, 4)
ROWS_DPBF16(4, 4)
ROWS_DPBF16(5, 2)
ROWS_DPBF16(6, 2)
ROWS_DPBF16(7, 2)
ROWS_DPBF16(8, 2)
ROWS_DPBF16(9, 2)
ROWS_DPBF16(10, 2)
ROWS_DPBF16(11, 2)
ROWS_DPBF16(12, 2)
ROWS_DPBF16(13, 1)
ROWS_DPBF16(14, 1)
ROWS_DPBF16(15, 1)
ROWS_DPBF16(16, 1)

/* ---- AMX: tiles of 16 weight rows x 32 bf16 against up to 32 activation rows ---------------------------------------
 * C^T[n, m] = W[n, k] x^T[k, m]: the weight tile loads straight from the row-major weights (16 rows, stride K), the
 * activations are laid out once per call in AMX's pair-interleaved form (xv: [m block][K / 2][16][2]). Two weight
 * tiles and up to two activation tiles feed four accumulator tiles. Needs K % 32 == 0 and n0, n1 multiples of 16;
 * bf16 activations (exact in the tile products, like dpbf16). */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

__attribute__((target("amx-tile,amx-bf16,avx512f"))) static void store_tile(int c, float *buf) {
    switch (c) { /* tile numbers are immediates */
    case 0: _tile_stored(0, buf, 64); break;
    case 1: _tile_stored(1, buf, 64); break;
    case 2: _tile_stored(2, buf, 64); break;
    default: _tile_stored(3, buf, 64); break;
    }
}

__attribute__((target("amx-tile,amx-bf16,avx512f"))) static void rows_amx(const Problem *p, long n0, long n1,
                                                                          float *acc) {
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
    const long M = p->M, N = p->N, K = p->K, half = K / 2;
    const uint16_t *xv = p->xv;
    const int two_m = M > 16;
    float buf[16 * 16] __attribute__((aligned(64)));
    for (long n = n0; n < n1; n += 32) {
        const int two_n = n + 32 <= n1;
        const uint16_t *a0 = p->w + n * K, *a1 = a0 + 16 * K;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const char *next = (const char *)(a0 + 32 * K); /* the next block: 32 K bf16 = K cache lines, contiguous */
        for (long k = 0; k < K; k += 32) {
            if (n == n0) /* the first block: each row is its own stream, a few lines ahead */
                for (int r = 0; r < 16; r++) {
                    _mm_prefetch((const char *)(a0 + r * K + k + 128), _MM_HINT_T0);
                    if (two_n) _mm_prefetch((const char *)(a1 + r * K + k + 128), _MM_HINT_T0);
                }
            if (n + 32 < n1) /* then one sequential stream, a block ahead: 32 lines per step of k */
                for (int i = 0; i < 32; i++) _mm_prefetch(next + (k + i) * 64, _MM_HINT_T1);
            _tile_loadd(4, a0 + k, K * 2);
            _tile_loadd(6, xv + (k / 2) * 32, 64);
            _tile_dpbf16ps(0, 4, 6);
            if (two_m) {
                _tile_loadd(7, xv + (half + k / 2) * 32, 64);
                _tile_dpbf16ps(2, 4, 7);
            }
            if (two_n) {
                _tile_loadd(5, a1 + k, K * 2);
                _tile_dpbf16ps(1, 5, 6);
                if (two_m) _tile_dpbf16ps(3, 5, 7);
            }
        }
        for (int c = 0; c < 4; c++) {
            const long nb = n + (c & 1) * 16, mb = (c >> 1) * 16;
            if ((c & 1 && !two_n) || (mb && !two_m)) continue;
            store_tile(c, buf);
            for (long j = 0; j < 16 && mb + j < M; j++)
                for (int i = 0; i < 16; i++) acc[(mb + j) * N + nb + i] = buf[i * 16 + j];
        }
    }
    _tile_release();
}

/* Linux hands out the AMX tile state only on request (once per process); 1 when granted. */
static int amx_permitted(void) {
    static int granted = -1;
    if (granted < 0) granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    return granted;
}

typedef void (*RowsFn)(const Problem *, long, long, float *);

#define ALL_M(prefix)                                                                                                \
    {prefix##1,  prefix##2,  prefix##3,  prefix##4,  prefix##5,  prefix##6,  prefix##7,  prefix##8,                 \
     prefix##9,  prefix##10, prefix##11, prefix##12, prefix##13, prefix##14, prefix##15, prefix##16}

static RowsFn pick(long M, int isa) {
    static const RowsFn dpbf16[MAX_M_VECTOR] = ALL_M(rows_dpbf16_);
    static const RowsFn avx512[MAX_M_VECTOR] = ALL_M(rows_avx512_);
    static const RowsFn avx2[MAX_M_VECTOR] = ALL_M(rows_avx2_);
    if (isa == 3) return dpbf16[M - 1];
    if (isa == 2) return avx512[M - 1];
    if (isa == 1) return avx2[M - 1];
    return rows_c;
}

/* 4: AMX (+ AVX-512 BF16), 3: AVX-512 with BF16 dot products, 2: AVX-512, 1: AVX2 + FMA, 0: portable C. */
int gr_isa(void) {
    __builtin_cpu_init();
    unsigned a, b, c, d;
    const int amx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1); /* AMX-BF16, -TILE */
    if (amx && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && amx_permitted())
        return 4;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16"))
        return 3;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
}

static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

static inline float load_act(const void *p, long i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_act(void *p, long i, float v, int bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

/* The GEMV's input row m, as fp32, in xf[0:K]. The steps round to bf16 where PyTorch's bf16 code does, so the fused
 * path gives the same numbers as the unfused one.
 *   prep 0: x as it is (x has K columns).
 *   prep 1: RMS norm: x / sqrt(mean(x^2) + eps) * norm_w (x has K columns).
 *   prep 2: SwiGLU: silu(x[:K]) * x[K:] (x has 2K columns: gate, then up). */
static void prepare_row(const void *x, long m, long K, int bf16, int prep, const void *norm_w, float eps, float *xf) {
    long width = prep == 2 ? 2 * K : K;
    const long base = m * width;
    if (prep == 1) {
        double ss = 0;
        for (long k = 0; k < K; k++) {
            float v = load_act(x, base + k, bf16);
            ss += (double)v * v;
        }
        float r = 1.f / sqrtf((float)(ss / K) + eps);
        for (long k = 0; k < K; k++) {
            float v = load_act(x, base + k, bf16) * r, w = load_act(norm_w, k, bf16);
            xf[k] = bf16 ? round_bf16(round_bf16(v) * w) : v * w;
        }
    } else if (prep == 2) {
        for (long k = 0; k < K; k++) {
            float g = load_act(x, base + k, bf16), u = load_act(x, base + K + k, bf16);
            float a = g / (1.f + expf(-g));
            xf[k] = bf16 ? round_bf16(round_bf16(a) * u) : a * u;
        }
    } else {
        for (long k = 0; k < K; k++) xf[k] = load_act(x, base + k, bf16);
    }
}

/* ---- AVX-512 versions of the elementwise steps (bf16 activations) ----------------------------------------------- */

/* Round to the nearest bf16 (ties to even), kept in fp32 lanes; NaN stays NaN. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline __m512 round512_bf16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)),
                                       _mm512_set1_epi32((int)0xffff0000u));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_castsi512_ps(r), v);
}

/* exp(x) to about 1 ulp (Cephes' expf: 2^n times a degree-6 polynomial of the remainder). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72283935546875f)), _mm512_set1_ps(-103.97207708f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

/* prepare_row for bf16 activations and K % 16 == 0, 16 lanes at a time (the SwiGLU's exp dominates otherwise). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void prepare_row_avx512(
    const uint16_t *x, long m, long K, int prep, const uint16_t *norm_w, float eps, float *xf) {
    const uint16_t *row = x + m * (prep == 2 ? 2 * K : K);
    if (prep == 1) {
        __m512 ss = _mm512_setzero_ps();
        for (long k = 0; k < K; k += 16) {
            const __m512 v = load16_bf16(row + k, 0xffff);
            ss = _mm512_fmadd_ps(v, v, ss);
        }
        const __m512 r = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(ss) / K + eps));
        for (long k = 0; k < K; k += 16) {
            const __m512 v = round512_bf16(_mm512_mul_ps(load16_bf16(row + k, 0xffff), r));
            _mm512_storeu_ps(xf + k, round512_bf16(_mm512_mul_ps(v, load16_bf16(norm_w + k, 0xffff))));
        }
    } else if (prep == 2) {
        const __m512 one = _mm512_set1_ps(1.f);
        for (long k = 0; k < K; k += 16) {
            const __m512 g = load16_bf16(row + k, 0xffff), u = load16_bf16(row + K + k, 0xffff);
            const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
            const __m512 a = round512_bf16(_mm512_div_ps(g, _mm512_add_ps(one, e)));
            _mm512_storeu_ps(xf + k, round512_bf16(_mm512_mul_ps(a, u)));
        }
    } else {
        for (long k = 0; k < K; k += 16) _mm512_storeu_ps(xf + k, load16_bf16(row + k, 0xffff));
    }
}

/* The epilogue for bf16 activations, 16 outputs at a time: + bias, round, + residual, round (VCVTNEPS2BF16 rounds to
 * nearest even, as f32_to_bf16). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void store_bf16_avx512(
    const float *acc, const void *bias, const void *residual, void *y, long M, long N) {
    const uint16_t *b = bias, *r = residual;
    uint16_t *out = y;
    for (long m = 0; m < M; m++)
        for (long n = 0; n < N; n += 16) {
            const __mmask16 k = N - n >= 16 ? 0xffff : (__mmask16)((1u << (N - n)) - 1u);
            const long i = m * N + n;
            __m512 v = _mm512_maskz_loadu_ps(k, acc + i);
            if (b) v = _mm512_add_ps(v, load16_bf16(b + n, k));
            if (r) v = _mm512_add_ps(load16_bf16(r + i, k), _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(v)));
            _mm256_mask_storeu_epi16(out + i, k, (__m256i)_mm512_cvtneps_pbh(v));
        }
}

/* The fp32 scratch values gr_gemv_bf16 needs for M rows, N outputs and K inputs (as its comment below says). */
static long gemv_scratch(long M, long N, long K) { return M * (2 * K + N) + 16 * K; }

/* Whether gr_gemv_bf16 takes M rows of this product (more than 16 only on AMX, whole tiles, bf16 activations). */
static int gemv_takes(long M, long N, long K, int act_bf16, int isa) {
    return M >= 1 && (M <= MAX_M_VECTOR || (M <= MAX_M && isa == 4 && act_bf16 && K % 32 == 0 && N % 16 == 0));
}

/* y[M, N] = prep(x)[M, K] @ w[N, K]^T (+ bias[N]) (+ residual[M, N]).
 * Activations (x, norm_w, bias, residual, y) are all bf16 when act_bf16, else all fp32, but y is fp32 when out_f32;
 * bias, norm_w and residual may be NULL. The sum is rounded to the activation dtype before the residual is added, as
 * two PyTorch ops would.
 * scratch: fp32 room for M * (2 K + N) + 16 K values, from the caller (no large buffers on this thread's stack). isa:
 * gr_isa()'s answer. Returns 0, or -1 when M is out of range (the caller then uses its own path). */
int gr_gemv_bf16(const void *x, const uint16_t *w, const void *bias, const void *residual, void *y, float *scratch,
                 long M, long N, long K, int act_bf16, int out_f32, int prep, const void *norm_w, float eps,
                 int threads, int isa) {
    if (M < 1 || M > MAX_M || K < 1 || N < 1) return -1;
    float *xf = scratch, *acc = scratch + M * K;
    for (long m = 0; m < M; m++)
        if (isa >= 2 && act_bf16 && K % 16 == 0)
            prepare_row_avx512(x, m, K, prep, norm_w, eps, xf + m * K);
        else
            prepare_row(x, m, K, act_bf16, prep, norm_w, eps, xf + m * K);
    /* dpbf16 and AMX multiply bf16 activations: exact only when they are bf16 already */
    if (isa >= 3 && !act_bf16) isa = 2;
    if (isa == 4 && (K % 32 || N % 16 || M < AMX_ROWS)) isa = 3;
    if (isa == 3 && M < DPBF16_ROWS) isa = 2;
    if (isa < 4 && M > MAX_M_VECTOR) return -1; /* only AMX takes this many rows */
    uint16_t *xb = (uint16_t *)(acc + M * N), *xv = xb + M * K;
    if (isa == 3)
        for (long i = 0; i < M * K; i++) xb[i] = f32_to_bf16(xf[i]);
    if (isa == 4) { /* xf holds bf16 values here: truncating to the top half is exact */
        const long blocks = M > 16 ? 2 : 1;
        const uint32_t *bits = (const uint32_t *)xf;
        memset(xv, 0, (size_t)(blocks * 16 * K) * sizeof *xv);
        for (long m = 0; m < M; m++) {
            uint32_t *pairs = (uint32_t *)(xv + (m / 16) * (K / 2) * 32) + (m % 16); /* one bf16 pair per k / 2 */
            const uint32_t *row = bits + m * K;
            for (long kp = 0; kp < K / 2; kp++) pairs[kp * 16] = (row[2 * kp] >> 16) | (row[2 * kp + 1] & 0xffff0000u);
        }
    }
    Problem p = {xf, xb, xv, w, M, N, K};
    RowsFn rows = isa == 4 ? rows_amx : pick(M, isa);
    const long unit = isa == 4 ? 32 : 4; /* rows per block: a thread's share is whole blocks */
    long blocks = (N + unit - 1) / unit;
    if (threads > 1 && N * K >= (1L << 16)) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (long t = 0; t < threads; t++) {
            long b0 = blocks * t / threads, b1 = blocks * (t + 1) / threads;
            long n0 = b0 * unit, n1 = b1 * unit < N ? b1 * unit : N;
            if (n0 < n1) rows(&p, n0, n1, acc);
        }
    } else {
        rows(&p, 0, N, acc);
    }
    if (isa >= 3 && act_bf16 && !out_f32)
        store_bf16_avx512(acc, bias, residual, y, M, N);
    else
        for (long m = 0; m < M; m++)
            for (long n = 0; n < N; n++) {
                long i = m * N + n;
                float v = acc[i];
                if (bias) v += load_act(bias, n, act_bf16);
                if (residual) v = load_act(residual, i, act_bf16) + (act_bf16 ? round_bf16(v) : v);
                store_act(y, i, v, act_bf16 && !out_f32);
            }
    return 0;
}

/* ---- the routed experts of a decode batch --------------------------------------------------------------------
 *
 * out[t] += sum over token t's top_k experts e of expert_e(x[t]) scaled by its score, where expert_e(v) =
 * w2[e] @ silu-and-multiply(w13[e] @ v), the score scales the expert's input (Llama 4, scale_input) or its output
 * (the others). Experts run in ascending order, each on the tokens routed to it (as many rows per GEMV as it
 * takes), and each contribution is added to out and rounded to the activation dtype in that order: the steps and
 * rounding points of MoE.experts in model.py, whose Python loop (a gather, a scale, two GEMVs and an index_add per
 * expert) cost 3.4 ms of a 19 ms batch-8 decode step of bench/engine.py's MoE. ids [T, top_k] int64, scores
 * [T, top_k] in the activation dtype.
 * scratch: fp32 room for 32 (2 H + 2 I) + 32 (2 K + N) + 16 K values, K = max(H, I), N = max(2 I, H).
 * Returns 0, or what the GEMV returned (nonzero: out is partly updated; the caller must not fall back). */
int gr_moe_bf16(const void *x, const int64_t *ids, const void *scores, const uint16_t *w13, const uint16_t *w2,
                void *out, float *scratch, long T, long top_k, long E, long H, long I, int act_bf16, int scale_input,
                int threads, int isa) {
    /* rows per GEMV: as many as it takes (AMX: 32 when both products are whole tiles) */
    const long chunk = isa == 4 && act_bf16 && H % 32 == 0 && I % 32 == 0 ? MAX_M : MAX_M_VECTOR;
    const size_t es = act_bf16 ? 2 : 4;
    char *xs = (char *)scratch, *h = xs + chunk * H * es, *y = h + chunk * 2 * I * es;
    float *gemv_scratch = (float *)(y + chunk * H * es);
    long slots[MAX_M];
    for (long e = 0; e < E; e++) {
        long n = 0;
        for (long i = 0; i <= T * top_k; i++) {
            if (i < T * top_k && ids[i] == e) slots[n++] = i;
            if (n == 0 || (n < chunk && i < T * top_k)) continue;
            for (long r = 0; r < n; r++) { /* gather, scaling the input (rounded, as x * score) */
                const long t = slots[r] / top_k;
                const float s = load_act(scores, slots[r], act_bf16);
                for (long c = 0; c < H; c++) {
                    const float v = load_act(x, t * H + c, act_bf16);
                    store_act(xs, r * H + c, scale_input ? v * s : v, act_bf16);
                }
            }
            int status = gr_gemv_bf16(xs, w13 + e * 2 * I * H, NULL, NULL, h, gemv_scratch, n, 2 * I, H, act_bf16, 0, 0,
                                      NULL, 0.f, threads, isa);
            if (!status)
                status = gr_gemv_bf16(h, w2 + e * H * I, NULL, NULL, y, gemv_scratch, n, H, I, act_bf16, 0, 2, NULL,
                                      0.f, threads, isa);
            if (status) return status;
            for (long r = 0; r < n; r++) { /* scale the output (rounded), add into out (rounded) */
                const long t = slots[r] / top_k;
                const float s = load_act(scores, slots[r], act_bf16);
                for (long c = 0; c < H; c++) {
                    float v = load_act(y, r * H + c, act_bf16);
                    if (!scale_input) v = act_bf16 ? round_bf16(v * s) : v * s;
                    store_act(out, t * H + c, load_act(out, t * H + c, act_bf16) + v, act_bf16);
                }
            }
            n = 0;
        }
    }
    return 0;
}

/* ---- decode attention over the paged KV cache ------------------------------------------------------------------
 *
 * D tokens, each at its position in its sequence: decodes (one token of a sequence) and prefill chunks (several
 * consecutive tokens of one sequence, which share its block table: table_rows[d] is token d's row of tables; NULL:
 * row d). For each: RoPE on its query and key heads (rotate-half; cos/sin [D, hd] with sin's first half negated, as
 * the model builds them) when cos is given, then the weightless L2 norm of Llama 4's RoPE layers when l2, the NoPE
 * query temperature when temp is given; every token's key and value go into the cache slot of its position first;
 * then softmax attention of each query head over the keys its position sees (causal; a chunk (window_kind 1) or a
 * sliding window (2) of window_size), grouped-query. Same rounding points as the PyTorch code in model.py /
 * attention.py. Work is split over (token, kv head) pairs. */

static void rotate_row(float *v, const float *cos, const float *sin, long hd) {
    float tmp[512];
    const long half = hd / 2;
    for (long i = 0; i < half; i++) tmp[i] = v[i] * cos[i] + v[i + half] * sin[i];
    for (long i = half; i < hd; i++) tmp[i] = v[i] * cos[i] + v[i - half] * sin[i];
    memcpy(v, tmp, (size_t)hd * sizeof(float));
}

static void l2_row(float *v, long hd, float eps, int bf16) {
    double ss = 0;
    for (long i = 0; i < hd; i++) ss += (double)v[i] * v[i];
    float r = 1.f / sqrtf((float)(ss / hd) + eps);
    for (long i = 0; i < hd; i++) v[i] = bf16 ? round_bf16(v[i] * r) : v[i] * r;
}

static void round_row(float *v, long n, int bf16) {
    if (!bf16) return;
    uint32_t *u = (uint32_t *)v; /* f32_to_bf16 without the branch, so that the loop vectorises */
    for (long i = 0; i < n; i++) {
        const uint32_t r = (u[i] + 0x7fffu + ((u[i] >> 16) & 1u)) & 0xffff0000u;
        u[i] = (u[i] & 0x7fffffffu) > 0x7f800000u ? (u[i] & 0xffff0000u) | 0x00400000u : r;
    }
}

static inline long slot_of(const int64_t *table, long pos, long bs) { return table[pos / bs] * bs + pos % bs; }

__attribute__((target_clones("avx512f", "avx2", "default"))) static float dot_f32(const float *a, const float *b,
                                                                                     long n) {
    float s = 0.f;
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) static void axpy_f32(float *y, float a, const float *x,
                                                                                    long n) {
    for (long i = 0; i < n; i++) y[i] += a * x[i];
}

static void load_row(const void *src, long off, long n, int bf16, float *dst) {
    if (bf16) {
        const uint16_t *p = (const uint16_t *)src + off;
        for (long i = 0; i < n; i++) dst[i] = bf16_to_f32(p[i]);
    } else {
        memcpy(dst, (const float *)src + off, (size_t)n * sizeof(float));
    }
}

/* The score and value loops of one (sequence, kv head) with AVX-512: each key row is loaded and widened once for all
 * the query heads of its group; the outputs stay in registers, 16 lanes of every head at a time, while the values
 * stream past (the same order of additions as accumulating in memory). Positions walk the block table a block at a
 * time (no division per key). Needs hd % 16 == 0 and group <= 8. */
#define FOR_KEYS(first, pos, at)                                                                                     \
    for (long t = first, blk_ = first / bs; t <= pos; blk_++)                                                        \
        for (long end_ = (blk_ + 1) * bs <= pos + 1 ? (blk_ + 1) * bs : pos + 1,                                     \
                  at = ((table[blk_] * bs + t - blk_ * bs) * KVH + g) * hd;                                          \
             t < end_; t++, at += KVH * hd)

__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) static inline void attend_group(
    const float *q, const long group, long hd, const void *k_cache, const void *v_cache, const int64_t *table,
    long bs, long KVH, long g, long first, long pos, float scale, int bf16, float *scores, float *o) {
    const long len = pos + 1 - first;
    FOR_KEYS(first, pos, at) {
        __m512 acc[8];
        for (long j = 0; j < group; j++) acc[j] = _mm512_setzero_ps();
        for (long i = 0; i < hd; i += 16) {
            __m512 kv = bf16 ? load16_bf16((const uint16_t *)k_cache + at + i, 0xffff)
                             : _mm512_loadu_ps((const float *)k_cache + at + i);
            for (long j = 0; j < group; j++) acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q + j * hd + i), kv, acc[j]);
        }
        for (long j = 0; j < group; j++) scores[j * len + t - first] = _mm512_reduce_add_ps(acc[j]) * scale;
    }
    for (long j = 0; j < group; j++) {
        float *sj = scores + j * len;
        __m512 top = _mm512_set1_ps(-INFINITY);
        for (long t = 0; t < len; t += 16) {
            const __mmask16 k = len - t >= 16 ? 0xffff : (__mmask16)((1u << (len - t)) - 1u);
            top = _mm512_mask_max_ps(top, k, top, _mm512_maskz_loadu_ps(k, sj + t));
        }
        const float best = _mm512_reduce_max_ps(top);
        __m512 sum = _mm512_setzero_ps();
        for (long t = 0; t < len; t += 16) {
            const __mmask16 k = len - t >= 16 ? 0xffff : (__mmask16)((1u << (len - t)) - 1u);
            const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sj + t), _mm512_set1_ps(best)));
            _mm512_mask_storeu_ps(sj + t, k, e);
            sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
        }
        const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
        for (long t = 0; t < len; t += 16) {
            const __mmask16 k = len - t >= 16 ? 0xffff : (__mmask16)((1u << (len - t)) - 1u);
            _mm512_mask_storeu_ps(sj + t, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, sj + t), inv));
        }
    }
    for (long i = 0; i < hd; i += 16) {
        __m512 acc[8];
        for (long j = 0; j < group; j++) acc[j] = _mm512_setzero_ps();
        FOR_KEYS(first, pos, at) {
            const __m512 vv = bf16 ? load16_bf16((const uint16_t *)v_cache + at + i, 0xffff)
                                   : _mm512_loadu_ps((const float *)v_cache + at + i);
            for (long j = 0; j < group; j++)
                acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(scores[j * len + t - first]), vv, acc[j]);
        }
        for (long j = 0; j < group; j++) _mm512_storeu_ps(o + j * hd + i, acc[j]);
    }
}

/* attend_group with the group size a constant, so that its accumulators live in registers. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void attend_avx512(
    const float *q, long group, long hd, const void *k_cache, const void *v_cache, const int64_t *table, long bs,
    long KVH, long g, long first, long pos, float scale, int bf16, float *scores, float *o) {
#define GROUP(n)                                                                                                     \
    case n: attend_group(q, n, hd, k_cache, v_cache, table, bs, KVH, g, first, pos, scale, bf16, scores, o); break;
    switch (group) { GROUP(1) GROUP(2) GROUP(3) GROUP(4) GROUP(5) GROUP(6) GROUP(7) default: GROUP(8) }
#undef GROUP
}

int gr_attn_decode(const void *qkv, const float *cos, const float *sin, const float *temp, void *k_cache,
                   void *v_cache, const int64_t *tables, long table_width, const int64_t *table_rows,
                   const int64_t *positions, void *out,
                   float *scratch, long scratch_len, long D, long H, long KVH, long hd, long bs, int window_kind,
                   long window_size, float scale, int l2, float eps, int bf16, int threads, int isa) {
    if (hd > 512 || H % KVH) return -1;
    const long group = H / KVH, row = (H + 2 * KVH) * hd;
    long max_len = 0;
    for (long d = 0; d < D; d++)
        if (positions[d] + 1 > max_len) max_len = positions[d] + 1;
    const long per_task = group * (2 * hd + max_len) + hd; /* queries, outputs, scores, a key or value row */
    if (scratch_len < (threads > 1 ? threads : 1) * per_task) return -1;

    /* keys and values of the new tokens into the cache (RoPE'd, normed keys) */
    for (long d = 0; d < D; d++) {
        const long slot = slot_of(tables + (table_rows ? table_rows[d] : d) * table_width, positions[d], bs);
        for (long g = 0; g < KVH; g++) {
            float k[512];
            load_row(qkv, d * row + (H + g) * hd, hd, bf16, k);
            if (cos) {
                rotate_row(k, cos + d * hd, sin + d * hd, hd);
                round_row(k, hd, bf16);
                if (l2) l2_row(k, hd, eps, bf16);
            }
            for (long i = 0; i < hd; i++) {
                store_act(k_cache, (slot * KVH + g) * hd + i, k[i], bf16);
                const float v = load_act(qkv, d * row + (H + KVH + g) * hd + i, bf16);
                store_act(v_cache, (slot * KVH + g) * hd + i, v, bf16);
            }
        }
    }
    const long tasks = D * KVH;
#pragma omp parallel for num_threads(threads > 1 && tasks > 1 ? threads : 1) schedule(static)
    for (long task = 0; task < tasks; task++) {
        const long d = task / KVH, g = task % KVH, pos = positions[d];
        const int64_t *table = tables + (table_rows ? table_rows[d] : d) * table_width;
        float *mine = scratch;
#ifdef _OPENMP
        mine = scratch + omp_get_thread_num() * per_task;
#endif
        float *q = mine, *o = q + group * hd, *scores = o + group * hd, *kv = scores + group * max_len;
        for (long j = 0; j < group; j++) {
            float *qj = q + j * hd;
            load_row(qkv, d * row + (g * group + j) * hd, hd, bf16, qj);
            if (cos) {
                rotate_row(qj, cos + d * hd, sin + d * hd, hd);
                round_row(qj, hd, bf16);
                if (l2) l2_row(qj, hd, eps, bf16);
            } else if (temp) {
                for (long i = 0; i < hd; i++) qj[i] = bf16 ? round_bf16(qj[i] * temp[d]) : qj[i] * temp[d];
            }
        }
        long first = 0;
        if (window_kind == 1) first = pos / window_size * window_size;
        if (window_kind == 2 && pos - window_size + 1 > 0) first = pos - window_size + 1;
        const long len = pos + 1 - first;
        if (isa >= 2 && hd % 16 == 0 && group <= 8) {
            attend_avx512(q, group, hd, k_cache, v_cache, table, bs, KVH, g, first, pos, scale, bf16, scores, o);
            goto store;
        }
        for (long t = first; t <= pos; t++) { /* each key once, for every query head of its group */
            load_row(k_cache, (slot_of(table, t, bs) * KVH + g) * hd, hd, bf16, kv);
            for (long j = 0; j < group; j++) scores[j * len + t - first] = dot_f32(q + j * hd, kv, hd) * scale;
        }
        for (long j = 0; j < group; j++) {
            float *sj = scores + j * len, best = -INFINITY, total = 0.f;
            for (long t = 0; t < len; t++) best = sj[t] > best ? sj[t] : best;
            for (long t = 0; t < len; t++) total += sj[t] = expf(sj[t] - best);
            for (long t = 0; t < len; t++) sj[t] /= total;
        }
        memset(o, 0, (size_t)(group * hd) * sizeof(float));
        for (long t = first; t <= pos; t++) {
            load_row(v_cache, (slot_of(table, t, bs) * KVH + g) * hd, hd, bf16, kv);
            for (long j = 0; j < group; j++) axpy_f32(o + j * hd, scores[j * len + t - first], kv, hd);
        }
    store:
        for (long j = 0; j < group; j++)
            for (long i = 0; i < hd; i++) store_act(out, (d * H + g * group + j) * hd + i, o[j * hd + i], bf16);
    }
    return 0;
}

/* ---- whole blocks of a layer: one call from Python instead of three or two ---------------------------------------
 *
 * Each call from Python costs tens of microseconds here, more than its ctypes overhead: the weights streamed by the
 * kernel before it have evicted the interpreter's working set from the core's caches. So a layer's attention block
 * and its feed-forward block are one call each.
 *
 * The step: what every layer's attention shares (as gr_attn_decode takes it). */
typedef struct {
    const float *cos, *sin, *temp;
    const int64_t *tables, *table_rows, *positions;
    long table_width, D, block_size;
    int threads, isa;
} Step;

/* out[D, hidden] = x + wo @ attention(wqkv @ rmsnorm(x) + bqkv) + bo, the cache written; biases may be NULL.
 * scratch: fp32 room for gr_attn_block_scratch(...) values. Returns 0, or -1 before touching anything when a
 * product cannot take D rows (the caller runs its own path). */
long gr_attn_block_scratch(long D, long hidden, long H, long KVH, long hd, long table_width, long block_size,
                           int threads) {
    const long nqkv = (H + 2 * KVH) * hd, k = hidden > H * hd ? hidden : H * hd, n = nqkv > hidden ? nqkv : hidden;
    const long per_task = H / KVH * (2 * hd + table_width * block_size) + hd;
    return D * nqkv + D * H * hd + gemv_scratch(D, n, k) + (threads > 1 ? threads : 1) * per_task;
}

int gr_attn_block(const Step *st, const void *x, const void *norm_w, float eps, const uint16_t *wqkv, const void *bqkv,
                  const uint16_t *wo, const void *bo, void *k_cache, void *v_cache, void *out, float *scratch,
                  long scratch_len, long hidden, long H, long KVH, long hd, int rope, int temperature, int window_kind,
                  long window_size, float scale, int l2, float l2_eps, int act_bf16) {
    const long D = st->D, nqkv = (H + 2 * KVH) * hd;
    if (!gemv_takes(D, nqkv, hidden, act_bf16, st->isa) || !gemv_takes(D, hidden, H * hd, act_bf16, st->isa) ||
        hd > 512 || H % KVH ||
        scratch_len < gr_attn_block_scratch(D, hidden, H, KVH, hd, st->table_width, st->block_size, st->threads))
        return -1;
    float *qkv = scratch, *o = qkv + D * nqkv, *rest = o + D * H * hd; /* qkv and o in the activation dtype */
    const long k = hidden > H * hd ? hidden : H * hd, n = nqkv > hidden ? nqkv : hidden;
    float *attn_scratch = rest + gemv_scratch(D, n, k);
    int status = gr_gemv_bf16(x, wqkv, bqkv, NULL, qkv, rest, D, nqkv, hidden, act_bf16, 0, 1, norm_w, eps,
                              st->threads, st->isa);
    if (!status)
        status = gr_attn_decode(qkv, rope ? st->cos : NULL, rope ? st->sin : NULL, temperature ? st->temp : NULL,
                                k_cache, v_cache, st->tables, st->table_width, st->table_rows, st->positions, o,
                                attn_scratch, scratch_len - (attn_scratch - scratch), D, H, KVH, hd, st->block_size,
                                window_kind, window_size, scale, l2, l2_eps, act_bf16, st->threads, st->isa);
    if (!status)
        status = gr_gemv_bf16(o, wo, bo, x, out, rest, D, hidden, H * hd, act_bf16, 0, 0, NULL, 0.f, st->threads,
                              st->isa);
    return status;
}

/* out[M, hidden] = x + w2 @ silu-and-multiply(w13 @ rmsnorm(x)): a dense SwiGLU block. scratch: fp32 room for
 * M 2 inner + M (2 K + N) + 16 K values, K = max(hidden, inner), N = max(2 inner, hidden). Returns 0, or -1 before
 * touching anything when a product cannot take M rows. */
int gr_mlp_block(const void *x, const void *norm_w, float eps, const uint16_t *w13, const uint16_t *w2, void *out,
                 float *scratch, long M, long hidden, long inner, int act_bf16, int threads, int isa) {
    if (!gemv_takes(M, 2 * inner, hidden, act_bf16, isa) || !gemv_takes(M, hidden, inner, act_bf16, isa)) return -1;
    float *h = scratch, *rest = h + M * 2 * inner;
    int status = gr_gemv_bf16(x, w13, NULL, NULL, h, rest, M, 2 * inner, hidden, act_bf16, 0, 1, norm_w, eps, threads,
                              isa);
    if (!status)
        status = gr_gemv_bf16(h, w2, NULL, x, out, rest, M, hidden, inner, act_bf16, 0, 2, NULL, 0.f, threads, isa);
    return status;
}

/* The feed-forward block of an MoE layer: out = x + shared(xn) (times sigmoid(xn . shared_gate) when given) + the
 * routed experts of xn, xn = rmsnorm(x). Routing as MoE.route in model.py: sigmoid_router (Llama 4) takes the top_k
 * of the raw logits and scales the experts' inputs by their sigmoid; otherwise the top_k of the softmax (renormalised
 * when norm_topk) scale the experts' outputs. shared_w13 / shared_gate may be NULL. scratch: fp32 room for
 * gr_moe_block_scratch(...) values. Returns 0, or -1 before touching anything when a product cannot take M rows. */
long gr_moe_block_scratch(long M, long hidden, long E, long top_k, long inner, long shared_inner) {
    long k = hidden, n = hidden > E ? hidden : E;
    if (inner > k) k = inner;
    if (shared_inner > k) k = shared_inner;
    if (2 * inner > n) n = 2 * inner;
    if (2 * shared_inner > n) n = 2 * shared_inner;
    const long gemv = gemv_scratch(M, n, k), moe = MAX_M * (2 * hidden + 2 * inner) + gemv_scratch(MAX_M, n, k);
    return 2 * M * hidden + M * E + 3 * M * top_k + 1 + 2 * M * shared_inner + M + (gemv > moe ? gemv : moe);
}

int gr_moe_block(const void *x, const void *norm_w, float eps, const uint16_t *router, long E, long top_k,
                 int sigmoid_router, int norm_topk, const uint16_t *shared_w13, const uint16_t *shared_w2,
                 long shared_inner, const uint16_t *shared_gate, const uint16_t *w13, const uint16_t *w2, long inner,
                 void *out, float *scratch, long scratch_len, long M, long hidden, int act_bf16, int threads, int isa) {
    if (M > MAX_M || E > 256 || top_k > E || top_k > 16 ||
        scratch_len < gr_moe_block_scratch(M, hidden, E, top_k, inner, shared_inner) ||
        !gemv_takes(M, E, hidden, act_bf16, isa) || !gemv_takes(M, 1, hidden, act_bf16, isa) ||
        (shared_w13 && (!gemv_takes(M, 2 * shared_inner, hidden, act_bf16, isa) ||
                        !gemv_takes(M, hidden, shared_inner, act_bf16, isa))))
        return -1;
    float *xn = scratch, *acc = xn + M * hidden, *logits = acc + M * hidden, *scores = logits + M * E;
    int64_t *ids = (int64_t *)(scratch + (scores + M * top_k - scratch + 1) / 2 * 2); /* 8-byte aligned */
    float *h = (float *)(ids + M * top_k), *gate = h + 2 * M * shared_inner, *rest = gate + M;
    for (long m = 0; m < M; m++) { /* xn = rmsnorm(x), rounded as the PyTorch norm */
        float *xf = rest;
        if (isa >= 2 && act_bf16 && hidden % 16 == 0)
            prepare_row_avx512(x, m, hidden, 1, norm_w, eps, xf);
        else
            prepare_row(x, m, hidden, act_bf16, 1, norm_w, eps, xf);
        for (long c = 0; c < hidden; c++) store_act(xn, m * hidden + c, xf[c], act_bf16);
    }
    int status = gr_gemv_bf16(xn, router, NULL, NULL, logits, rest, M, E, hidden, act_bf16, 0, 0, NULL, 0.f, threads,
                              isa);
    for (long m = 0; !status && m < M; m++) { /* route: the top_k experts of token m and their weights */
        float p[256], total = 0.f, best = -INFINITY;
        for (long e = 0; e < E; e++) p[e] = load_act(logits, m * E + e, act_bf16);
        if (!sigmoid_router) {
            for (long e = 0; e < E; e++) best = p[e] > best ? p[e] : best;
            for (long e = 0; e < E; e++) total += p[e] = expf(p[e] - best);
            for (long e = 0; e < E; e++) p[e] /= total;
        }
        float picked = 0.f;
        for (long j = 0; j < top_k; j++) { /* the largest not yet taken; the lowest id on ties */
            long arg = -1;
            for (long e = 0; e < E; e++) {
                int taken = 0;
                for (long i = 0; i < j; i++) taken |= ids[m * top_k + i] == e;
                if (!taken && (arg < 0 || p[e] > p[arg])) arg = e;
            }
            ids[m * top_k + j] = arg;
            scores[m * top_k + j] = p[arg];
            picked += p[arg];
        }
        for (long j = 0; j < top_k; j++) {
            float v = scores[m * top_k + j];
            if (sigmoid_router) v = 1.f / (1.f + expf(-v));
            else if (norm_topk) v /= picked;
            store_act(scores, m * top_k + j, v, act_bf16);
        }
    }
    if (!status && shared_w13) { /* acc = shared(xn) [* sigmoid(xn . gate)] */
        status = gr_gemv_bf16(xn, shared_w13, NULL, NULL, h, rest, M, 2 * shared_inner, hidden, act_bf16, 0, 0, NULL,
                              0.f, threads, isa);
        if (!status)
            status = gr_gemv_bf16(h, shared_w2, NULL, NULL, acc, rest, M, hidden, shared_inner, act_bf16, 0, 2, NULL,
                                  0.f, threads, isa);
        if (!status && shared_gate) {
            status = gr_gemv_bf16(xn, shared_gate, NULL, NULL, gate, rest, M, 1, hidden, act_bf16, 0, 0, NULL, 0.f,
                                  threads, isa);
            for (long m = 0; !status && m < M; m++) {
                float g = load_act(gate, m, act_bf16);
                g = 1.f / (1.f + expf(-g));
                if (act_bf16) g = round_bf16(g);
                for (long c = 0; c < hidden; c++)
                    store_act(acc, m * hidden + c, load_act(acc, m * hidden + c, act_bf16) * g, act_bf16);
            }
        }
    } else if (!status) {
        memset(acc, 0, (size_t)(M * hidden) * (act_bf16 ? 2 : 4));
    }
    if (!status)
        status = gr_moe_bf16(xn, ids, scores, w13, w2, acc, rest, M, top_k, E, hidden, inner, act_bf16, sigmoid_router,
                             threads, isa);
    for (long i = 0; !status && i < M * hidden; i++)
        store_act(out, i, load_act(x, i, act_bf16) + load_act(acc, i, act_bf16), act_bf16);
    return status;
}
