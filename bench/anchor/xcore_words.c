/* xcore_words.c - ../shared/anchor-bench/xcore_stream.c with one change: the copies in and
 * out of the shared ring move one 8-byte word at a time with relaxed atomic loads and stores
 * (__atomic_load_n / __atomic_store_n, which gcc never vectorises), as memfd-tripwire's
 * sys::Mapping must (the trust model: no data race on memory a peer writes), instead of
 * memcpy. Its figures over xcore_stream's, taken in one session, are the ceiling of that
 * copy rule for byte frames on the host at hand (BENCHMARKS.md, #24).
 *
 *   cc -O2 -march=native -pthread -I ../../../shared/anchor-bench -o /tmp/xcore_words xcore_words.c -lm
 *   RUNS=1 BYTES=268435456 /tmp/xcore_words      (interleave with xcore_stream; same env)
 *   add -DWIDE16 (and -o /tmp/xcore_words16) for 16-byte copies: see copy_in below
 *
 * What follows is xcore_stream.c's own comment.
 *
 * xcore_stream.c - the ceiling for moving bytes between two processes through shared
 * memory: a byte ring of variable-length frames (8-byte length word + payload, padded to 8),
 * producer on CPU1 and consumer on CPU0, both spinning (no doorbell, no syscall), each frame
 * memcpy'd in by the producer and memcpy'd out by the consumer. Also the same process's
 * single-core memcpy bandwidth for reference.
 *
 *   ./xcore_stream                 env: SIZES ("64 1024 65536"), BYTES (1 GiB per size),
 *                                       RING (4 MiB), RUNS (5)
 * Output: RESULT xcore_stream_<size>B GB_per_sec <median> - GB/s  (and M frames/s)
 *         RESULT memcpy_1core_<size>B GB_per_sec <median> - GB/s */
#include "common.h"

struct ctl { _Alignas(CL) _Atomic uint64_t head; _Alignas(CL) _Atomic uint64_t tail; };

static int cmp_double(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static uint64_t pad8(uint64_t n) { return (n + 7) & ~7ull; }
#ifndef WIDE16
/* word-at-a-time relaxed atomic copies, as memfd-tripwire's Mapping does (no vectorising) */
static void copy_in(uint8_t *shared, const uint8_t *src, uint64_t n) {
    uint64_t w = pad8(n) / 8;
    for (uint64_t i = 0; i < w; i++) { uint64_t v; memcpy(&v, src + 8 * i, 8); __atomic_store_n((uint64_t *)(shared + 8 * i), v, __ATOMIC_RELAXED); }
}
static void copy_out(uint8_t *dst, const uint8_t *shared, uint64_t n) {
    uint64_t w = pad8(n) / 8;
    for (uint64_t i = 0; i < w; i++) { uint64_t v = __atomic_load_n((const uint64_t *)(shared + 8 * i), __ATOMIC_RELAXED); memcpy(dst + 8 * i, &v, 8); }
}
#define NAME "xcore_words"
#else
/* -DWIDE16: 16 bytes per access (movdqu in asm, so the compiler keeps them 16 bytes wide; the
 * last odd word as a relaxed 8-byte atomic): what copies twice as wide would buy. An
 * experiment, not the crate's rule (unaligned 16-byte accesses are not single-copy atomic; the
 * crate would need aligned movdqa, atomic on AVX processors). */
#include <immintrin.h>
static void copy_in(uint8_t *shared, const uint8_t *src, uint64_t n) {
    uint64_t w = pad8(n) / 16, i;
    for (i = 0; i < w; i++) { __m128i v = _mm_loadu_si128((const __m128i *)(src + 16 * i)); __asm__ volatile("movdqu %1, %0" : "=m"(*(__m128i *)(shared + 16 * i)) : "x"(v)); }
    if (pad8(n) % 16) { uint64_t v; memcpy(&v, src + 16 * i, 8); __atomic_store_n((uint64_t *)(shared + 16 * i), v, __ATOMIC_RELAXED); }
}
static void copy_out(uint8_t *dst, const uint8_t *shared, uint64_t n) {
    uint64_t w = pad8(n) / 16, i;
    for (i = 0; i < w; i++) { __m128i v; __asm__ volatile("movdqu %1, %0" : "=x"(v) : "m"(*(const __m128i *)(shared + 16 * i))); _mm_storeu_si128((__m128i *)(dst + 16 * i), v); }
    if (pad8(n) % 16) { uint64_t v = __atomic_load_n((const uint64_t *)(shared + 16 * i), __ATOMIC_RELAXED); memcpy(dst + 16 * i, &v, 8); }
}
#define NAME "xcore_words16"
#endif

int main(void) {
    const char *sizes_env = getenv("SIZES") ? getenv("SIZES") : "64 1024 65536";
    uint64_t bytes = getenv("BYTES") ? strtoull(getenv("BYTES"), 0, 0) : (1ull << 30);
    uint64_t ring = getenv("RING") ? strtoull(getenv("RING"), 0, 0) : (4ull << 20);
    int runs = getenv("RUNS") ? atoi(getenv("RUNS")) : 5;
    struct ctl *c = shm_alloc(sizeof *c, NULL);
    uint8_t *buf = shm_alloc(ring, NULL);
    char sizes[256]; snprintf(sizes, sizeof sizes, "%s", sizes_env);
    for (char *tok = strtok(sizes, " "); tok; tok = strtok(NULL, " ")) {
        uint64_t size = strtoull(tok, 0, 0), frame = 8 + pad8(size), n = bytes / size;
        if (frame > ring / 2) DIE("frame %llu too big for ring %llu", (unsigned long long)frame, (unsigned long long)ring);
        double gbs[64], mcp[64];
        for (int r = 0; r < runs && r < 64; r++) {
            atomic_store(&c->head, 0); atomic_store(&c->tail, 0);
            pid_t pid = fork();
            if (pid == 0) { /* producer */
                pin(1);
                uint8_t *src = malloc(pad8(size)); memset(src, 0xAB, pad8(size));
                uint64_t head = 0;
                for (uint64_t i = 0; i < n; i++) {
                    uint64_t off = head % ring;
                    uint64_t need = (ring - off < frame) ? (ring - off) + frame : frame;
                    while (head + need - atomic_load_explicit(&c->tail, memory_order_acquire) > ring) _mm_pause();
                    if (ring - off < frame) { *(uint64_t *)(buf + off) = UINT64_MAX; head += ring - off; off = 0; }
                    copy_in(buf + off + 8, src, size);
                    *(uint64_t *)(buf + off) = size;
                    head += frame;
                    atomic_store_explicit(&c->head, head, memory_order_release);
                }
                _exit(0);
            }
            pin(0);
            uint8_t *dst = malloc(pad8(size) + 8);
            uint64_t tail = 0, got = 0, t0 = now_ns();
            while (got < n) {
                uint64_t head = atomic_load_explicit(&c->head, memory_order_acquire);
                while (tail < head) {
                    uint64_t off = tail % ring, len = *(uint64_t *)(buf + off);
                    if (len == UINT64_MAX) { tail += ring - off; continue; }
                    copy_out(dst, buf + off + 8, len);
                    tail += 8 + pad8(len); got++;
                }
                atomic_store_explicit(&c->tail, tail, memory_order_release);
                if (tail == head) _mm_pause();
            }
            uint64_t t1 = now_ns();
            waitpid(pid, NULL, 0);
            if (dst[size - 1] != 0xAB) DIE("payload check failed");
            gbs[r] = (double)(n * size) / (double)(t1 - t0);
            /* single-core memcpy of the same total through the same ring, for reference */
            uint8_t *src = malloc(size); memset(src, 0xCD, size);
            uint64_t m0 = now_ns(), off = 0;
            for (uint64_t i = 0; i < n; i++) { memcpy(buf + off, src, size); memcpy(dst, buf + off, size); off = (off + frame) % (ring - frame); }
            mcp[r] = (double)(n * size) / (double)(now_ns() - m0);
            free(src); free(dst);
        }
        qsort(gbs, runs, sizeof(double), cmp_double);
        qsort(mcp, runs, sizeof(double), cmp_double);
        printf("RESULT " NAME "_%lluB GB_per_sec %.2f - GB/s\n", (unsigned long long)size, gbs[runs / 2]);
        printf("RESULT " NAME "_%lluB frames_per_sec(M) %.2f - Mframe/s\n", (unsigned long long)size, gbs[runs / 2] * 1e3 / size);
        printf("RESULT memcpy_1core_%lluB GB_per_sec %.2f - GB/s\n", (unsigned long long)size, mcp[runs / 2]);
    }
    return 0;
}
