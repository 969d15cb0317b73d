"""Test support: real Envoy processes, HTTP backends, an in-process control plane."""
