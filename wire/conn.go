package wire

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// ConnOptions configure a framed connection.
type ConnOptions struct {
	// MaxLine caps an incoming line (bytes before '\n', including any '\r');
	// a longer one breaks the connection. Default DefaultMaxLine.
	MaxLine int
	// Secret, if set (the auth token), is kept out of what a reply can
	// put into an error, a log record or a hook: Conn.ParseReply and
	// Conn.ParsePush build their errors, and a reply's free-text fields
	// (an unknown error_* word, error_not_leader's address), from the
	// line with every occurrence of it replaced by Redacted, and so does
	// an over-long line's error. Data is left as sent: a grant's token,
	// a lease, a stats document, a push — a random token may contain a
	// short secret by chance, and must reach the server again unchanged.
	Secret string
}

// Redacted replaces ConnOptions.Secret in errors and free-text fields.
const Redacted = "<redacted>"

const (
	// readBufSize serves every reply but stats in one buffered read while
	// keeping an idle pooled connection cheap. Longer lines are assembled in
	// Conn.long.
	readBufSize = 4096
	// keepBufSize is the largest line/write buffer a Conn keeps between
	// calls; one huge stats reply or signal payload must not pin its memory
	// for the connection's lifetime.
	keepBufSize = 64 << 10
	// initWriteBuf fits a pipelined batch of a few dozen small requests.
	initWriteBuf = 1024
)

// aLongTimeAgo is a deadline in the past: setting it makes every pending and
// future Read/Write on the net.Conn fail at once.
var aLongTimeAgo = time.Unix(1, 0)

// Conn is a framed protocol connection. Writes and reads may run on
// different goroutines (one writer, one reader at a time each); after any
// failure every later call returns an error matching ErrConnBroken (but see
// EndWrites, after which a write's failure is the write's alone).
//
// A Conn breaks on any I/O error (including an expired deadline, except
// while AwaitLine waits: it has read nothing), on a line over the cap, and
// on a reply that cannot be parsed, because after any of them a half-read
// reply could be mistaken for the next one. Breaking forces
// the net.Conn's deadline into the past so that the goroutine on the other
// side returns promptly too; Close must still be called to release the
// socket.
type Conn struct {
	nc     net.Conn
	opt    ConnOptions
	secret []byte // opt.Secret, nil if unset
	br     *bufio.Reader
	long   []byte // assembles lines longer than the bufio buffer; reader-owned
	wbuf   []byte // writer-owned
	broken atomic.Pointer[brokenError]
	closed atomic.Bool
	// writesEnded: EndWrites was called; a failed write no longer breaks
	// the reads.
	writesEnded atomic.Bool
	nread       countingReader
	// consumed counts the bytes of the lines readLine returned ('\n'
	// included): BytesRead - consumed is what is buffered or in a line
	// still arriving.
	consumed atomic.Int64
}

// countingReader counts the bytes read from the network (BytesRead).
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// BytesRead is how many bytes have been read from the connection so far,
// including those of a line still arriving: a reply in transit is progress.
// Over TLS they are the decrypted bytes, which arrive a whole record (up to
// 16 KiB) at a time. Unlike reading, it may be called from any goroutine.
func (c *Conn) BytesRead() int64 { return c.nread.n.Load() }

// BytesConsumed is how many bytes of whole lines have been read (by
// ReadLine, ReadReply, and a line refused as too long), '\n' included:
// BytesRead less BytesConsumed is what is buffered or still arriving. It may
// be called from any goroutine.
func (c *Conn) BytesConsumed() int64 { return c.consumed.Load() }

// NewConn frames nc. The Conn owns nc from now on.
func NewConn(nc net.Conn, opt ConnOptions) *Conn {
	if opt.MaxLine <= 0 {
		opt.MaxLine = DefaultMaxLine
	}
	c := &Conn{
		nc:   nc,
		opt:  opt,
		wbuf: make([]byte, 0, initWriteBuf),
	}
	c.nread.r = nc
	c.br = bufio.NewReaderSize(&c.nread, readBufSize)
	if opt.Secret != "" {
		c.secret = []byte(opt.Secret)
	}
	return c
}

// NetConn returns the underlying connection (for deadlines and addresses).
func (c *Conn) NetConn() net.Conn { return c.nc }

// SetDeadline forwards to the net.Conn. An expired deadline breaks the Conn
// if it interrupts a read or write.
func (c *Conn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// SetReadDeadline forwards to the net.Conn; see SetDeadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline forwards to the net.Conn; see SetDeadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

// Err returns the error that broke the connection, or nil while it is usable.
// The error matches ErrConnBroken and unwraps to the cause.
func (c *Conn) Err() error {
	if b := c.broken.Load(); b != nil {
		return b
	}
	return nil
}

// fail breaks the connection with cause unless it is already broken, and
// returns the sticky error. The first cause wins: later failures are usually
// consequences of it (e.g. the forced deadline).
func (c *Conn) fail(cause error) error {
	if c.broken.CompareAndSwap(nil, &brokenError{cause: cause}) {
		// Unblock the goroutine on the other side of the connection; its
		// error will then report this cause.
		_ = c.nc.SetDeadline(aLongTimeAgo)
	}
	return c.broken.Load()
}

// Close closes the underlying connection and marks the Conn broken (the
// cause matches net.ErrClosed). Only the first call closes.
//
// Under TLS it closes the transport without a close_notify alert:
// tls.Conn.Close sends one under a 5 s write deadline of its own, which a
// peer that stopped reading (a full send buffer) makes it wait out, holding
// whoever closes — the report of a broken connection, a caller whose
// context ended, Client.Close. A server reads the transport's end as the
// peer gone, as it does a plain TCP close.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.broken.CompareAndSwap(nil, &brokenError{cause: net.ErrClosed})
	if tc, ok := c.nc.(*tls.Conn); ok {
		return tc.NetConn().Close()
	}
	return c.nc.Close()
}

// WriteRequests encodes reqs into the connection's write buffer and sends
// them in a single Write call. It does not validate: call Request.Validate
// first (a field with a line break would put the stream out of step).
func (c *Conn) WriteRequests(reqs ...Request) error {
	if b := c.broken.Load(); b != nil {
		return b
	}
	buf := c.wbuf[:0]
	for i := range reqs {
		buf = reqs[i].AppendTo(buf)
	}
	_, err := c.write(buf)
	if cap(buf) > keepBufSize {
		buf = make([]byte, 0, initWriteBuf)
	}
	c.wbuf = buf[:0]
	return err
}

// WriteRaw sends pre-encoded request bytes in a single Write call. n is
// what the underlying connection reports written, as io.Writer's: with an
// error and n == 0 no byte of b left this side (under TLS, no record whole),
// so the server cannot have read any request in b.
func (c *Conn) WriteRaw(b []byte) (n int, err error) {
	if br := c.broken.Load(); br != nil {
		return 0, br
	}
	return c.write(b)
}

func (c *Conn) write(b []byte) (int, error) {
	if c.writesEnded.Load() {
		return 0, errWritesEnded
	}
	n, err := c.nc.Write(b)
	if err != nil {
		if c.writesEnded.Load() {
			// A write already under way when EndWrites came: it fails
			// alone (see EndWrites).
			return n, &brokenError{cause: err}
		}
		// A partial write leaves a truncated request on the server's side.
		return n, c.fail(err)
	}
	return n, nil
}

// errWritesEnded is the error of a write after EndWrites.
var errWritesEnded = &brokenError{cause: errors.New("writes ended")}

// EndWrites ends writing on c for good while reading goes on: the replies
// to the requests written before are still to be read, in order (a
// connection that lingers for them). Every later write fails, matching
// ErrConnBroken, without breaking c; so does a write under way now that
// fails from now on (its deadline passes, the socket's sending side is
// shut): a request it left truncated is never answered, and the replies
// before it are not disturbed. The reader must be stopped by its owner
// (a read deadline, Close). It may be called from any goroutine.
func (c *Conn) EndWrites() { c.writesEnded.Store(true) }

// ReadLine reads the next line (push or reply) without parsing it. The '\n'
// and any trailing '\r' are removed. The slice is valid until the next read.
func (c *Conn) ReadLine() ([]byte, error) {
	if b := c.broken.Load(); b != nil {
		return nil, b
	}
	line, err := c.readLine()
	if err != nil {
		return nil, c.fail(err)
	}
	return line, nil
}

// ParseReply is the package's ParseReply for a line read from c, with
// ConnOptions.Secret kept out of its error and of r.Word and r.Text where
// they are free text.
func (c *Conn) ParseReply(line []byte, cmd Command) (r Reply, err error) {
	r, err = ParseReply(line, cmd)
	if c.secret == nil || !bytes.Contains(line, c.secret) {
		return r, err
	}
	if err != nil {
		return r, c.scrubError(line, err)
	}
	switch r.Status {
	case StatusErrOther, StatusErrNotLeader:
		// The fields come from the scrubbed line: a secret with a space
		// in it spans fields, and replacing it within one field finds
		// nothing. Should the scrubbed line read differently, the fields
		// go whole.
		if s, err := ParseReply(c.Scrubbed(line), cmd); err == nil && s.Status == r.Status {
			r.Word, r.Text = s.Word, s.Text
		} else {
			r.Word, r.Text = "error_"+Redacted, Redacted
		}
	}
	return r, nil
}

// ParsePush is the package's ParsePush for a line read from c, with
// ConnOptions.Secret kept out of its error. A push that parses is data.
func (c *Conn) ParsePush(line []byte) (Push, error) {
	p, err := ParsePush(line)
	if err != nil && c.secret != nil && bytes.Contains(line, c.secret) {
		err = c.scrubError(line, err)
	}
	return p, err
}

// scrubError rebuilds err, a parse error of line, which holds the secret,
// from line with the secret replaced: cut first, the line could keep most
// of a long secret. Not by parsing the scrubbed line again: a secret with
// a space in it parses differently once replaced.
func (c *Conn) scrubError(line []byte, err error) error {
	pe, ok := err.(*ProtocolError)
	if !ok {
		return err
	}
	e := protoErr(c.Scrubbed(trimCR(line)), strings.ReplaceAll(pe.Reason, string(c.secret), Redacted))
	e.kind = pe.kind
	return e
}

// Scrubbed returns line, for an error built from it, with every occurrence
// of ConnOptions.Secret replaced by Redacted (line itself if it holds none).
func (c *Conn) Scrubbed(line []byte) []byte {
	if c.secret == nil || !bytes.Contains(line, c.secret) {
		return line
	}
	return bytes.ReplaceAll(line, c.secret, []byte(Redacted))
}

// AwaitLine blocks until the connection has bytes to read and reports
// whether a whole line is buffered, so that the next ReadLine returns without
// waiting for the network. It consumes nothing. An expired read deadline
// returns its error (os.ErrDeadlineExceeded, or another that IsTimeout
// accepts) and, unlike every other error, does not break the Conn: nothing was read, so the stream is still
// in step and a deadline can interrupt a goroutine waiting for its reply
// without costing the connection (clear the deadline before reading on).
// A Conn already broken returns its break, matching ErrConnBroken, which
// may wrap a deadline error too (a write that timed out): test for the
// break first. ready is false, with a nil error, when a line has begun to
// arrive but its end has not (or it is longer than the read buffer):
// ReadLine would then block until the rest comes.
func (c *Conn) AwaitLine() (ready bool, err error) {
	if b := c.broken.Load(); b != nil {
		return false, b
	}
	if c.br.Buffered() == 0 {
		if _, err := c.br.Peek(1); err != nil {
			if IsTimeout(err) {
				if b := c.broken.Load(); b != nil {
					return false, b // fail forced the deadline: a writer broke c
				}
				return false, err
			}
			return false, c.fail(err)
		}
	}
	buf, _ := c.br.Peek(c.br.Buffered())
	return bytes.IndexByte(buf, '\n') >= 0, nil
}

// IsTimeout reports whether err is a read or write that its deadline ended:
// os.ErrDeadlineExceeded, or a net.Error whose Timeout is true (a
// multiplexed stream's own, such as yamux's, which net.Conn's doc asks to
// wrap os.ErrDeadlineExceeded but many do not).
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// Buffered returns how many bytes have been read from the network and not
// yet returned by ReadLine.
func (c *Conn) Buffered() int { return c.br.Buffered() }

// readLine frames one line, holding at most MaxLine bytes beyond the bufio
// buffer.
func (c *Conn) readLine() ([]byte, error) {
	if cap(c.long) > keepBufSize {
		c.long = nil
	}
	c.long = c.long[:0]
	limit := c.opt.MaxLine
	for {
		frag, err := c.br.ReadSlice('\n')
		switch err {
		case nil:
			c.consumed.Add(int64(len(c.long) + len(frag)))
			frag = frag[:len(frag)-1]
			if len(c.long) == 0 {
				if len(frag) > limit {
					return nil, c.tooLong(frag)
				}
				return trimCR(frag), nil
			}
			if len(c.long)+len(frag) > limit {
				return nil, c.tooLong(c.long)
			}
			c.long = c.grow(c.long, frag)
			return trimCR(c.long), nil
		case bufio.ErrBufferFull:
			if len(c.long)+len(frag) > limit {
				if len(c.long) == 0 {
					return nil, c.tooLong(frag)
				}
				return nil, c.tooLong(c.long)
			}
			c.long = c.grow(c.long, frag)
		default:
			if err == io.EOF && len(c.long)+len(frag) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

func (c *Conn) tooLong(prefix []byte) error {
	line := c.Scrubbed(prefix)
	// prefix is what was read before the line proved too long: a secret
	// may begin in the part the error keeps and run past its end, where
	// Scrubbed cannot see it whole.
	if c.secret != nil {
		if i := cutSecretAt(string(line), string(c.secret)); i >= 0 {
			line = append(line[:i:i], Redacted...)
		}
	}
	e := protoErr(line, "line longer than "+itoa(int64(c.opt.MaxLine))+" bytes")
	e.kind = ErrLineTooLong
	return e
}

// grow appends frag to dst, growing capacity geometrically but never past
// MaxLine, so that a line at the cap does not cost twice the cap.
func (c *Conn) grow(dst, frag []byte) []byte {
	need := len(dst) + len(frag)
	if need > cap(dst) {
		newCap := min(max(2*cap(dst), need, readBufSize), c.opt.MaxLine)
		nb := make([]byte, len(dst), newCap)
		copy(nb, dst)
		dst = nb
	}
	return append(dst, frag...)
}

// ReadReply reads the next reply line and parses it as the answer to cmd.
// `sig` push lines before it are skipped: a connection that listens reads
// with ReadLine and tells pushes from replies itself (IsPush, ParsePush). A
// malformed reply breaks the Conn; the returned error then matches both
// ErrConnBroken and ErrProtocol. Error statuses are returned in the Reply
// with a nil error.
//
// The Conn has no call that sends and waits in one: its only user, package
// pool, pipelines requests from many callers over one reader and handles
// their cancellation itself.
func (c *Conn) ReadReply(cmd Command) (Reply, error) {
	for {
		line, err := c.ReadLine()
		if err != nil {
			return Reply{}, err
		}
		if IsPush(line) {
			continue
		}
		rep, err := c.ParseReply(line, cmd)
		if err != nil {
			return Reply{}, c.fail(err)
		}
		return rep, nil
	}
}
