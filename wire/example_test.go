package wire_test

import (
	"errors"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A request is encoded as the three lines of the protocol: command, key,
// argument. Validate first: AppendTo encodes whatever it is given.
func ExampleRequest_AppendTo() {
	req := wire.Request{Cmd: wire.CmdLock, Key: "orders:42", Timeout: 10, Lease: 30}
	if err := req.Validate(); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%q\n", req.AppendTo(nil))

	sem := wire.Request{Cmd: wire.CmdSemLock, Key: "encoder", Timeout: 0, Limit: 4}
	fmt.Printf("%q\n", sem.AppendTo(nil))
	// Output:
	// "l\norders:42\n10 30\n"
	// "sl\nencoder\n0 4\n"
}

// Validate refuses what the server would refuse or misread, with an
// *ArgError that names the argument.
func ExampleRequest_Validate() {
	req := wire.Request{Cmd: wire.CmdLock, Key: "orders 42"}
	err := req.Validate()
	fmt.Println(err)
	fmt.Println(errors.Is(err, wire.ErrInvalidArgument))

	var ae *wire.ArgError
	if errors.As(err, &ae) {
		fmt.Println("argument:", ae.Arg)
	}
	// Output:
	// dflock: invalid key "orders 42": contains space, TAB, CR, LF or NUL
	// true
	// argument: key
}

// ReleaseRequest and RenewRequest pick the lock or the semaphore command.
func ExampleRenewRequest() {
	for _, sem := range []bool{false, true} {
		renew := wire.RenewRequest("orders:42", "tok123", sem, 30)
		release := wire.ReleaseRequest("orders:42", "tok123", sem)
		fmt.Printf("%q %q\n", renew.AppendTo(nil), release.AppendTo(nil))
	}
	// Output:
	// "n\norders:42\ntok123 30\n" "r\norders:42\ntok123\n"
	// "sn\norders:42\ntok123 30\n" "sr\norders:42\ntok123\n"
}

// A reply line is parsed as the answer to the command it answers: the same
// word can be valid for one command and a protocol violation for another.
func ExampleParseReply() {
	r, err := wire.ParseReply([]byte("ok 4f2a9c 33"), wire.CmdLock)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Status, r.Token, r.Lease)

	r, _ = wire.ParseReply([]byte("error_max_waiters"), wire.CmdLock)
	fmt.Println(r.Status, r.Status.IsError())

	_, err = wire.ParseReply([]byte("acquired 4f2a9c 33"), wire.CmdLock)
	fmt.Println(errors.Is(err, wire.ErrProtocol))
	fmt.Println(err)
	// Output:
	// ok 4f2a9c 33
	// error_max_waiters true
	// true
	// dflock: protocol violation: 'acquired' in reply to l in reply "acquired 4f2a9c 33"
}

// A listening connection receives `sig` pushes between its replies;
// IsPush tells them apart and ParsePush reads them.
func ExampleParsePush() {
	for _, line := range []string{"sig orders.paid id=42 amount=10", "ok"} {
		if !wire.IsPush([]byte(line)) {
			fmt.Println("reply:", line)
			continue
		}
		p, err := wire.ParsePush([]byte(line))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("push on %s: %q\n", p.Channel, p.Payload)
	}
	// Output:
	// push on orders.paid: "id=42 amount=10"
	// reply: ok
}

// Patterns match channels token by token, as NATS subjects do: '*' is one
// token, '>' one or more at the end.
func ExampleMatchPattern() {
	for _, c := range []struct{ pattern, channel string }{
		{"orders.*", "orders.paid"},
		{"orders.*", "orders.paid.eu"},
		{"orders.>", "orders.paid.eu"},
		{"orders.>", "orders"},
	} {
		fmt.Println(c.pattern, c.channel, wire.MatchPattern(c.pattern, c.channel))
	}
	// Output:
	// orders.* orders.paid true
	// orders.* orders.paid.eu false
	// orders.> orders.paid.eu true
	// orders.> orders false
}

// ValidatePattern is stricter than the server about empty tokens, which are
// far more likely a typo than an intent.
func ExampleValidatePattern() {
	for _, p := range []string{"orders.>", "orders.>.eu", "orders..paid"} {
		fmt.Println(p, wire.ValidatePattern(p) == nil)
	}
	// Output:
	// orders.> true
	// orders.>.eu false
	// orders..paid false
}

// dflockd v2.1 tokens start with the fence: the first 16 hex digits.
func ExampleFenceFromToken() {
	fence, ok := wire.FenceFromToken("00000000000000ff0123456789abcdef")
	fmt.Println(fence, ok)
	_, ok = wire.FenceFromToken("not-a-v2.1-token")
	fmt.Println(ok)
	// Output:
	// 255 true
	// false
}

// The protocol counts in whole seconds; Seconds rounds up, so a lease or
// timeout never comes out shorter than asked.
func ExampleSeconds() {
	fmt.Println(wire.Seconds(1500 * time.Millisecond))
	fmt.Println(wire.Seconds(time.Nanosecond))
	fmt.Println(wire.Seconds(0))
	// Output:
	// 2
	// 1
	// 0
}

// A Conn frames a connection to a server: requests go out in one write,
// replies are read and parsed in order. Here it talks to testutil's
// in-process server.
func ExampleNewConn() {
	srv, err := testutil.Start(testutil.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	nc, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		log.Fatal(err)
	}
	c := wire.NewConn(nc, wire.ConnOptions{})
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		log.Fatal(err)
	}

	lock := wire.Request{Cmd: wire.CmdLock, Key: "orders:42", Lease: 30}
	if err := lock.Validate(); err != nil { // Conn's writers do not validate
		log.Fatal(err)
	}
	if err := c.WriteRequests(lock); err != nil {
		log.Fatal(err)
	}
	r, err := c.ReadReply(lock.Cmd)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Status, r.Lease) // the token is random

	// Pipelined: both requests in one write, the replies in order.
	renew := wire.RenewRequest(lock.Key, r.Token, false, 30)
	release := wire.ReleaseRequest(lock.Key, r.Token, false)
	if err := c.WriteRequests(renew, release); err != nil {
		log.Fatal(err)
	}
	for _, cmd := range []wire.Command{renew.Cmd, release.Cmd} {
		r, err := c.ReadReply(cmd)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(cmd, r.Status)
	}
	// Output:
	// ok 30
	// n ok
	// r ok
}
