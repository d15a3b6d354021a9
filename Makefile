# The README's commands. Each one runs scripts/setup.sh first, so a fresh machine works.
.PHONY: test demo demo-faulty bench soak setup wasm

setup:
	scripts/setup.sh

test:
	scripts/test.sh

wasm:
	scripts/build-filter.sh

# The demo: a canary rollout of v2 through the real gateway, Prometheus and controller, shown
# live, with a report in out/ (tests/src/demo.rs). demo-faulty: v2 breaks part-way and is rolled
# back. Both exit non-zero if the rollout did not end as it should. DEMO_ARGS="--users 500" etc.
demo:
	scripts/setup.sh
	scripts/build-filter.sh
	cargo build -p veer-controller --bins
	cargo run -q -p veer-e2e --bin demo -- $(DEMO_ARGS)

demo-faulty:
	scripts/setup.sh
	scripts/build-filter.sh
	cargo build -p veer-controller --bins
	cargo run -q -p veer-e2e --bin demo -- --faulty $(DEMO_ARGS)

# Benchmarks (BENCHMARKS.md): about 30 minutes on 2 cores with the builds; not part of `make test`.
bench:
	scripts/setup.sh
	scripts/build-filter.sh
	cargo build -p veer-bench-empty-filter -p veer-bench-probe-filter --target wasm32-unknown-unknown --release
	cargo build --release -p veer-controller --bins
	python3 bench/run.py

# Soak (RELIABILITY.md): 10 minutes of wrk load through the gateway while the controller moves
# the weights (a new table about every 100 ms); SOAK_SECONDS=60 for a short run.
soak:
	scripts/setup.sh
	scripts/build-filter.sh
	cargo build --release -p veer-controller --bins
	VEER_CONTROLLER=target/release/veer cargo run --release -p veer-e2e --bin soak
