#!/bin/bash
# Build the "tiny" guest box: a tinyconfig Linux 6.1 kernel (Debian linux-source-6.1) plus a
# busybox initramfs.  usage: boxes/tiny/build.sh [--efi] [OUTDIR]   (default: <repo>/target/boxes/tiny,
# with --efi <repo>/target/boxes/tiny-efi)
# Writes OUTDIR/{vmlinux,vmlinuz,initrd.img,kernel.config} and the box's Vagrantfile; the initramfs
# carries Debian's dropbear (SSH for user vagrant with Vagrant's insecure key, boxes/tiny/vagrant.pub).
# --efi adds efi.config to the kernel (its bzImage is then an EFI application, see efi-disk.sh).
# Results are cached in $XHYVE_BOX_CACHE (default /var/cache/xhyve-rs)/tiny[-efi]/<key>/; see README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# The kernel's config fragments (and the kexec kernel's source patch), and the cache (and default
# output) they build into.
FRAGMENTS=("$HERE/hz.patch" "$HERE/kernel.config" "$HERE/hz.config") NAME=tiny
if [ "${1:-}" = --efi ]; then
	FRAGMENTS=("$HERE/kernel.config" "$HERE/efi.config") NAME=tiny-efi
	shift
fi
OUT=${1:-$REPO/target/boxes/$NAME}
BOX_TAG=tiny-box
# shellcheck source=../lib/common.sh
. "$HERE/../lib/common.sh"

# --- 1. Debian packages (scripts/packages.sh, group box) ---
need_packages box
[ -x /bin/busybox ] || die "/bin/busybox missing"
[ -x /usr/sbin/dropbear ] || die "/usr/sbin/dropbear missing (dropbear-bin)"

# --- 2. the kernel (cached; see ../lib/common.sh), bump KERNEL_RECIPE when its steps change.
#     The initramfs is rebuilt every run, in under a second. ---
KERNEL_RECIPE=2
ENTRY=$(kernel_build "$NAME" "$KERNEL_RECIPE" "${FRAGMENTS[@]}")

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
	{ ldd /usr/sbin/dropbear && ldd /usr/bin/scp && ldd "$OUT/vsock-echo" && ldd "$OUT/xhyve-identity"; } | grep -o '/[^ ]*' | sort -u | while read -r lib; do
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
	# The vsock test tool (busybox has no vsock client) and the identity step's agent, linked
	# against the C library dropbear brings: static, they added 1.5 MB to an initramfs whose
	# every byte the guest kernel copies at boot (about 5 s per MB on the nested PVM host).
	gcc -Os -s -o "$OUT/vsock-echo" "$HERE/vsock-echo.c"
	gcc -Os -s -Wall -Werror -o "$OUT/xhyve-identity" "$HERE/xhyve-identity.c"
	{
		for d in /dev /proc /sys /tmp /root /etc /bin /sbin /usr /usr/bin /usr/sbin; do
			echo "dir $d 0755 0 0"
		done
		echo "nod /dev/console 0600 0 0 c 5 1"
		echo "nod /dev/null 0666 0 0 c 1 3"
		echo "file /bin/busybox /bin/busybox 0755 0 0"
		echo "file /init $HERE/init 0755 0 0"
		echo "file /bin/vsock-echo $OUT/vsock-echo 0755 0 0"
		echo "file /bin/xhyve-identity $OUT/xhyve-identity 0755 0 0"
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

install_files "$ENTRY" "$OUT" vmlinux vmlinuz kernel.config
build_initrd
install_files "$HERE" "$OUT" Vagrantfile
log "done: $OUT (kernel cache $ENTRY)"
