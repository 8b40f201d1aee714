#!/usr/bin/env bash
# Host-side decompression benchmark: wall time from exec to guest markers for the same compressed
# kernel and initrd, decompressed by xhyve on the host (the default) and by the guest kernel
# (XHYVE_HOST_DECOMPRESS=off), one guest at a time, with the ratios.
#  1. The tiny box: vmlinuz (an LZ4 bzImage) with its initrd gzip'd, decompressed on the host,
#     against the uncompressed forms (vmlinux + initrd.img: what the host path should match) and
#     against the in-guest path (vmlinuz through its own decompressor; its initrd uncompressed,
#     since the tiny kernel has no RD_GZIP to unpack a gzip'd one).
#  2. Debian 12's stock cloud kernel (linux-image-cloud-amd64, downloaded with apt-get and cached
#     under $XHYVE_BOX_CACHE/debian-kernel/) with the tiny initrd gzip'd: host path against the
#     in-guest path (the bzImage decompressor and the kernel's gunzip, both emulated on nested
#     hosts), the latter stopped after BASELINE_LIMIT seconds.
# usage: vmm/benches/decompress.sh [RUNS]   (default 1; needs target/release/xhyve and the tiny
#        box; XHYVE_BENCH_DEBIAN=0 skips part 2)
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-1}
BOX=${XHYVE_TINY:-target/boxes/tiny}
XHYVE=${XHYVE_BIN:-target/release/xhyve}
CACHE=${XHYVE_BOX_CACHE:-/var/cache/xhyve-rs}
LIMIT=${BENCH_TIMEOUT:-900}
BASELINE_LIMIT=${BASELINE_LIMIT:-900}
CMDLINE="console=ttyS0 xhyve.action=poweroff"
# The kernel's first console line, /init started, init done.
MARKERS=("Linux version" "XHYVE-TINY: booted" "XHYVE-TINY: ready")
NAMES=("kernel-line" "/init" "ready")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
[ -x "$XHYVE" ] && [ -f "$BOX/vmlinuz" ] || { echo "build xhyve and the tiny box first" >&2; exit 1; }

# boot LIMIT [VAR=VALUE...] KERNEL INITRD MEM: prints the seconds from exec to each of MARKERS,
# "-" for one not seen within LIMIT seconds; xhyve's decompression lines go to stderr.
boot() {
  local limit=$1; shift
  local envs=()
  while [[ $1 == *=* ]]; do envs+=("$1"); shift; done
  local kernel=$1 initrd=$2 mem=$3 log start now i t=()
  log=$(mktemp -p "$work")
  for i in "${!MARKERS[@]}"; do t[i]=-; done
  start=$(date +%s.%N)
  env "${envs[@]}" "$XHYVE" -A -m "$mem" -l "com1,log=$log" -f "kexec,$kernel,$initrd,$CMDLINE" \
    2>"$log.err" </dev/null >/dev/null &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    now=$(date +%s.%N)
    for i in "${!MARKERS[@]}"; do
      [ "${t[i]}" = - ] && grep -qaF "${MARKERS[i]}" "$log" && t[i]=$(printf '%.1f' "$(echo "$now - $start" | bc)")
    done
    [ "${t[-1]}" != - ] && break
    [ "$(echo "$now - $start > $limit" | bc)" = 1 ] && break
    sleep 0.5
  done
  kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
  grep -a '^xhyve: \(kernel\|initrd\):' "$log.err" | sed 's/^/      /' >&2
  echo "${t[*]}"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# bench LABEL LIMIT ARGS...: RUNS boots; prints the median per marker ("-" if any run missed it).
bench() {
  local label=$1 limit=$2; shift 2
  local runs=() r i col out=()
  for ((r = 1; r <= RUNS; r++)); do
    runs+=("$(boot "$limit" "$@")")
    echo "  $label run $r: ${runs[-1]}" >&2
  done
  for i in "${!MARKERS[@]}"; do
    col=$(printf '%s\n' "${runs[@]}" | awk -v c=$((i + 1)) '{print $c}')
    if grep -q -- - <<<"$col"; then out+=(-); else out+=("$(median <<<"$col")"); fi
  done
  echo "${out[*]}"
}

# ratios NAME SLOW FAST: per marker, SLOW/FAST or which one SLOW missed (its run was bounded).
ratios() {
  local name=$1 i; local -a a b
  read -ra a <<<"$2"; read -ra b <<<"$3"
  for i in "${!NAMES[@]}"; do
    if [ "${a[i]}" = - ]; then
      echo "  ${NAMES[i]}: ${name%%/*} did not reach it within ${4:-$LIMIT} s (${name##*/}: ${b[i]} s)"
    elif [ "${b[i]}" != - ]; then
      echo "  ratio to ${NAMES[i]}, $name: $(echo "scale=2; ${a[i]} / ${b[i]}" | bc)"
    fi
  done
}

report() {  # report LABEL "T1 T2 T3"
  local label=$1 i; local -a t
  read -ra t <<<"$2"
  printf '  %-44s' "$label"
  for i in "${!NAMES[@]}"; do printf ' %s=%ss' "${NAMES[i]}" "${t[i]}"; done
  echo
}

gz=$work/initrd.img.gz
gzip -9 -n -c "$BOX/initrd.img" >"$gz"
echo "tiny box: vmlinuz $(stat -c %s "$BOX/vmlinuz") B (lz4), initrd $(stat -c %s "$BOX/initrd.img") B," \
  "gzip'd $(stat -c %s "$gz") B; runs: $RUNS"
plain=$(bench "uncompressed forms" "$LIMIT" "$BOX/vmlinux" "$BOX/initrd.img" 256M)
host=$(bench "host decompression" "$LIMIT" "$BOX/vmlinuz" "$gz" 256M)
guest=$(bench "in-guest decompression" "$LIMIT" XHYVE_HOST_DECOMPRESS=off "$BOX/vmlinuz" "$BOX/initrd.img" 256M)
echo "tiny box, median seconds from exec:"
report "vmlinux + initrd.img (uncompressed forms)" "$plain"
report "vmlinuz + initrd.gz, host decompression" "$host"
report "vmlinuz + initrd.img, in-guest (kernel only)" "$guest"
ratios in-guest/host "$guest" "$host"
ratios host/uncompressed "$host" "$plain"

[ "${XHYVE_BENCH_DEBIAN:-1}" = 0 ] && exit 0
# Debian's kernel package, extracted once (the metapackage names the current one).
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
[ -n "$pkg" ] || { echo "linux-image-cloud-amd64 unknown to apt (apt-get update first)" >&2; exit 1; }
ver=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
dir=$CACHE/debian-kernel/$pkg-$ver
if [ ! -f "$dir/vmlinuz" ]; then
  dl=$(mktemp -d -p "$work")
  (cd "$dl" && apt-get download -q "$pkg" >&2) && dpkg-deb -x "$dl"/*.deb "$dl/x" || { echo "cannot get $pkg" >&2; exit 1; }
  mkdir -p "$dir" && cp "$dl"/x/boot/vmlinuz-* "$dir/vmlinuz.tmp.$$" && mv -f "$dir/vmlinuz.tmp.$$" "$dir/vmlinuz"
fi
echo "Debian $pkg $ver: vmlinuz $(stat -c %s "$dir/vmlinuz") B, with the tiny initrd gzip'd; runs: $RUNS"
dhost=$(bench "Debian, host decompression" "$LIMIT" "$dir/vmlinuz" "$gz" 1G)
dguest=$(bench "Debian, in-guest decompression" "$BASELINE_LIMIT" XHYVE_HOST_DECOMPRESS=off "$dir/vmlinuz" "$gz" 1G)
echo "Debian stock kernel, median seconds from exec (-: not within ${BASELINE_LIMIT} s):"
report "vmlinuz + initrd.gz, host decompression" "$dhost"
report "vmlinuz + initrd.gz, in-guest decompression" "$dguest"
ratios in-guest/host "$dguest" "$dhost" "$BASELINE_LIMIT"
