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

.PHONY: all test vet race allocs bench fuzz cover lint demo tidy soak

all: lint test

test: vet race allocs

# Also for the other platforms the SDK builds on: their tests must compile
# (the CPU figures and the caller-reads-its-reply tests are unix-only), on
# 32-bit ones too, where an int constant past 2^31 does not.
vet:
	$(GO) vet $(PKGS)
	GOOS=darwin $(GO) vet $(PKGS)
	GOOS=windows $(GO) vet $(PKGS)
	GOARCH=386 $(GO) vet $(PKGS)

# The race detector needs cgo and a C compiler. Without them `go test -race`
# only says "-race requires cgo", so say what to do instead, and run the tests
# without it rather than not at all. CI (CI set) must never lose -race: there
# the fallback is an error. `race` and `cover` share the check (RACE_OR_NOT
# prints the flags to use, or fails in CI).
RACE_OR_NOT = cc=$$($(GO) env CC); cc=$${cc%% *}; \
	if [ "$$($(GO) env CGO_ENABLED)" = 1 ] && command -v "$$cc" >/dev/null 2>&1; then \
		flags="-race"; \
	elif [ -n "$${CI:-}" ]; then \
		echo "make: the race detector needs cgo (CGO_ENABLED=$$($(GO) env CGO_ENABLED)) and a C compiler ($$cc); CI requires -race" >&2; exit 1; \
	else \
		echo "================================================================================" >&2; \
		echo "WARNING: no C compiler ($$cc) or CGO_ENABLED=0: running the tests WITHOUT -race." >&2; \
		echo "Data races will go unnoticed. Install gcc or clang (e.g. apt-get install gcc)," >&2; \
		echo "or point CC at one, to run them as CI does." >&2; \
		echo "================================================================================" >&2; \
		flags=""; export CGO_ENABLED=0; \
	fi

race:
	@$(RACE_OR_NOT); \
	echo "$(GO) test $$flags -count=1 $(PKGS)"; \
	$(GO) test $$flags -count=1 $(PKGS)

# Allocation counts, which the race detector distorts (its sync.Pool drops
# items at random), so the race run above skips them: run without it. The
# same goes for the test of what a recycled call carries over, which under
# -race often gets a fresh one.
allocs:
	$(GO) test -count=1 -run='Allocations$$' ./dflock
	$(GO) test -count=1 -run='^TestRequestLateIndexIsZero$$' ./pool

# Benchmarks: several runs so medians can be taken (benchstat-friendly output).
bench:
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=$(BENCHTIME) -count=$(BENCHCOUNT) $(PKGS)

# Every fuzz target of every package for FUZZTIME each (see .ci/fuzz).
fuzz:
	FUZZTIME=$(FUZZTIME) FUZZMINIMIZE=$(FUZZMINIMIZE) bash .ci/fuzz

cover:
	@$(RACE_OR_NOT); \
	echo "$(GO) test $$flags -count=1 -coverprofile=coverage.out $(PKGS)"; \
	$(GO) test $$flags -count=1 -coverprofile=coverage.out $(PKGS)
	$(GO) tool cover -func=coverage.out | tail -n 1

# Chaos soak: servers crash, stall, blackhole and restart under a loaded
# workload; fails on any invariant violation or leak and prints the figures.
# The test bounds itself (duration + 5m watchdog), hence no go test timeout.
soak:
	$(GO) test $(SOAKFLAGS) -count=1 -timeout=0 -run='^TestSoak$$' -v ./testutil/soak -soak=$(DURATION)

# Formatting is checked over the files on disk (not `git ls-files`), so a source
# archive is checked too. staticcheck is pinned in .ci/tools.mod, outside the
# SDK's module graph: `go tool -modfile` builds it from there, nothing to install.
GOFILES = find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*'
lint:
	@files=$$($(GOFILES)); test -n "$$files" || { echo "lint: no Go files found under $$(pwd)"; exit 1; }; \
	gofmt="$$($(GO) env GOROOT)/bin/gofmt"; \
	unformatted=$$("$$gofmt" -l $$files) || { echo "lint: $$gofmt failed" >&2; exit 1; }; \
	test -z "$$unformatted" || { echo "gofmt needed:"; echo "$$unformatted"; exit 1; }
	$(GO) tool -modfile=.ci/tools.mod staticcheck $(PKGS)

demo:
	$(GO) run ./examples/quickstart
