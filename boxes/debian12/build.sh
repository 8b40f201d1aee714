#!/bin/bash
# Builds the Debian 12 (bookworm) box: a box kernel from Debian's linux-source-6.1 (everything the
# box needs built in, no initramfs) and a sparse raw GPT disk (an EFI system partition and the
# ext4 root of a debootstrap system with systemd, openssh-server, sudo, rsync, networkd and
# Debian's linux-image-cloud-amd64).
#   usage: boxes/debian12/build.sh [OUTDIR]   (default: <repo>/target/boxes/debian12)
# Writes OUTDIR/{vmlinux,vmlinuz,kernel.config,disk.img,cmdline,build-key}. Needs root
# (debootstrap, root-owned files). Offline but for the Debian archive this machine's apt uses
# (read from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; XHYVE_DEBIAN_MIRROR and
# XHYVE_DEBIAN_SECURITY override it). Cached in $XHYVE_BOX_CACHE (default /var/cache/xhyve-rs)
# /debian12/{kernel,rootfs,disk}/<key>/; see README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$REPO/target/boxes/debian12}
BOX_TAG=debian12-box
# shellcheck source=../lib/common.sh
. "$HERE/../lib/common.sh"

SUITE=bookworm
# Bump when the steps below change what they make (the inputs' contents are in the keys).
KERNEL_RECIPE=1
ROOTFS_RECIPE=1
DISK_RECIPE=2
# The disk: 1 MiB of GPT, the ESP, the root partition up to 1 MiB before the end (the backup GPT).
# The ESP is mostly holes: at 256 MiB it made xhyve-provider's unpacker see 256 MiB out of 3 MB of
# archive and refuse the box as a bomb (its ratio check counts holes); 128 MiB holds a boot loader
# and two kernels with their initrds.
DISK_MIB=4096
ESP_MIB=128

[ "$(id -u)" = 0 ] || die "run as root: debootstrap and the root file system's owners need it"
need_packages box # (scripts/packages.sh) debootstrap, mkfs.ext4, sfdisk, mkfs.vfat, mtools
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- 1. the archive: the URIs of this machine's apt sources ---
# apt_uris: "URI SUITE" for every enabled deb source (deb822 stanzas and one-line entries).
apt_uris() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk '
			function flush() {
				if (types ~ /(^| )deb( |$)/ && enabled != "no")
					for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
				types = ""; enabled = ""; nu = 0; ns = 0
			}
			/^[ \t]*$/ { flush(); next }
			/^#/ { next }
			{ key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "") }
			key == "types" { types = $0 }
			key == "enabled" { enabled = tolower($0) }
			key == "uris" { nu = split($0, u, " ") }
			key == "suites" { ns = split($0, s, " ") }
			END { flush() }
		' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2, $3 }'
	done
}
# The main archive serves a plain suite (bookworm, trixie, ...), the security archive
# <suite>-security; the box uses bookworm and bookworm-security from them.
MIRROR=${XHYVE_DEBIAN_MIRROR:-$(apt_uris | awk '$2 !~ /-/ && !u { u = $1 } END { print u }')}
SECURITY=${XHYVE_DEBIAN_SECURITY-$(apt_uris | awk '$2 ~ /-security$/ && !u { u = $1 } END { print u }')}
[ -n "$MIRROR" ] || die "no Debian archive in this machine's apt sources: set XHYVE_DEBIAN_MIRROR"
log "archive: $MIRROR (security: ${SECURITY:-none})"

# --- 2. the root file system ---
# tree_digest DIR: names, types, link targets, executable bits and contents of the files under DIR
# (what git keeps of them; the copy in the box gets modes from these alone, see build_rootfs).
tree_digest() {
	(cd "$1" && find . -printf '%p %y %l\n' | LC_ALL=C sort &&
		find . -type f -perm -u+x | LC_ALL=C sort &&
		find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
}
PACKAGES=$(sed -e 's/#.*//' "$HERE/packages" | xargs)
ROOTFS_KEY=$({
	echo "recipe $ROOTFS_RECIPE suite $SUITE mirror $MIRROR security $SECURITY"
	echo "$PACKAGES"
	sha256sum "$HERE/customize.sh" "$REPO/boxes/tiny/vagrant.pub" "$REPO/boxes/tiny/xhyve-identity.c" | cut -c1-64
	tree_digest "$HERE/rootfs"
} | sha256sum | cut -c1-64)
# The partitions' and the file system's UUIDs follow from the key (fstab names them).
uuid_of() {
	local h
	h=$(printf '%s %s' "$ROOTFS_KEY" "$1" | sha256sum)
	echo "${h:0:8}-${h:8:4}-4${h:13:3}-a${h:17:3}-${h:20:12}"
}
ROOT_PARTUUID=$(uuid_of root-partition)
ESP_PARTUUID=$(uuid_of esp-partition)
ROOT_FSUUID=$(uuid_of root-fs)
DISK_GUID=$(uuid_of disk)
ROOTFS=$CACHE/debian12/rootfs/$ROOTFS_KEY

build_rootfs() {
	local tmp root debs
	cache_dirs debian12/rootfs debian12/debs
	tmp=$(mktemp -d "$CACHE/build/debian12-rootfs.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$tmp'" EXIT
	root=$tmp/out/root
	debs=$CACHE/debian12/debs # downloaded .debs, shared by every build (apt checks them)
	mkdir -p "$root"
	log "debootstrap $SUITE (minbase) from $MIRROR"
	debootstrap --variant=minbase --cache-dir="$debs" "$SUITE" "$root" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 ||
		{ tail -30 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log: $tmp/debootstrap.log)"; }
	log "installing the box's packages and settings (customize.sh in a chroot)"
	cp -a "$HERE/rootfs" "$tmp/overlay"
	chmod -R u=rwX,go=rX "$tmp/overlay"
	# The fast start's agent (the tiny box's, boxes/README.md "Fast start"), static: nothing of it
	# changes with the guest's libraries, and it loads fast.
	gcc -static -Os -s -Wall -Werror -o "$tmp/overlay/usr/local/sbin/xhyve-identity" "$REPO/boxes/tiny/xhyve-identity.c"
	install -m 0644 "$REPO/boxes/tiny/vagrant.pub" "$tmp/overlay.vagrant.pub"
	install -m 0755 "$HERE/customize.sh" "$root/customize.sh"
	# The chroot's mounts live in a private mount namespace: they end with it, however it ends.
	unshare --mount --propagation private -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		ROOT="$root" OVERLAY="$tmp/overlay" KEY="$tmp/overlay.vagrant.pub" DEBS="$debs" \
		SUITE="$SUITE" MIRROR="$MIRROR" SECURITY="$SECURITY" PACKAGES="$PACKAGES" \
		ROOT_PARTUUID="$ROOT_PARTUUID" ESP_PARTUUID="$ESP_PARTUUID" sh -euc '
			mount -t proc proc "$ROOT/proc"
			mount -t sysfs sysfs "$ROOT/sys"
			mount --bind /dev "$ROOT/dev"
			mount -t devpts devpts "$ROOT/dev/pts" -o newinstance,ptmxmode=0666
			mount -t tmpfs tmpfs "$ROOT/run"
			mount --bind "$DEBS" "$ROOT/var/cache/apt/archives"
			mkdir -p "$ROOT/run/overlay"
			mount --bind "$OVERLAY" "$ROOT/run/overlay"
			cp "$KEY" "$ROOT/run/vagrant.pub"
			exec chroot "$ROOT" /customize.sh
		' >"$tmp/customize.log" 2>&1 ||
		{ tail -40 "$tmp/customize.log" >&2; die "customize.sh failed (log: $tmp/customize.log)"; }
	rm -f "$root/customize.sh"
	du -sm "$root" | awk '{ print "root file system: " $1 " MiB" }' >&2
	dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Package}=${Version}\n' >"$tmp/out/versions"
	publish "$tmp" "$ROOTFS" versions
}
if [ -f "$ROOTFS/versions" ]; then
	log "root file system cache hit $ROOTFS_KEY"
else
	log "root file system cache miss $ROOTFS_KEY"
	build_rootfs
	log "root file system built: $ROOTFS"
fi

# --- 3. the disk: GPT, ESP (FAT32, an empty EFI/), ext4 root made from the tree (no loop devices,
#     no mounts: mkfs.ext4 -d, sfdisk and dd on files) ---
DISK_KEY=$(echo "recipe $DISK_RECIPE $ROOTFS_KEY $DISK_MIB $ESP_MIB" | sha256sum | cut -c1-64)
DISK=$CACHE/debian12/disk/$DISK_KEY
build_disk() {
	local tmp mib=$((1024 * 1024)) root_mib
	cache_dirs debian12/disk
	tmp=$(mktemp -d "$CACHE/build/debian12-disk.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$tmp'" EXIT
	mkdir "$tmp/out"
	root_mib=$((DISK_MIB - 1 - ESP_MIB - 1))
	truncate -s "${DISK_MIB}M" "$tmp/out/disk.img"
	sfdisk -q --no-reread --no-tell-kernel "$tmp/out/disk.img" >"$tmp/sfdisk.log" 2>&1 <<-EOF ||
		label: gpt
		label-id: $DISK_GUID
		first-lba: 2048
		start=2048, size=$((ESP_MIB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_PARTUUID, name="esp"
		start=$(((1 + ESP_MIB) * 2048)), size=$((root_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name="root"
	EOF
		{ cat "$tmp/sfdisk.log" >&2; die "sfdisk failed"; }
	log "ESP: FAT32, ${ESP_MIB} MiB"
	mkfs.vfat -F 32 -n ESP -i "${ESP_PARTUUID:0:8}" -C "$tmp/esp.img" $((ESP_MIB * 1024)) >/dev/null
	mmd -i "$tmp/esp.img" ::/EFI
	dd if="$tmp/esp.img" of="$tmp/out/disk.img" bs=1M seek=1 conv=sparse,notrunc status=none
	log "root: ext4, ${root_mib} MiB, from $ROOTFS/root"
	mkfs.ext4 -q -F -L root -U "$ROOT_FSUUID" -e remount-ro -d "$ROOTFS/root" "$tmp/root.img" "${root_mib}M" >/dev/null ||
		die "mkfs.ext4 -d failed"
	e2fsck -fn "$tmp/root.img" >"$tmp/fsck.log" 2>&1 || { cat "$tmp/fsck.log" >&2; die "the new root file system does not check clean"; }
	dd if="$tmp/root.img" of="$tmp/out/disk.img" bs=1M seek=$((1 + ESP_MIB)) conv=sparse,notrunc status=none
	echo "root=PARTUUID=$ROOT_PARTUUID" >"$tmp/out/root"
	publish "$tmp" "$DISK" root
}
if [ -f "$DISK/root" ]; then
	log "disk cache hit $DISK_KEY"
else
	build_disk
	log "disk built: $DISK"
fi

# --- 4. the box kernel: tinyconfig + ../tiny/kernel.config + kernel.config ---
KERNEL=$(kernel_build debian12/kernel "$KERNEL_RECIPE" "$HERE/../tiny/kernel.config" "$HERE/kernel.config")

# --- 5. the build directory ---
install_files "$KERNEL" "$OUT" vmlinux vmlinuz kernel.config
install_files "$DISK" "$OUT" disk.img
# The kernel command line: no initramfs, the root partition by its GPT UUID, mounted read-write
# at once (no fsck; ext4's journal replays at mount); quiet: every console character costs
# emulated kernel time (the console shows kernel messages again once booted, README.md).
echo "console=ttyS0 $(cat "$DISK/root") rw rootwait quiet" >"$OUT/cmdline"
echo "kernel $(basename "$KERNEL") disk $DISK_KEY" >"$OUT/build-key"
log "done: $OUT (disk $(du -h --apparent-size "$OUT/disk.img" | cut -f1) apparent, $(du -h "$OUT/disk.img" | cut -f1) used)"
