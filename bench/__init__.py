"""cilia benchmarks (`python -m bench`): xDS fan-out against a grpc.aio floor, translation, real Envoy."""
