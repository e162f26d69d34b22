/* The CPU's arithmetic peak, measured: its clock, and how many fp32 FMAs (and bf16 dot products,
 * where the CPU has them) one core retires per cycle.
 *
 * Built and run by step_floor.py (gcc -O2); prints one line per measurement:
 *   clock_ghz G            from a chain of dependent integer adds (one per cycle on any x86 core)
 *   fma256_per_ns R        256-bit fp32 FMAs per ns, many independent chains (throughput, not latency)
 *   fma512_per_ns R        the same with 512-bit FMAs (AVX-512 CPUs only)
 *   dpbf16_512_per_ns R    512-bit bf16 dot products, vdpbf16ps (AVX512_BF16 CPUs only)
 * Arguments: seconds per measurement, and which of avx512 / bf16 to try.
 */
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* 16 dependent adds per iteration: the loop's own counter runs beside them, so the chain sets the pace */
static double clock_ghz(double seconds) {
    long iterations = 1 << 20, done = 0;
    unsigned long x = 1;
    double start = now(), elapsed;
    do {
        for (long i = 0; i < iterations; i++) {
            __asm__ volatile(
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                : "+r"(x));
        }
        done += iterations;
        elapsed = now() - start;
    } while (elapsed < seconds);
    return done * 16.0 / elapsed / 1e9 + (x == 0);  /* x is never 0: keeps the chain live */
}

/* 12 independent accumulators: enough to cover a 4-cycle FMA latency on 3 units */
#define CHAINS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)

__attribute__((target("avx2,fma"))) static double fma256(double seconds) {
    __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
#define DECL(i) __m256 c##i = _mm256_set1_ps((float)i);
    CHAINS(DECL)
#define STEP(i) c##i = _mm256_fmadd_ps(a, c##i, b);
    long iterations = 1 << 16, done = 0;
    double start = now(), elapsed;
    do {
        for (long i = 0; i < iterations; i++) { CHAINS(STEP) }
        done += iterations;
        elapsed = now() - start;
    } while (elapsed < seconds);
#define SUM(i) acc = _mm256_add_ps(acc, c##i);
    __m256 acc = _mm256_setzero_ps();
    CHAINS(SUM)
    float out[8];
    _mm256_storeu_ps(out, acc);
    return done * 12.0 / elapsed / 1e9 + (out[0] == 12345.f);
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((target("avx512f"))) static double fma512(double seconds) {
    __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
#define DECL(i) __m512 c##i = _mm512_set1_ps((float)i);
    CHAINS(DECL)
#define STEP(i) c##i = _mm512_fmadd_ps(a, c##i, b);
    long iterations = 1 << 16, done = 0;
    double start = now(), elapsed;
    do {
        for (long i = 0; i < iterations; i++) { CHAINS(STEP) }
        done += iterations;
        elapsed = now() - start;
    } while (elapsed < seconds);
#define SUM(i) acc = _mm512_add_ps(acc, c##i);
    __m512 acc = _mm512_setzero_ps();
    CHAINS(SUM)
    return done * 12.0 / elapsed / 1e9 + (_mm512_reduce_add_ps(acc) == 12345.f);
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((target("avx512f,avx512bf16"))) static double dpbf16(double seconds) {
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3a83);
#define DECL(i) __m512 c##i = _mm512_set1_ps((float)i);
    CHAINS(DECL)
#define STEP(i) c##i = _mm512_dpbf16_ps(c##i, a, b);
    long iterations = 1 << 16, done = 0;
    double start = now(), elapsed;
    do {
        for (long i = 0; i < iterations; i++) { CHAINS(STEP) }
        done += iterations;
        elapsed = now() - start;
    } while (elapsed < seconds);
#define SUM(i) acc = _mm512_add_ps(acc, c##i);
    __m512 acc = _mm512_setzero_ps();
    CHAINS(SUM)
    return done * 12.0 / elapsed / 1e9 + (_mm512_reduce_add_ps(acc) == 12345.f);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    int avx512 = 0, bf16 = 0;
    for (int i = 2; i < argc; i++) {
        avx512 |= !strcmp(argv[i], "avx512");
        bf16 |= !strcmp(argv[i], "bf16");
    }
    printf("clock_ghz %.4f\n", clock_ghz(seconds));
    printf("fma256_per_ns %.4f\n", fma256(seconds));
    if (avx512) printf("fma512_per_ns %.4f\n", fma512(seconds));
    if (bf16) printf("dpbf16_512_per_ns %.4f\n", dpbf16(seconds));
    printf("clock_ghz_after %.4f\n", clock_ghz(seconds));
    return 0;
}
