package dflockotel

import (
	"net"
	"strconv"
	"sync"

	"go.opentelemetry.io/otel/attribute"
)

// Attribute keys. server.address and server.port are OpenTelemetry's
// general ones; the rest live in the dflock namespace.
const (
	keyServerAddress  = attribute.Key("server.address")
	keyServerPort     = attribute.Key("server.port")
	keyOperation      = attribute.Key("dflock.operation.name")
	keyOutcome        = attribute.Key("dflock.acquire.outcome")
	keyPath           = attribute.Key("dflock.acquire.path")
	keyWaited         = attribute.Key("dflock.acquire.wait.duration")
	keyKey            = attribute.Key("dflock.key")
	keyLimit          = attribute.Key("dflock.semaphore.limit")
	keyTTL            = attribute.Key("dflock.lease.ttl")
	keyConnRole       = attribute.Key("dflock.connection.role")
	keyConnState      = attribute.Key("dflock.connection.state")
	keyDialOutcome    = attribute.Key("dflock.dial.outcome")
	keyRenewalOutcome = attribute.Key("dflock.renewal.outcome")
)

// Connection roles, renewal and dial outcomes: the values of the
// attributes of the observed instruments, fixed here so that every
// callback reuses the same precomputed sets.
var (
	// connKinds are the points of dflock.client.connection.count, in the
	// order of connKindCounts: a role (as dflock.DialInfo.Role names it)
	// and, for the wait pool, the state.
	connKinds = [...][]attribute.KeyValue{
		{keyConnRole.String("lane")},
		{keyConnRole.String("wait"), keyConnState.String("idle")},
		{keyConnRole.String("wait"), keyConnState.String("in_use")},
		{keyConnRole.String("wait"), keyConnState.String("pinned")},
		{keyConnRole.String("listener")},
		// A lingering connection's role is over (dflock.ConnCounts.Lingering).
		{keyConnState.String("lingering")},
	}
	renewalOutcomes = [...]string{"renewed", "refused", "unanswered"}
	dialOutcomes    = [...]string{"success", "failure"}
)

// serverAttrs returns server.address and server.port for a "host:port"
// address, or server.address alone when it has no port.
func serverAttrs(addr string) []attribute.KeyValue {
	if addr == "" { // not routed: the call failed before choosing a server
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return []attribute.KeyValue{keyServerAddress.String(addr)}
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return []attribute.KeyValue{keyServerAddress.String(host)}
	}
	return []attribute.KeyValue{keyServerAddress.String(host), keyServerPort.Int(p)}
}

// serverSets holds, for one server, the attribute sets the snapshot
// callback observes with, so that a scrape allocates none.
type serverSets struct {
	base     []attribute.KeyValue // server attributes plus the constant ones
	plain    attribute.Set
	conns    [len(connKinds)]attribute.Set
	renewals [len(renewalOutcomes)]attribute.Set
	dials    [len(dialOutcomes)]attribute.Set
}

// setCache maps a server address to its serverSets. The set of servers of
// a Client is fixed, so the cache only grows to the servers ever observed.
type setCache struct {
	constant []attribute.KeyValue
	m        sync.Map // string → *serverSets
}

func (c *setCache) get(addr string) *serverSets {
	if v, ok := c.m.Load(addr); ok {
		return v.(*serverSets)
	}
	base := append(serverAttrs(addr), c.constant...)
	s := &serverSets{base: base, plain: attribute.NewSet(base...)}
	with := func(kvs ...attribute.KeyValue) attribute.Set {
		return attribute.NewSet(append(base[:len(base):len(base)], kvs...)...)
	}
	for i, k := range connKinds {
		s.conns[i] = with(k...)
	}
	for i, o := range renewalOutcomes {
		s.renewals[i] = with(keyRenewalOutcome.String(o))
	}
	for i, o := range dialOutcomes {
		s.dials[i] = with(keyDialOutcome.String(o))
	}
	v, _ := c.m.LoadOrStore(addr, s)
	return v.(*serverSets)
}
