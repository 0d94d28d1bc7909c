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
	keyDialOutcome    = attribute.Key("dflock.dial.outcome")
	keyRenewalOutcome = attribute.Key("dflock.renewal.outcome")
)

// Connection roles, renewal and dial outcomes: the values of the
// attributes of the observed instruments, fixed here so that every
// callback reuses the same precomputed sets.
var (
	connRoles       = [...]string{"lane", "idle", "in_use", "pinned", "listener"}
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
	roles    [len(connRoles)]attribute.Set
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
	with := func(kv attribute.KeyValue) attribute.Set {
		return attribute.NewSet(append(base[:len(base):len(base)], kv)...)
	}
	for i, r := range connRoles {
		s.roles[i] = with(keyConnRole.String(r))
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
