/*
 * newconn: offer new UDP connections at a fixed rate, each a new 5-tuple,
 * from a raw socket: one small datagram per connection, so the firewall
 * creates one conntrack entry per packet and the sync daemons have one
 * entry each to replicate. Built by bench/compare/gen.py with gcc into
 * .cache/; run inside the lab's client namespace.
 *
 * Why raw: a UDP socket per connection (bind, connect, send, close) costs
 * several system calls and file descriptors per connection; a Python loop
 * of that peaked near 20,000/s here, below what conntrackd can replicate.
 * With IP_HDRINCL one sendmmsg() carries a batch of ready-made datagrams
 * whose source and destination ports differ.
 *
 * Connection i (0 <= i < count) gets source port 1024 + (i + first) % 64000
 * and destination port dport + (i + first) / 64000, so tuples never repeat
 * within 64000 * (number of destination ports). PROCS = K forks K senders,
 * sender k taking every K-th connection at rate/K, so one core is not the
 * limit either. FLOWS > 0 makes connection i reuse tuple i % FLOWS instead:
 * packets of a few established flows, for measuring forwarding cost. Pacing: batches of BATCH datagrams, each sent when the
 * clock says it is due, never ahead; a sender that falls behind sends at
 * once (it does not skip) and the achieved rate says so.
 *
 * Output, one line per sender and (with --procs > 1) one for the whole,
 * machine-readable, times in CLOCK_REALTIME seconds:
 *   sender K sent N errors E start S end T
 *   total start S end T
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define PORTS 64000
#define MAX_PROCS 16
#define PAYLOAD 16

struct pkt {
	struct iphdr ip;
	struct udphdr udp;
	unsigned char payload[PAYLOAD];
} __attribute__((packed));

static double now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now_real(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double when)
{
	double d = when - now_mono();
	if (d > 0) {
		struct timespec ts = { (time_t)d, (long)((d - (time_t)d) * 1e9) };
		nanosleep(&ts, NULL);
	}
}

static uint64_t flows; /* 0: every datagram a new tuple */

static void fill(struct pkt *p, uint32_t src, uint32_t dst, uint16_t dport_base,
		 uint64_t i, uint64_t first)
{
	uint64_t n = (flows ? i % flows : i) + first;
	memset(p, 0, sizeof(*p));
	p->ip.version = 4;
	p->ip.ihl = 5;
	p->ip.ttl = 64;
	p->ip.protocol = IPPROTO_UDP;
	p->ip.tot_len = htons(sizeof(*p));
	p->ip.saddr = src;
	p->ip.daddr = dst; /* id and checksum: the kernel fills them (IP_HDRINCL) */
	p->udp.source = htons((uint16_t)(1024 + n % PORTS));
	p->udp.dest = htons((uint16_t)(dport_base + n / PORTS));
	p->udp.len = htons(sizeof(struct udphdr) + PAYLOAD);
	p->udp.check = 0; /* optional for UDP over IPv4 */
	memcpy(p->payload, &n, sizeof(n));
}

static int sender(int k, int procs, uint32_t src, uint32_t dst, uint16_t dport,
		  uint64_t count, uint64_t first, double rate, double max_s)
{
	int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (fd < 0) {
		perror("socket(SOCK_RAW)");
		return 2;
	}
	int sndbuf = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	static struct pkt pkts[BATCH];
	struct iovec iov[BATCH];
	struct mmsghdr msgs[BATCH];
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = dst };
	uint64_t mine = count / procs + ((uint64_t)k < count % procs ? 1 : 0);
	double my_rate = rate / procs;
	uint64_t sent = 0, errors = 0, j = 0;
	double t0 = now_mono(), r0 = now_real(), deadline = t0 + max_s;
	while (j < mine && now_mono() < deadline) {
		int n = 0;
		for (; n < BATCH && j < mine; n++, j++) {
			fill(&pkts[n], src, dst, dport, j * procs + k, first);
			iov[n].iov_base = &pkts[n];
			iov[n].iov_len = sizeof(pkts[n]);
			memset(&msgs[n], 0, sizeof(msgs[n]));
			msgs[n].msg_hdr.msg_name = &to;
			msgs[n].msg_hdr.msg_namelen = sizeof(to);
			msgs[n].msg_hdr.msg_iov = &iov[n];
			msgs[n].msg_hdr.msg_iovlen = 1;
		}
		/* The batch is due when its first datagram is. */
		sleep_until(t0 + (double)(j - n) / my_rate);
		int off = 0;
		while (off < n) {
			int r = sendmmsg(fd, msgs + off, n - off, 0);
			if (r < 0) {
				if (errno == ENOBUFS || errno == EAGAIN) {
					errors++;
					usleep(100);
					continue;
				}
				perror("sendmmsg");
				return 2;
			}
			off += r;
			sent += r;
		}
	}
	printf("sender %d sent %llu errors %llu start %.6f end %.6f\n", k,
	       (unsigned long long)sent, (unsigned long long)errors, r0, now_real());
	fflush(stdout);
	close(fd);
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: newconn SRC DST DPORT COUNT RATE [FIRST [PROCS [MAX_S [FLOWS]]]]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 6)
		usage();
	struct in_addr src, dst;
	if (!inet_aton(argv[1], &src) || !inet_aton(argv[2], &dst))
		usage();
	long dport = strtol(argv[3], NULL, 10);
	uint64_t count = strtoull(argv[4], NULL, 10);
	double rate = strtod(argv[5], NULL);
	uint64_t first = argc > 6 ? strtoull(argv[6], NULL, 10) : 0;
	int procs = argc > 7 ? atoi(argv[7]) : 1;
	double max_s = argc > 8 ? strtod(argv[8], NULL) : 120.0;
	flows = argc > 9 ? strtoull(argv[9], NULL, 10) : 0;
	if (dport < 1 || dport > 65535 || rate <= 0 || procs < 1 || procs > MAX_PROCS ||
	    count == 0 || max_s <= 0 ||
	    dport + ((flows ? flows : count) + first) / PORTS > 65535)
		usage();
	double r0 = now_real();
	if (procs == 1)
		return sender(0, 1, src.s_addr, dst.s_addr, (uint16_t)dport, count, first,
			      rate, max_s);
	pid_t pids[MAX_PROCS];
	for (int k = 0; k < procs; k++) {
		pids[k] = fork();
		if (pids[k] == 0)
			_exit(sender(k, procs, src.s_addr, dst.s_addr, (uint16_t)dport, count,
				     first, rate, max_s));
		if (pids[k] < 0) {
			perror("fork");
			return 2;
		}
	}
	int rc = 0;
	for (int k = 0; k < procs; k++) {
		int status;
		waitpid(pids[k], &status, 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			rc = 1;
	}
	printf("total start %.6f end %.6f\n", r0, now_real());
	return rc;
}
