package dflockotel

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"weak"

	"go.opentelemetry.io/otel/metric"

	"github.com/dflock-sdk/go/dflock"
)

// Observe adds c to the Clients whose figures the observable instruments
// report: held leases, connections by role, waiting acquires, server up,
// and the counters of losses, renewals, dials, signal drops and gaps. At
// every collection one callback of the Instrumentation reads the
// Snapshot of each observed Client, which does no I/O and never fails.
// The counters are the Client's own totals since New, so nothing is missed
// when the Client drops hook calls or a collection is late.
//
// stop removes c; call it before or after c.Close (a closed Client reports
// its last figures until then). Figures of several Clients with equal
// attributes add up; WithAttributes tells them apart. The counters never
// go down: a stopped Client's totals at stop stay in their sums, so that
// replacing a Client, or closing one of several, is not seen as a counter
// reset. Its gauges (leases, connections, waiting, up) leave at once. Do
// not Observe a Client again after stopping it: its totals since New would
// be counted a second time.
//
// The first Observe registers the Instrumentation's callback with its
// MeterProvider, for as long as the Instrumentation lives: once the
// program no longer references it (nor any Client built with its Options),
// the garbage collector frees it and the callback is unregistered. The
// callback only reads memory. It fails only if the MeterProvider refuses the callback.
func (in *Instrumentation) Observe(c *dflock.Client) (stop func(), err error) {
	if c == nil {
		return nil, &dflock.ArgError{Arg: "client", Reason: "must not be nil"}
	}
	o := &in.observing
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.registered {
		// The callback holds the Instrumentation weakly and is unregistered
		// once the program drops it: a MeterProvider that outlives it (the
		// global one) must not keep it, and its totals, forever, nor run a
		// callback for it at every collection.
		wp := weak.Make(in)
		reg, err := in.meter.RegisterCallback(func(ctx context.Context, ob metric.Observer) error {
			if live := wp.Value(); live != nil {
				return live.collect(ctx, ob)
			}
			return nil
		}, in.observed...)
		if err != nil {
			return nil, fmt.Errorf("dflockotel: registering the snapshot callback: %w", err)
		}
		runtime.AddCleanup(in, func(r metric.Registration) { _ = r.Unregister() }, reg)
		o.registered = true
		o.live = make(map[*observedClient]struct{})
		o.retired = make(map[string]*serverTotals)
	}
	oc := &observedClient{c: c}
	o.live[oc] = struct{}{}
	return func() { in.retire(oc) }, nil
}

// observing holds the observed Clients and the counter totals of those
// stopped. One lock over both, taken by the one callback, means that no
// collection sees a Client both live and retired (counted twice, then
// falling back: what a backend takes for a counter reset).
type observing struct {
	mu         sync.Mutex
	registered bool
	live       map[*observedClient]struct{}
	retired    map[string]*serverTotals // by server address
	retiredC   clientTotals
}

// observedClient is one Observe call: observing a Client twice counts it
// twice, and each stop removes its own.
type observedClient struct{ c *dflock.Client }

// serverTotals are the counters of one server in a Snapshot.
type serverTotals struct {
	losses   int64
	renewals [len(renewalOutcomes)]int64
	dials    [len(dialOutcomes)]int64
}

func totalsOf(sv *dflock.ServerSnapshot) serverTotals {
	return serverTotals{
		losses:   sv.Losses,
		renewals: [...]int64{sv.Renewed, sv.RenewalsRefused, sv.RenewalsUnanswered},
		dials:    [...]int64{sv.Dials, sv.DialFailures},
	}
}

func (t *serverTotals) add(u serverTotals) {
	t.losses += u.losses
	for i := range t.renewals {
		t.renewals[i] += u.renewals[i]
	}
	for i := range t.dials {
		t.dials[i] += u.dials[i]
	}
}

// clientTotals are the counters of a Snapshot that belong to the Client,
// not to one of its servers.
type clientTotals struct{ signalsDropped, signalGaps, callbacksDropped int64 }

func (t *clientTotals) add(s *dflock.Snapshot) {
	t.signalsDropped += s.SignalsDropped
	t.signalGaps += s.SignalGaps
	t.callbacksDropped += s.CallbacksDropped
}

// retire ends the observation oc, keeping its counters' totals.
func (in *Instrumentation) retire(oc *observedClient) {
	o := &in.observing
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.live[oc]; !ok {
		return // stopped already
	}
	delete(o.live, oc)
	s := oc.c.Snapshot()
	oc.c = nil // a stop function kept after the call must not keep the Client
	for i := range s.Servers {
		sv := &s.Servers[i]
		t := o.retired[sv.Addr]
		if t == nil {
			t = new(serverTotals)
			o.retired[sv.Addr] = t
		}
		t.add(totalsOf(sv))
	}
	o.retiredC.add(&s)
}

// collect is the callback: the live Clients' figures, then the retired
// counters. Observations of one attribute set add up.
func (in *Instrumentation) collect(_ context.Context, ob metric.Observer) error {
	o := &in.observing
	o.mu.Lock()
	defer o.mu.Unlock()
	// server.up and server.auth_refused are gauges: a second observation
	// of a server would replace the first, not add to it, so the live
	// Clients' are combined (1 if any of them has the server up, or
	// refused) and observed once.
	gauges := make(map[string]serverGauges)
	for oc := range o.live {
		in.observe(ob, oc.c.Snapshot(), gauges)
	}
	for addr, g := range gauges {
		plain := metric.WithAttributeSet(in.sets.get(addr).plain)
		ob.ObserveInt64(in.serverUp, boolValue(g.up), plain)
		ob.ObserveInt64(in.authRefused, boolValue(g.authRefused), plain)
	}
	for addr, t := range o.retired {
		in.observeTotals(ob, in.sets.get(addr), *t)
	}
	if o.retiredC != (clientTotals{}) {
		in.observeClientTotals(ob, o.retiredC)
	}
	return nil
}

// serverGauges is a server's gauges, combined over the live Clients.
type serverGauges struct{ up, authRefused bool }

func boolValue(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// observe observes s's figures but the gauges, which it records in gauges
// (see collect).
func (in *Instrumentation) observe(ob metric.Observer, s dflock.Snapshot, gauges map[string]serverGauges) {
	for i := range s.Servers {
		sv := &s.Servers[i]
		sets := in.sets.get(sv.Addr)
		plain := metric.WithAttributeSet(sets.plain)
		ob.ObserveInt64(in.leases, int64(sv.LeasesHeld), plain)
		ob.ObserveInt64(in.waiting, int64(sv.WaitsInFlight), plain)
		g := gauges[sv.Addr]
		g.up = g.up || sv.Up
		g.authRefused = g.authRefused || sv.AuthRefused
		gauges[sv.Addr] = g
		for k, n := range connKindCounts(sv.Conns) {
			ob.ObserveInt64(in.conns, int64(n), metric.WithAttributeSet(sets.conns[k]))
		}
		in.observeTotals(ob, sets, totalsOf(sv))
	}
	in.observeClientTotals(ob, clientTotals{s.SignalsDropped, s.SignalGaps, s.CallbacksDropped})
}

func (in *Instrumentation) observeTotals(ob metric.Observer, sets *serverSets, t serverTotals) {
	ob.ObserveInt64(in.losses, t.losses, metric.WithAttributeSet(sets.plain))
	for r, n := range t.renewals {
		ob.ObserveInt64(in.renewals, n, metric.WithAttributeSet(sets.renewals[r]))
	}
	for d, n := range t.dials {
		ob.ObserveInt64(in.dials, n, metric.WithAttributeSet(sets.dials[d]))
	}
}

func (in *Instrumentation) observeClientTotals(ob metric.Observer, t clientTotals) {
	client := metric.WithAttributeSet(in.clientAttrs)
	ob.ObserveInt64(in.signalsDropped, t.signalsDropped, client)
	ob.ObserveInt64(in.signalGaps, t.signalGaps, client)
	ob.ObserveInt64(in.callbacksDropped, t.callbacksDropped, client)
}

// connKindCounts orders c as connKinds.
func connKindCounts(c dflock.ConnCounts) [len(connKinds)]int {
	return [...]int{c.Lane, c.Idle, c.InUse, c.Pinned, c.Listener, c.Lingering}
}
