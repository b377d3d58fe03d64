"""converge: a declarative reconciler for services (API models, core, stores, adapters)."""
