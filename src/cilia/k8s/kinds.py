"""Importing this module registers every kind cilia reads."""

from cilia.k8s import backendtls, cilium, ciliumpolicy, core, egress, gateway, ingress  # noqa: F401
