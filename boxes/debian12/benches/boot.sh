#!/usr/bin/env bash
# Boot-to-SSH of the Debian 12 box against the tiny box's, both through the provider and kexec:
# machine.start until machine.wait_ssh logs in, then one machine.exec. One guest at a time,
# the two boxes alternating for ROUNDS rounds (default 1); prints each time, the medians, their
# ratio, the host's load average around each boot (other guests on the host slow both), and the
# Debian guest's own account (systemd-analyze).
#   usage: boxes/debian12/benches/boot.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
rounds=${1:-1}
cargo build --release -p xhyve -p xhyve-provider >&2
boxes/tiny/box.sh target/boxes/tiny.box >&2
boxes/debian12/box.sh target/boxes/debian12.box >&2
p=$PWD/target/release/xhyve-provider
XHYVE_HOME=$(mktemp -d /tmp/xhyve-bench.XXXXXX)
export XHYVE_HOME
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# The daemon this script's calls start (in its own home): destroy its machines, stop it by pid.
cleanup() {
	local pid
	pid=$("$p" call --no-start provider.info 2>/dev/null | field pid) || pid=
	"$p" call --no-start machine.list 2>/dev/null | python3 -c 'import json,sys
for m in json.load(sys.stdin): print(m["id"])' | while read -r id; do
		"$p" call --no-start machine.destroy "{\"id\": \"$id\", \"force\": true}" >/dev/null 2>&1 || true
	done
	[ -z "$pid" ] || kill "$pid" 2>/dev/null || true
	rm -rf "$XHYVE_HOME"
}
trap cleanup EXIT
load() { cut -d' ' -f1 /proc/loadavg; }

"$p" box add "$PWD/target/boxes/tiny.box" --name xhyve/tiny >/dev/null
"$p" box add "$PWD/target/boxes/debian12.box" --name xhyve/debian12 >/dev/null

# boot BOX: prints "SECONDS_TO_SSH SECONDS_EXEC LOAD_BEFORE LOAD_AFTER"
boot() {
	local box=$1 id t0 t1 t2 l0
	id=$("$p" call machine.create "{\"box\": \"$box\", \"name\": \"bench\"}" | field id)
	l0=$(load)
	t0=$(date +%s.%N)
	"$p" call machine.start "{\"id\": \"$id\"}" >/dev/null
	"$p" call machine.wait_ssh "{\"id\": \"$id\", \"timeout\": 3600}" >/dev/null
	t1=$(date +%s.%N)
	"$p" call machine.exec "{\"id\": \"$id\", \"command\": \"true\"}" >/dev/null
	t2=$(date +%s.%N)
	if [ "$box" = xhyve/debian12 ]; then
		"$p" call machine.exec "{\"id\": \"$id\", \"command\": \"systemd-analyze; systemd-analyze blame | head -n 15\"}" \
			>/dev/null 2>"$XHYVE_HOME/analyze" || true
		sed 's/^/    /' "$XHYVE_HOME/analyze" >&2
	fi
	"$p" call machine.destroy "{\"id\": \"$id\", \"force\": true}" >/dev/null
	python3 -c 'import sys; a = list(map(float, sys.argv[1:])); print(f"{a[1]-a[0]:.1f} {a[2]-a[1]:.1f}")' "$t0" "$t1" "$t2" |
		tr '\n' ' '
	echo "$l0 $(load)"
}

tiny=() debian=()
for r in $(seq "$rounds"); do
	read -r s e l0 l1 < <(boot xhyve/tiny)
	echo "round $r tiny:     SSH after $s s, exec $e s (load $l0 -> $l1)"
	tiny+=("$s")
	read -r s e l0 l1 < <(boot xhyve/debian12)
	echo "round $r debian12: SSH after $s s, exec $e s (load $l0 -> $l1)"
	debian+=("$s")
done
python3 - "${tiny[*]}" "${debian[*]}" <<'EOF'
import statistics, sys
t = statistics.median(map(float, sys.argv[1].split()))
d = statistics.median(map(float, sys.argv[2].split()))
print(f"boot-to-SSH median: tiny {t:.1f} s, debian12 {d:.1f} s, ratio debian12/tiny {d / t:.2f}")
EOF
