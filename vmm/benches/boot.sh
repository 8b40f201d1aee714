#!/usr/bin/env bash
# Boot benchmark: median wall time from exec to the guest's "ready" marker, for xhyve and for
# QEMU (-M microvm) on the same kernel and initrd, plus xhyve's memory overhead.
# usage: vmm/benches/boot.sh [RUNS]   (default 5; needs target/release/xhyve and the tiny box)
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
BOX=${XHYVE_TINY:-target/boxes/tiny}
XHYVE=${XHYVE_BIN:-target/release/xhyve}
TIMEOUT=${BENCH_TIMEOUT:-900}
MARK='XHYVE-TINY: ready'
CMDLINE="console=ttyS0 xhyve.action=poweroff"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# Runs "$@" with the console on stdout; prints seconds until $MARK, or "fail: reason".
time_to_marker() {
  local out start
  out=$(mktemp -p "$work")   # a fresh file: no marker left from an earlier run
  start=$(date +%s.%N)
  timeout "$TIMEOUT" "$@" >"$out" 2>"$work/err" </dev/null &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    if grep -q "$MARK" "$out"; then
      echo "$(date +%s.%N) - $start" | bc; kill $pid 2>/dev/null; wait $pid 2>/dev/null; return 0
    fi
    if grep -q "KVM internal error" "$out" "$work/err"; then  # QEMU stops the vCPU and waits
      kill $pid 2>/dev/null; wait $pid 2>/dev/null
      echo "fail: $(grep -ahA1 'KVM internal error' "$out" "$work/err" | tr '\n' ' ' | cut -c1-120)" \
        "at: $(grep -ah '^Code=' "$out" "$work/err" | head -1 | cut -c1-90)"
      return 0
    fi
    sleep 0.2
  done
  wait $pid; local rc=$?
  grep -q "$MARK" "$out" && { echo "$(date +%s.%N) - $start" | bc; return 0; }
  echo "fail: exit $rc: $(grep -aE 'error|fail|emulation' "$work/err" "$out" | tail -n 2 | tr '\n' ' ' | cut -c1-300)"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

bench() {
  local name=$1; shift
  local times=() i t
  for ((i = 1; i <= RUNS; i++)); do
    t=$(time_to_marker "$@")
    echo "  $name run $i: $t" >&2
    case $t in fail*) echo "$t"; return;; esac
    times+=("$t")
  done
  printf '%s\n' "${times[@]}" | median
}

echo "kernel: $BOX/vmlinux, initrd: $BOX/initrd.img, runs: $RUNS"
x=$(bench xhyve "$XHYVE" -A -m 256M -l com1,stdio -f "kexec,$BOX/vmlinux,$BOX/initrd.img,$CMDLINE")
# QEMU gets the same kernel parameters xhyve adds on this host (none on a normal KVM host), and
# the CPU flags the notes found it needs (it cannot set IA32_ARCH_CAPABILITIES here).
extra=$("$XHYVE" -v -m 256M -f "kexec,$BOX/vmlinux,$BOX/initrd.img,$CMDLINE" 2>&1 </dev/null >/dev/null &
        p=$!; sleep 1; kill $p; wait $p 2>/dev/null)
extra=$(printf '%s\n' "$extra" | sed -n 's/^xhyve: nested PVM host: adding to the kernel command line: //p')
command -v qemu-system-x86_64 >/dev/null || echo "qemu-system-x86_64 missing: apt-get install qemu-system-x86" >&2
q=$(bench qemu qemu-system-x86_64 -accel kvm -M microvm -cpu host,-cx16,-arch-capabilities -m 256M \
      -nodefaults -no-user-config -nographic -serial stdio \
      -kernel "$BOX/vmlinux" -initrd "$BOX/initrd.img" -append "$CMDLINE $extra")
echo "xhyve median to marker (s): $x"
echo "qemu microvm median to marker (s): $q"
case "$x$q" in *fail*|*n/a*) echo "ratio qemu/xhyve: n/a (a peer did not reach the marker)";;
  *) echo "ratio qemu/xhyve: $(echo "scale=2; $q / $x" | bc)";; esac

# Memory: xhyve reports its peak RSS and the guest RAM it touched with -v.
"$XHYVE" -v -A -m 256M -l com1,log="$work/console" \
  -f "kexec,$BOX/vmlinux,$BOX/initrd.img,$CMDLINE" 2>"$work/mem" </dev/null >/dev/null
grep 'memory:' "$work/mem" | sed 's/^xhyve: /xhyve /'
