//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A TLS server that closes an idle lane sends close_notify before its FIN.
// Under TLS 1.3 (what crypto/tls negotiates by default) every record after
// the handshake, alerts included, has the outer content type
// application_data (23), so the probe of a caller claiming the turn never
// sees tlsRecordAlert (21). The server's orderly close must not be reported
// as a protocol violation, "bytes received with no request pending"
// (errStrayBytes), as it was before review found it.
func TestTLS13CloseNotifyIsNotAStrayBytesViolation(t *testing.T) {
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	addr, drop := tlsServer(t, certs)
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: addr, TLS: certs.ClientConfig(), LaneConns: 1, OnConnBroken: rec.hook})
	lane, c := laneOf(t, p)
	settle(t, c)
	drop()
	waitReadable(t, c)
	ageLastRead(c)

	_, owner, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	assert.NotSame(t, lane, owner)
	ev := rec.next(t)
	assert.Same(t, lane, ev.c)
	assert.NotErrorIs(t, ev.err, errStrayBytes, "a close_notify is not a protocol violation: %v", ev.err)
	assert.True(t, errors.Is(ev.err, errTLSRecord) || errors.Is(ev.err, errTLSAlert) || errors.Is(ev.err, io.EOF),
		"the break reads as the server's close: %v", ev.err)
}
