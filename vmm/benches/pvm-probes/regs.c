// Fills r8-r10, r12-r15 (SYSCALL clobbers r11) and xmm0-15 with a pattern, then loops: syscall
// (getppid) or spin; checks them all.
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <stdint.h>
#include <string.h>
static uint64_t seed;
int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 100000;
    int mode = argc > 2 ? atoi(argv[2]) : 0; // 0: syscall each iter, 1: spin (preemption only)
    seed = getpid() * 0x9e3779b97f4a7c15ull;
    long gpr_bad = 0, xmm_bad = 0;
    for (long i = 0; i < iters; i++) {
        uint64_t pat = seed ^ (uint64_t)i * 0x100000001b3ull;
        uint64_t out[8]; uint64_t xo[32];
        __asm__ volatile(
            "mov %[p], %%r8\n lea 1(%[p]), %%r9\n lea 2(%[p]), %%r10\n lea 4(%[p]), %%r12\n"
            "lea 5(%[p]), %%r13\n lea 6(%[p]), %%r14\n lea 7(%[p]), %%r15\n"
            "movq %[p], %%xmm0\n pshufd $0x44, %%xmm0, %%xmm0\n"
            "movdqa %%xmm0, %%xmm1\n movdqa %%xmm0, %%xmm2\n movdqa %%xmm0, %%xmm3\n"
            "movdqa %%xmm0, %%xmm4\n movdqa %%xmm0, %%xmm5\n movdqa %%xmm0, %%xmm6\n movdqa %%xmm0, %%xmm7\n"
            "movdqa %%xmm0, %%xmm8\n movdqa %%xmm0, %%xmm9\n movdqa %%xmm0, %%xmm10\n movdqa %%xmm0, %%xmm11\n"
            "movdqa %%xmm0, %%xmm12\n movdqa %%xmm0, %%xmm13\n movdqa %%xmm0, %%xmm14\n movdqa %%xmm0, %%xmm15\n"
            "test %[m], %[m]\n jnz 2f\n"
            "mov $110, %%eax\n syscall\n jmp 3f\n"
            "2: mov $200000, %%ecx\n 1: dec %%ecx\n jnz 1b\n"
            "3: mov %%r8, 0(%[o])\n mov %%r9, 8(%[o])\n mov %%r10, 16(%[o])\n mov %%r12, 24(%[o])\n"
            "mov %%r13, 32(%[o])\n mov %%r14, 40(%[o])\n mov %%r15, 48(%[o])\n"
            "movdqu %%xmm0, 0(%[x])\n movdqu %%xmm1, 16(%[x])\n movdqu %%xmm2, 32(%[x])\n movdqu %%xmm3, 48(%[x])\n"
            "movdqu %%xmm4, 64(%[x])\n movdqu %%xmm5, 80(%[x])\n movdqu %%xmm6, 96(%[x])\n movdqu %%xmm7, 112(%[x])\n"
            "movdqu %%xmm8, 128(%[x])\n movdqu %%xmm9, 144(%[x])\n movdqu %%xmm10, 160(%[x])\n movdqu %%xmm11, 176(%[x])\n"
            "movdqu %%xmm12, 192(%[x])\n movdqu %%xmm13, 208(%[x])\n movdqu %%xmm14, 224(%[x])\n movdqu %%xmm15, 240(%[x])\n"
            : : [p] "r"(pat), [o] "r"(out), [x] "r"(xo), [m] "r"((long)mode)
            : "rax", "rcx", "r11", "r8", "r9", "r10", "r12", "r13", "r14", "r15", "memory",
              "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15");
        uint64_t want[7] = {pat, pat+1, pat+2, pat+4, pat+5, pat+6, pat+7};
        for (int k = 0; k < 7; k++) if (out[k] != want[k]) { if (gpr_bad < 5) printf("PROBE regs gpr %d: %lx != %lx at %ld\n", k, out[k], want[k], i); gpr_bad++; }
        for (int k = 0; k < 32; k++) if (xo[k] != pat) { if (xmm_bad < 5) printf("PROBE regs xmm%d: %lx != %lx at %ld\n", k/2, xo[k], pat, i); xmm_bad++; break; }
    }
    printf("PROBE regs pid=%d mode=%d iters=%ld gpr_bad=%ld xmm_bad=%ld\n", getpid(), mode, iters, gpr_bad, xmm_bad);
    return gpr_bad || xmm_bad;
}
