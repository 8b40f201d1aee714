#!/usr/bin/env bash
# What `vagrant up` adds to the guest's own boot: its wall time minus the guest's boot-to-SSH time
# (from the moment xhyve runs to the tiny guest's console line "XHYVE-TINY: ssh-ready", printed
# once its sshd listens). Each run is a fresh `vagrant up` of the tiny box (create, start, wait for
# SSH, Vagrant's own SSH check), then `vagrant destroy -f`. Prints figures; it is not a test.
# usage: ruby-shim/benches/up.sh [RUNS] [--fast-start]   (default 1; a run boots the guest once:
# minutes here; with --fast-start the box says fast_start, so runs after the first start from the
# boot the first one saved: provider/API.md, "Fast start")
# Binaries and guest files as the tests take them: XHYVE_PROVIDER_BIN, XHYVE_BIN, XHYVE_TINY.
set -euo pipefail
runs=${1:-1}
fast=${2:-}
case $fast in "" | --fast-start) ;; *) echo "usage: $0 [RUNS] [--fast-start]" >&2 && exit 2 ;; esac
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'cleanup_projects project' EXIT

# Prefixes each line with the seconds since $1.
stamp() { while IFS= read -r l; do printf '%.2f %s\n' "$(echo "$(now) - $1" | bc)" "$l"; done; }
# The stamp of the first line matching $2 in file $1.
at() { awk -v re="$2" '$0 ~ re { print $1; exit }' "$1"; }
# Prints the seconds since $1 at which the guest's console says its sshd listens.
watch_ready() {
	until grep -qs "XHYVE-TINY: ssh-ready" "$XHYVE_HOME"/machines/*/console.log; do sleep 0.1; done
	echo "$(now) - $1" | bc
}

setup_projects "$fast" project
cd "$work/project"

t=$(now); vagrant status >/dev/null; status_s=$(echo "$(now) - $t" | bc)
printf 'vagrant status (Vagrant start-up, plugin load, one machine.state): %.2f s\n' "$status_s"
printf '%4s %7s %7s %7s | %7s %7s %7s %7s %7s\n' run up guest added before create detect comm after
for i in $(seq "$runs"); do
	log=$work/up$i.log
	t=$(now)
	watch_ready "$t" >"$work/ready$i" &
	watcher=$!
	if ! vagrant up --provider=xhyve 2>&1 | stamp "$t" >"$log"; then
		kill "$watcher"
		cat "$log"
		grep -ah "segfault\|general protection" "$XHYVE_HOME"/machines/*/console.log || true
		exit 1
	fi
	total=$(echo "$(now) - $t" | bc)
	wait "$watcher"
	listening=$(cat "$work/ready$i")
	creating=$(at "$log" "Creating the machine")
	running=$(at "$log" "xhyve runs")
	answered=$(at "$log" "SSH answered")
	ready=$(at "$log" "Machine booted and ready")
	guest=$(echo "$listening - $running" | bc)
	printf '%4d %7.1f %7.1f %7.1f | %7.1f %7.1f %7.1f %7.1f %7.1f\n' "$i" "$total" "$guest" \
		"$(echo "$total - $guest" | bc)" "$creating" "$(echo "$running - $creating" | bc)" \
		"$(echo "$answered - $listening" | bc)" "$(echo "$ready - $answered" | bc)" \
		"$(echo "$total - $ready" | bc)"
	grep -o 'SSH answered.*' "$log" | sed 's/^/     provider: /'
	vagrant destroy -f >/dev/null
done
cat <<'EOF'
Seconds. up: vagrant up's wall time; guest: from "xhyve runs" (machine.start returned) to the
console's ssh-ready (the guest's own boot to SSH); added = up - guest, made of: before = Vagrant's
start-up, box lookup and the box's hand-over to the daemon (first run only; also the daemon's start)
up to machine.create;
create = machine.create + machine.start; detect = machine.wait_ssh's login after sshd listens;
comm = Vagrant's own SSH connection (WaitForCommunicator); after = the synced-folder step and
Vagrant's exit.
EOF
