"""veer's benchmark suite (`make bench`): the gateway's CPU cost per request against the real
alternatives, propagation latency, split accuracy, .wasm size and controller scale.
Python 3.11 stdlib only; every number comes from a real process measured in this run."""
