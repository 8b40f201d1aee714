#!/usr/bin/env bash
# Writes (or updates) a Vagrant box catalog ("metadata JSON") naming a .box, so that
# `vagrant box add URL-OF-CATALOG` and `xhyve-provider box add URL-OF-CATALOG` install it.
# usage: boxes/catalog.sh CATALOG.json NAME VERSION BOX.box [--url URL] [--description TEXT]
#   --url: where clients fetch the box (default: file:// + the box's absolute path; Vagrant 2.3
#          does not resolve URLs relative to the catalog, so give an absolute one)
# The version's xhyve entry (architecture: this machine's, default_architecture, sha256 checksum)
# is added to CATALOG.json or replaces the one there; other versions and providers are kept. The
# file is written to a temporary file and renamed.
set -euo pipefail

usage() {
	echo "usage: boxes/catalog.sh CATALOG.json NAME VERSION BOX.box [--url URL] [--description TEXT]" >&2
	exit 2
}
[ $# -ge 4 ] || usage
catalog=$1 name=$2 version=$3 box=$4
shift 4
url= description=
while [ $# -gt 0 ]; do
	case $1 in
	--url) url=${2:?}; shift ;;
	--description) description=${2?}; shift ;;
	-h | --help) usage ;;
	*) echo "catalog.sh: unknown option $1" >&2; usage ;;
	esac
	shift
done
[ -f "$box" ] || { echo "catalog.sh: $box is not a file" >&2; exit 1; }
box=$(cd "$(dirname "$box")" && pwd)/$(basename "$box")
[ -n "$url" ] || url=file://$box
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
case $arch in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
sum=$(sha256sum "$box" | cut -c1-64)

python3 - "$catalog" "$name" "$version" "$url" "$sum" "$arch" "$description" <<'EOF'
import json, os, sys, tempfile

path, name, version, url, checksum, arch, description = sys.argv[1:]
cat = {"name": name, "versions": []}
if os.path.exists(path):
    with open(path) as f:
        cat = json.load(f)
    if cat.get("name") != name:
        sys.exit(f"catalog.sh: {path} is the catalog of {cat.get('name')!r}, not {name!r}")
if description:
    cat["description"] = description
entry = {"name": "xhyve", "url": url, "checksum_type": "sha256", "checksum": checksum,
         "architecture": arch, "default_architecture": True}
versions = cat.setdefault("versions", [])
ver = next((v for v in versions if v.get("version") == version), None)
if ver is None:
    ver = {"version": version, "providers": []}
    versions.append(ver)
ver["providers"] = [p for p in ver.get("providers", [])
                    if not (p.get("name") == "xhyve" and p.get("architecture", arch) == arch)]
ver["providers"].append(entry)
d = os.path.dirname(os.path.abspath(path))
os.makedirs(d, exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=d, prefix=".catalog.")
with os.fdopen(fd, "w") as f:
    json.dump(cat, f, indent=2)
    f.write("\n")
os.chmod(tmp, 0o644)
os.rename(tmp, path)
print(f"catalog.sh: {path}: {name} {version} xhyve/{arch} -> {url}", file=sys.stderr)
EOF
