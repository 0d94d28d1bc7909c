package dflockotel

import (
	"errors"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/dflock-sdk/go/dflock"
)

// ScopeName is the instrumentation scope of the Meter and Tracer that
// Instrumentation obtains from its providers.
const ScopeName = "github.com/dflock-sdk/go/dflockotel"

// An Option configures New.
type Option func(*config)

type config struct {
	mp      metric.MeterProvider
	tp      trace.TracerProvider
	noKey   bool
	attrs   []attribute.KeyValue
	badAttr error
}

// WithMeterProvider sets the MeterProvider the instruments come from.
// Default: the global one (otel.GetMeterProvider) at the time of New.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithTracerProvider sets the TracerProvider the spans come from. Default:
// the global one (otel.GetTracerProvider) at the time of New.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithKeyAttribute says whether spans carry the lock or semaphore key as
// dflock.key. Default: true. Keys never go on metrics, where every key
// would be a new time series; a key that holds something private (a user
// id, an e-mail address) is kept off spans too with WithKeyAttribute(false):
// then the errors recorded on spans show "<key>" in its place.
func WithKeyAttribute(on bool) Option {
	return func(c *config) { c.noKey = !on }
}

// WithAttributes adds attributes to every measurement and span, after
// the ones Instrumentation sets. Use it to tell apart Clients of one
// process that use the same servers (their observed figures are otherwise
// added up) or to label a tenant. Each call adds to the previous ones.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return func(c *config) {
		for _, kv := range attrs {
			if !kv.Valid() {
				c.badAttr = &dflock.ArgError{Arg: "attribute", Value: string(kv.Key), Reason: "invalid key or value"}
				return
			}
		}
		c.attrs = append(c.attrs, attrs...)
	}
}

// Instrumentation records a dflock Client's work as OpenTelemetry metrics
// and spans. One Instrumentation serves any number of Clients: pass
// Options to each dflock.New and call Observe for each Client.
type Instrumentation struct {
	tracer  trace.Tracer
	meter   metric.Meter
	keyAttr bool
	attrs   []attribute.KeyValue // WithAttributes
	sets    setCache
	// clientAttrs are those of the figures that belong to a Client, not
	// to one of its servers: only the WithAttributes ones.
	clientAttrs attribute.Set

	// Recorded as operations end (Tracer, Hooks).
	acquireDuration metric.Float64Histogram
	waitDuration    metric.Float64Histogram
	renewalDuration metric.Float64Histogram
	renewalSize     metric.Int64Histogram
	dialDuration    metric.Float64Histogram
	connBroken      metric.Int64Counter

	// Observed from Client.Snapshot (Observe).
	leases           metric.Int64ObservableUpDownCounter
	conns            metric.Int64ObservableUpDownCounter
	waiting          metric.Int64ObservableUpDownCounter
	serverUp         metric.Int64ObservableGauge
	authRefused      metric.Int64ObservableGauge
	losses           metric.Int64ObservableCounter
	renewals         metric.Int64ObservableCounter
	dials            metric.Int64ObservableCounter
	signalsDropped   metric.Int64ObservableCounter
	signalGaps       metric.Int64ObservableCounter
	callbacksDropped metric.Int64ObservableCounter
	observed         []metric.Observable
	observing        observing // Observe
}

// Histogram buckets, in seconds. A grant on the control lane takes a
// round trip (well under a millisecond on a LAN); a wait in the wait pool
// lasts as long as another holder keeps the lock, often seconds or more.
var (
	acquireBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
	rttBuckets     = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	sizeBuckets    = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096}
)

// New creates the instruments and returns an Instrumentation. It fails
// only on an invalid option or if the MeterProvider refuses an
// instrument.
func New(opts ...Option) (*Instrumentation, error) {
	var cfg config
	for _, o := range opts {
		if o == nil {
			return nil, &dflock.ArgError{Arg: "option", Reason: "must not be nil"}
		}
		o(&cfg)
	}
	if cfg.badAttr != nil {
		return nil, cfg.badAttr
	}
	if cfg.mp == nil {
		cfg.mp = otel.GetMeterProvider()
	}
	if cfg.tp == nil {
		cfg.tp = otel.GetTracerProvider()
	}
	in := &Instrumentation{
		tracer:  cfg.tp.Tracer(ScopeName),
		meter:   cfg.mp.Meter(ScopeName),
		keyAttr: !cfg.noKey,
		attrs:   cfg.attrs,
		sets:    setCache{constant: cfg.attrs},
	}
	in.clientAttrs = attribute.NewSet(cfg.attrs...)
	if err := in.instruments(); err != nil {
		return nil, fmt.Errorf("dflockotel: creating instruments: %w", err)
	}
	return in, nil
}

func (in *Instrumentation) instruments() error {
	m := in.meter
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	in.acquireDuration, err = m.Float64Histogram("dflock.client.acquire.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Duration of acquire calls (Lock, TryLock, Semaphore, TrySemaphore, Enqueue, Wait), granted or not."),
		metric.WithExplicitBucketBoundaries(acquireBuckets...))
	check(err)
	in.waitDuration, err = m.Float64Histogram("dflock.client.acquire.wait.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Time acquire calls spent on the wait path: getting a wait-pool connection (a dial, or one coming free at the cap), then waiting in the server's queue on it."),
		metric.WithExplicitBucketBoundaries(acquireBuckets...))
	check(err)
	in.renewalDuration, err = m.Float64Histogram("dflock.client.renewal.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Round trip of answered renewal batches, from write to last reply."),
		metric.WithExplicitBucketBoundaries(rttBuckets...))
	check(err)
	in.renewalSize, err = m.Int64Histogram("dflock.client.renewal.batch.size",
		metric.WithUnit("{renewal}"),
		metric.WithDescription("Renewals sent together in one batch."),
		metric.WithExplicitBucketBoundaries(sizeBuckets...))
	check(err)
	in.dialDuration, err = m.Float64Histogram("dflock.client.connection.dial.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Time to open a connection (TCP, TLS and auth), successful or not."),
		metric.WithExplicitBucketBoundaries(rttBuckets...))
	check(err)
	in.connBroken, err = m.Int64Counter("dflock.client.connection.broken",
		metric.WithUnit("{connection}"),
		metric.WithDescription("Connections that broke or were destroyed (idle ones closed by the idle limits, and those Client.Close closes, excepted)."))
	check(err)

	in.leases, err = m.Int64ObservableUpDownCounter("dflock.client.lease.count",
		metric.WithUnit("{lease}"),
		metric.WithDescription("Leases (locks and semaphore slots) held now."))
	check(err)
	in.conns, err = m.Int64ObservableUpDownCounter("dflock.client.connection.count",
		metric.WithUnit("{connection}"),
		metric.WithDescription("Open connections by role (lane, wait, listener) and, in the wait pool, state (idle, in_use, pinned)."))
	check(err)
	in.waiting, err = m.Int64ObservableUpDownCounter("dflock.client.acquire.waiting",
		metric.WithUnit("{acquire}"),
		metric.WithDescription("Acquire calls on the wait path now: getting a wait-pool connection or waiting on one."))
	check(err)
	in.serverUp, err = m.Int64ObservableGauge("dflock.client.server.up",
		metric.WithUnit("1"),
		metric.WithDescription("0 while the server is known to be down and no lane connection to it is healthy (calls fail fast), else 1."))
	check(err)
	in.authRefused, err = m.Int64ObservableGauge("dflock.client.server.auth_refused",
		metric.WithUnit("1"),
		metric.WithDescription("1 from the moment the server refuses a dial's auth token until a dial succeeds (calls that need a new connection fail with ErrAuth), else 0."))
	check(err)
	in.losses, err = m.Int64ObservableCounter("dflock.client.lease.losses",
		metric.WithUnit("{lease}"),
		metric.WithDescription("Leases lost while held (renewal refused or unanswered, connection broken), or found lost at release."))
	check(err)
	in.renewals, err = m.Int64ObservableCounter("dflock.client.renewals",
		metric.WithUnit("{renewal}"),
		metric.WithDescription("Renewals by outcome: renewed, refused by the server, or unanswered."))
	check(err)
	in.dials, err = m.Int64ObservableCounter("dflock.client.connection.dials",
		metric.WithUnit("{connection}"),
		metric.WithDescription("Connection attempts by outcome: success or failure."))
	check(err)
	in.signalsDropped, err = m.Int64ObservableCounter("dflock.client.signal.dropped",
		metric.WithUnit("{signal}"),
		metric.WithDescription("Signals dropped because a subscriber fell behind, or queued for a group member that left with no other to take them."))
	check(err)
	in.signalGaps, err = m.Int64ObservableCounter("dflock.client.signal.gaps",
		metric.WithUnit("{gap}"),
		metric.WithDescription("Gaps reported to subscribers: windows in which signals may have been missed."))
	check(err)
	in.callbacksDropped, err = m.Int64ObservableCounter("dflock.client.callback.dropped",
		metric.WithUnit("{callback}"),
		metric.WithDescription("Log records and hook calls dropped because the Client's callback queue was full."))
	check(err)
	in.observed = []metric.Observable{
		in.leases, in.conns, in.waiting, in.serverUp, in.authRefused, in.losses, in.renewals,
		in.dials, in.signalsDropped, in.signalGaps, in.callbacksDropped,
	}
	return errors.Join(errs...)
}

// Options returns the dflock options that feed the Instrumentation: a
// Tracer (WithTracer) and Hooks (WithHooks). Pass them to dflock.New with
// the Client's other options. Hooks compose with the Client's other Hooks;
// a Client has one Tracer, so a later WithTracer replaces this one (see
// Tracer to combine them).
func (in *Instrumentation) Options() []dflock.Option {
	return []dflock.Option{dflock.WithTracer(in.Tracer()), dflock.WithHooks(in.Hooks())}
}
