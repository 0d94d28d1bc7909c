package dflockotel

import (
	"context"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/dflock-sdk/go/dflock"
)

// Observe registers c's figures with the observable instruments: held
// leases, connections by role, waiting acquires, server up, and the
// counters of losses, renewals, dials, signal drops and gaps. At every
// collection one callback reads c.Snapshot, which does no I/O and never
// fails. The counters are the Client's own totals since New, so nothing
// is missed when the Client drops hook calls or a collection is late.
//
// stop unregisters the callback; call it before or after c.Close (a
// closed Client reports its last figures). Figures of several Clients
// with equal attributes add up; WithAttributes tells them apart.
func (in *Instrumentation) Observe(c *dflock.Client) (stop func(), err error) {
	if c == nil {
		return nil, &dflock.ArgError{Arg: "client", Reason: "must not be nil"}
	}
	reg, err := in.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		in.observe(o, c.Snapshot())
		return nil
	}, in.observed...)
	if err != nil {
		return nil, fmt.Errorf("dflockotel: registering the snapshot callback: %w", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if err := reg.Unregister(); err != nil {
				otel.Handle(err)
			}
		})
	}, nil
}

func (in *Instrumentation) observe(o metric.Observer, s dflock.Snapshot) {
	for i := range s.Servers {
		sv := &s.Servers[i]
		sets := in.sets.get(sv.Addr)
		plain := metric.WithAttributeSet(sets.plain)
		o.ObserveInt64(in.leases, int64(sv.LeasesHeld), plain)
		o.ObserveInt64(in.waiting, int64(sv.WaitsInFlight), plain)
		up := int64(0)
		if sv.Up {
			up = 1
		}
		o.ObserveInt64(in.serverUp, up, plain)
		o.ObserveInt64(in.losses, sv.Losses, plain)

		for k, n := range connKindCounts(sv.Conns) {
			o.ObserveInt64(in.conns, int64(n), metric.WithAttributeSet(sets.conns[k]))
		}
		renewals := [len(renewalOutcomes)]int64{sv.Renewed, sv.RenewalsRefused, sv.RenewalsUnanswered}
		for r, n := range renewals {
			o.ObserveInt64(in.renewals, n, metric.WithAttributeSet(sets.renewals[r]))
		}
		o.ObserveInt64(in.dials, sv.Dials, metric.WithAttributeSet(sets.dials[0]))
		o.ObserveInt64(in.dials, sv.DialFailures, metric.WithAttributeSet(sets.dials[1]))
	}
	client := metric.WithAttributeSet(in.clientAttrs)
	o.ObserveInt64(in.signalsDropped, s.SignalsDropped, client)
	o.ObserveInt64(in.signalGaps, s.SignalGaps, client)
	o.ObserveInt64(in.callbacksDropped, s.CallbacksDropped, client)
}

// connKindCounts orders c as connKinds.
func connKindCounts(c dflock.ConnCounts) [len(connKinds)]int {
	return [...]int{c.Lane, c.Idle, c.InUse, c.Pinned, c.Listener}
}
