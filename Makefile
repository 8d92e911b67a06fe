# hull: the two commands a new user needs are `make demo` and `make test` (see README.md).
# Everything built outside cargo's target/ lives in $(HULL_CACHE_DIR), never in the tree.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

HULL_CACHE_DIR ?= $(HOME)/.cache/hull
export HULL_CACHE_DIR
CARGO ?= cargo
HOST_TRIPLE := x86_64-unknown-linux-gnu
AGENT_BIN := target/$(HOST_TRIPLE)/release/hull-agent

# Debian 12 packages the build, the image and the tests use. Recommends are not installed
# (QEMU's pull in a GUI), so firmware and helpers are listed by name. The CRI test uses the
# CNI plugins (bridge, host-local, loopback); protoc builds the CRI client's gRPC code.
APT_PACKAGES := build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils lz4 \
	linux-source-6.1 qemu-system-x86 qemu-system-data seabios qemu-system-common \
	busybox-static containerd runc iproute2 procps util-linux e2fsprogs \
	libseccomp-dev libcap-ng-dev fio \
	containernetworking-plugins protobuf-compiler

.PHONY: help deps build agent image lint test demo install clean-cache bench-deps fuzz-smoke fuzz

help:
	@echo "make demo   install what is missing, build, and boot a hull guest"
	@echo "make test   the whole test suite (lints, unit, integration, end to end)"
	@echo "make image  build the guest kernel and initrd into $(HULL_CACHE_DIR)"
	@echo "make deps   install missing Debian packages (as root)"
	@echo "make bench-deps  install the benchmark peers Debian lacks (virtiofsd, vhost-device-vsock) into the cache"
	@echo "make fuzz   run every fuzz target with cargo-fuzz (nightly; FUZZ_RUNS=1000000 inputs each)"
	@echo "make install  install the shim, backends, guest image and default configuration"
	@echo "             (PREFIX=/usr/local, DESTDIR= for staging)"

deps:
	@echo "==> checking system packages"
	@missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "    all present"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "error: missing Debian packages:$$missing" >&2; \
		echo "       install them as root: apt-get install$$missing" >&2; exit 1; \
	else \
		echo "==> installing missing Debian packages:$$missing"; \
		apt-get update -q >/dev/null; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
		echo "    installed"; \
	fi
	@command -v $(CARGO) >/dev/null || { \
		echo "error: cargo is missing: install the Rust toolchain 1.95 or newer (rustup.rs)" >&2; exit 1; }

build:
	@echo "==> building hull (release)"
	$(CARGO) build --locked --release --workspace

# The agent is /init of the guest: linked statically, as the initrd has no shared libraries.
# A separate --target keeps its flags from invalidating the host build.
agent:
	@echo "==> building hull-agent, statically linked, for the guest image"
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --locked --release -p hull-agent --target $(HOST_TRIPLE)

image: agent
	@echo "==> building the guest image into $(HULL_CACHE_DIR)"
	agent/image/build-kernel.sh
	agent/image/build-initrd.sh $(AGENT_BIN)

# The peers hull-bench compares with that Debian does not package: upstream virtiofsd (for
# `hull-bench fs`), the release hull-fs's library is, and rust-vmm's vhost-device-vsock (for
# `hull-bench vsock`), each installed once into the cache at a pinned version.
VIRTIOFSD_VERSION := 1.14.0
VIRTIOFSD_ROOT := $(HULL_CACHE_DIR)/virtiofsd-$(VIRTIOFSD_VERSION)
VHOST_DEVICE_VSOCK_VERSION := 0.3.0
VHOST_DEVICE_VSOCK_ROOT := $(HULL_CACHE_DIR)/vhost-device-vsock-$(VHOST_DEVICE_VSOCK_VERSION)
bench-deps:
	@if [ -x $(VIRTIOFSD_ROOT)/bin/virtiofsd ]; then \
		echo "==> virtiofsd $(VIRTIOFSD_VERSION): $(VIRTIOFSD_ROOT)/bin/virtiofsd"; \
	else \
		echo "==> installing virtiofsd $(VIRTIOFSD_VERSION) into $(VIRTIOFSD_ROOT) (hull-bench fs's peer)"; \
		$(CARGO) install virtiofsd --version $(VIRTIOFSD_VERSION) --locked --root $(VIRTIOFSD_ROOT); \
	fi
	@if [ -x $(VHOST_DEVICE_VSOCK_ROOT)/bin/vhost-device-vsock ]; then \
		echo "==> vhost-device-vsock $(VHOST_DEVICE_VSOCK_VERSION): $(VHOST_DEVICE_VSOCK_ROOT)/bin/vhost-device-vsock"; \
	else \
		echo "==> installing vhost-device-vsock $(VHOST_DEVICE_VSOCK_VERSION) into $(VHOST_DEVICE_VSOCK_ROOT) (hull-bench vsock's peer)"; \
		$(CARGO) install vhost-device-vsock --version $(VHOST_DEVICE_VSOCK_VERSION) --locked --root $(VHOST_DEVICE_VSOCK_ROOT); \
	fi

lint:
	@echo "==> lints: rustfmt and clippy"
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

test: deps lint image bench-deps
	@echo "==> tests: unit, integration and end to end"
	@rm -f target/test-skips.log
	HULL_TEST_STRICT=1 HULL_SKIP_LOG=$(CURDIR)/target/test-skips.log \
		$(CARGO) test --locked --release --workspace
	$(MAKE) --no-print-directory fuzz-smoke
	@if [ -s target/test-skips.log ]; then \
		echo "==> skipped (each names what this machine lacks):"; sed 's/^/    /' target/test-skips.log; \
	fi

# The fuzz targets (fuzz/, its own workspace) over their corpus and FUZZ_SMOKE_RUNS generated
# inputs each, on the stable toolchain. Built in the workspace's target directory, in release
# like `test`, so the dependencies `test` built are reused.
FUZZ_TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
FUZZ_SMOKE_RUNS ?= 20000
fuzz-smoke:
	@echo "==> fuzz smoke: every fuzz target over its corpus and $(FUZZ_SMOKE_RUNS) generated inputs"
	CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) HULL_FUZZ_SMOKE_RUNS=$(FUZZ_SMOKE_RUNS) \
		$(CARGO) test --locked --release --manifest-path fuzz/Cargo.toml

# Every fuzz target under libFuzzer for FUZZ_RUNS inputs (FUZZ_TARGETS to pick some). Needs
# the nightly toolchain and cargo-fuzz; new corpus entries go to $(HULL_CACHE_DIR)/fuzz-corpus,
# crashes to fuzz/artifacts/<target>/. Built without a sanitizer: the code is Rust, and what
# its unsafe blocks hand the kernel (iovecs into guest memory) no sanitizer sees.
FUZZ_RUNS ?= 1000000
FUZZ_MAX_LEN ?= 4096
FUZZ_TARGETS ?= virtq_chain blk_request net_rx_tx vsock_packet vhost_user_msg virtio_mmio \
	fuse_request agent_request oci_spec config_toml
FUZZ_NIGHTLY_DIR ?= $(FUZZ_TARGET_DIR)/fuzz-nightly
fuzz:
	@rustup run nightly rustc --version >/dev/null 2>&1 || { \
		echo "error: make fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
	@$(CARGO) fuzz --version >/dev/null 2>&1 || { \
		echo "error: make fuzz needs cargo-fuzz: cargo install cargo-fuzz" >&2; exit 1; }
	CARGO_TARGET_DIR=$(FUZZ_NIGHTLY_DIR) $(CARGO) +nightly fuzz build --no-default-features --features libfuzzer -s none
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(HULL_CACHE_DIR)/fuzz-corpus/$$t; \
		echo "==> fuzzing $$t for $(FUZZ_RUNS) inputs"; \
		CARGO_TARGET_DIR=$(FUZZ_NIGHTLY_DIR) $(CARGO) +nightly fuzz run --no-default-features --features libfuzzer -s none $$t \
			$(HULL_CACHE_DIR)/fuzz-corpus/$$t fuzz/corpus/$$t -- \
			-runs=$(FUZZ_RUNS) -max_len=$(FUZZ_MAX_LEN) -timeout=10 -print_final_stats=1 2>&1 \
			| grep -vE "^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|RELOAD)" || exit 1; \
	done

demo: deps build image
	@echo "==> running a busybox container in a hull microVM through a private containerd"
	target/release/hull-demo target/release

# PREFIX and DESTDIR are read by the script; see its header.
install: build image
	BIN_SRC=$(CURDIR)/target/release shim/install.sh

clean-cache:
	rm -rf $(HULL_CACHE_DIR)
