// Stale-mapping probe: anonymous pages first read (zero page), then written and read back;
// and fork COW: both sides write their own pattern and verify. Prints mismatches.
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#define PAGES 64
static long check(volatile uint64_t *p, uint64_t pat, const char *what, long round) {
    long bad = 0;
    for (int i = 0; i < PAGES; i++) {
        uint64_t v = p[i * 512 + (round % 512)];
        if (v != pat + i) { if (bad < 3) printf("PROBE pages %s pid %d round %ld page %d: %lx != %lx\n", what, getpid(), round, i, v, pat + i); bad++; }
    }
    return bad;
}
int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 100;
    long bad = 0;
    for (long r = 0; r < rounds; r++) {
        volatile uint64_t *p = mmap(0, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uint64_t sum = 0;
        for (int i = 0; i < PAGES; i++) sum += p[i * 512 + (r % 512)]; // zero page mapped
        if (sum) { printf("PROBE pages zero read nonzero\n"); bad++; }
        uint64_t pat = (uint64_t)getpid() << 32 | r << 8;
        for (int i = 0; i < PAGES; i++) p[i * 512 + (r % 512)] = pat + i;  // COW from zero page
        bad += check(p, pat, "anon", r);
        pid_t c = fork();
        if (c == 0) {
            uint64_t cp = pat ^ 0xc0ffee00000000ull;
            for (int i = 0; i < PAGES; i++) p[i * 512 + (r % 512)] = cp + i;
            _exit(check(p, cp, "child", r) ? 1 : 0);
        }
        bad += check(p, pat, "parent-after-fork", r);
        for (int i = 0; i < PAGES; i++) p[i * 512 + (r % 512)] = pat + i + 1;  // parent COW
        bad += check(p, pat + 1, "parent-cow", r);
        int st; waitpid(c, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) { printf("PROBE pages child status %x\n", st); bad++; }
        munmap((void *)p, PAGES * 4096);
    }
    printf("PROBE pages pid=%d rounds=%ld bad=%ld\n", getpid(), rounds, bad);
    return bad != 0;
}
