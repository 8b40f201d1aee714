#!/bin/bash
# The small EFI test disk: a GPT disk whose EFI system partition holds Debian's systemd-boot as
# the removable-media boot loader (\EFI\BOOT\BOOTX64.EFI), the tiny EFI kernel and initramfs
# (boxes/tiny/build.sh --efi), and one systemd-boot entry per NAME=OPTIONS argument.
#   usage: boxes/tiny/efi-disk.sh BOXDIR OUT.img NAME=OPTIONS...
# The first entry is loader.conf's default; `timeout 0` boots it without a menu unless
# systemd-boot's LoaderEntryDefault EFI variable names another (the variable wins). Options are
# the kernel's whole command line: on the nested PVM host add `xhyve --features`'
# guest_kernel_params. No root, no loop devices: the ESP is made in a file with mtools and copied
# into the disk.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BOX_TAG=efi-disk
# shellcheck source=../lib/common.sh
. "$HERE/../lib/common.sh"
SDBOOT=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
# The ESP: FAT16, room for the kernel and initramfs; 1 MiB before it (GPT) and after (backup).
ESP_MIB=32

[ $# -ge 3 ] || die "usage: $0 BOXDIR OUT.img NAME=OPTIONS..."
BOX=$1 OUT=$2
shift 2
for f in vmlinuz initrd.img; do [ -f "$BOX/$f" ] || die "$BOX/$f missing (boxes/tiny/build.sh --efi $BOX)"; done

# --- Debian packages (scripts/packages.sh, group box): systemd-boot, mkfs.vfat, mtools, sfdisk ---
need_packages box
[ -f "$SDBOOT" ] || die "$SDBOOT missing (systemd-boot-efi)"

tmp=$(mktemp -d)
disk=$OUT.tmp.$$
trap 'rm -rf "$tmp" "$disk"' EXIT
esp=$tmp/esp.img
mkfs.vfat -F 16 -n XHYVE-ESP -C "$esp" $((ESP_MIB * 1024)) >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" "$SDBOOT" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$BOX/vmlinuz" ::/vmlinuz
mcopy -i "$esp" "$BOX/initrd.img" ::/initrd.img
printf 'timeout 0\ndefault %s.conf\n' "${1%%=*}" >"$tmp/loader.conf"
mcopy -i "$esp" "$tmp/loader.conf" ::/loader/loader.conf
for entry in "$@"; do
	name=${entry%%=*} options=${entry#*=}
	case $name in '' | *[!A-Za-z0-9_-]*) die "entry name '$name': letters, digits, - and _ only" ;; esac
	printf 'title %s\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$name" "$options" >"$tmp/$name.conf"
	mcopy -i "$esp" "$tmp/$name.conf" "::/loader/entries/$name.conf"
done

truncate -s $(((ESP_MIB + 2) * 1024 * 1024)) "$disk"
printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"\n' \
	$((ESP_MIB * 2048)) | sfdisk -q "$disk"
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
mv -f "$disk" "$OUT"
