# dflock — Go SDK for dflockd. `make test` is the command CI and the README promise.
GO        ?= go
PKGS      ?= ./...
FUZZTIME  ?= 30s
# Minimising every new interesting input of a large seed can eat a whole short run.
FUZZMINIMIZE ?= 2s
BENCHTIME ?= 1s
BENCHCOUNT ?= 5
# The chaos soak (docs/reliability.md): how long, and extra go test flags.
DURATION  ?= 60s
SOAKFLAGS ?= -race

.PHONY: all test vet race bench fuzz cover lint demo tidy soak

all: lint test

test: vet race

vet:
	$(GO) vet $(PKGS)

race:
	$(GO) test -race -count=1 $(PKGS)

# Benchmarks: several runs so medians can be taken (benchstat-friendly output).
bench:
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=$(BENCHTIME) -count=$(BENCHCOUNT) $(PKGS)

# Every fuzz target of every package for FUZZTIME each (see .ci/fuzz).
fuzz:
	FUZZTIME=$(FUZZTIME) FUZZMINIMIZE=$(FUZZMINIMIZE) bash .ci/fuzz

cover:
	$(GO) test -race -count=1 -coverprofile=coverage.out $(PKGS)
	$(GO) tool cover -func=coverage.out | tail -n 1

# Chaos soak: servers crash, stall, blackhole and restart under a loaded
# workload; fails on any invariant violation or leak and prints the figures.
# The test bounds itself (duration + 5m watchdog), hence no go test timeout.
soak:
	$(GO) test $(SOAKFLAGS) -count=1 -timeout=0 -run='^TestSoak$$' -v ./testutil/soak -soak=$(DURATION)

# staticcheck is pinned as a tool dependency in go.mod, so no separate install is needed.
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) tool staticcheck $(PKGS)

demo:
	$(GO) run ./examples/quickstart
