# Shared by the box recipes (sourced): logging, apt dependencies, the cache root, and the box
# kernel build from Debian's linux-source-6.1 (tinyconfig + config fragments), cached by content.
# The sourcing script sets BOX_TAG (log prefix) first.

CACHE=${XHYVE_BOX_CACHE:-/var/cache/xhyve-rs}
KSRC_PKG=linux-source-6.1
KSRC_TAR=/usr/src/linux-source-6.1.tar.xz
# need_packages GROUP...: the Debian packages of the repository's entry points (group box: what
# building a box kernel needs).
# shellcheck source=../../scripts/packages.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/packages.sh"
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
BOX_T0=$SECONDS

log() { echo "[$BOX_TAG +$((SECONDS - BOX_T0))s] $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# cache_dirs SUB...: makes $CACHE/build and $CACHE/SUB writable by us.
cache_dirs() {
	local d
	for d in build "$@"; do
		$SUDO mkdir -p "$CACHE/$d"
		[ -w "$CACHE/$d" ] || $SUDO chown "$(id -u):$(id -g)" "$CACHE" "$CACHE/$d"
	done
}

# The effective lines of config fragments: a later fragment's setting of an option replaces an
# earlier one's (as merge_config.sh merges them). Comments and blank lines are dropped.
fragment_lines() {
	awk '
		/^CONFIG_[A-Za-z0-9_]+=/ { o = $0; sub(/=.*/, "", o) }
		/^# CONFIG_[A-Za-z0-9_]+ is not set$/ { o = $2 }
		/^CONFIG_[A-Za-z0-9_]+=/ || /^# CONFIG_[A-Za-z0-9_]+ is not set$/ {
			if (!(o in line)) order[n++] = o
			line[o] = $0
		}
		END { for (i = 0; i < n; i++) print line[order[i]] }
	' "$@"
}

# kernel_build NAME RECIPE FILE...: the kernel of tinyconfig + the config fragments (in order), on
# the source with the *.patch files among FILE applied (patch -p1), built once into
# $CACHE/NAME/<key>/ {vmlinux, vmlinuz, kernel.config, gen_init_cpio, versions}; prints that
# directory. key = sha256 of the files, "recipe RECIPE" and linux-source-6.1's version
# (bump RECIPE when the build steps below change). A miss builds in $CACHE/build/NAME.XXXXXX and
# publishes with one rename, so an interrupted build never leaves a partial entry.
kernel_build() {
	local name=$1 recipe=$2
	shift 2
	need_packages box
	[ -f "$KSRC_TAR" ] || die "$KSRC_TAR missing"
	local key entry tmp src bad line opt file fragments=() patches=()
	for file; do
		case $file in
		*.patch) patches+=("$file") ;;
		*) fragments+=("$file") ;;
		esac
	done
	key=$({ cat "$@"; echo "recipe $recipe"; dpkg-query -W -f='${Version}' "$KSRC_PKG"; } |
		sha256sum | cut -c1-64)
	entry=$CACHE/$name/$key
	if [ -f "$entry/gen_init_cpio" ]; then
		log "kernel cache hit $name/$key"
		echo "$entry"
		return 0
	fi
	log "kernel cache miss $name/$key ($KSRC_PKG $(dpkg-query -W -f='${Version}' "$KSRC_PKG"))"
	cache_dirs "$name"
	tmp=$(mktemp -d "$CACHE/build/${name//\//-}.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$tmp'" EXIT
	src=$tmp/linux
	log "unpacking $KSRC_TAR"
	mkdir -p "$src"
	tar -xf "$KSRC_TAR" -C "$src" --strip-components=1
	for file in "${patches[@]}"; do
		log "patching: ${file#"$REPO/"}"
		patch -s -p1 -d "$src" <"$file" || die "$file does not apply to $KSRC_PKG"
	done

	log "configuring: tinyconfig + $(printf '%s ' "${fragments[@]#"$REPO/"}")"
	fragment_lines "${fragments[@]}" >"$tmp/fragment.config"
	make -C "$src" -s tinyconfig >/dev/null
	(cd "$src" && ./scripts/kconfig/merge_config.sh -m .config "$tmp/fragment.config") >"$tmp/merge.log" 2>&1 ||
		{ cat "$tmp/merge.log" >&2; die "merge_config failed"; }
	make -C "$src" -s olddefconfig >>"$tmp/merge.log" 2>&1
	# Every line of the fragments must survive (an option that needs a missing dependency is
	# silently dropped by Kconfig otherwise).
	bad=
	while read -r line; do
		case $line in
		CONFIG_*=*) grep -qxF "$line" "$src/.config" || bad="$bad $line" ;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }
			opt=${opt%% *}
			! grep -q "^$opt=" "$src/.config" || bad="$bad $opt(should be off)"
			;;
		esac
	done <"$tmp/fragment.config"
	[ -z "$bad" ] || { grep -i warn "$tmp/merge.log" >&2 || true; die "options lost in .config:$bad"; }

	log "building vmlinux bzImage with -j$(nproc) (several minutes)"
	make -C "$src" -j"$(nproc)" vmlinux bzImage >"$tmp/make.log" 2>&1 ||
		{ tail -40 "$tmp/make.log" >&2; die "kernel build failed (log: $tmp/make.log)"; }
	make -C "$src" -s usr/gen_init_cpio >/dev/null 2>&1 || gcc -O2 -o "$src/usr/gen_init_cpio" "$src/usr/gen_init_cpio.c"

	mkdir -p "$tmp/out"
	cp "$src/usr/gen_init_cpio" "$tmp/out/gen_init_cpio"
	cp "$src/vmlinux" "$tmp/out/vmlinux"
	cp "$src/arch/x86/boot/bzImage" "$tmp/out/vmlinuz"
	cp "$src/.config" "$tmp/out/kernel.config"
	dpkg-query -W -f='${Package}=${Version}\n' "$KSRC_PKG" >"$tmp/out/versions"
	publish "$tmp" "$entry" gen_init_cpio
	log "built: vmlinux $(stat -c %s "$entry/vmlinux") B, vmlinuz $(stat -c %s "$entry/vmlinuz") B"
	echo "$entry"
}

# publish TMP ENTRY MARKER: makes TMP/out the cache entry ENTRY in one rename, after a sync, so
# a crash leaves either no entry or a whole one; a concurrent build that published first (ENTRY
# has MARKER) wins. Removes TMP and the caller's EXIT trap that would have.
publish() {
	sync
	mv -T "$1/out" "$2" 2>/dev/null || [ -f "$2/$3" ] || die "cannot publish $2"
	rm -rf "$1"
	trap - EXIT
}

# install_files SRCDIR DSTDIR FILE...: copies each file with a temp file + rename.
install_files() {
	local src=$1 dst=$2 f
	shift 2
	mkdir -p "$dst"
	for f in "$@"; do
		cp -f --sparse=always "$src/$f" "$dst/$f.tmp.$$" && mv -f "$dst/$f.tmp.$$" "$dst/$f"
	done
}
