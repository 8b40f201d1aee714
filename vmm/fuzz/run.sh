#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target of the VMM for a bounded time each.
#   usage: vmm/fuzz/run.sh [SECONDS]   (default 60 per target)
# Needs a nightly toolchain and cargo-fuzz; installs both (rustup, crates.io) when missing.
# Crashes land in vmm/fuzz/artifacts/<target>/ and make this script fail.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-60}
if ! rustup toolchain list | grep -q '^nightly'; then
	rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O
for t in $(cargo +nightly fuzz list); do
	echo "fuzz: $t for ${SECS}s" >&2
	mkdir -p "corpus/$t"
	cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1
done
