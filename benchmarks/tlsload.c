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
 *
 * Why one thread and non-blocking sockets (epoll): with a thread per
 * session the client spent 1.12 to 1.15 ms of CPU a session against the
 * ceiling sink, and 0.99 to 1.03 ms this way (the switches between
 * threads are gone), and the load's CPU, not the server, was the limit.
 * For the same reason the client does not check the server's certificate
 * chain (a callback that accepts it, where SSL_VERIFY_NONE would still
 * build and check it only to ignore the answer): the handshake the server
 * does is the same either way.
 *
 * Built by benchmarks/tls.py with the system's C compiler and OpenSSL;
 * that script falls back to its Python client where it cannot be built.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* What a session does, one step at a time. */
enum op { EXPECT, SEND, HANDSHAKE, MESSAGE_LOOP, SHUTDOWN };

typedef struct {
    enum op op;
    int code;         /* EXPECT: the reply code wanted */
    const char *data; /* SEND: what to send (NULL: the message body) */
    size_t len;
} Step;

static const char envelope[] = "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n";

static const Step script[] = {
    {EXPECT, 220, NULL, 0},
    {SEND, 0, "EHLO client.example\r\n", 21},
    {EXPECT, 250, NULL, 0},
    {SEND, 0, "STARTTLS\r\n", 10},
    {EXPECT, 220, NULL, 0},
    {HANDSHAKE, 0, NULL, 0},
    {SEND, 0, "EHLO client.example\r\n", 21},
    {EXPECT, 250, NULL, 0},
    /* a message: */
    {SEND, 0, envelope, sizeof(envelope) - 1},
    {EXPECT, 250, NULL, 0},
    {EXPECT, 250, NULL, 0},
    {EXPECT, 354, NULL, 0},
    {SEND, 0, NULL, 0},
    {EXPECT, 250, NULL, 0},
    {MESSAGE_LOOP, 0, NULL, 0},
    {SEND, 0, "QUIT\r\n", 6},
    {EXPECT, 221, NULL, 0},
    {SHUTDOWN, 0, NULL, 0},
};
enum { FIRST_MESSAGE_STEP = 8 };

typedef struct {
    int fd;
    SSL *ssl;
    int step;
    long messages_left;
    size_t sent; /* of the current SEND */
    char buf[16384];
    int len, off;
} Conn;

static struct sockaddr_in addr;
static SSL_CTX *ctx;
static const char *body;
static size_t body_len;
static int epfd;

static void
die(const char *what)
{
    fprintf(stderr, "tlsload: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* Nothing to check: the load is not the party that verifies. */
static int
accept_chain(X509_STORE_CTX *store, void *arg)
{
    (void)store;
    (void)arg;
    return 1;
}

static Conn *
open_conn(long messages)
{
    Conn *c = calloc(1, sizeof(Conn));
    if (c == NULL)
        die("out of memory");
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    /* on the loopback a blocking connect completes at once */
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        die("cannot connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    c->messages_left = messages;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        die("epoll_ctl failed");
    return c;
}

static void
close_conn(Conn *c)
{
    if (c->ssl != NULL)
        SSL_free(c->ssl);
    close(c->fd); /* also leaves the epoll set */
    free(c);
}

/* Returns if an SSL call that returned r is to be retried once the socket
 * is ready; dies on anything else. */
static void
would_block(Conn *c, int r, const char *what)
{
    int e = SSL_get_error(c->ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        die(what);
}

/* Read more into the buffer: 1 if something came, 0 if it would block. */
static int
fill(Conn *c)
{
    if (c->off > 0) {
        memmove(c->buf, c->buf + c->off, (size_t)(c->len - c->off));
        c->len -= c->off;
        c->off = 0;
    }
    int room = (int)sizeof(c->buf) - c->len;
    if (room == 0)
        die("reply too long");
    if (c->ssl != NULL) {
        int r = SSL_read(c->ssl, c->buf + c->len, room);
        if (r <= 0) {
            would_block(c, r, "connection closed");
            return 0;
        }
        c->len += r;
        return 1;
    }
    ssize_t r = read(c->fd, c->buf + c->len, (size_t)room);
    if (r < 0 && errno == EAGAIN)
        return 0;
    if (r <= 0)
        die("connection closed");
    c->len += (int)r;
    return 1;
}

/* One whole reply from the buffer: its code, 0 if not all of it is there. */
static int
take_reply(Conn *c)
{
    int off = c->off;
    for (;;) {
        char *start = c->buf + off;
        char *nl = memchr(start, '\n', (size_t)(c->len - off));
        if (nl == NULL)
            return 0;
        off += (int)(nl - start) + 1;
        if ((nl - start) < 4 || start[3] != '-') {
            c->off = off;
            return atoi(start);
        }
    }
}

/* Run the session's steps until it must wait; 1 when the session is over. */
static int
advance(Conn *c)
{
    for (;;) {
        const Step *s = &script[c->step];
        switch (s->op) {
        case EXPECT: {
            int code;
            while ((code = take_reply(c)) == 0)
                if (!fill(c))
                    return 0;
            if (code != s->code) {
                fprintf(stderr, "tlsload: expected %d, got %d\n", s->code, code);
                exit(1);
            }
            break;
        }
        case SEND: {
            const char *p = s->data ? s->data : body;
            size_t n = s->data ? s->len : body_len;
            while (c->sent < n) {
                if (c->ssl != NULL) {
                    int w = SSL_write(c->ssl, p + c->sent, (int)(n - c->sent));
                    if (w <= 0) {
                        would_block(c, w, "write failed");
                        return 0;
                    }
                    c->sent += (size_t)w;
                } else {
                    ssize_t w = write(c->fd, p + c->sent, n - c->sent);
                    if (w < 0 && errno == EAGAIN)
                        return 0;
                    if (w <= 0)
                        die("write failed");
                    c->sent += (size_t)w;
                }
            }
            c->sent = 0;
            break;
        }
        case HANDSHAKE: {
            if (c->ssl == NULL) {
                if (c->off != c->len)
                    die("bytes after the 220 to STARTTLS");
                c->off = c->len = 0;
                c->ssl = SSL_new(ctx);
                if (c->ssl == NULL || !SSL_set_fd(c->ssl, c->fd))
                    die("no TLS session");
                SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE);
                SSL_set_connect_state(c->ssl);
            }
            int r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                would_block(c, r, "TLS handshake failed");
                return 0;
            }
            break;
        }
        case MESSAGE_LOOP:
            if (--c->messages_left > 0) {
                c->step = FIRST_MESSAGE_STEP;
                continue;
            }
            break;
        case SHUTDOWN:
            SSL_shutdown(c->ssl); /* our close_notify; the server's is not awaited */
            return 1;
        }
        c->step++;
    }
}

/* small: TOTAL sessions of one message, 16 at once; large: 4 sessions of
 * TOTAL/4 messages each */
static long sessions, per_session, started, running;
static int width;

/* Start sessions until WIDTH run at once or every one has started. */
static void
fill_up(void)
{
    while (started < sessions && running < width) {
        Conn *c = open_conn(per_session);
        started++;
        if (advance(c))
            close_conn(c);
        else
            running++;
    }
}

static char *
make_body(const char *head, const char *line, size_t lines, size_t *len)
{
    size_t hl = strlen(head), ll = strlen(line);
    *len = hl + ll * lines + 3;
    char *text = malloc(*len);
    if (text == NULL)
        die("out of memory");
    memcpy(text, head, hl);
    for (size_t i = 0; i < lines; i++)
        memcpy(text + hl + i * ll, line, ll);
    memcpy(text + *len - 3, ".\r\n", 3);
    return text;
}

int
main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: tlsload PORT small|large TOTAL");
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    long total = atol(argv[3]);
    int large = strcmp(argv[2], "large") == 0;
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
        die("no TLS context");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, accept_chain, NULL);
    /* the same text as the Python client's (benchmarks/tls.py) */
    char line[1001];
    if (large) {
        memset(line, 'y', 998);
        strcpy(line + 998, "\r\n");
        body = make_body("Subject: big\r\n\r\n", line, (10u << 20) / 1000, &body_len);
    } else {
        memset(line, 'x', 62);
        strcpy(line + 62, "\r\n");
        body = make_body("From: a@example.org\r\nSubject: bench\r\n\r\n", line, 16, &body_len);
    }
    epfd = epoll_create1(0);
    if (epfd < 0)
        die("no epoll");

    width = large ? 4 : 16;
    per_session = large ? total / 4 : 1;
    sessions = large ? 4 : total;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fill_up();
    struct epoll_event events[16];
    while (running > 0) {
        int n = epoll_wait(epfd, events, 16, 10000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("no progress for 10 s");
        for (int i = 0; i < n; i++) {
            Conn *c = events[i].data.ptr;
            if (!advance(c))
                continue;
            close_conn(c);
            running--;
            fill_up();
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.6f\n", (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
