/* An unmodified producer: it knows nothing of memfd-tripwire. It maps the
 * fd it was given (MAP_SHARED) and stores into it, as an existing program
 * or a VFIO-user client would. The conformance suite builds it with cc and
 * plays the RFC selftest's scenarios against it (tests/conformance/unmodified.rs).
 *
 *   writer inherit LEN VALUE          fd 0 is the memory: store VALUE at 0
 *   writer rounds  LEN ROUNDS         fd 0 is a unix socket that carries the
 *                                     memory's fd (SCM_RIGHTS); for round i:
 *                                     store i at 0, send 'S', wait for 'A'
 *   writer free    LEN COUNT SLOT     fd 0 is the memory: store 1..COUNT at
 *                                     8 * SLOT as fast as it can, then exit
 *   writer watch   LEN COUNT [GAP]    fd 0 is a watch's memory (layout 1,
 *                                     src/watch/mod.rs): send the values
 *                                     1..COUNT, every word of each the
 *                                     counter, by the seqlock steps the docs
 *                                     give, as fast as it can (GAP: spin
 *                                     GAP empty iterations between two)
 *
 * Prints "done" on stdout at the end; exits 1 with a message on error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

static int recv_fd(int sock) {
	char byte;
	struct iovec iov = { &byte, 1 };
	union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
	struct msghdr m = { 0 };
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = u.buf;
	m.msg_controllen = sizeof u.buf;
	if (recvmsg(sock, &m, 0) != 1) die("recvmsg");
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	if (!c || c->cmsg_type != SCM_RIGHTS) { fprintf(stderr, "no fd\n"); exit(1); }
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof fd);
	return fd;
}

static volatile uint64_t *map(int fd, size_t len) {
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) die("mmap");
	return p;
}

int main(int argc, char **argv) {
	if (argc < 4) { fprintf(stderr, "usage: see the source\n"); return 2; }
	size_t len = strtoull(argv[2], NULL, 0);
	if (!strcmp(argv[1], "inherit")) {
		volatile uint64_t *m = map(0, len);
		__atomic_store_n(&m[0], strtoull(argv[3], NULL, 0), __ATOMIC_RELEASE);
	} else if (!strcmp(argv[1], "rounds")) {
		int fd = recv_fd(0);
		volatile uint64_t *m = map(fd, len);
		uint64_t rounds = strtoull(argv[3], NULL, 0);
		for (uint64_t i = 1; i <= rounds; i++) {
			char c = 'S';
			__atomic_store_n(&m[0], i, __ATOMIC_RELEASE);
			if (write(0, &c, 1) != 1) die("write");
			if (read(0, &c, 1) != 1 || c != 'A') die("read");
		}
	} else if (!strcmp(argv[1], "free") && argc >= 5) {
		volatile uint64_t *m = map(0, len);
		uint64_t count = strtoull(argv[3], NULL, 0), slot = strtoull(argv[4], NULL, 0);
		for (uint64_t i = 1; i <= count; i++)
			__atomic_store_n(&m[slot], i, __ATOMIC_RELEASE);
	} else if (!strcmp(argv[1], "watch")) {
		volatile uint64_t *m = map(0, len);
		uint64_t count = strtoull(argv[3], NULL, 0);
		uint64_t gap = argc >= 5 ? strtoull(argv[4], NULL, 0) : 0;
		uint64_t magic = m[0], head = m[1];
		uint32_t version = (uint32_t)head, size = (uint32_t)(head >> 32);
		if (memcmp(&magic, "MFDTWTC1", 8) || version != 1) {
			fprintf(stderr, "not a watch of layout 1\n");
			return 1;
		}
		size_t words = (size + 7) / 8;
		if (72 + 8 * words > len) { fprintf(stderr, "value past LEN\n"); return 1; }
		volatile uint64_t *seq = &m[8], *value = &m[9];
		uint64_t s = __atomic_load_n(seq, __ATOMIC_RELAXED) & ~(uint64_t)1;
		for (uint64_t i = 1; i <= count; i++) {
			__atomic_store_n(seq, s + 1, __ATOMIC_RELAXED);
			__atomic_thread_fence(__ATOMIC_RELEASE);
			for (size_t w = 0; w < words; w++)
				__atomic_store_n(&value[w], i, __ATOMIC_RELAXED);
			__atomic_store_n(seq, s + 2, __ATOMIC_RELEASE);
			s += 2;
			for (volatile uint64_t k = 0; k < gap; k++)
				;
		}
	} else {
		fprintf(stderr, "unknown mode %s\n", argv[1]);
		return 2;
	}
	puts("done");
	return 0;
}
