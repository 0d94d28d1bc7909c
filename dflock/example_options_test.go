package dflock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// A process that must not go on working without its lock learns of the
// loss from OnLeaseLost. Here the server drops every connection, which
// ends the leases they held.
func ExampleWithHooks() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	// Hooks run on the Client's callback goroutine: hand what they learn
	// to the goroutine that acts on it, without blocking.
	lost := make(chan string, 1)
	c, err := dflock.New([]string{srv.Addr()}, dflock.WithHooks(dflock.Hooks{
		OnLeaseLost: func(info dflock.LeaseInfo, err error) {
			select {
			case lost <- fmt.Sprintf("lost %s: %v", info.Key, errors.Is(err, dflock.ErrLockLost)):
			default:
			}
		},
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l, err := c.Lock(context.Background(), "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	srv.DropConnections()

	fmt.Println(<-lost)
	fmt.Println("Err matches ErrLockLost:", errors.Is(l.Err(), dflock.ErrLockLost))
	// Output:
	// lost orders:42: true
	// Err matches ErrLockLost: true
}

// The Client trusts only the CA it is given; the server's certificate
// must name the host of the address dialled (127.0.0.1 here).
func ExampleWithTLS() {
	certs, err := testutil.NewTLSCerts()
	if err != nil {
		log.Fatal(err)
	}
	srv, stop := startServerWith(testutil.Config{TLS: certs.ServerConfig()})
	defer stop()

	c, err := dflock.New([]string{srv.Addr()}, dflock.WithTLS(certs.ClientConfig()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("holding", l.Key(), "over TLS")
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// holding orders:42 over TLS
}

// A server started with an auth token refuses every request of a
// connection that has not presented it; a wrong token is an error matching
// ErrAuth, which never contains the token sent.
func ExampleWithAuthToken() {
	srv, stop := startServerWith(testutil.Config{AuthToken: "s3cret"})
	defer stop()
	ctx := context.Background()

	c, err := dflock.New([]string{srv.Addr()}, dflock.WithAuthToken("s3cret"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	l, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("holding", l.Key())
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}

	bad, err := dflock.New([]string{srv.Addr()}, dflock.WithAuthToken("guess"))
	if err != nil {
		log.Fatal(err)
	}
	defer bad.Close()
	_, err = bad.TryLock(ctx, "orders:42")
	fmt.Println("wrong token refused:", errors.Is(err, dflock.ErrAuth))
	fmt.Println("token in the error:", strings.Contains(err.Error(), "guess"))
	// Output:
	// holding orders:42
	// wrong token refused: true
	// token in the error: false
}

// keyRecords passes on only the records about a key, such as a lost
// lease; the others (a server found unavailable, say) depend on timing.
type keyRecords struct{ slog.Handler }

func (h keyRecords) Handle(ctx context.Context, r slog.Record) error {
	about := false
	r.Attrs(func(a slog.Attr) bool {
		about = a.Key == "key"
		return !about
	})
	if !about {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h keyRecords) WithAttrs(as []slog.Attr) slog.Handler {
	return keyRecords{h.Handler.WithAttrs(as)}
}

func (h keyRecords) WithGroup(name string) slog.Handler {
	return keyRecords{h.Handler.WithGroup(name)}
}

// The Client logs what happens away from any call, such as a lease lost
// to a broken connection, which no caller is waiting to be told. The
// handler here writes only the records about a key, without the
// attributes that change from run to run.
func ExampleWithLogger() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	text := slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey, "server", "err": // the time, a random port
				return slog.Attr{}
			}
			return a
		},
	})
	// The record is written on the Client's callback goroutine; a hook
	// queued after it (see Hooks) tells when it has been.
	logged := make(chan struct{})
	c, err := dflock.New([]string{srv.Addr()}, dflock.WithLogger(slog.New(keyRecords{text})),
		dflock.WithHooks(dflock.Hooks{OnLeaseLost: func(dflock.LeaseInfo, error) { close(logged) }}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Lock(context.Background(), "orders:42"); err != nil {
		log.Fatal(err)
	}
	srv.DropConnections()
	<-logged
	// Output:
	// level=WARN msg="dflock: lease lost" key=orders:42
}

// With dflockd v2.1 or later, every grant of a key carries a larger fence
// than the one before; a protected store refuses writes whose fence is
// smaller than the largest it has seen, so a holder that lost its lock
// cannot overwrite its successor's work.
func ExampleWithFencing() {
	srv, stop := startServerWith(testutil.Config{Version: testutil.V2_1})
	defer stop()

	c, err := dflock.New([]string{srv.Addr()}, dflock.WithFencing())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	var fences []uint64
	for range 2 {
		l, err := c.Lock(ctx, "orders:42")
		if err != nil {
			log.Fatal(err)
		}
		f, ok := l.Fence()
		fmt.Println("fenced:", ok)
		fences = append(fences, f)
		if err := l.Release(ctx); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println("second fence larger:", fences[1] > fences[0])
	// Output:
	// fenced: true
	// fenced: true
	// second fence larger: true
}
