// GnuTLS benchmark target for bench/bench_capture.py (not part of ecap).
//
//   gnutls_bench client PORT SIZE COUNT    connect to tls_bench's server, handshake,
//                                          print "ready"; then per line on stdin:
//                                          "w" one write of SIZE (a warm-up, answered
//                                          "ok"), "go" COUNT back-to-back writes of
//                                          SIZE with gnutls_record_send, print the
//                                          elapsed ns and exit
//
// The counterpart of tls_bench's client on GnuTLS (the same protocol), against the
// same reader, so the two modules are measured on the same work.
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what, int err) {
    fprintf(stderr, "gnutls_bench: %s: %s\n", what, err ? gnutls_strerror(err) : "failed");
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

// One write of SIZE: GnuTLS sends at most one record (16 KiB) per call, so a 64 KiB
// write is four gnutls_record_send calls, as in any GnuTLS program.
static void write_all(gnutls_session_t session, const char *buf, size_t size) {
    for (size_t done = 0; done < size;) {
        ssize_t n = gnutls_record_send(session, buf + done, size - done);
        if (n <= 0)
            die("write", (int)n);
        done += (size_t)n;
    }
}

int main(int argc, char **argv) {
    if (argc != 5 || strcmp(argv[1], "client"))
        die("usage: client PORT SIZE COUNT", 0);
    int port = atoi(argv[2]);
    size_t size = (size_t)atol(argv[3]);
    long count = atol(argv[4]);

    gnutls_certificate_credentials_t cred;
    gnutls_session_t session;
    int err;
    if ((err = gnutls_global_init()) < 0 ||
        (err = gnutls_certificate_allocate_credentials(&cred)) < 0 ||
        (err = gnutls_init(&session, GNUTLS_CLIENT)) < 0 ||
        (err = gnutls_set_default_priority(session)) < 0 ||
        (err = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, cred)) < 0)
        die("setup", err);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(s, (struct sockaddr *)&a, sizeof(a)))
        die("connect", 0);
    gnutls_transport_set_int(session, s);
    do
        err = gnutls_handshake(session);
    while (err < 0 && !gnutls_error_is_fatal(err));
    if (err < 0)
        die("handshake", err);

    char *buf = malloc(size);
    for (size_t i = 0; i < size; i++)
        buf[i] = 'a' + i % 26;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    for (;;) {
        if (!fgets(line, sizeof(line), stdin))
            die("stdin closed before go", 0);
        if (!strcmp(line, "go\n"))
            break;
        write_all(session, buf, size);
        printf("ok\n");
        fflush(stdout);
    }
    uint64_t t0 = now_ns();
    for (long i = 0; i < count; i++)
        write_all(session, buf, size);
    uint64_t t1 = now_ns();
    gnutls_bye(session, GNUTLS_SHUT_WR);
    printf("%llu\n", (unsigned long long)(t1 - t0));
    fflush(stdout);
    return 0;
}
