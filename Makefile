# dflock — Go SDK for dflockd. `make test` is the command CI and the README promise.
GO        ?= go
PKGS      ?= ./...
FUZZTIME  ?= 30s
# Minimising every new interesting input of a large seed can eat a whole short run.
FUZZMINIMIZE ?= 2s
BENCHTIME ?= 1s
BENCHCOUNT ?= 5

.PHONY: all test vet race bench fuzz cover lint demo tidy

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

# staticcheck is pinned as a tool dependency in go.mod, so no separate install is needed.
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) tool staticcheck $(PKGS)

demo:
	$(GO) run ./examples/quickstart
