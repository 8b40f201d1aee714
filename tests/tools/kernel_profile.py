#!/usr/bin/env python3
"""Where a guest spent its time, from an `XHYVE_PROFILE` file (lines "ms vcpu rip"): the share of
samples in user mode and in each kernel function of VMLINUX (its symbols, read with `nm -n`).

    kernel_profile.py VMLINUX PROFILE [--from MS] [--to MS] [--top N]

On a nested `kvm_pvm` host every guest kernel instruction is emulated, so the kernel functions
at the top are what a box kernel, its configuration or its command line can save.
"""

import argparse
import bisect
import collections
import subprocess
import sys

KERNEL_HALF = 0xFFFF800000000000


def symbols(vmlinux):
    """Sorted (address, name) of the text symbols of vmlinux."""
    out = subprocess.run(["nm", "-n", vmlinux], capture_output=True, text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            syms.append((int(parts[0], 16), parts[2]))
    return syms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmlinux")
    ap.add_argument("profile")
    ap.add_argument("--from", dest="start", type=int, default=0, help="first millisecond")
    ap.add_argument("--to", dest="end", type=int, default=None, help="last millisecond")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    syms = symbols(a.vmlinux)
    addrs = [s[0] for s in syms]
    counts = collections.Counter()
    total = 0
    with open(a.profile) as f:
        for line in f:
            try:
                ms, _vcpu, rip = line.split()[:3]
                ms, rip = int(ms), int(rip, 16)
            except ValueError:
                continue  # a line cut by the VMM's exit
            if ms < a.start or (a.end is not None and ms > a.end):
                continue
            total += 1
            if rip < KERNEL_HALF:
                counts["(user mode)"] += 1
                continue
            i = bisect.bisect_right(addrs, rip) - 1
            counts[syms[i][1] if i >= 0 else "(below the kernel's symbols)"] += 1
    if not total:
        sys.exit("no samples in that window")
    print(f"{total} samples")
    for name, n in counts.most_common(a.top):
        print(f"{100 * n / total:6.2f}%  {n:7d}  {name}")


if __name__ == "__main__":
    main()
