# weft — build, test, demo, bench. Everything that needs root says so.
GO        ?= go
BIN       := bin
BINARIES  := weftd weft-cni weftctl
GOFLAGS   ?=
export GOFLAGS
# What --version prints: the nearest tag, commits since it and the commit.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/weftnet/weft/cmd/internal/buildinfo.Version=$(VERSION)
DEPS      := sh deploy/prereq/install.sh

.PHONY: conformance conformance-netpol conformance-bins bench-restart bench-nat bench-rekey all build image deps deps-demo deps-test deps-bench test test-unit test-netns test-kube kube-bins demo bench fuzz vet clean lab-down

all: build

build:
	@mkdir -p $(BIN)
	@echo "building weftd weft-cni weftctl $(VERSION) (a first build downloads modules: about 2 min)"
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/weftd ./cmd/weft-cni ./cmd/weftctl

# weft's container image as a tarball, without a container daemon
# (deploy/image, a nested module: go-containerregistry stays out of weft's
# go.mod): weftd, weft-cni and weftctl built static (CGO_ENABLED=0) into
# bin/static, one layer, no shell, tagged ghcr.io/weftnet/weft:$(VERSION).
# Load it with `ctr -n k8s.io images import bin/weft-image.tar` or `kind
# load image-archive bin/weft-image.tar`; push it with crane (README: Install).
IMAGE_TAR  := $(BIN)/weft-image.tar
PINNED_TAG := $(shell sed -n 's/^ *newTag: *//p' deploy/kustomization.yaml)
image:
	@mkdir -p $(BIN)
	cd deploy/image && $(GO) run ./cmd/weft-image -root $(CURDIR) -version $(VERSION) -o $(CURDIR)/$(IMAGE_TAR) -bin-dir $(CURDIR)/$(BIN)/static
	@if [ "$(VERSION)" != "$(PINNED_TAG)" ]; then echo "note: deploy/ installs ghcr.io/weftnet/weft:$(PINNED_TAG); for this build set its tag $(VERSION) (README: Install)"; fi

# The host's packages and kernel modules (deploy/prereq/prereq.tsv):
# installs only what is missing (apt-get; `apt-get update` only then),
# loads the modules; without apt-get it prints what to install and stops.
# `make deps` takes all tiers; demo, test and bench take their own first.
deps:
	@$(DEPS) demo test bench
deps-demo:
	@$(DEPS) demo
deps-test:
	@$(DEPS) test
deps-bench:
	@$(DEPS) bench

# vet, gofmt, and vet again for another OS of every package that is not a
# Linux program (the three commands, the bench runner and the CNI bench are
# TUN and namespace programs): the platform pairs (_linux.go beside a
# portable half) must stay true.
PORTABLE = $$($(GO) list ./... | grep -v -e /cmd/ -e /bench/cmd/ -e /bench/cni)
vet:
	$(GO) vet ./...
	cd deploy/image && $(GO) vet ./...
	GOOS=darwin $(GO) vet $(PORTABLE)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

# The netns tier (real TUN, UDP, CNI, kernel vxlan interop; needs root)
# right after the build: it mostly waits on the network and on timers, and
# on a fresh machine the Kubernetes build of test-kube (started beside it by
# .ci/run) uses those minutes. Then vet and the unit tier (race detector),
# which compile everything again. The test tiers skip go test's own vet
# pass (-vet=off): `make vet` runs all of vet's checks once, a superset.
test: deps-test build test-netns vet test-unit test-kube

test-unit:
	$(GO) test -race -count=1 -short -vet=off ./...
	cd deploy/image && $(GO) test -race -count=1 -short -vet=off ./...

test-netns: deps-test
	@if [ "$$(id -u)" != 0 ]; then echo "test-netns needs root (network namespaces, TUN)"; exit 1; fi
	WEFT_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -count=1 -p 1 -vet=off -timeout 15m ./...

# Real Kubernetes (deploy/e2e, a nested module): etcd, kube-apiserver,
# kube-controller-manager --allocate-node-cidrs, kube-scheduler and two
# nodes (containerd, kube-proxy, kubelet) in lab namespaces, weft installed
# as shipped: its image (the code of `make image`) imported with ctr and
# `kubectl apply -k` of an overlay of deploy/; plus the manifest checks, a
# server-side dry run of deploy/ and the image module's own tests. Needs
# root, containerd, runc, iptables, busybox-static, gcc. The first
# run on a machine builds Kubernetes v1.34.4 and etcd v3.6.16 from the Go
# module proxy into /var/cache/weft-e2e (README: Kubernetes).
test-kube: deps-test build
	@if [ "$$(id -u)" != 0 ]; then echo "test-kube needs root (network namespaces, containerd, kubelet)"; exit 1; fi
	cd deploy/image && $(GO) vet ./... && $(GO) test -count=1 ./...
	cd deploy/e2e && $(GO) vet . && WEFT_VERSION=$(VERSION) WEFT_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 60m .

# Only the Kubernetes and etcd binaries of test-kube, and the CoreDNS and
# agnhost of its Services checks, into their caches (a no-op when cached).
# .ci/run starts it beside `make test` on a fresh machine; test-kube waits
# for it on the cache locks.
kube-bins:
	cd deploy/e2e && $(GO) test -count=1 -run '^(TestKubeBinaries|TestServiceBinaries)$$' -timeout 60m .

# The upstream proof: the [sig-network] [Conformance] tests of the Kubernetes
# e2e suite (e2e.test v1.34.4, built from the Go module with agnhost and
# CoreDNS; images made locally) against test-kube's cluster, as the final
# subtest of TestKubernetes (TestConformance, WEFT_CONFORMANCE=1). Writes
# the log, JUnit report and summary to /var/tmp/weft-conformance/<time>/
# (WEFT_CONFORMANCE_RESULTS). Not part of `make test`: the build of e2e.test
# and the run take longer than CI's budget allows (README: make conformance).
conformance: deps-test build
	@if [ "$$(id -u)" != 0 ]; then echo "conformance needs root (network namespaces, containerd, kubelet)"; exit 1; fi
	cd deploy/e2e && $(GO) vet . && WEFT_CONFORMANCE=1 WEFT_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 180m \
		-run '^(TestServiceBinaries|TestE2EBinary|TestConformanceDryRun|TestConformance)$$' .

# The upstream NetworkPolicy suite (test/e2e/network/netpol of e2e.test
# v1.34.4, focus `[sig-network] Netpol`) the same way, against weft's
# enforcement (weftd --network-policy, on in the DaemonSet). Long (README:
# NetworkPolicy): not part of `make test`.
conformance-netpol: deps-test build
	@if [ "$$(id -u)" != 0 ]; then echo "conformance-netpol needs root (network namespaces, containerd, kubelet)"; exit 1; fi
	cd deploy/e2e && $(GO) vet . && WEFT_CONFORMANCE=1 WEFT_CONFORMANCE_FOCUS=netpol WEFT_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 240m \
		-run '^(TestServiceBinaries|TestE2EBinary|TestConformanceDryRun|TestConformance)$$' .

# Only the binaries of make conformance (e2e.test, agnhost, CoreDNS) into
# their caches, and e2e.test's dry run of the focus (no cluster).
conformance-bins:
	cd deploy/e2e && WEFT_CONFORMANCE=1 $(GO) test -count=1 -v -timeout 60m -run '^(TestServiceBinaries|TestE2EBinary|TestConformanceDryRun)$$' .

# The netns lab end to end: build, 3 nodes on 2 sites, pods, ping + TCP
# across every node pair, summary, teardown. Needs root and iproute2.
# DEMO_ARGS adds weftctl demo flags: `make demo DEMO_ARGS=--dual-stack`
# (IPv6 pods beside IPv4, both probed; deploy/lab/README.md).
DEMO_ARGS ?=
demo: deps-demo build
	$(BIN)/weftctl demo --nodes 3 --sites 2 --pods-per-node 1 $(DEMO_ARGS)

lab-down: deps-demo build
	$(BIN)/weftctl lab down

# iperf3 + ping over the netns lab for raw, host-gw, kernel-vxlan, wireguard-go,
# weft-vxlan and weft-wireguard, interleaved in one run (bench/README.md).
# Needs root, iperf3, wireguard-tools (make deps-bench). BENCH_QUICK=1: 1-repetition smoke.
bench: deps-bench build
	@if [ "$$(id -u)" != 0 ]; then echo "bench needs root (network namespaces, TUN)"; exit 1; fi
	$(GO) build -o $(BIN)/weftbench ./bench/cmd/weftbench
	$(BIN)/weftbench -bin-dir $(CURDIR)/$(BIN)

# One 3-minute iperf3 stream over weft's WireGuard across the 120 s rekey,
# with a UDP probe every 10 ms (bench/rekey_linux.go): fails on a gap over
# 100 ms; writes bench/results/rekey-{latest.json,<date>.md}.
bench-rekey: deps-bench build
	@if [ "$$(id -u)" != 0 ]; then echo "bench-rekey needs root (network namespaces, TUN)"; exit 1; fi
	$(GO) build -o $(BIN)/weftbench ./bench/cmd/weftbench
	$(BIN)/weftbench -rekey -bin-dir $(CURDIR)/$(BIN)

# Pod traffic through restarts of weftd (bench/restart_linux.go): a TCP
# stream and a 10 ms UDP probe between two pods while the sender's weftd
# is killed (SIGKILL) or stopped (SIGTERM) and started again, over VXLAN
# and WireGuard; writes bench/results/restart-{latest.json,<date>.md}.
bench-restart: deps-demo build
	@if [ "$$(id -u)" != 0 ]; then echo "bench-restart needs root (network namespaces, TUN)"; exit 1; fi
	$(GO) build -o $(BIN)/weftbench ./bench/cmd/weftbench
	$(BIN)/weftbench -restart -bin-dir $(CURDIR)/$(BIN)

# Pod-to-pod TCP across the lab's NAT topology (bench/nat_linux.go): between
# public nodes, from behind NAT and back, and relayed, beside the plain lab's
# WireGuard in the same run; writes bench/results/nat-{latest.json,<date>.md}.
bench-nat: deps-bench build
	@if [ "$$(id -u)" != 0 ]; then echo "bench-nat needs root (network namespaces, TUN)"; exit 1; fi
	$(GO) build -o $(BIN)/weftbench ./bench/cmd/weftbench
	$(BIN)/weftbench -nat -bin-dir $(CURDIR)/$(BIN)

fuzz:
	$(GO) test -run XXX -fuzz FuzzFrameDecode -fuzztime 30s ./encap/vxlan
	$(GO) test -run XXX -fuzz FuzzSplitFrame -fuzztime 30s ./encap/offload
	$(GO) test -run XXX -fuzz FuzzCoalesce -fuzztime 30s ./encap/offload
	$(GO) test -run XXX -fuzz FuzzRecordUnmarshal -fuzztime 30s ./peer
	$(GO) test -run XXX -fuzz FuzzParseTag -fuzztime 30s ./peer
	$(GO) test -run XXX -fuzz FuzzTransportHeader -fuzztime 30s ./encap/wireguard/internal/device
	$(GO) test -run XXX -fuzz FuzzOpenTransport -fuzztime 30s ./encap/wireguard/internal/device
	$(GO) test -run XXX -fuzz FuzzControlMessages -fuzztime 30s ./encap/wireguard

clean:
	rm -rf $(BIN)
