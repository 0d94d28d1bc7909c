package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tlsHandshake serves one TLS handshake with server on a loopback listener,
// dials it at host (an address with the listener's port substituted) with
// client, and returns the client's and the server's handshake errors.
func tlsHandshake(t *testing.T, server, client *tls.Config, host string) (clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()

	srvDone := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvDone <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		srvDone <- tls.Server(c, server).Handshake()
	}()

	_, port, err := net.SplitHostPort(ln.Addr().String())
	require.NoError(t, err)
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: client}
	conn, clientErr := d.Dial("tcp", net.JoinHostPort(host, port))
	if clientErr == nil {
		// The handshake is done; check what the client verified.
		state := conn.(*tls.Conn).ConnectionState()
		assert.Len(t, state.VerifiedChains, 1)
		_ = conn.Close()
	}
	return clientErr, <-srvDone
}

func TestTLSCertsHandshakeVerifiesOnEveryDefaultHost(t *testing.T) {
	t.Parallel()
	certs, err := NewTLSCerts()
	require.NoError(t, err)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		clientErr, serverErr := tlsHandshake(t, certs.ServerConfig(), certs.ClientConfig(), host)
		assert.NoError(t, clientErr, host)
		assert.NoError(t, serverErr, host)
	}
	assert.ElementsMatch(t, []string{"localhost"}, certs.Server.Leaf.DNSNames)
	assert.Len(t, certs.Server.Leaf.IPAddresses, 2)
}

func TestTLSCertsClientWithAnotherCAFailsVerification(t *testing.T) {
	t.Parallel()
	certs, err := NewTLSCerts()
	require.NoError(t, err)
	other, err := NewTLSCerts()
	require.NoError(t, err)

	clientErr, serverErr := tlsHandshake(t, certs.ServerConfig(), other.ClientConfig(), "127.0.0.1")
	var unknown x509.UnknownAuthorityError
	require.ErrorAs(t, clientErr, &unknown)
	assert.Error(t, serverErr, "the server must see the client's alert")
}

func TestTLSCertsHostsAreTheOnlyNamesAccepted(t *testing.T) {
	t.Parallel()
	certs, err := NewTLSCerts("db.example.test")
	require.NoError(t, err)

	// A custom name needs ServerName, as with any host that is not the
	// dial address.
	good := certs.ClientConfig()
	good.ServerName = "db.example.test"
	clientErr, serverErr := tlsHandshake(t, certs.ServerConfig(), good, "127.0.0.1")
	assert.NoError(t, clientErr)
	assert.NoError(t, serverErr)

	clientErr, _ = tlsHandshake(t, certs.ServerConfig(), certs.ClientConfig(), "127.0.0.1")
	var hostErr x509.HostnameError
	assert.ErrorAs(t, clientErr, &hostErr)
}

func TestTLSCertsCAPEMMatchesThePool(t *testing.T) {
	t.Parallel()
	certs, err := NewTLSCerts()
	require.NoError(t, err)

	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(certs.CAPEM))
	block, rest := pem.Decode(certs.CAPEM)
	require.NotNil(t, block)
	assert.Empty(t, rest)
	ca, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	assert.True(t, ca.IsCA)

	_, err = certs.Server.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"})
	assert.NoError(t, err)
	now := time.Now()
	assert.WithinRange(t, certs.Server.Leaf.NotBefore, now.Add(-time.Hour-time.Minute), now.Add(-time.Hour+time.Minute))
	assert.WithinRange(t, certs.Server.Leaf.NotAfter, now.Add(24*time.Hour-time.Minute), now.Add(24*time.Hour+time.Minute))
}

func TestTLSCertsConfigsAreFreshAndTLS12AtLeast(t *testing.T) {
	t.Parallel()
	certs, err := NewTLSCerts()
	require.NoError(t, err)
	a, b := certs.ServerConfig(), certs.ServerConfig()
	assert.NotSame(t, a, b)
	assert.Equal(t, uint16(tls.VersionTLS12), a.MinVersion)
	c := certs.ClientConfig()
	assert.NotSame(t, c, certs.ClientConfig())
	assert.Equal(t, uint16(tls.VersionTLS12), c.MinVersion)
	assert.Empty(t, c.ServerName)

	// Without ServerName, tls.Client (unlike tls.Dial) cannot verify.
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	err = tls.Client(client, c).Handshake()
	assert.ErrorContains(t, err, "ServerName")
}

func TestNewTLSCertsRejectsAnEmptyHost(t *testing.T) {
	t.Parallel()
	_, err := NewTLSCerts("localhost", "")
	assert.EqualError(t, err, "testutil: hosts[1] is empty")
}
