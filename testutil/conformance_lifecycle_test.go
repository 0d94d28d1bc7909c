package testutil

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConformanceShutdown covers §8j.
func TestConformanceShutdown(t *testing.T) {
	t.Parallel()

	for _, v := range []Version{V1_16, V2_1, V1_10} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v, ShutdownTimeout: 20 * time.Second})
			addr := srv.Addr()
			a := dialSrv(t, srv)
			tok := a.lock("k", "0", 33)
			b := dialSrv(t, srv)
			b.send("l", "k", "30")
			waitLockWaiters(t, srv, "k", 1)
			c := dialSrv(t, srv)
			c.send("stats", "_", "")
			c.expectPrefix("ok {")

			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- srv.Shutdown(context.Background()) }()

			b.expect("error") // the blocked waiter is interrupted at once
			assert.Less(t, time.Since(start), time.Second)

			// The listener closes at once; allow only for the race between
			// waking the waiter and closing the listener.
			assert.Eventually(t, func() bool {
				nc, err := net.DialTimeout("tcp", addr, time.Second)
				if err == nil {
					nc.Close()
				}
				return err != nil
			}, time.Second, 5*time.Millisecond, "new connections must be refused while draining")

			if v == V1_10 {
				c.send("stats", "_", "")
				c.expectPrefix("ok {")
				a.send("r", "k", tok)
				a.expect("ok")
				select {
				case err := <-done:
					t.Fatalf("Shutdown returned (%v) while connections were open", err)
				default:
				}
				a.close()
				b.close()
				c.close()
			} else {
				for _, x := range []*rawConn{c, a, b} {
					x.send("ping", "_", "")
					x.expect("error_draining")
					x.expectEOF(ioWait)
				}
			}
			select {
			case err := <-done:
				assert.NoError(t, err)
			case <-time.After(5 * time.Second):
				t.Fatal("Shutdown did not return once every connection was gone")
			}
		})
	}

	t.Run("force close after timeout", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{Version: V1_10, ShutdownTimeout: 500 * time.Millisecond})
		c := dialSrv(t, srv)
		c.send("stats", "_", "")
		c.expectPrefix("ok {")
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- srv.Shutdown(context.Background()) }()
		c.expectEOF(ioWait) // no message
		assert.GreaterOrEqual(t, time.Since(start), 400*time.Millisecond)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown did not return after ShutdownTimeout")
		}
	})

	t.Run("context ends drain", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{ShutdownTimeout: time.Minute})
		c := dialSrv(t, srv)
		c.ping()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(ctx) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown ignored its context")
		}
		c.expectEOF(ioWait)
	})
}

// TestConformanceFaults covers the fault-injection API.
func TestConformanceFaults(t *testing.T) {
	t.Parallel()

	t.Run("DropConnections", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		a.lock("k", "0", 33)
		l := listener(t, srv, sub("x"))
		b := dialSrv(t, srv)
		b.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 1)
		srv.DropConnections()
		a.expectEOF(ioWait)
		l.expectEOF(ioWait)
		// The blocked waiter is torn down too. Depending on the order in which
		// the connections are closed it may first be granted a (then
		// auto-released) lock or see `error`; either way it ends closed.
		for {
			line, err := b.readLineWithin(ioWait)
			if err != nil {
				assert.True(t, isClosed(err), "waiter: %v", err)
				break
			}
			assert.Regexp(t, `^(error|ok [0-9a-f]{32} 33)$`, line)
		}
		c := dialSrv(t, srv)
		c.send("l", "k", "5")
		c.expectGrant("ok", 33)
		c.send("signal", "x", "m")
		c.expect("ok 0")
		waitConns(t, srv, 1)
	})

	t.Run("Stop and Restart", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		addr := srv.Addr()
		a := dialSrv(t, srv)
		a.lock("k", "0", 33)
		it := a.lock("idle", "0", 33)
		a.send("r", "idle", it)
		a.expect("ok")
		require.NoError(t, srv.Stop())
		a.expectEOF(ioWait)
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			nc.Close()
		}
		require.Error(t, err, "Stop must close the listener")
		require.NoError(t, srv.Restart())
		assert.Equal(t, addr, srv.Addr())
		c := dialRaw(t, addr)
		c.send("stats", "_", "")
		c.expect(`ok {"connections":1,"locks":[],"semaphores":[],"idle_locks":[],"idle_semaphores":[],"signal_channels":[]}`)
		c.lock("k", "0", 33)
		// and again
		require.NoError(t, srv.Stop())
		c.expectEOF(ioWait)
		require.NoError(t, srv.Restart())
		dialRaw(t, addr).lock("k", "0", 33)
	})

	t.Run("Stall until resumed", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		a.ping()
		resume := srv.Stall(0)
		a.send("ping", "_", "")
		a.expectNothing()
		b := dialSrv(t, srv) // connected during the stall
		b.send("stats", "_", "")
		b.expectNothing()
		resume()
		a.expect("ok")
		b.expectPrefix(`ok {"connections":2,`)
		a.ping()
	})

	t.Run("Stall for a duration", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		a.ping()
		start := time.Now()
		resume := srv.Stall(400 * time.Millisecond)
		defer resume()
		a.send("ping", "_", "")
		a.expect("ok")
		el := time.Since(start)
		assert.GreaterOrEqual(t, el, 300*time.Millisecond, "answered during the stall")
		assert.Less(t, el, 3*time.Second)
	})

	t.Run("MaxConnections", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{MaxConnections: 1})
		a := dialSrv(t, srv)
		a.ping()
		b := dialSrv(t, srv)
		b.expectEOF(ioWait) // accepted and closed, nothing written
		a.close()
		waitConns(t, srv, 0)
		dialSrv(t, srv).ping()
	})

	t.Run("TLS", func(t *testing.T) {
		t.Parallel()
		cert, pool := selfSigned(t)
		srv := newServer(t, Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
		d := tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}
		ctx, cancel := context.WithTimeout(context.Background(), ioWait)
		defer cancel()
		nc, err := d.DialContext(ctx, "tcp", srv.Addr())
		require.NoError(t, err)
		t.Cleanup(func() { _ = nc.Close() })
		c := wrapConn(t, nc)
		c.write("l\r\nk\r\n0 7\r\n")
		c.expectGrant("ok", 7)
		c.ping()

		// The listener is TLS-only: plaintext gets no protocol reply.
		p := dialSrv(t, srv)
		p.send("ping", "_", "")
		line, err := p.readLineWithin(ioWait)
		assert.Error(t, err, "plaintext request answered with %q", line)
		assert.False(t, strings.HasPrefix(line, "ok"))
	})
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "testutil"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
