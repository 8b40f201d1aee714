# shellcheck shell=bash
# Set-up shared by the Vagrant benches (sourced after `set -euo pipefail`): the binaries and guest
# files as the tests take them (XHYVE_PROVIDER_BIN, XHYVE_BIN, XHYVE_TINY), a scratch Vagrant and
# xhyve home under $work, the plugin built from this tree, the tiny box and project directories.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
provider=${XHYVE_PROVIDER_BIN:-$ROOT/target/release/xhyve-provider}
xhyve=${XHYVE_BIN:-$ROOT/target/release/xhyve}
tiny=${XHYVE_TINY:-$ROOT/target/boxes/tiny}
work=$(mktemp -d)
export VAGRANT_HOME=$work/vagrant.d XHYVE_HOME=$work/xhyve VAGRANT_CHECKPOINT_DISABLE=1

now() { date +%s.%N; }

# cleanup_projects NAME...: destroys the machines of those projects, ends the daemon, removes $work.
cleanup_projects() {
	if [ -S "$XHYVE_HOME/provider.sock" ]; then
		for p in "$@"; do
			[ ! -d "$work/$p" ] || (cd "$work/$p" && vagrant destroy -f >/dev/null 2>&1) || true
		done
		pid=$("$provider" call --no-start provider.info 2>/dev/null | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p')
		[ -z "$pid" ] || kill "$pid"
	fi
	rm -rf "$work"
}

# setup_projects PACKAGE_FLAG NAME...: the plugin installed, the tiny box packed (boxes/package.sh,
# plus PACKAGE_FLAG when not empty, e.g. --fast-start) and added as xhyve/tiny, and one project
# directory $work/NAME per name with the same Vagrantfile.
setup_projects() {
	local flag=$1 p
	shift
	(cd "$ROOT/ruby-shim" && gem build vagrant-xhyve.gemspec --output "$work/shim.gem" >/dev/null 2>&1)
	for p in "$@"; do
		mkdir "$work/$p"
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
	(cd "$work/$1" && vagrant plugin install "$work/shim.gem" --plugin-clean-sources >/dev/null)
	"$ROOT/boxes/package.sh" "$work/tiny.box" "$tiny" --kernel vmlinux --initrd initrd.img \
		--cmdline console=ttyS0 --cpus 1 --memory 256M ${flag:+"$flag"} 2>/dev/null
	vagrant box add --name xhyve/tiny "$work/tiny.box" >/dev/null
}
