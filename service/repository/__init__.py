"""Which model versions are served: the registry (loads, swaps, leases) over the model
repository (``modelrepo``), and per-model version and batching policies."""
