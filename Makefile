# StackPro — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X github.com/stackpro/stackpro/shared/buildinfo.Version=$(VERSION) \
            -X github.com/stackpro/stackpro/shared/buildinfo.Commit=$(COMMIT)
STATICCHECK_VERSION := v0.8.2
# Stripe's API simulator, for the billing tests.
STRIPE_MOCK_VERSION := v0.203.0

# Flags for `make run`; override like `make run RUN_FLAGS="--demo-instances 3"`.
RUN_FLAGS ?=

.PHONY: help build images test test-tools lint run bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## build static binaries into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/stackpro-controlplane ./controlplane/cmd/stackpro-controlplane
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/stackpro-agent ./agent/cmd/stackpro-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/stackctl ./controlplane/cmd/stackctl
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/stackpro-sim ./controlplane/cmd/stackpro-sim

images: ## build the starter stack's image FROM scratch (no registry needed), when Docker is here
	@if docker version >/dev/null 2>&1; then deploy/stacks/build-images.sh stackpro/demo:dev; \
	else echo "no Docker engine: instances will report 'docker engine not available'"; fi

# Every benchmark also runs once at a small size (-short), so that one
# that no longer runs fails here; the end-to-end tests, which mostly wait
# on processes and Docker, run four at a time.
test: $(BIN)/stripe-mock test-tools ## run every test with the race detector, and every benchmark once, small
	STRIPE_MOCK=$(BIN)/stripe-mock TEST_ARTIFACTS=$(CURDIR)/test-artifacts $(GO) test -race -count=1 -parallel 4 \
		-short -bench . -benchtime 1x -timeout 13m ./...

# The ops console's browser test drives Debian's Chromium; the /metrics
# test lints with promtool, from Debian's prometheus package.
test-tools: ## install Chromium and promtool from Debian when missing
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/stripe-mock:
	GOBIN=$(BIN) $(GO) install github.com/stripe/stripe-mock@$(STRIPE_MOCK_VERSION)

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(BIN)/staticcheck ## go vet, gofmt and staticcheck
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(BIN)/staticcheck ./...

run: build images ## run the embedded default: control plane, NATS, one local instance, data in ./data
	$(BIN)/stackpro-controlplane dev --data ./data --http 127.0.0.1:8080 --nats 127.0.0.1:4222 $(RUN_FLAGS)

bench: $(BIN)/stripe-mock ## run the benchmarks (see BENCHMARKS.md)
	STRIPE_MOCK=$(BIN)/stripe-mock $(GO) test -run '^$$' -bench . -benchmem $$($(GO) list ./... | grep -v -e /controlplane/server -e /controlplane/rollout/engine)
	STRIPE_MOCK=$(BIN)/stripe-mock $(GO) test -run '^$$' -bench . -benchtime 1x ./controlplane/server
	$(GO) test -run '^$$' -bench Fleet10k -benchtime 1x -timeout 30m ./controlplane/rollout/engine

clean: ## remove bin/ (data/ is kept)
	rm -rf $(BIN)
