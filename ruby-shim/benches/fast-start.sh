#!/usr/bin/env bash
# The second `vagrant up` of a box against the first (provider/API.md, "Fast start"): two Vagrant
# projects naming the tiny box (packed as boxes/tiny/box.sh packs it, with fast_start), the same
# Vagrantfile; the first `vagrant up` boots the guest and saves the box's boot, the second starts
# from that saved boot. Prints both wall times, their ratio and `vagrant status` (Vagrant's own
# start-up) for scale. It is not a test.
# usage: tests/vagrant/fast_start_bench.sh   (boots the guest once: minutes here)
# Binaries and guest files as the tests take them: XHYVE_PROVIDER_BIN, XHYVE_BIN, XHYVE_TINY.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
provider=${XHYVE_PROVIDER_BIN:-$ROOT/target/release/xhyve-provider}
xhyve=${XHYVE_BIN:-$ROOT/target/release/xhyve}
tiny=${XHYVE_TINY:-$ROOT/target/boxes/tiny}
work=$(mktemp -d)
export VAGRANT_HOME=$work/vagrant.d XHYVE_HOME=$work/xhyve VAGRANT_CHECKPOINT_DISABLE=1

cleanup() {
	if [ -S "$XHYVE_HOME/provider.sock" ]; then
		for p in first second; do
			[ ! -d "$work/$p" ] || (cd "$work/$p" && vagrant destroy -f >/dev/null 2>&1) || true
		done
		pid=$("$provider" call --no-start provider.info 2>/dev/null | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p')
		[ -z "$pid" ] || kill "$pid"
	fi
	rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }

(cd "$ROOT/ruby-shim" && gem build vagrant-xhyve.gemspec --output "$work/shim.gem" >/dev/null 2>&1)
mkdir "$work/first" "$work/second"
(cd "$work/first" && vagrant plugin install "$work/shim.gem" --plugin-clean-sources >/dev/null)
"$ROOT/boxes/package.sh" "$work/tiny.box" "$tiny" --kernel vmlinux --initrd initrd.img \
	--cmdline console=ttyS0 --cpus 1 --memory 256M --fast-start 2>/dev/null
vagrant box add --name xhyve/tiny "$work/tiny.box" >/dev/null
for p in first second; do
	cat >"$work/$p/Vagrantfile" <<EOF
Vagrant.configure("2") do |config|
  config.vm.box = "xhyve/tiny"
  # This slow host's timeouts; what the tiny guest needs is in the box's Vagrantfile.
  config.vm.boot_timeout = 900
  config.ssh.connect_timeout = 120
  config.vm.provider :xhyve do |x|
    x.provider_bin = "$provider"
    x.xhyve_bin = "$xhyve"
  end
end
EOF
done

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
t=$(now); (cd "$work/second" && vagrant status >/dev/null); status_s=$(echo "$(now) - $t" | bc)
(cd "$work/second" && vagrant ssh -c 'cat /sys/class/net/eth0/address; hostname' 2>/dev/null) |
	tr -d '\r' | sed 's/^/second machine: /'
grep -h "fast start from\|boot saved to" "$XHYVE_HOME/provider.log" 2>/dev/null | sed 's/^/daemon: /' || true
printf 'first vagrant up (boot, saves the box boot): %.1f s\n' "$first"
printf 'second vagrant up (fast start from the saved boot): %.1f s\n' "$second"
printf 'first / second: %.1fx\n' "$(echo "$first / $second" | bc -l)"
printf 'vagrant status (Vagrant start-up, plugin load, one machine.state), for scale: %.2f s\n' "$status_s"
