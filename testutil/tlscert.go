package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// TLSCerts is a throwaway certificate authority and a server certificate
// signed by it, for tests. Each NewTLSCerts call makes a new, unrelated CA.
type TLSCerts struct {
	// CAPool holds only the CA certificate.
	CAPool *x509.CertPool
	// Server is the server's certificate (leaf only) and private key.
	Server tls.Certificate
	// CAPEM is the CA certificate, PEM-encoded, for code that loads roots
	// from files or bytes.
	CAPEM []byte
}

// NewTLSCerts creates a CA and a server certificate for hosts, which may be
// IP addresses or DNS names; the default is "127.0.0.1", "localhost" and
// "::1". Keys are ECDSA P-256, and both certificates are valid from an hour
// ago to 24 hours from now.
func NewTLSCerts(hosts ...string) (*TLSCerts, error) {
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "localhost", "::1"}
	}
	now := time.Now()
	notBefore, notAfter := now.Add(-time.Hour), now.Add(24*time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testutil: CA key: %w", err)
	}
	caSerial, err := tlsSerial()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: "dflock testutil CA"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("testutil: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("testutil: CA certificate: %w", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testutil: server key: %w", err)
	}
	serial, err := tlsSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for i, h := range hosts {
		switch ip := net.ParseIP(h); {
		case ip != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		case h == "":
			return nil, fmt.Errorf("testutil: hosts[%d] is empty", i)
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("testutil: server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testutil: server certificate: %w", err)
	}

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &TLSCerts{
		CAPool: pool,
		Server: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		CAPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
	}, nil
}

// tlsSerial returns a random positive certificate serial number of up to
// 128 bits.
func tlsSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("testutil: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// ServerConfig returns a new server configuration that presents the server
// certificate, with TLS 1.2 as the minimum version. Callers may modify it.
func (c *TLSCerts) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{c.Server},
	}
}

// ClientConfig returns a new client configuration that trusts only the CA,
// with TLS 1.2 as the minimum version. Callers may modify it.
//
// ServerName is left empty: tls.Dial and tls.Dialer fill it in from the host
// of the address dialled, which is what the SDK does too, so one config works
// for every host the certificate names. Code that wraps a connection itself
// with tls.Client must set ServerName on a clone, or the handshake fails.
func (c *TLSCerts) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    c.CAPool,
	}
}
