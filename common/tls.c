/* OpenSSL driven through memory BIOs: the caller moves ciphertext between
 * its libuv stream and the BIOs, so no OpenSSL call ever blocks or touches a
 * file descriptor. Owns SSL_CTX policy (TLS 1.2+, verification, SNI). */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct tls_ctx_s {
    SSL_CTX *ssl_ctx;
};

struct tls_conn_s {
    SSL *ssl;
    BIO *rbio; /* ciphertext from the peer; owned by ssl */
    BIO *wbio; /* ciphertext to the peer; owned by ssl */
    int done;
    char err[256];
};

static void set_err(char *err, size_t errsz, const char *what)
{
    if (!err || errsz == 0)
        return;
    unsigned long e = ERR_peek_last_error();
    if (e) {
        char reason[200];
        ERR_error_string_n(e, reason, sizeof reason);
        snprintf(err, errsz, "%s: %s", what, reason);
    } else {
        snprintf(err, errsz, "%s", what);
    }
}

/* A context with what both sides share: TLS 1.2 or newer, buffers released
 * while idle. */
static int ctx_alloc(const SSL_METHOD *method, tls_ctx_t **out, char *err, size_t errsz)
{
    tls_ctx_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    ERR_clear_error();
    if ((t->ssl_ctx = SSL_CTX_new(method)) == NULL) {
        set_err(err, errsz, "SSL_CTX_new");
        free(t);
        return -EINVAL;
    }
    SSL_CTX_set_min_proto_version(t->ssl_ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(t->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
    *out = t;
    return 0;
}

int tls_client_ctx_new(const char *ca_file, int insecure_skip_verify, tls_ctx_t **out, char *err,
                       size_t errsz)
{
    tls_ctx_t *t;
    int r = ctx_alloc(TLS_client_method(), &t, err, errsz);
    if (r < 0)
        return r;
    if (insecure_skip_verify) {
        SSL_CTX_set_verify(t->ssl_ctx, SSL_VERIFY_NONE, NULL);
    } else {
        SSL_CTX_set_verify(t->ssl_ctx, SSL_VERIFY_PEER, NULL);
        if (ca_file && *ca_file) {
            if (SSL_CTX_load_verify_locations(t->ssl_ctx, ca_file, NULL) != 1) {
                set_err(err, errsz, "cannot load ca_file");
                goto fail;
            }
        } else if (SSL_CTX_set_default_verify_paths(t->ssl_ctx) != 1) {
            set_err(err, errsz, "cannot load the system CA store");
            goto fail;
        }
    }
    *out = t;
    return 0;
fail:
    tls_ctx_free(t);
    return -EINVAL;
}

int tls_server_ctx_new(const char *cert_file, const char *key_file, tls_ctx_t **out, char *err, size_t errsz)
{
    tls_ctx_t *t;
    int r = ctx_alloc(TLS_server_method(), &t, err, errsz);
    if (r < 0)
        return r;
    /* TLS 1.2: forward-secret AEAD suites only (TLS 1.3 suites are all
     * modern); our order wins; no renegotiation, no compression. */
    if (SSL_CTX_set_cipher_list(t->ssl_ctx, TLS_SERVER_CIPHERS) != 1) {
        set_err(err, errsz, "cannot set cipher list");
        goto fail;
    }
    SSL_CTX_set_options(t->ssl_ctx,
                        SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    if (SSL_CTX_use_certificate_chain_file(t->ssl_ctx, cert_file) != 1) {
        set_err(err, errsz, "cannot load certificate");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(t->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        set_err(err, errsz, "cannot load private key");
        goto fail;
    }
    if (SSL_CTX_check_private_key(t->ssl_ctx) != 1) {
        set_err(err, errsz, "private key does not match certificate");
        goto fail;
    }
    *out = t;
    return 0;
fail:
    tls_ctx_free(t);
    return -EINVAL;
}

int tls_server_ctx_verify_clients(tls_ctx_t *ctx, const char *ca_file, char *err, size_t errsz)
{
    ERR_clear_error();
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
    if (names == NULL || SSL_CTX_load_verify_locations(ctx->ssl_ctx, ca_file, NULL) != 1) {
        if (names != NULL)
            sk_X509_NAME_pop_free(names, X509_NAME_free);
        set_err(err, errsz, "cannot load client ca");
        return -EINVAL;
    }
    SSL_CTX_set_client_CA_list(ctx->ssl_ctx, names); /* takes names */
    SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    /* Session resumption must not skip the client check across contexts. */
    static const unsigned char sid[] = "exchange-fanout";
    SSL_CTX_set_session_id_context(ctx->ssl_ctx, sid, sizeof sid - 1);
    return 0;
}

void tls_ctx_free(tls_ctx_t *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl_ctx);
    free(ctx);
}

static int conn_new(tls_ctx_t *ctx, tls_conn_t **out)
{
    tls_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->ssl = SSL_new(ctx->ssl_ctx);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->ssl || !c->rbio || !c->wbio) {
        if (c->ssl)
            SSL_free(c->ssl);
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        free(c);
        return -ENOMEM;
    }
    /* An empty read BIO means "wait for more", not EOF. */
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    *out = c;
    return 0;
}

static int is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int tls_conn_new_client(tls_ctx_t *ctx, const char *host, tls_conn_t **out)
{
    tls_conn_t *c;
    int r = conn_new(ctx, &c);
    if (r < 0)
        return r;
    SSL_set_connect_state(c->ssl);
    if (host && *host) {
        int ok;
        if (is_ip_literal(host)) {
            /* RFC 6066: no SNI for addresses; check the cert's IP SAN. */
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host) == 1;
        } else {
            ok = SSL_set_tlsext_host_name(c->ssl, host) == 1 && SSL_set1_host(c->ssl, host) == 1;
        }
        if (!ok) {
            tls_conn_free(c);
            return -EINVAL;
        }
    }
    *out = c;
    return 0;
}

int tls_conn_new_server(tls_ctx_t *ctx, tls_conn_t **out)
{
    tls_conn_t *c;
    int r = conn_new(ctx, &c);
    if (r < 0)
        return r;
    SSL_set_accept_state(c->ssl);
    *out = c;
    return 0;
}

void tls_conn_free(tls_conn_t *c)
{
    if (!c)
        return;
    SSL_free(c->ssl); /* frees both BIOs */
    free(c);
}

int tls_conn_feed(tls_conn_t *c, const void *data, size_t n)
{
    while (n > 0) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        int w = BIO_write(c->rbio, data, chunk);
        if (w <= 0)
            return -ENOMEM;
        data = (const char *)data + w;
        n -= (size_t)w;
    }
    return 0;
}

/* Record why an SSL call failed, preferring the certificate verdict. */
static void conn_fail(tls_conn_t *c, const char *what)
{
    long v = SSL_get_verify_result(c->ssl);
    unsigned long e = ERR_peek_last_error();
    char reason[160] = "";
    if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    if (v != X509_V_OK)
        snprintf(c->err, sizeof c->err, "%s: certificate verify failed: %s", what,
                 X509_verify_cert_error_string(v));
    else if (e)
        snprintf(c->err, sizeof c->err, "%s: %s", what, reason);
    else
        snprintf(c->err, sizeof c->err, "%s: unexpected eof or protocol error", what);
    ERR_clear_error();
}

int tls_conn_handshake(tls_conn_t *c)
{
    if (c->done)
        return 1;
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->done = 1;
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    conn_fail(c, "tls handshake");
    return -EPROTO;
}

int tls_conn_handshake_done(const tls_conn_t *c)
{
    return c->done;
}

long tls_conn_read(tls_conn_t *c, void *out, size_t n)
{
    ERR_clear_error();
    int want = n > (1u << 30) ? (1 << 30) : (int)n;
    int r = SSL_read(c->ssl, out, want);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN)
        return -EPIPE;
    conn_fail(c, "tls read");
    return -EPROTO;
}

int tls_conn_write(tls_conn_t *c, const void *data, size_t n)
{
    while (n > 0) {
        ERR_clear_error();
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        int w = SSL_write(c->ssl, data, chunk);
        if (w <= 0) {
            /* With a memory write BIO this only fails on a broken session
             * (or a renegotiation we do not support). */
            conn_fail(c, "tls write");
            return -EPROTO;
        }
        data = (const char *)data + w;
        n -= (size_t)w;
    }
    return 0;
}

void tls_conn_shutdown(tls_conn_t *c)
{
    ERR_clear_error();
    if (c->done)
        (void)SSL_shutdown(c->ssl);
    ERR_clear_error();
}

long tls_conn_out(tls_conn_t *c, buf_t *out)
{
    size_t pending = BIO_ctrl_pending(c->wbio);
    if (pending == 0)
        return 0;
    if (buf_reserve(out, pending) < 0)
        return -ENOMEM;
    int r = BIO_read(c->wbio, out->data + out->len, (int)pending);
    if (r <= 0)
        return 0;
    out->len += (size_t)r;
    out->data[out->len] = '\0';
    return r;
}

const char *tls_conn_error(const tls_conn_t *c)
{
    return c->err[0] ? c->err : "unknown tls error";
}

const char *tls_conn_version(const tls_conn_t *c)
{
    return c->done ? SSL_get_version(c->ssl) : "";
}
