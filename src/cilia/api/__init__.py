"""cilia's own xDS resource types (protobuf messages served next to Envoy's)."""
