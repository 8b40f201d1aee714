/* xhyve-identity: the tiny box's side of the identity channel (boxes/README.md, "Fast start").
 *
 *   xhyve-identity [--net] DEV    DEV: the identity channel's tty (a virtio console, /dev/hvc0)
 *
 * Says "XHYVE-IDENTITY 1 WAITING" on DEV and waits for the host's message: lines KEY=VALUE up to
 * a line "end". It sets the wall clock from time= and mixes seed= into the kernel's RNG with a
 * forced reseed (a guest restored from a saved state must not reuse the random state it was
 * saved with). With --net it also sets the NICs' MACs (the mac= lines, in order: eth0, eth1,
 * ...; each NIC still down) and eth0's static address=, router= and dns= when the host sent
 * them, brings eth0 up then, and writes /etc/resolv.conf: ioctls, where `ip` would cost the
 * guest a process each (seconds here), and all done before the host hears APPLIED, so that the
 * host's first connection finds the guest's address. It prints machine=, hostname=, macs=
 * (every mac= line) and address= (eth0's, set by --net; else empty: the guest asks DHCP) as
 * shell assignments on stdout (values checked: the caller evals them) and says
 * "XHYVE-IDENTITY 1 APPLIED MACHINE" on DEV. Then it forks: the parent exits 0 so /init goes
 * on, the child stays on DEV and applies time= and seed= of every later message (the host sends
 * one after each restore, e.g. `vagrant resume`). Exit status 1 when DEV cannot be used, the
 * first message is malformed or none comes within WAIT_SECONDS (a host that does not speak the
 * protocol: the guest must not hang). Built static. */
#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_SEED 256
#define MAX_MACS 8
/* How long the first message may take: the host answers within a second of the WAITING. */
#define WAIT_SECONDS 120

struct message {
	char machine[64], hostname[64], macs[MAX_MACS][18], address[19], router[16], dns[16];
	int n_macs;
	double time;
	unsigned char seed[MAX_SEED];
	size_t seed_len;
};

static int fd;

static void say(const char *what, const char *arg) {
	char line[160];
	int n = snprintf(line, sizeof line, "XHYVE-IDENTITY 1 %s%s%s\n", what, arg ? " " : "", arg ? arg : "");
	if (write(fd, line, n) != n) perror("xhyve-identity: write");
}

/* Milliseconds read_line waits for each byte; -1: forever. */
static int wait_ms = -1;

/* One line from DEV without its newline; 0 at EOF, on an error or when wait_ms passed. */
static int read_line(char *buf, size_t size) {
	size_t n = 0;
	char c;
	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, wait_ms) <= 0) return 0;
		ssize_t r = read(fd, &c, 1);
		if (r <= 0) return 0;
		if (c == '\n') break;
		if (c != '\r' && n + 1 < size) buf[n++] = c;
	}
	buf[n] = 0;
	return 1;
}

/* Copies `v` into `out` if every character is allowed and it fits. */
static int take(char *out, size_t size, const char *v, const char *allowed) {
	size_t n = strlen(v);
	if (n == 0 || n >= size || strspn(v, allowed) != n) return 0;
	memcpy(out, v, n + 1);
	return 1;
}

static int hex(int c) { return isdigit(c) ? c - '0' : tolower(c) - 'a' + 10; }

/* Reads one message; 0 if the channel ended or a value was malformed. */
static int read_message(struct message *m) {
	char line[1024];
	memset(m, 0, sizeof *m);
	while (read_line(line, sizeof line)) {
		char *v = strchr(line, '=');
		if (strcmp(line, "end") == 0) return m->machine[0] != 0;
		if (!v) continue;
		*v++ = 0;
		int ok = 1;
		if (strcmp(line, "machine") == 0) ok = take(m->machine, sizeof m->machine, v, "0123456789abcdefABCDEF-");
		else if (strcmp(line, "hostname") == 0)
			ok = take(m->hostname, sizeof m->hostname, v,
				  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-");
		else if (strcmp(line, "mac") == 0) {
			ok = m->n_macs < MAX_MACS && strlen(v) == 17 &&
			     take(m->macs[m->n_macs], sizeof m->macs[0], v, "0123456789abcdefABCDEF:");
			m->n_macs += ok;
		}
		else if (strcmp(line, "address") == 0) ok = take(m->address, sizeof m->address, v, "0123456789./");
		else if (strcmp(line, "router") == 0) ok = take(m->router, sizeof m->router, v, "0123456789.");
		else if (strcmp(line, "dns") == 0) ok = take(m->dns, sizeof m->dns, v, "0123456789.");
		else if (strcmp(line, "time") == 0) m->time = strtod(v, NULL);
		else if (strcmp(line, "seed") == 0) {
			size_t n = strlen(v) / 2;
			ok = strlen(v) % 2 == 0 && n <= MAX_SEED && strspn(v, "0123456789abcdefABCDEF") == 2 * n;
			for (size_t i = 0; ok && i < n; i++) m->seed[i] = hex(v[2 * i]) << 4 | hex(v[2 * i + 1]);
			m->seed_len = ok ? n : 0;
		}
		if (!ok) {
			fprintf(stderr, "xhyve-identity: bad %s=\n", line);
			return 0;
		}
	}
	return 0;
}

/* The wall clock and the kernel RNG: what every restore must refresh. */
static void apply(const struct message *m) {
	if (m->time > 0) {
		struct timespec ts = { (time_t)m->time, (long)((m->time - (time_t)m->time) * 1e9) };
		if (clock_settime(CLOCK_REALTIME, &ts)) perror("xhyve-identity: clock_settime");
	}
	if (m->seed_len) {
		struct { struct rand_pool_info info; unsigned char buf[MAX_SEED]; } e;
		e.info.entropy_count = 8 * m->seed_len;
		e.info.buf_size = m->seed_len;
		memcpy(e.buf, m->seed, m->seed_len);
		int r = open("/dev/urandom", O_WRONLY);
		if (r < 0 || ioctl(r, RNDADDENTROPY, &e) || ioctl(r, RNDRESEEDCRNG))
			perror("xhyve-identity: reseeding the RNG");
		if (r >= 0) close(r);
	}
}

/* An IPv4 socket address for the ioctls below; 0 when `text` is not a dotted quad. */
static int inet(struct sockaddr *out, const char *text) {
	struct sockaddr_in *a = (struct sockaddr_in *)out;
	memset(a, 0, sizeof *a);
	a->sin_family = AF_INET;
	return inet_pton(AF_INET, text, &a->sin_addr) == 1;
}

static int net_ioctl(int s, unsigned long req, void *arg, const char *what, const char *dev) {
	if (ioctl(s, req, arg) == 0) return 1;
	fprintf(stderr, "xhyve-identity: %s of %s: ", what, dev);
	perror(NULL);
	return 0;
}

/* MAC of ethI for each mac= line (a NIC that is missing is skipped). */
static void set_macs(int s, const struct message *m) {
	for (int i = 0; i < m->n_macs; i++) {
		struct ifreq r;
		unsigned int b[6];
		memset(&r, 0, sizeof r);
		snprintf(r.ifr_name, IFNAMSIZ, "eth%d", i);
		if (if_nametoindex(r.ifr_name) == 0) continue;
		if (sscanf(m->macs[i], "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) continue;
		r.ifr_hwaddr.sa_family = ARPHRD_ETHER;
		for (int k = 0; k < 6; k++) r.ifr_hwaddr.sa_data[k] = (char)b[k];
		net_ioctl(s, SIOCSIFHWADDR, &r, "setting the MAC", r.ifr_name);
	}
}

/* eth0's static address, up, default route, resolver; 0 (and the guest asks DHCP) on a failure.
 * The address is set while the link is down and arp_notify is on, so the link coming up
 * announces it: the host's side of the network learns the MAC before the first connection. */
static int set_ipv4(int s, const struct message *m) {
	char addr[sizeof m->address], *slash;
	struct ifreq r;
	struct rtentry rt;
	memcpy(addr, m->address, sizeof addr);
	slash = strchr(addr, '/');
	int prefix = slash ? atoi(slash + 1) : 32;
	if (slash) *slash = 0;
	memset(&r, 0, sizeof r);
	strcpy(r.ifr_name, "eth0");
	if (prefix < 1 || prefix > 32 || !inet(&r.ifr_addr, addr)) return 0;
	int f = open("/proc/sys/net/ipv4/conf/eth0/arp_notify", O_WRONLY);
	if (f >= 0) {
		if (write(f, "1\n", 2) != 2) perror("xhyve-identity: arp_notify");
		close(f);
	}
	if (!net_ioctl(s, SIOCSIFADDR, &r, "setting the address", "eth0")) return 0;
	struct sockaddr_in *mask = (struct sockaddr_in *)&r.ifr_netmask;
	mask->sin_family = AF_INET;
	mask->sin_addr.s_addr = htonl(~0u << (32 - prefix));
	if (!net_ioctl(s, SIOCSIFNETMASK, &r, "setting the netmask", "eth0")) return 0;
	if (!net_ioctl(s, SIOCGIFFLAGS, &r, "reading the flags", "eth0")) return 0;
	r.ifr_flags |= IFF_UP;
	if (!net_ioctl(s, SIOCSIFFLAGS, &r, "bringing up", "eth0")) return 0;
	if (m->router[0]) {
		memset(&rt, 0, sizeof rt);
		inet(&rt.rt_dst, "0.0.0.0");
		inet(&rt.rt_genmask, "0.0.0.0");
		if (!inet(&rt.rt_gateway, m->router)) return 0;
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = "eth0";
		if (!net_ioctl(s, SIOCADDRT, &rt, "adding the default route", "eth0")) return 0;
	}
	if (m->dns[0]) {
		FILE *out = fopen("/etc/resolv.conf.tmp", "w");
		if (!out || fprintf(out, "nameserver %s\n", m->dns) < 0 || fclose(out) ||
		    rename("/etc/resolv.conf.tmp", "/etc/resolv.conf"))
			perror("xhyve-identity: /etc/resolv.conf");
	}
	return 1;
}

/* What --net sets; whether eth0 got its static address. */
static int set_network(const struct message *m) {
	int s = socket(AF_INET, SOCK_DGRAM, 0), ok = 0;
	if (s < 0) {
		perror("xhyve-identity: socket");
		return 0;
	}
	set_macs(s, m);
	if (m->address[0] && if_nametoindex("eth0")) ok = set_ipv4(s, m);
	close(s);
	return ok;
}

int main(int argc, char **argv) {
	struct message m;
	struct termios t;
	int net = argc == 3 && strcmp(argv[1], "--net") == 0;
	if (argc != 2 + net) {
		fprintf(stderr, "usage: xhyve-identity [--net] DEV\n");
		return 2;
	}
	const char *dev = argv[1 + net];
	fd = open(dev, O_RDWR | O_NOCTTY);
	if (fd < 0) {
		perror(dev);
		return 1;
	}
	/* Raw: no echo of the host's message back to it, no line editing. */
	if (tcgetattr(fd, &t) == 0) {
		cfmakeraw(&t);
		tcsetattr(fd, TCSANOW, &t);
	}
	say("WAITING", NULL);
	wait_ms = WAIT_SECONDS * 1000;
	int got = read_message(&m);
	wait_ms = -1;
	if (!got) {
		fprintf(stderr, "xhyve-identity: no identity from the host\n");
		return 1;
	}
	apply(&m);
	int addressed = net && set_network(&m);
	printf("machine=%s\nhostname=%s\nmacs='", m.machine, m.hostname);
	for (int i = 0; i < m.n_macs; i++) printf("%s%s", i ? " " : "", m.macs[i]);
	printf("'\naddress=%s\n", addressed ? m.address : "");
	fflush(stdout);
	say("APPLIED", m.machine);
	if (fork() != 0) return 0;
	/* The child: every later message is a restore of this machine. */
	setsid();
	close(STDOUT_FILENO);
	while (read_message(&m)) {
		apply(&m);
		say("APPLIED", m.machine);
	}
	return 0;
}
