/* compute: a compute-bound workload and a bulk copier, for the throughput
 * benches (bench/bench_throughput.py) and as an example.
 *
 *   compute sha256 MIB   SHA-256 of MIB MiB of generated data (MIB <= 2**40;
 *                        64 KiB blocks, block i a fixed pattern with i in
 *                        its first 8 bytes, little-endian); prints the hex
 *                        digest.
 *   compute primes N     counts the primes <= N (sieve of Eratosthenes over
 *                        the odd numbers, one bit each; N <= 2**36);
 *                        prints the count.
 *   compute copy         copies standard input to standard output in 64 KiB
 *                        reads and writes; prints the byte count on stderr.
 *
 * Exit status: 0 on success, 2 on bad arguments, 1 on an I/O error or when
 * the sieve's memory cannot be allocated.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK 65536

/* --- SHA-256 (FIPS 180-4) ------------------------------------------------ */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

struct sha256 {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char buf[64];
    size_t used;
};

static uint32_t ror(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

static void sha256_init(struct sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->bytes = 0;
    s->used = 0;
}

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

static void sha256_update(struct sha256 *s, const unsigned char *p, size_t n) {
    s->bytes += n;
    if (s->used) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->buf + s->used, p, take);
        s->used += take;
        p += take;
        n -= take;
        if (s->used < 64)
            return;
        sha256_block(s->h, s->buf);
        s->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64)
        sha256_block(s->h, p);
    memcpy(s->buf, p, n);
    s->used = n;
}

static void sha256_final(struct sha256 *s, unsigned char out[32]) {
    uint64_t bits = s->bytes * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, pad, padlen + 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

/* --- the three commands -------------------------------------------------- */

static unsigned char block[BLOCK];

static int parse(const char *text, uint64_t max, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v > max)
        return 0;
    *out = v;
    return 1;
}

static int cmd_sha256(uint64_t mib) {
    struct sha256 s;
    sha256_init(&s);
    for (size_t i = 0; i < BLOCK; i++)
        block[i] = (unsigned char)(i * 31 + 7);
    for (uint64_t i = 0; i < mib * (1024 * 1024 / BLOCK); i++) {
        for (int j = 0; j < 8; j++)
            block[j] = (unsigned char)(i >> (8 * j));
        sha256_update(&s, block, BLOCK);
    }
    unsigned char digest[32];
    sha256_final(&s, digest);
    for (int i = 0; i < 32; i++)
        printf("%02x", digest[i]);
    printf("\n");
    return 0;
}

static int cmd_primes(uint64_t n) {
    if (n < 2) {
        printf("0\n");
        return 0;
    }
    /* bit i stands for the odd number 2i+1; 1 is not prime. */
    uint64_t odds = (n + 1) / 2;
    uint64_t words = odds / 64 + 1;
    uint64_t *composite = words <= SIZE_MAX / sizeof(uint64_t) ? calloc((size_t)words, sizeof(uint64_t)) : NULL;
    if (!composite) {
        fprintf(stderr, "compute: cannot allocate the sieve for %" PRIu64 "\n", n);
        return 1;
    }
    uint64_t count = 1; /* the prime 2 */
    for (uint64_t i = 1; i < odds; i++) {
        if (composite[i / 64] >> (i % 64) & 1)
            continue;
        count++;
        uint64_t p = 2 * i + 1;
        if (p > n / p)
            continue; /* p * p > n: nothing left to strike */
        for (uint64_t m = p * p; m <= n; m += 2 * p)
            composite[m / 2 / 64] |= (uint64_t)1 << (m / 2 % 64);
    }
    free(composite);
    printf("%" PRIu64 "\n", count);
    return 0;
}

static int cmd_copy(void) {
    uint64_t total = 0;
    for (;;) {
        ssize_t got = read(0, block, BLOCK);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "compute: cannot read standard input: %s\n", strerror(errno));
            return 1;
        }
        if (got == 0)
            break;
        for (ssize_t off = 0; off < got;) {
            ssize_t put = write(1, block + off, (size_t)(got - off));
            if (put < 0) {
                if (errno == EINTR)
                    continue;
                fprintf(stderr, "compute: cannot write standard output: %s\n", strerror(errno));
                return 1;
            }
            off += put;
        }
        total += (uint64_t)got;
    }
    fprintf(stderr, "copied %" PRIu64 " bytes\n", total);
    return 0;
}

static int usage(void) {
    fprintf(stderr, "usage: compute sha256 MIB | compute primes N | compute copy\n");
    return 2;
}

int main(int argc, char **argv) {
    uint64_t n;
    if (argc == 3 && strcmp(argv[1], "sha256") == 0 && parse(argv[2], (uint64_t)1 << 40, &n))
        return cmd_sha256(n);
    if (argc == 3 && strcmp(argv[1], "primes") == 0 && parse(argv[2], (uint64_t)1 << 36, &n))
        return cmd_primes(n);
    if (argc == 2 && strcmp(argv[1], "copy") == 0)
        return cmd_copy();
    return usage();
}
