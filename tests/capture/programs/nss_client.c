/*
 * An NSS HTTPS client for ecap's nss module tests: after a line on stdin it POSTs
 * a body of N deterministic bytes to /echo with one PR_Writev of three vectors
 * (the header, then the body in two unequal parts: each larger than the capture's
 * 16 KiB chunk), reads the answer with PR_Read and writes it to a file with
 * PR_Write — the same NSPR calls on a file, which the capture must not take for
 * TLS.
 *
 * usage: nss_client PORT BODY_BYTES OUTPUT_FILE
 * The body's byte i is (i * 7 + 3) & 0xff.
 */
#include <nss.h>
#include <prerror.h>
#include <prio.h>
#include <prnetdb.h>
#include <ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static SECStatus accept_certificate(void *arg, PRFileDesc *fd, PRBool check_sig, PRBool server)
{
	return SECSuccess; /* the test server's certificate is self-signed */
}

static int fail(const char *what)
{
	fprintf(stderr, "nss_client: %s failed: %s\n", what, PR_ErrorToName(PR_GetError()));
	return 1;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: nss_client PORT BODY_BYTES OUTPUT_FILE\n");
		return 2;
	}
	int port = atoi(argv[1]);
	long size = atol(argv[2]);
	if (NSS_NoDB_Init(NULL) != SECSuccess || NSS_SetDomesticPolicy() != SECSuccess)
		return fail("NSS_NoDB_Init");

	PRFileDesc *tcp = PR_OpenTCPSocket(PR_AF_INET);
	PRFileDesc *tls = tcp ? SSL_ImportFD(NULL, tcp) : NULL;
	if (!tls)
		return fail("SSL_ImportFD");
	SSL_OptionSet(tls, SSL_HANDSHAKE_AS_CLIENT, PR_TRUE);
	SSL_AuthCertificateHook(tls, accept_certificate, NULL);
	SSL_SetURL(tls, "127.0.0.1");

	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		return 2;

	PRNetAddr addr;
	PR_InitializeNetAddr(PR_IpAddrLoopback, (PRUint16)port, &addr);
	if (PR_Connect(tls, &addr, PR_INTERVAL_NO_TIMEOUT) != PR_SUCCESS)
		return fail("PR_Connect");

	char header[256];
	int header_len = snprintf(header, sizeof(header),
				  "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
				  "Content-Length: %ld\r\nConnection: close\r\n\r\n",
				  size);
	char *body = malloc(size);
	for (long i = 0; i < size; i++)
		body[i] = (char)((i * 7 + 3) & 0xff);
	long first = size / 3;
	PRIOVec iov[3] = {
		{ header, header_len },
		{ body, (int)first },
		{ body + first, (int)(size - first) },
	};
	PRInt32 sent = PR_Writev(tls, iov, 3, PR_INTERVAL_NO_TIMEOUT);
	if (sent != header_len + size)
		return fail("PR_Writev");

	PRFileDesc *out = PR_Open(argv[3], PR_WRONLY | PR_CREATE_FILE | PR_TRUNCATE, 0600);
	if (!out)
		return fail("PR_Open");
	char buf[16384];
	PRInt32 n;
	while ((n = PR_Read(tls, buf, sizeof(buf))) > 0) {
		if (PR_Write(out, buf, n) != n)
			return fail("PR_Write");
	}
	PR_Close(out);
	PR_Close(tls);
	free(body);
	NSS_Shutdown();
	return 0;
}
