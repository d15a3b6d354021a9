# The README's commands. Each one runs scripts/setup.sh first, so a fresh machine works.
.PHONY: test demo demo-faulty demo-hold demo-k8s bench soak setup wasm

setup:
	scripts/setup.sh

test:
	scripts/test.sh

wasm:
	scripts/build-filter.sh

# The demo: a canary rollout of v2 through the real gateway, Prometheus and controller, shown
# live, with a report in out/ (tests/src/demo.rs). demo-faulty: v2 breaks part-way and is rolled
# back. demo-hold: the healthy run, then everything stays up to explore until Ctrl-C. Each exits
# non-zero if the rollout did not end as it should. DEMO_ARGS="--users 500" etc.
# The first build takes minutes, so each step first says what it builds.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
DEMO_BUILD = \
	scripts/setup.sh && \
	echo "demo: building the filter, $(TARGET_DIR)/wasm32-unknown-unknown/release/veer_filter.wasm" && \
	scripts/build-filter.sh && \
	echo "demo: building the controller, $(TARGET_DIR)/debug/veer" && \
	cargo build -p veer-controller --bins && \
	echo "demo: building the demo, $(TARGET_DIR)/debug/demo" && \
	cargo build -p veer-e2e --bin demo

demo:
	@$(DEMO_BUILD)
	$(TARGET_DIR)/debug/demo $(DEMO_ARGS)

demo-faulty:
	@$(DEMO_BUILD)
	$(TARGET_DIR)/debug/demo --faulty $(DEMO_ARGS)

demo-hold:
	@$(DEMO_BUILD)
	$(TARGET_DIR)/debug/demo --hold $(DEMO_ARGS)

# The same release with the controller in Kubernetes mode, on a local control plane
# (scripts/kube-up.sh: built with Go on first use and cached in ~/.cache/veer).
demo-k8s:
	@$(DEMO_BUILD) && \
	echo "demo: building the Kubernetes control plane (scripts/kube-build.sh; cached after the first time)" && \
	scripts/kube-build.sh
	$(TARGET_DIR)/debug/demo --kubernetes $(DEMO_ARGS)

# Benchmarks (BENCHMARKS.md): about 37 minutes on 2 cores with the builds; not part of `make test`.
# The filter and the V8 decision module are built twice: first with a 4096-slot memory of
# verified cookies (variant 3m; what growing it would buy), then as they ship (256).
WASM_OUT = $(TARGET_DIR)/wasm32-unknown-unknown/release
bench:
	scripts/setup.sh
	scripts/build-filter.sh --features verified-memory-4096
	cp $(WASM_OUT)/veer_filter.wasm $(WASM_OUT)/veer_filter_verified_memory_4096.wasm
	cargo build -p veer-bench-decision-v8 --target wasm32-unknown-unknown --release --features verified-memory-4096
	cp $(WASM_OUT)/veer_bench_decision_v8.wasm $(WASM_OUT)/veer_bench_decision_v8_memory_4096.wasm
	scripts/build-filter.sh
	cargo build -p veer-bench-empty-filter -p veer-bench-probe-filter -p veer-bench-decision-v8 --target wasm32-unknown-unknown --release
	cargo build --release -p veer-controller --bins
	python3 bench/run.py

# Soak (RELIABILITY.md): 10 minutes of wrk load through the gateway while the controller moves
# the weights (a new table about every 100 ms); SOAK_SECONDS=60 for a short run.
soak:
	scripts/setup.sh
	scripts/build-filter.sh
	cargo build --release -p veer-controller --bins
	VEER_CONTROLLER=target/release/veer cargo run --release -p veer-e2e --bin soak
