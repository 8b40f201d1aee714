#!/usr/bin/env bash
# The second `vagrant up` of a box against the first (provider/API.md, "Fast start"): two Vagrant
# projects naming the tiny box (packed as boxes/tiny/box.sh packs it, with fast_start), the same
# Vagrantfile; the first `vagrant up` boots the guest and saves the box's boot, the second starts
# from that saved boot. Prints both wall times, their ratio, then the second machine's `vagrant
# suspend` and `vagrant resume` (twice), and `vagrant status` (Vagrant's own start-up) for scale.
# It is not a test.
# usage: ruby-shim/benches/fast-start.sh   (boots the guest once: minutes here)
# Binaries and guest files as the tests take them: XHYVE_PROVIDER_BIN, XHYVE_BIN, XHYVE_TINY.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'cleanup_projects first second' EXIT
setup_projects --fast-start first second

up() {
	local t log=$work/$1.log
	t=$(now)
	if ! (cd "$work/$1" && vagrant up --provider=xhyve) >"$log" 2>&1; then
		cat "$log" >&2
		exit 1
	fi
	echo "$(now) - $t" | bc
}
first=$(up first)
second=$(up second)
# Runs `vagrant $1` in the second project; prints its wall time.
timed() {
	local t
	t=$(now)
	(cd "$work/second" && vagrant "$1") >"$work/$1.log" 2>&1 || { cat "$work/$1.log" >&2 && exit 1; }
	echo "$(now) - $t" | bc
}
resumes=()
for _ in 1 2; do
	suspend_s=$(timed suspend)
	resumes+=("$(timed resume)")
done
t=$(now); (cd "$work/second" && vagrant status >/dev/null); status_s=$(echo "$(now) - $t" | bc)
(cd "$work/second" && vagrant ssh -c 'cat /sys/class/net/eth0/address; hostname' 2>/dev/null) |
	tr -d '\r' | sed 's/^/second machine: /'
grep -h "fast start from\|boot saved to" "$XHYVE_HOME/provider.log" 2>/dev/null | sed 's/^/daemon: /' || true
printf 'first vagrant up (boot, saves the box boot): %.1f s\n' "$first"
printf 'second vagrant up (fast start from the saved boot): %.1f s\n' "$second"
printf 'first / second: %.1fx\n' "$(echo "$first / $second" | bc -l)"
printf 'vagrant suspend: %.1f s; vagrant resume: %.1f s, %.1f s\n' "$suspend_s" "${resumes[@]}"
printf 'vagrant status (Vagrant start-up, plugin load, one machine.state), for scale: %.2f s\n' "$status_s"
