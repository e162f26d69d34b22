/* The CPU's arithmetic peak, measured: its clock, and how many fp32 FMAs (and bf16 dot products,
 * where the CPU has them) one core retires per cycle.
 *
 * Built and run by step_floor.py (gcc -O2); prints one line per measurement:
 *   clock_ghz G            from a chain of dependent integer adds (one per cycle on any x86 core)
 *   fma256_per_ns R        256-bit fp32 FMAs per ns, many independent chains (throughput, not latency)
 *   fma512_per_ns R        the same with 512-bit FMAs (AVX-512 CPUs only)
 *   dpbf16_512_per_ns R    512-bit bf16 dot products, vdpbf16ps (AVX512_BF16 CPUs only)
 *   tdpbf16ps_per_ns R     AMX bf16 tile products, tdpbf16ps on full 16x64-byte tiles (AMX CPUs
 *                          only; each is a 16x32 by 32x16 matrix product, 16,384 flops)
 * Arguments: seconds per measurement, and which of avx512 / bf16 / amx to try.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* 16 dependent register-to-register adds per iteration: the loop's own counter runs beside them, so
 * the chain sets the pace, one add per cycle. Not `add $1`: newer Intel cores fold chains of
 * immediate adds at rename and retire several per cycle (20-21 "GHz" on a 3.8 GHz core). */
static double clock_ghz(double seconds) {
    long iterations = 1 << 20, done = 0;
    unsigned long x = 1, one = 1;
    double start = now(), elapsed;
    do {
        for (long i = 0; i < iterations; i++) {
            __asm__ volatile(
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                : "+r"(x)
                : "r"(one));
        }
        done += iterations;
        elapsed = now() - start;
    } while (elapsed < seconds);
    return done * 16.0 / elapsed / 1e9 + (x == 0);  /* x is never 0: keeps the chain live */
}

/* Instructions per ns of STEP(acc) run on 12 independent accumulators (enough to cover a 4-cycle
 * FMA latency on 3 units) of VEC until `seconds` pass. SET1, ADD
 * and SUM0 make the accumulators and fold them into one float, which the result depends on, so the
 * compiler cannot drop the loop. */
#define THROUGHPUT(VEC, SET1, ADD, SUM0, STEP)                                    \
    VEC c0 = SET1(0.f), c1 = SET1(1.f), c2 = SET1(2.f), c3 = SET1(3.f);           \
    VEC c4 = SET1(4.f), c5 = SET1(5.f), c6 = SET1(6.f), c7 = SET1(7.f);           \
    VEC c8 = SET1(8.f), c9 = SET1(9.f), c10 = SET1(10.f), c11 = SET1(11.f);       \
    long iterations = 1 << 16, done = 0;                                          \
    double start = now(), elapsed;                                                \
    do {                                                                          \
        for (long i = 0; i < iterations; i++) {                                   \
            STEP(c0) STEP(c1) STEP(c2) STEP(c3) STEP(c4) STEP(c5)                 \
            STEP(c6) STEP(c7) STEP(c8) STEP(c9) STEP(c10) STEP(c11)               \
        }                                                                         \
        done += iterations;                                                       \
        elapsed = now() - start;                                                  \
    } while (elapsed < seconds);                                                  \
    VEC acc = ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7)));  \
    acc = ADD(acc, ADD(ADD(c8, c9), ADD(c10, c11)));                              \
    return done * 12.0 / elapsed / 1e9 + (SUM0(acc) == 12345.f);

static float first256(__m256 v) __attribute__((target("avx2")));
static float first256(__m256 v) { return _mm256_cvtss_f32(v); }

__attribute__((target("avx2,fma"))) static double fma256(double seconds) {
    __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
#define STEP256(c) c = _mm256_fmadd_ps(a, c, b);
    THROUGHPUT(__m256, _mm256_set1_ps, _mm256_add_ps, first256, STEP256)
}

__attribute__((target("avx512f"))) static double fma512(double seconds) {
    __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
#define STEP512(c) c = _mm512_fmadd_ps(a, c, b);
    THROUGHPUT(__m512, _mm512_set1_ps, _mm512_add_ps, _mm512_reduce_add_ps, STEP512)
}

__attribute__((target("avx512f,avx512bf16"))) static double dpbf16(double seconds) {
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3a83);
#define STEPBF16(c) c = _mm512_dpbf16_ps(c, a, b);
    THROUGHPUT(__m512, _mm512_set1_ps, _mm512_add_ps, _mm512_reduce_add_ps, STEPBF16)
}

/* AMX needs GCC 11 / clang 12 for the intrinsics and Linux's arch_prctl for the tile data; without
 * them the measurement is left out (and "amx" prints nothing). */
#if defined(__linux__) && defined(SYS_arch_prctl) && (__GNUC__ >= 11 || __clang_major__ >= 12)
#define HAVE_AMX 1
/* The tile configuration tdpbf16ps runs on: palette 1, eight tiles of 16 rows x 64 bytes. */
struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
};

/* Tile products per ns on four independent accumulator tiles (0-3) from two A (4, 5) and two B
 * (6, 7) tiles; -1 when the kernel does not let this process use the tile data (Linux asks for it
 * with arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)). */
__attribute__((target("amx-tile,amx-bf16"))) static double tdpbf16(double seconds) {
    if (syscall(SYS_arch_prctl, 0x1023, 18)) return -1;
    struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int i = 0; i < 8; i++) config.bytes_per_row[i] = 64, config.rows[i] = 16;
    _tile_loadconfig(&config);
    static uint16_t ones[16 * 32] __attribute__((aligned(64)));
    static float out[16 * 16] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++) ones[i] = 0x3c00; /* bf16 0.0078125: the sums stay finite */
    _tile_loadd(4, ones, 64);
    _tile_loadd(5, ones, 64);
    _tile_loadd(6, ones, 64);
    _tile_loadd(7, ones, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    long iterations = 1 << 14, done = 0;
    double start = now(), elapsed;
    do {
        for (long i = 0; i < iterations; i++) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        done += iterations;
        elapsed = now() - start;
    } while (elapsed < seconds);
    _tile_stored(0, out, 64);
    _tile_release();
    return done * 4.0 / elapsed / 1e9 + (out[0] == 12345.f);
}
#endif

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    int avx512 = 0, bf16 = 0, amx = 0;
    for (int i = 2; i < argc; i++) {
        avx512 |= !strcmp(argv[i], "avx512");
        bf16 |= !strcmp(argv[i], "bf16");
        amx |= !strcmp(argv[i], "amx");
    }
    printf("clock_ghz %.4f\n", clock_ghz(seconds));
    printf("fma256_per_ns %.4f\n", fma256(seconds));
    if (avx512) printf("fma512_per_ns %.4f\n", fma512(seconds));
    if (bf16) printf("dpbf16_512_per_ns %.4f\n", dpbf16(seconds));
#ifdef HAVE_AMX
    if (amx) {
        double rate = tdpbf16(seconds);
        if (rate > 0) printf("tdpbf16ps_per_ns %.4f\n", rate);
    }
#else
    (void)amx;
#endif
    printf("clock_ghz_after %.4f\n", clock_ghz(seconds));
    return 0;
}
