#!/usr/bin/env bash
# Packs a directory of guest files as an xhyve .box (tar.gz with metadata.json at its root).
# Format and options: boxes/README.md.
set -euo pipefail

usage() {
	cat >&2 <<'EOF'
usage: boxes/package.sh OUT.box DIR [--kernel FILE] [--initrd FILE|--no-initrd] [--cmdline CMDLINE]
                        [--cpus N] [--memory SIZE] [--disk FILE]... [--include FILE]... [--fast-start]
  --fast-start: the box's init runs the identity step (boxes/README.md, "Fast start").
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
disks=() includes=() disks_given= fast_start=
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
	-h | --help) usage ;;
	*) echo "package.sh: unknown option $1" >&2; usage ;;
	esac
	shift
done

if [ -z "$kernel" ]; then
	if [ -f "$dir/vmlinux" ]; then kernel=vmlinux
	elif [ -f "$dir/vmlinuz" ]; then kernel=vmlinuz
	else echo "package.sh: no vmlinux or vmlinuz in $dir: pass --kernel" >&2; exit 1
	fi
fi
if [ -z "$initrd" ] && [ -z "$no_initrd" ] && [ -f "$dir/initrd.img" ]; then initrd=initrd.img; fi
[ -n "$no_initrd" ] && initrd=
if [ -z "$disks_given" ]; then
	for f in "$dir"/disk*.img; do [ -f "$f" ] && disks+=("${f##*/}"); done
fi
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

files=("$kernel")
[ -n "$initrd" ] && files+=("$initrd")
files+=("${disks[@]}" "${includes[@]}")
for f in "${files[@]}"; do
	case $f in /* | ../* | */../* | ..) echo "package.sh: $f: give a path inside $dir" >&2; exit 2 ;; esac
	[ -f "$dir/$f" ] || { echo "package.sh: $dir/$f is missing" >&2; exit 1; }
	case $f in *,*) echo "package.sh: $f: xhyve's options cannot carry a comma" >&2; exit 2 ;; esac
done

meta="{\"provider\": \"xhyve\", \"kernel\": $(jstr "$kernel")"
[ -n "$initrd" ] && meta+=", \"initrd\": $(jstr "$initrd")"
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
