#!/usr/bin/env bash
# Packs a directory of guest files as an xhyve .box (tar.gz with metadata.json at its root).
# Format and options: boxes/README.md.
set -euo pipefail

usage() {
	cat >&2 <<'EOF'
usage: boxes/package.sh OUT.box DIR [--kernel FILE] [--initrd FILE|--no-initrd] [--cmdline CMDLINE]
                        [--cpus N] [--memory SIZE] [--disk FILE]... [--include FILE]... [--fast-start]
                        [--firmware efi [--efi-vars FILE]]
  --fast-start: the box's init runs the identity step (boxes/README.md, "Fast start").
  --firmware efi: UEFI firmware boots the first disk (its EFI system partition); the box needs
            no kernel (one given or found is kept for kexec); --efi-vars: the variable store
            its machines start with (else OVMF's empty one).
  DIR holds the files; FILE names are relative to DIR.
  Defaults: --kernel vmlinux (else vmlinuz), --initrd initrd.img when present,
            --cmdline console=ttyS0, --cpus 1, --memory 256M, --disk every disk*.img in DIR;
            DIR/Vagrantfile is included when present.
EOF
	exit 2
}

[ $# -ge 2 ] || usage
out=$1 dir=$2
shift 2
[ -d "$dir" ] || { echo "package.sh: $dir is not a directory" >&2; exit 2; }
dir=$(cd "$dir" && pwd)
kernel= initrd= no_initrd= cmdline=console=ttyS0 cpus=1 memory=256M
disks=() includes=() disks_given= fast_start= firmware= efi_vars=
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) kernel=${2:?}; shift ;;
	--initrd) initrd=${2:?}; shift ;;
	--no-initrd) no_initrd=1 ;;
	--cmdline) cmdline=${2?}; shift ;;
	--cpus) cpus=${2:?}; shift ;;
	--memory) memory=${2:?}; shift ;;
	--disk) disks+=("${2:?}"); disks_given=1; shift ;;
	--include) includes+=("${2:?}"); shift ;;
	--fast-start) fast_start=1 ;;
	--firmware) firmware=${2:?}; shift ;;
	--efi-vars) efi_vars=${2:?}; shift ;;
	-h | --help) usage ;;
	*) echo "package.sh: unknown option $1" >&2; usage ;;
	esac
	shift
done

case $firmware in '' | efi) ;; *) echo "package.sh: --firmware $firmware: only efi (kexec is the default)" >&2; exit 2 ;; esac
[ -z "$efi_vars" ] || [ -n "$firmware" ] || { echo "package.sh: --efi-vars needs --firmware efi" >&2; exit 2; }
if [ -z "$kernel" ]; then
	if [ -f "$dir/vmlinux" ]; then kernel=vmlinux
	elif [ -f "$dir/vmlinuz" ]; then kernel=vmlinuz
	elif [ -z "$firmware" ]; then echo "package.sh: no vmlinux or vmlinuz in $dir: pass --kernel" >&2; exit 1
	fi
fi
if [ -z "$initrd" ] && [ -z "$no_initrd" ] && [ -f "$dir/initrd.img" ]; then initrd=initrd.img; fi
[ -n "$no_initrd" ] && initrd=
if [ -z "$disks_given" ]; then
	for f in "$dir"/disk*.img; do [ -f "$f" ] && disks+=("${f##*/}"); done
fi
[ -z "$firmware" ] || [ ${#disks[@]} -gt 0 ] || { echo "package.sh: --firmware efi boots the first disk: $dir has no disk*.img (pass --disk)" >&2; exit 1; }
[ -f "$dir/Vagrantfile" ] && includes+=(Vagrantfile)
case $cpus in '' | *[!0-9]*) echo "package.sh: --cpus $cpus is not a number" >&2; exit 2 ;; esac

# JSON string (escapes \ " and control characters).
jstr() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\t'/\\t}
	s=${s//$'\n'/\\n}
	printf '"%s"' "$s"
}

files=()
[ -n "$kernel" ] && files+=("$kernel")
[ -n "$initrd" ] && files+=("$initrd")
[ -n "$efi_vars" ] && files+=("$efi_vars")
files+=("${disks[@]}" "${includes[@]}")
for f in "${files[@]}"; do
	case $f in /* | ../* | */../* | ..) echo "package.sh: $f: give a path inside $dir" >&2; exit 2 ;; esac
	[ -f "$dir/$f" ] || { echo "package.sh: $dir/$f is missing" >&2; exit 1; }
	case $f in *,*) echo "package.sh: $f: xhyve's options cannot carry a comma" >&2; exit 2 ;; esac
done

meta="{\"provider\": \"xhyve\""
[ -n "$firmware" ] && meta+=", \"firmware\": $(jstr "$firmware")"
[ -n "$kernel" ] && meta+=", \"kernel\": $(jstr "$kernel")"
[ -n "$initrd" ] && meta+=", \"initrd\": $(jstr "$initrd")"
[ -n "$efi_vars" ] && meta+=", \"efi_vars\": $(jstr "$efi_vars")"
meta+=", \"cmdline\": $(jstr "$cmdline"), \"cpus\": $cpus, \"memory\": $(jstr "$memory")"
if [ ${#disks[@]} -gt 0 ]; then
	meta+=", \"disks\": ["
	sep=
	for d in "${disks[@]}"; do meta+="$sep$(jstr "$d")"; sep=", "; done
	meta+="]"
fi
[ -n "$fast_start" ] && meta+=", \"fast_start\": true"
meta+="}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "$meta" >"$tmp/metadata.json"
mkdir -p "$(dirname "$out")"
# --sparse: a disk image's holes are stored as holes (GNU sparse entries), not as zeros.
tar --format=gnu --sparse --owner=0 --group=0 --numeric-owner --mode=u+rw,go+r \
	-czf "$tmp/out.box" -C "$tmp" metadata.json -C "$dir" "${files[@]}"
mv "$tmp/out.box" "$out"
echo "package.sh: $out: $meta" >&2
