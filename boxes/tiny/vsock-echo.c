/* vsock-echo: the tiny box's vsock test tool (busybox has no vsock client).
 *   vsock-echo c PORT MSG   connect to the host (CID 2) port PORT, send MSG, half-close,
 *                           print what comes back until EOF
 *   vsock-echo l PORT       accept one connection on PORT, read until a newline or EOF,
 *                           print it, answer "ECHO:" + it, close
 * Exit status 0 on success. Built static by build.sh. */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int die(const char *what) { perror(what); return 1; }

int main(int argc, char **argv) {
	if (argc < 3) { fprintf(stderr, "usage: vsock-echo c PORT MSG | l PORT\n"); return 2; }
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = (unsigned)atoi(argv[2]) };
	char buf[4096];
	ssize_t n;
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0) return die("socket");
	if (argv[1][0] == 'c' && argc > 3) {
		a.svm_cid = VMADDR_CID_HOST;
		if (connect(s, (struct sockaddr *)&a, sizeof a)) return die("connect");
		if (write(s, argv[3], strlen(argv[3])) < 0) return die("write");
		shutdown(s, SHUT_WR);
		while ((n = read(s, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
		return n < 0 ? die("read") : 0;
	}
	a.svm_cid = VMADDR_CID_ANY;
	if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) return die("listen");
	int c = accept(s, NULL, NULL);
	if (c < 0) return die("accept");
	size_t got = 0;
	while (got < sizeof buf - 1 && (n = read(c, buf + got, sizeof buf - 1 - got)) > 0) {
		got += n;
		if (buf[got - 1] == '\n') break;
	}
	buf[got] = 0;
	printf("%s", buf);
	if (write(c, "ECHO:", 5) < 0 || write(c, buf, got) < 0) return die("write");
	close(c);
	return 0;
}
