// Checks that %fs:0 (glibc TCB self-pointer == FS base) stays put across syscalls, preemption
// and VMM exits. mode 0: getppid syscall each iteration; 1: spin.
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <stdint.h>
#include <asm/prctl.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 100000;
    int mode = argc > 2 ? atoi(argv[2]) : 0;
    uint64_t base = 0; syscall(SYS_arch_prctl, ARCH_GET_FS, &base);
    long bad = 0;
    for (long i = 0; i < iters; i++) {
        uint64_t v;
        if (mode == 0) syscall(SYS_getppid);
        else for (volatile int k = 0; k < 200000; k++) ;
        __asm__ volatile("mov %%fs:0, %0" : "=r"(v));
        if (v != base) { if (bad < 5) { uint64_t now = 0; syscall(SYS_arch_prctl, ARCH_GET_FS, &now); printf("PROBE fsbase pid %d: fs:0=%lx base=%lx get_fs=%lx at %ld\n", getpid(), v, base, now, i); } bad++; }
    }
    printf("PROBE fsbase pid=%d mode=%d iters=%ld base=%lx bad=%ld\n", getpid(), mode, iters, base, bad);
    return bad != 0;
}
