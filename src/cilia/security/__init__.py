"""Trust: the CA, proxy and workload identities (SPIFFE), and who may receive which proxy's config."""
