/* TLS over memory BIOs: OpenSSL never touches a socket. The owner (wsclient,
 * or a wss:// server) feeds ciphertext read from its libuv stream in with
 * tls_conn_feed() and writes out what tls_conn_out() hands back, so TLS runs
 * on the loop thread without blocking. TLS 1.2 is the minimum. */
#ifndef TLS_H
#define TLS_H
#include <stddef.h>
#include "buf.h"

typedef struct tls_ctx_s tls_ctx_t;   /* shared settings (an SSL_CTX) */
typedef struct tls_conn_s tls_conn_t; /* one connection (an SSL + two memory BIOs) */

/* Client context. Verification is ON unless insecure_skip_verify: against
 * ca_file alone when given (a private CA, e.g. the relay's), else against the
 * system CA store. err (may be NULL) receives the OpenSSL reason on failure.
 * Returns 0 or a negative errno (-EINVAL: bad ca_file). */
int tls_client_ctx_new(const char *ca_file, int insecure_skip_verify, tls_ctx_t **out, char *err,
                       size_t errsz);
/* Server context from PEM files (optional wss:// serving): TLS 1.2+, for
 * TLS 1.2 only the TLS_SERVER_CIPHERS suites, server order, no
 * renegotiation. The files are read here, once: a new context (a new
 * worker) picks up a renewed certificate. */
#define TLS_SERVER_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
int tls_server_ctx_new(const char *cert_file, const char *key_file, tls_ctx_t **out, char *err, size_t errsz);
/* Require client certificates signed by ca_file (PEM) (mutual TLS). */
int tls_server_ctx_verify_clients(tls_ctx_t *ctx, const char *ca_file, char *err, size_t errsz);
void tls_ctx_free(tls_ctx_t *ctx);

/* A client connection to host (a name or an IP literal): sets SNI for names
 * and checks the certificate against host (DNS name or IP address). */
int tls_conn_new_client(tls_ctx_t *ctx, const char *host, tls_conn_t **out);
int tls_conn_new_server(tls_ctx_t *ctx, tls_conn_t **out);
void tls_conn_free(tls_conn_t *c);

/* Ciphertext received from the peer. 0 or -ENOMEM. */
int tls_conn_feed(tls_conn_t *c, const void *data, size_t n);
/* Advance the handshake: 1 done, 0 needs more input (send tls_conn_out
 * first), -EPROTO failed (see tls_conn_error). */
int tls_conn_handshake(tls_conn_t *c);
int tls_conn_handshake_done(const tls_conn_t *c);
/* Decrypt into out: bytes (> 0), 0 if nothing more is available now,
 * -EPIPE when the peer sent close_notify, -EPROTO on error. */
long tls_conn_read(tls_conn_t *c, void *out, size_t n);
/* Encrypt plaintext (all of it; the memory BIO grows). 0 or -EPROTO. */
int tls_conn_write(tls_conn_t *c, const void *data, size_t n);
/* Queue a close_notify alert (then send tls_conn_out). */
void tls_conn_shutdown(tls_conn_t *c);
/* Append pending ciphertext for the peer to out. Returns bytes appended or
 * -ENOMEM. */
long tls_conn_out(tls_conn_t *c, buf_t *out);
/* The last failure as text: a certificate verification reason
 * ("certificate verify failed: self-signed certificate") or OpenSSL's. */
const char *tls_conn_error(const tls_conn_t *c);
/* Negotiated protocol ("TLSv1.3") or "" before the handshake. */
const char *tls_conn_version(const tls_conn_t *c);

#endif
