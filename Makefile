# Switchboard build, run and test entry points.
#
#   make build        build every service binary, and nats-server (for the
#                     permission tests on the shipped configuration), into bin/
#   make run          build and run bin/devstack (embedded NATS + all services;
#                     PROFILE=echo: the Socket.IO protocol test profile)
#   make token        print a development token (USER=alice by default)
#   make tools        build the nats CLI into bin/ (the e2e tests run the
#                     README's nats lines with it)
#   make test         Go tests (race detector) of every module, then the e2e suite
#   make lint         gofmt, go vet, staticcheck, and a build of each module without go.work
#   make cluster      run the cluster topology on loopback: 3 NATS nodes, 2
#                     gateways behind a round-robin proxy, 2 auth, 2 presence,
#                     2 timers (Ctrl-C stops it)
#   make chaos        the chaos run on that topology for DURATION (default 10m)
#   make bench        the load tool's scenarios (short) against a spawned
#                     development stack, then the benchmarks of every module;
#                     figures also in bin/bench/
#   make fuzz         every Fuzz target of pkg for FUZZTIME (default 20s) each
#   make clean        remove bin/ and the e2e scratch directory

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO ?= go
# Every Go module of the repository.
MODULES := pkg services/auth services/devstack services/echo services/gateway services/presence services/timer deploy/validate
# Service binaries built into bin/ (one per module under services/).
SERVICES := $(patsubst services/%,%,$(filter services/%,$(MODULES)))
BIN := bin
FUZZTIME ?= 20s
# Static analysis, fetched from the Go module proxy by `go run`.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The nats CLI, pinned (the module proxy's newest release may be refused).
NATSCLI := github.com/nats-io/natscli/nats@v0.5.0
# Devstack profile for `make run`: empty (the authenticated stack) or echo
# (auth disabled, the echo service; the Socket.IO protocol test target).
PROFILE ?=
# Extra arguments for bin/devstack in `make run` (e.g. ARGS=-log.level=debug).
ARGS ?=
# USER is the login name in the environment: only USER=... on the command
# line selects the token's user.
TOKEN_USER := $(if $(filter command line,$(origin USER)),$(USER),alice)
# Builds use the workspace (go.work) even when GOWORK is set outside.
GOWS := env -u GOWORK $(GO)

.PHONY: all build run token tools cluster chaos test test-go test-e2e e2e-deps lint bench fuzz clean

all: build

build:
	@mkdir -p $(BIN)
	@for s in $(SERVICES); do \
		echo "go build services/$$s -> $(BIN)/$$s" >&2; \
		(cd services/$$s && $(GOWS) build -o ../../$(BIN)/$$s .); \
	done
	@echo "go build nats-server -> $(BIN)/nats-server" >&2
	@cd pkg && $(GOWS) build -o ../$(BIN)/nats-server github.com/nats-io/nats-server/v2

run: build
	$(BIN)/devstack $(if $(PROFILE),-profile=$(PROFILE)) $(ARGS)

# Length of `make chaos` (a Go-style duration: 90s, 10m, 1h).
DURATION ?= 10m

cluster: build e2e-deps
	cd e2e && node cluster.js

chaos: build tools e2e-deps
	cd e2e && CHAOS_DURATION=$(DURATION) node --test --test-reporter=spec test/chaos.test.js

tools: $(BIN)/nats

$(BIN)/nats:
	@mkdir -p $(BIN)
	@echo "go install $(NATSCLI) -> $(BIN)/nats" >&2
	@GOBIN=$(abspath $(BIN)) GOFLAGS=-mod=mod $(GOWS) install $(NATSCLI)

token: build
	@$(BIN)/devstack token $(TOKEN_USER)

test: build
	@fail=0; \
	$(MAKE) --no-print-directory test-go || fail=1; \
	$(MAKE) --no-print-directory test-e2e || fail=1; \
	if [ $$fail -ne 0 ]; then echo "make test: FAILED"; exit 1; fi; \
	echo "make test: all passed"

test-go:
	@fail=0; \
	for m in $(MODULES); do \
		echo "== go test $$m"; \
		(cd $$m && $(GOWS) test -race -count=1 ./...) || fail=1; \
	done; \
	exit $$fail

# npm ci, unless node_modules was installed from this very lock file.
e2e-deps:
	@cd e2e && if ! cmp -s package-lock.json node_modules/.installed-lock.json; then \
		npm ci --no-audit --no-fund && cp package-lock.json node_modules/.installed-lock.json; \
	fi

test-e2e: build tools e2e-deps
	cd e2e && node --test --test-reporter=tap test/*.test.js

lint:
	@fail=0; \
	for m in $(MODULES); do \
		echo "== lint $$m"; \
		out=$$(cd $$m && gofmt -l .); \
		if [ -n "$$out" ]; then echo "gofmt needed in $$m:"; echo "$$out"; fail=1; fi; \
		(cd $$m && $(GOWS) vet ./...) || fail=1; \
		(cd $$m && $(GOWS) run $(STATICCHECK) ./...) || fail=1; \
		(cd $$m && GOWORK=off $(GO) build ./...) || { echo "$$m does not build without go.work"; fail=1; }; \
	done; \
	exit $$fail

bench: build
	@mkdir -p $(BIN)/bench
	@echo "== load tool: every scenario, short, against a spawned development stack"
	@$(BIN)/devstack bench -spawn -short all | tee $(BIN)/bench/load.txt
	@for m in $(MODULES); do \
		echo "== bench $$m"; \
		(cd $$m && $(GOWS) test -short -run='^$$' -bench=. -benchmem ./...) || echo "FAIL bench $$m"; \
	done | tee $(BIN)/bench/go.txt
	@! grep -q '^FAIL bench' $(BIN)/bench/go.txt

fuzz:
	@cd pkg && for p in $$($(GOWS) list ./...); do \
		for t in $$($(GOWS) test -list '^Fuzz' $$p | grep '^Fuzz' || true); do \
			echo "== fuzz $$p $$t for $(FUZZTIME)"; \
			$(GOWS) test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) $$p; \
		done; \
	done

clean:
	rm -rf $(BIN) e2e/.tmp
