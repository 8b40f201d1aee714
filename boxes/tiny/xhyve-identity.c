/* xhyve-identity: the tiny box's side of the identity channel (boxes/README.md, "Fast start").
 *
 *   xhyve-identity DEV    DEV: the identity channel's tty (a virtio console, e.g. /dev/hvc0)
 *
 * Says "XHYVE-IDENTITY 1 WAITING" on DEV and waits for the host's message: lines KEY=VALUE up to
 * a line "end". It sets the wall clock from time= and mixes seed= into the kernel's RNG with a
 * forced reseed (a guest restored from a saved state must not reuse the random state it was
 * saved with), prints machine=, hostname= and macs= (every mac= line, in order) as shell
 * assignments on stdout (values checked: the caller evals them) and says
 * "XHYVE-IDENTITY 1 APPLIED MACHINE" on DEV. Then it forks: the parent exits 0 so /init goes
 * on, the child stays on DEV and applies time= and seed= of every later message (the host sends
 * one after each restore, e.g. `vagrant resume`). Exit status 1 when DEV cannot be used, the
 * first message is malformed or none comes within WAIT_SECONDS (a host that does not speak the
 * protocol: the guest must not hang). Built static. */
#include <ctype.h>
#include <fcntl.h>
#include <linux/random.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_SEED 256
#define MAX_MACS 8
/* How long the first message may take: the host answers within a second of the WAITING. */
#define WAIT_SECONDS 120

struct message {
	char machine[64], hostname[64], macs[MAX_MACS][18];
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

int main(int argc, char **argv) {
	struct message m;
	struct termios t;
	if (argc != 2) {
		fprintf(stderr, "usage: xhyve-identity DEV\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR | O_NOCTTY);
	if (fd < 0) {
		perror(argv[1]);
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
	printf("machine=%s\nhostname=%s\nmacs='", m.machine, m.hostname);
	for (int i = 0; i < m.n_macs; i++) printf("%s%s", i ? " " : "", m.macs[i]);
	printf("'\n");
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
