"""cilia: an Envoy xDS control plane for a service mesh, sidecar-less or with sidecars."""

__version__ = "0.1.0"
