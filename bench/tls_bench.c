// Benchmark target and reader for bench/bench_capture.py (not part of ecap).
//
//   tls_bench server CERT KEY PORTFILE      accept one TLS connection, read and
//                                           discard until EOF, print bytes read
//   tls_bench client PORT SIZE COUNT        connect, handshake, print "ready"; then
//                                           per line on stdin: "w" one SSL_write(SIZE)
//                                           (a warm-up, answered "ok"), "go" COUNT
//                                           back-to-back SSL_write(SIZE), print the
//                                           elapsed ns and exit
//   tls_bench trickle PORT                  connect, handshake, print "ready", then one
//                                           100-byte SSL_write per millisecond until killed
//
// Every target for bench/bench_capture.py speaks this protocol; a module's own
// target (GnuTLS, Go...) is another file like this one.
//
// C rather than Python so that the measured cost is the TLS library's and the
// probes', not an interpreter's.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "tls_bench: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int serve(const char *cert, const char *key, const char *portfile) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("server context");
    SSL_CTX_set_read_ahead(ctx, 1);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 1) ||
        getsockname(ls, (struct sockaddr *)&a, &alen))
        die("listen");
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", portfile);
    FILE *f = fopen(tmp, "w");
    fprintf(f, "%d\n", ntohs(a.sin_port));
    fclose(f);
    rename(tmp, portfile);
    int s = accept(ls, NULL, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, s);
    if (SSL_accept(ssl) != 1)
        die("accept");
    static char buf[1 << 17];
    long long total = 0;
    for (;;) {
        int n = SSL_read(ssl, buf, sizeof(buf));
        if (n <= 0)
            break;
        total += n;
    }
    printf("%lld\n", total);
    return 0;
}

static SSL *connect_tls(int port) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        die("client context");
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(s, (struct sockaddr *)&a, sizeof(a)))
        die("connect");
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, s);
    if (SSL_connect(ssl) != 1)
        die("handshake");
    return ssl;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "server"))
        return serve(argv[2], argv[3], argv[4]);
    if (argc == 3 && !strcmp(argv[1], "trickle")) {
        SSL *ssl = connect_tls(atoi(argv[2]));
        printf("ready\n");
        fflush(stdout);
        char msg[100];
        memset(msg, 'x', sizeof(msg));
        struct timespec ms = {0, 1000000};
        for (;;) {
            if (SSL_write(ssl, msg, sizeof(msg)) <= 0)
                die("write");
            nanosleep(&ms, NULL);
        }
    }
    if (argc != 5 || strcmp(argv[1], "client"))
        die("usage: server CERT KEY PORTFILE | client PORT SIZE COUNT | trickle PORT");
    int size = atoi(argv[3]);
    long count = atol(argv[4]);
    SSL *ssl = connect_tls(atoi(argv[2]));
    char *buf = malloc(size);
    for (int i = 0; i < size; i++)
        buf[i] = 'a' + i % 26;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    for (;;) {
        if (!fgets(line, sizeof(line), stdin))
            die("stdin closed before go");
        if (!strcmp(line, "go\n"))
            break;
        if (SSL_write(ssl, buf, size) != size)
            die("short write");
        printf("ok\n");
        fflush(stdout);
    }
    uint64_t t0 = now_ns();
    for (long i = 0; i < count; i++)
        if (SSL_write(ssl, buf, size) != size)
            die("short write");
    uint64_t t1 = now_ns();
    SSL_shutdown(ssl);
    printf("%llu\n", (unsigned long long)(t1 - t0));
    fflush(stdout);
    return 0;
}
