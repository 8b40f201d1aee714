# shellcheck shell=bash
# The Debian 12 packages each entry point needs, in one place, and need_packages, which installs
# the missing ones (apt-get update only when something is missing). Sourced by boxes/tiny/build.sh,
# up.sh and boot.sh, tests/run and tests/lint; README.md's dependency table lists the same packages
# (tests/lint checks that it does).
#
#   need_packages GROUP...  build: cargo build of xhyve and xhyve-provider; box: the tiny box (guest
#                           kernel and initramfs); run: a machine with user-mode networking;
#                           test: tests/run
#   XHYVE_NO_APT=1          lists what is missing and fails instead of installing it
#
# Rust (cargo) and Go are not taken from Debian (12's are too old): install them first.

# package | groups | why
xhyve_packages() {
	cat <<'LIST'
build-essential | build box | C compiler and make: libssh2 and zlib built by cargo, the guest kernel, the tiny box's static vsock tool, cargo-fuzz's libFuzzer
ca-certificates | build | cargo and go fetch crates and Go modules over HTTPS (a first build, cargo-fuzz, Packer)
pkg-config | build | openssl-sys finds the system OpenSSL with it (libssh2, for xhyve-provider's SSH)
libssl-dev | build box | OpenSSL headers: libssh2 (xhyve-provider) and the guest kernel's build tools
linux-source-6.1 | box | the guest kernel's source
bc | box | the guest kernel build
bison | box | the guest kernel build
flex | box | the guest kernel build
libelf-dev | box | the guest kernel build (objtool)
cpio | box | the guest kernel build
xz-utils | box | unpacks linux-source-6.1's tarball
patch | box | applies boxes/tiny/hz.patch to the guest kernel's source
kmod | box | the guest kernel build
debootstrap | box | the Debian 12 box's root file system (boxes/debian12)
debian-archive-keyring | box | debootstrap checks the Debian archive's signatures with it (boxes/debian12)
e2fsprogs | box test | mkfs.ext4 -d makes the Debian 12 box's root file system image; e2fsck and debugfs check a killed guest's disk (tests/provider/test_crash.py)
fdisk | box | sfdisk writes the Debian 12 box's GPT
dosfstools | box | mkfs.vfat makes the Debian 12 box's EFI system partition
systemd-boot-efi | box | Debian's systemd-boot as an EFI application: the boot loader on the tiny EFI test disk's ESP (boxes/tiny/efi-disk.sh)
mtools | box | mmd writes into the EFI system partition image without mounting it
util-linux | box test | unshare: the Debian 12 box's chroot mounts live in a private mount namespace; setpriv: the -f bootrom test of a VARS file root may not write
busybox-static | box | the guest's userland: one static binary in the initramfs
dropbear-bin | box | the tiny box's SSH server, copied into its initramfs with its libraries
openssh-client | box test | scp in the tiny box (the remote end of Vagrant's and Packer's uploads); ssh for `vagrant ssh`
libslirp0 | build run | QEMU's user-mode TCP/IP stack (-s N,virtio-net,user), linked into xhyve: NAT with DHCP, DNS and port forwards that needs no root, so the VMM carries no TCP/IP stack of its own
libslirp-dev | build | libslirp's headers and libslirp.so, for the libslirp-sys crate
libglib2.0-dev | build | libslirp's pkg-config file requires glib-2.0's: libslirp-sys's build finds libslirp only with it
passt | test | the other user-mode stack (-s N,virtio-net,passt): the networking test's second guest, vmm/benches/user-net.sh's baseline
python3 | run test | boxes/tiny/up.sh reads the provider's JSON answers with it; the end-to-end tests
python3-pytest | test | runs the end-to-end tests
python3-pytest-xdist | test | runs them two at a time
python3-pytest-rerunfailures | test | reruns a test whose guest hit the nested host's process crash
strace | test | proves that a rejected command line creates no VM
iproute2 | test | network namespaces, bridges and TAP devices of the networking tests; the provider's shared network mode runs ip; ss lists the load test's sockets
procps | test | pgrep: the tests check which xhyve and passt processes are left
vagrant | test | Debian's Vagrant 2.3.4: the Vagrant plugin's end-to-end and unit tests
ruby | test | gem builds the Vagrant plugin; ruby -wc checks every Ruby file
ruby-rspec | test | the Vagrant plugin's unit tests (ruby-shim/spec)
libarchive-tools | test | bsdtar: the Vagrant plugin hands boxes to the provider with it
git | test | tests/lint checks the commit messages
zstd | test | compresses test kernels and initrds: the VMM's host-side decompression tests
lz4 | box test | the tiny kernel's bzImage payload is LZ4; the decompression tests (Debian's cloud kernels are lz4)
bzip2 | test | the same, for bzip2
qemu-utils | test | qemu-img makes and checks the qcow2 overlays of the snapshot tests
ovmf | run test | Debian's stock UEFI firmware (OVMF_CODE_4M.fd, OVMF_VARS_4M.fd, OVMF.fd): what EFI boxes boot through; the -f bootrom unit and end-to-end tests
LIST
}

# The packages of the given groups, one per line.
packages_of() {
	local pkg groups _why g
	for g in "$@"; do
		case $g in build | box | run | test) ;; *) echo "packages.sh: no group $g" >&2; return 2 ;; esac
	done
	while IFS='|' read -r pkg groups _why; do
		pkg=${pkg// /}
		for g in "$@"; do
			case " $groups " in *" $g "*) echo "$pkg"; break ;; esac
		done
	done < <(xhyve_packages)
}

# Installs the packages of the given groups that are missing (as root, else through sudo).
need_packages() {
	local p all missing=() sudo=
	all=$(packages_of "$@") || return
	for p in $all; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	if [ -n "${XHYVE_NO_APT:-}" ]; then
		echo "missing Debian packages ($*): ${missing[*]}" >&2
		echo "install them with: apt-get install --no-install-recommends ${missing[*]}" >&2
		return 1
	fi
	[ "$(id -u)" = 0 ] || sudo=sudo
	echo "installing Debian packages ($*): ${missing[*]}" >&2
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}
