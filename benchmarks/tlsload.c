/* The load of benchmarks/tls.py, in C: SMTP sessions with STARTTLS.
 *
 *     tlsload PORT small|large TOTAL
 *
 * small: TOTAL sessions, 16 at a time, each a new TLS session (connect,
 * EHLO, STARTTLS, EHLO, one 1 KiB message, QUIT); large: TOTAL 10 MiB
 * messages over 4 sessions.  Prints the seconds it took.
 *
 * Why not Python: a Python TLS client spends about 2.3 ms of CPU per
 * session here, more than the servers it measures, so on the one CPU the
 * load gets it was the limit (benchmarks/tls.py prints how busy it was).
 * Built by benchmarks/tls.py with the system's C compiler and OpenSSL;
 * that script falls back to its Python client where it cannot be built.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static long total;
static atomic_long next_session;
static SSL_CTX *ctx;
static char *small_body, *large_body;
static size_t small_len, large_len;

typedef struct {
    int fd;
    SSL *ssl;
    char buf[16384];
    int len, off;
} Conn;

static void
die(const char *what)
{
    fprintf(stderr, "tlsload: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void
send_all(Conn *c, const char *p, size_t n)
{
    while (n > 0) {
        int chunk = n > (1 << 20) ? (1 << 20) : (int)n;
        int w = c->ssl ? SSL_write(c->ssl, p, chunk) : (int)write(c->fd, p, (size_t)chunk);
        if (w <= 0)
            die("write failed");
        p += w;
        n -= (size_t)w;
    }
}

static void
fill(Conn *c)
{
    if (c->off > 0) {
        memmove(c->buf, c->buf + c->off, (size_t)(c->len - c->off));
        c->len -= c->off;
        c->off = 0;
    }
    int room = (int)sizeof(c->buf) - c->len;
    int r = c->ssl ? SSL_read(c->ssl, c->buf + c->len, room)
                   : (int)read(c->fd, c->buf + c->len, (size_t)room);
    if (r <= 0)
        die("connection closed");
    c->len += r;
}

/* One reply (every line of it); its code. */
static int
reply(Conn *c)
{
    for (;;) {
        char *start = c->buf + c->off;
        char *nl = memchr(start, '\n', (size_t)(c->len - c->off));
        if (nl == NULL) {
            fill(c);
            continue;
        }
        int last = (nl - start) < 4 || start[3] != '-';
        int code = atoi(start);
        c->off += (int)(nl - start) + 1;
        if (last)
            return code;
    }
}

static void
expect(Conn *c, int want)
{
    int got = reply(c);
    if (got != want) {
        fprintf(stderr, "tlsload: expected %d, got %d\n", want, got);
        exit(1);
    }
}

static void
session(int messages, const char *body, size_t body_len)
{
    Conn *c = calloc(1, sizeof(Conn));
    if (c == NULL)
        die("out of memory");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        die("cannot connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    expect(c, 220);
    send_all(c, "EHLO client.example\r\n", 21);
    expect(c, 250);
    send_all(c, "STARTTLS\r\n", 10);
    expect(c, 220);
    if (c->off != c->len)
        die("bytes after the 220 to STARTTLS");
    c->off = c->len = 0;
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL || !SSL_set_fd(c->ssl, c->fd) || SSL_connect(c->ssl) != 1)
        die("TLS handshake failed");
    send_all(c, "EHLO client.example\r\n", 21);
    expect(c, 250);
    static const char envelope[] =
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n";
    for (int i = 0; i < messages; i++) {
        send_all(c, envelope, sizeof(envelope) - 1);
        expect(c, 250);
        expect(c, 250);
        expect(c, 354);
        send_all(c, body, body_len);
        expect(c, 250);
    }
    send_all(c, "QUIT\r\n", 6);
    expect(c, 221);
    SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    close(c->fd);
    free(c);
}

static void *
small_worker(void *arg)
{
    (void)arg;
    while (atomic_fetch_add(&next_session, 1) < total)
        session(1, small_body, small_len);
    return NULL;
}

static void *
large_worker(void *arg)
{
    session((int)(long)arg, large_body, large_len);
    return NULL;
}

static char *
make_body(const char *head, const char *line, size_t lines, size_t *len)
{
    size_t hl = strlen(head), ll = strlen(line);
    *len = hl + ll * lines + 3;
    char *body = malloc(*len);
    if (body == NULL)
        die("out of memory");
    memcpy(body, head, hl);
    for (size_t i = 0; i < lines; i++)
        memcpy(body + hl + i * ll, line, ll);
    memcpy(body + *len - 3, ".\r\n", 3);
    return body;
}

int
main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: tlsload PORT small|large TOTAL");
    port = atoi(argv[1]);
    total = atol(argv[3]);
    int large = strcmp(argv[2], "large") == 0;
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
        die("no TLS context");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* the same text as the Python client's (benchmarks/tls.py) */
    char line[1001];
    memset(line, 'x', 62);
    strcpy(line + 62, "\r\n");
    small_body = make_body("From: a@example.org\r\nSubject: bench\r\n\r\n", line, 16, &small_len);
    memset(line, 'y', 998);
    strcpy(line + 998, "\r\n");
    large_body = make_body("Subject: big\r\n\r\n", line, (10u << 20) / 1000, &large_len);

    int workers = large ? 4 : 16;
    pthread_t threads[16];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < workers; i++) {
        void *arg = large ? (void *)(total / 4) : NULL;
        if (pthread_create(&threads[i], NULL, large ? large_worker : small_worker, arg) != 0)
            die("cannot start a thread");
    }
    for (int i = 0; i < workers; i++)
        pthread_join(threads[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.6f\n", (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
