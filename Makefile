# The README's commands. Each one runs scripts/setup.sh first, so a fresh machine works.
.PHONY: test demo demo-faulty bench soak setup wasm

setup:
	scripts/setup.sh

test:
	scripts/test.sh

wasm:
	cargo build -p veer-filter --target wasm32-unknown-unknown --release
