"""kubeforge: a Kubernetes operator for the whole life of a model (train, tune, serve)."""

__version__ = "0.1.0"
