#!/bin/bash
# Build the "tiny" guest box: a tinyconfig Linux 6.1 kernel (Debian linux-source-6.1) plus a
# busybox initramfs.  usage: boxes/tiny/build.sh [OUTDIR]   (default: <repo>/target/boxes/tiny)
# Writes OUTDIR/{vmlinux,vmlinuz,initrd.img,kernel.config} and the box's Vagrantfile; the initramfs
# carries Debian's dropbear (SSH for user vagrant with Vagrant's insecure key, boxes/tiny/vagrant.pub).
# Results are cached in $XHYVE_BOX_CACHE (default /var/cache/xhyve-rs)/tiny/<key>/; see README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$REPO/target/boxes/tiny}
CACHE=${XHYVE_BOX_CACHE:-/var/cache/xhyve-rs}
KSRC_PKG=linux-source-6.1
KSRC_TAR=/usr/src/linux-source-6.1.tar.xz
T0=$SECONDS

log() { echo "[tiny-box +$((SECONDS - T0))s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

# --- 1. Debian packages (scripts/packages.sh, group box) ---
# shellcheck source=../../scripts/packages.sh
. "$REPO/scripts/packages.sh"
need_packages box
[ -f "$KSRC_TAR" ] || die "$KSRC_TAR missing"
[ -x /bin/busybox ] || die "/bin/busybox missing"
[ -x /usr/sbin/dropbear ] || die "/usr/sbin/dropbear missing (dropbear-bin)"

# --- 2. cache key: the kernel only (the initramfs is rebuilt every run, in under a second) ---
# Bump KERNEL_RECIPE when the kernel build steps below change.
KERNEL_RECIPE=2
VERSIONS=$(dpkg-query -W -f='${Package}=${Version}\n' "$KSRC_PKG" busybox-static)
KEY=$( { cat "$HERE/kernel.config"; echo "recipe $KERNEL_RECIPE"; dpkg-query -W -f='${Version}' "$KSRC_PKG"; } |
	sha256sum | cut -c1-64)
ENTRY=$CACHE/tiny/$KEY

# The SSH server's files (dropbear, its libraries, host keys, the vagrant user) as
# gen_init_cpio lines on stdout; generated files go to $1.
ssh_files() {
	local gen=$1 lib d
	mkdir -p "$gen"
	# Host keys made once per build (dropbearkey under the guest's emulated CPU would take
	# seconds at every boot). Every tiny box shares them: it is a test box, like Vagrant's key.
	for t in ed25519 ecdsa rsa; do
		dropbearkey -t "$t" -f "$gen/dropbear_${t}_host_key" >/dev/null 2>&1 ||
			die "dropbearkey -t $t failed"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nvagrant:x:1000:1000:vagrant:/home/vagrant:/bin/sh\n' >"$gen/passwd"
	printf 'root:x:0:\nvagrant:x:1000:\n' >"$gen/group"
	# "*": no password matches (a locked password); SSH logs in with the key only.
	printf 'root:*:19000:0:99999:7:::\nvagrant:*:19000:0:99999:7:::\n' >"$gen/shadow"
	printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$gen/nsswitch.conf"
	printf '/bin/sh\n' >"$gen/shells"
	echo "dir /etc/dropbear 0755 0 0"
	for t in ed25519 ecdsa rsa; do
		echo "file /etc/dropbear/dropbear_${t}_host_key $gen/dropbear_${t}_host_key 0600 0 0"
	done
	echo "file /etc/passwd $gen/passwd 0644 0 0"
	echo "file /etc/group $gen/group 0644 0 0"
	echo "file /etc/shadow $gen/shadow 0600 0 0"
	echo "file /etc/nsswitch.conf $gen/nsswitch.conf 0644 0 0"
	echo "file /etc/shells $gen/shells 0644 0 0"
	echo "file /etc/udhcpc.script $HERE/udhcpc.script 0755 0 0"
	echo "dir /home 0755 0 0"
	echo "dir /home/vagrant 0755 1000 1000"
	echo "dir /home/vagrant/.ssh 0700 1000 1000"
	echo "file /home/vagrant/.ssh/authorized_keys $HERE/vagrant.pub 0600 1000 1000"
	for d in /run /var /var/log /var/run /lib /lib64 /lib/x86_64-linux-gnu /usr/lib; do
		echo "dir $d 0755 0 0"
	done
	echo "file /usr/sbin/dropbear /usr/sbin/dropbear 0755 0 0"
	# scp: the remote end of uploads (Vagrant's and Packer's provisioners; dropbear has none).
	echo "file /usr/bin/scp /usr/bin/scp 0755 0 0"
	# The shared libraries ldd lists (and the loader), at the paths ldd resolved.
	{ ldd /usr/sbin/dropbear && ldd /usr/bin/scp; } | grep -o '/[^ ]*' | sort -u | while read -r lib; do
		d=$(dirname "$lib")
		case $d in /lib | /lib64 | /lib/x86_64-linux-gnu | /usr/lib) ;; *) echo "dir $d 0755 0 0" ;; esac
		echo "file $lib $(readlink -f "$lib") 0755 0 0"
	done
}

# Writes OUT/initrd.img: static busybox with its applet links and our /init, uncompressed
# (gunzip under the nested host's emulator would cost seconds), plus dropbear (ssh_files).
build_initrd() {
	local list tmp gen
	list=$(mktemp) tmp=$OUT/initrd.img.tmp.$$ gen=$(mktemp -d)
	# The vsock test tool (busybox has no vsock client): static, ~700 KB.
	gcc -static -Os -s -o "$OUT/vsock-echo" "$HERE/vsock-echo.c"
	{
		for d in /dev /proc /sys /tmp /root /etc /bin /sbin /usr /usr/bin /usr/sbin; do
			echo "dir $d 0755 0 0"
		done
		echo "nod /dev/console 0600 0 0 c 5 1"
		echo "nod /dev/null 0666 0 0 c 1 3"
		echo "file /bin/busybox /bin/busybox 0755 0 0"
		echo "file /init $HERE/init 0755 0 0"
		echo "file /bin/vsock-echo $OUT/vsock-echo 0755 0 0"
		ssh_files "$gen"
		/bin/busybox --list-full | sort | while read -r a; do
			[ "$a" = bin/busybox ] || echo "slink /$a /bin/busybox 0777 0 0"
		done
	} >"$list"
	# A list gen_init_cpio cannot pack must fail the build, not leave the previous initrd.
	"$ENTRY/gen_init_cpio" -t 0 "$list" >"$tmp" || { rm -f "$tmp"; die "gen_init_cpio failed on $list"; }
	mv -f "$tmp" "$OUT/initrd.img"
	rm -rf "$list" "$gen"
}

install_out() {
	mkdir -p "$OUT"
	for f in vmlinux vmlinuz kernel.config; do
		cp -f "$ENTRY/$f" "$OUT/$f.tmp.$$" && mv -f "$OUT/$f.tmp.$$" "$OUT/$f"
	done
	build_initrd
	cp -f "$HERE/Vagrantfile" "$OUT/Vagrantfile.tmp.$$" && mv -f "$OUT/Vagrantfile.tmp.$$" "$OUT/Vagrantfile"
	log "done: $OUT (kernel cache $ENTRY)"
}
if [ -f "$ENTRY/gen_init_cpio" ]; then
	log "kernel cache hit $KEY"
	install_out
	exit 0
fi
log "cache miss $KEY ($(echo "$VERSIONS" | tr '\n' ' '))"

# --- 3. build in a private temp dir, publish with one rename ---
$SUDO mkdir -p "$CACHE/build" "$CACHE/tiny"
[ -w "$CACHE/build" ] || $SUDO chown "$(id -u):$(id -g)" "$CACHE" "$CACHE/build" "$CACHE/tiny"
TMP=$(mktemp -d "$CACHE/build/tiny.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
SRC=$TMP/linux

log "unpacking $KSRC_TAR"
mkdir -p "$SRC"
tar -xf "$KSRC_TAR" -C "$SRC" --strip-components=1

log "configuring: tinyconfig + kernel.config"
make -C "$SRC" -s tinyconfig >/dev/null
(cd "$SRC" && ./scripts/kconfig/merge_config.sh -m .config "$HERE/kernel.config") >"$TMP/merge.log" 2>&1 ||
	{ cat "$TMP/merge.log" >&2; die "merge_config failed"; }
make -C "$SRC" -s olddefconfig >>"$TMP/merge.log" 2>&1
bad=
while read -r line; do
	case $line in
	CONFIG_*=*) grep -qxF "$line" "$SRC/.config" || bad="$bad $line" ;;
	"# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
		! grep -q "^$opt=" "$SRC/.config" || bad="$bad $opt(should be off)" ;;
	esac
done <"$HERE/kernel.config"
[ -z "$bad" ] || { grep -i warn "$TMP/merge.log" >&2 || true; die "options lost in .config:$bad"; }

log "building vmlinux bzImage with -j$(nproc) (several minutes)"
make -C "$SRC" -j"$(nproc)" vmlinux bzImage >"$TMP/make.log" 2>&1 ||
	{ tail -40 "$TMP/make.log" >&2; die "kernel build failed (log: $TMP/make.log)"; }
make -C "$SRC" -s usr/gen_init_cpio >/dev/null 2>&1 || gcc -O2 -o "$SRC/usr/gen_init_cpio" "$SRC/usr/gen_init_cpio.c"

mkdir -p "$TMP/out"
cp "$SRC/usr/gen_init_cpio" "$TMP/out/gen_init_cpio"
cp "$SRC/vmlinux" "$TMP/out/vmlinux"
cp "$SRC/arch/x86/boot/bzImage" "$TMP/out/vmlinuz"
cp "$SRC/.config" "$TMP/out/kernel.config"
echo "$VERSIONS" >"$TMP/out/versions"
sync
mv -T "$TMP/out" "$ENTRY" 2>/dev/null || [ -f "$ENTRY/gen_init_cpio" ] || die "cannot publish $ENTRY"
log "built: vmlinux $(stat -c %s "$ENTRY/vmlinux") B, vmlinuz $(stat -c %s "$ENTRY/vmlinuz") B"
install_out
