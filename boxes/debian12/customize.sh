#!/bin/sh
# Runs inside the chroot of the new root file system (build.sh, with /proc, /sys, /dev, /run and
# the .deb cache mounted): apt sources, the box's packages, user vagrant, the settings of
# rootfs/ (bind-mounted at /run/overlay), and what a box must not carry (host keys, machine-id).
# Environment: SUITE MIRROR SECURITY PACKAGES ROOT_PARTUUID ESP_PARTUUID.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# --- apt: the archive the box was built from, with updates and security ---
rm -f /etc/apt/sources.list
{
	printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$MIRROR" "$SUITE" "$SUITE"
	printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
	if [ -n "$SECURITY" ]; then
		printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$SECURITY" "$SUITE"
		printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
	fi
} >/etc/apt/sources.list.d/debian.sources
# No daemon starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
apt-get update
apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
# shellcheck disable=SC2086
apt-get -y -o Dpkg::Options::=--force-confold install --no-install-recommends $PACKAGES
rm -f /usr/sbin/policy-rc.d

# --- the box's settings ---
cp -a /run/overlay/. /
chmod 0440 /etc/sudoers.d/vagrant
visudo -cq
cat >/etc/fstab <<EOF
# <file system>	<mount point>	<type>	<options>	<dump>	<pass>
# The root partition grows to the disk's size at boot (systemd-repart, /etc/repart.d) and its
# file system with it (x-systemd.growfs).
PARTUUID=$ROOT_PARTUUID	/	ext4	errors=remount-ro,x-systemd.growfs	0	1
# The EFI system partition, mounted when first used.
PARTUUID=$ESP_PARTUUID	/boot/efi	vfat	umask=0077,noauto,x-systemd.automount,nofail	0	2
EOF
mkdir -p /boot/efi

# user vagrant: Vagrant's insecure key (Vagrant replaces it), password "vagrant" (the base box
# convention), sudo without a password (/etc/sudoers.d/vagrant)
useradd --create-home --uid 1000 --user-group --shell /bin/bash vagrant
echo vagrant:vagrant | chpasswd
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 0600 -o vagrant -g vagrant /run/vagrant.pub /home/vagrant/.ssh/authorized_keys

# Units. Every process a guest starts costs seconds on a nested host (README.md: boot time), so
# the box runs what a Vagrant machine needs and skips what it can go without.
systemctl enable systemd-networkd.service systemd-resolved.service ssh-hostkeys.service
# The fast start's identity step (only with xhyve.identity= on the kernel command line).
systemctl enable xhyve-identity.service
# The login prompt on the serial console (the masked getty generator would add it from console=).
systemctl enable serial-getty@ttyS0.service
# A box never prompts on its console (systemd-firstboot asks for a locale on a first boot).
systemctl mask systemd-firstboot.service
# apt's daily timers would take dpkg's lock while a provisioner runs: off, as in Vagrant boxes.
systemctl disable apt-daily.timer apt-daily-upgrade.timer
# No ip= on the kernel command line to convert; no e2scrub snapshots (no LVM) to reap.
systemctl disable systemd-network-generator.service e2scrub_reap.service
# /etc and /var are up to date with /usr: no systemd-sysusers at every boot (its
# ConditionNeedsUpdate=/etc compares /usr's time with this stamp, which Debian never writes).
usr=$(stat -c %.9Y /usr)
printf 'TIMESTAMP_NSEC=%s\n' "$(echo "$usr" | tr -d .)" | tee /etc/.updated >/var/.updated
touch -r /usr /etc/.updated /var/.updated
ln -sf ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf

# No message of the day at each SSH login (pam_motd runs /etc/update-motd.d: a process per login).
sed -i 's/^session[[:space:]]\+optional[[:space:]]\+pam_motd\.so/# (box: no motd) &/' /etc/pam.d/sshd
# SSH logins get no logind session (Debian's common-session-noninteractive, what cron and sudo
# use, instead of common-session: no pam_systemd). pam_systemd made sshd wait for logind and the
# user's systemd instance (user@1000: a dozen processes) before opening a channel, minutes on a
# nested host. The cost: no XDG_RUNTIME_DIR, `systemctl --user` or `loginctl` session over SSH.
sed -i 's/^@include common-session$/@include common-session-noninteractive # (box: no pam_systemd)/' /etc/pam.d/sshd
grep -q '^@include common-session-noninteractive' /etc/pam.d/sshd
# Units a Vagrant machine goes without: the VMM seeds the kernel's RNG at every boot (no seed file
# to carry), and no utmp boot and runlevel records (`who -b`, `last reboot`).
systemctl mask systemd-random-seed.service systemd-update-utmp.service systemd-update-utmp-runlevel.service

# --- what each machine makes for itself at its first boot ---
rm -f /etc/ssh/ssh_host_*
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /var/cache/apt/*.bin # (archives/ is the build's .deb cache, mounted)
rm -rf /var/log/apt/* /var/log/*.log /var/cache/debconf/*-old /var/lib/dpkg/*-old /tmp/* /var/tmp/*
