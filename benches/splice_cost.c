// Receiver CPU per byte of a P-DATA stream into tmpfs files, by three ways of receiving, to see
// whether zero-copy from the socket to the spool file (splice) would pay (issue 13):
//   discard  recv with read-ahead into a user buffer, nothing written: the socket's share;
//   copy     the same, then one write() of each PDV's data (dicom-inlet's path);
//   splice   recv each 12-byte PDU+PDV header exactly, then splice the data socket -> pipe ->
//            file (the socket-to-user copy saved; the pipe-to-tmpfs step still copies).
// A child process sends PDUs of 12 header bytes and PDU data bytes on loopback TCP; the receiver
// starts a new file every 525,000 bytes (a CT instance) and keeps at most four.
//
//   cc -O2 -o /tmp/splice_cost benches/splice_cost.c
//   /tmp/splice_cost DIR 16372 1024    # tmpfs directory, PDV data bytes per PDU, MiB to send
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define HEADER 12
#define INSTANCE 525000
#define READ_AHEAD (256 * 1024)

static size_t data_len, total;
static const char *dir;

static void fail(const char *what) { perror(what); exit(1); }

static double cpu_seconds(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec * 1e-6;
}

static void send_pdus(int port) {
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(s, (struct sockaddr *)&a, sizeof a)) fail("connect");
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char *pdu = calloc(1, HEADER + data_len);
  for (size_t sent = 0; sent < total; sent += data_len)
    for (size_t off = 0; off < HEADER + data_len;) {
      ssize_t n = write(s, pdu + off, HEADER + data_len - off);
      if (n <= 0) fail("write to socket");
      off += n;
    }
  close(s);
  _exit(0);  // not exit(): the parent's unflushed output is not the child's to write
}

static int new_file(int i) {
  char path[4096];
  snprintf(path, sizeof path, "%s/splice-cost-%d", dir, i % 4);
  unlink(path);
  int f = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (f < 0) fail("open");
  return f;
}

static void recv_exact(int s, char *buf, size_t n) {
  for (size_t got = 0; got < n;) {
    ssize_t k = recv(s, buf + got, n - got, 0);
    if (k <= 0) fail("recv");
    got += k;
  }
}

static void splice_all(int from, int to, size_t n) {
  while (n) {
    ssize_t k = splice(from, NULL, to, NULL, n, SPLICE_F_MOVE);
    if (k <= 0) fail("splice");
    n -= k;
  }
}

static double receive(const char *mode) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &len))
    fail("listen");
  if (fork() == 0) send_pdus(ntohs(a.sin_port));
  int s = accept(l, NULL, NULL), pipefd[2];
  if (pipe(pipefd)) fail("pipe");
  fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20);
  int use_splice = !strcmp(mode, "splice"), discard = !strcmp(mode, "discard");
  char *buf = malloc(READ_AHEAD + HEADER + data_len);
  size_t start = 0, end = 0, in_file = 0;
  int files = 0, f = new_file(files++);
  double t0 = cpu_seconds();
  for (size_t got = 0; got < total; got += data_len) {
    if (use_splice) {
      char header[HEADER];
      recv_exact(s, header, HEADER);
      for (size_t left = data_len; left;) {
        ssize_t n = splice(s, NULL, pipefd[1], NULL, left, SPLICE_F_MOVE);
        if (n <= 0) fail("splice from socket");
        splice_all(pipefd[0], f, n);
        left -= n;
      }
    } else {
      if (end - start < HEADER + data_len) {
        memmove(buf, buf + start, end - start);
        end -= start, start = 0;
        while (end < HEADER + data_len) {
          ssize_t n = recv(s, buf + end, READ_AHEAD, 0);
          if (n <= 0) fail("recv");
          end += n;
        }
      }
      if (!discard && write(f, buf + start + HEADER, data_len) != (ssize_t)data_len) fail("write");
      start += HEADER + data_len;
    }
    if ((in_file += data_len) >= INSTANCE) close(f), f = new_file(files++), in_file = 0;
  }
  double spent = cpu_seconds() - t0;
  close(f), close(s), close(l), close(pipefd[0]), close(pipefd[1]), free(buf);
  wait(NULL);
  for (int i = 0; i < 4; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/splice-cost-%d", dir, i);
    unlink(path);
  }
  return spent * 1e9 / total;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s TMPFS_DIR PDV_DATA_BYTES MIB\n", argv[0]);
    return 2;
  }
  dir = argv[1], data_len = strtoul(argv[2], NULL, 10), total = strtoul(argv[3], NULL, 10) << 20;
  if (data_len == 0) return 2;
  const char *modes[] = {"discard", "copy", "splice"};
  for (int i = 0; i < 3; i++)
    printf("%-8s %7zu-byte PDV data: %.3f ns receiver CPU per byte\n", modes[i], data_len, receive(modes[i]));
  return 0;
}
