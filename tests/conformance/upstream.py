"""The upstream Gateway API conformance tests of the version cilia targets, by name, with the features
each needs and whether upstream marks it provisional; and the conformance profiles. A test is core in
a profile when every feature it needs is one of that profile's core features, else extended.
"""

from __future__ import annotations

VERSION = "v1.5.1"
CHANNEL = "experimental"

# name -> features (upstream feature names)
TESTS: dict[str, tuple[str, ...]] = {
    "BackendTLSPolicy": ("Gateway", "HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicyConflictResolution": ("Gateway", "HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicyInvalidCACertificateRef": ("Gateway", "HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicyInvalidKind": ("Gateway", "HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicyObservedGenerationBump": ("Gateway", "HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicySANValidation": ("Gateway", "HTTPRoute", "BackendTLSPolicy", "BackendTLSPolicySANValidation"),
    "GRPCExactMethodMatching": ("Gateway", "GRPCRoute"),
    "GRPCRouteHeaderMatching": ("Gateway", "GRPCRoute"),
    "GRPCRouteListenerHostnameMatching": ("Gateway", "GRPCRoute"),
    "GRPCRouteNamedRule": ("Gateway", "GRPCRoute", "GRPCRouteNamedRouteRule"),
    "GRPCRouteWeight": ("Gateway", "GRPCRoute"),
    "GatewayBackendClientCertificateFeature": (
        "Gateway", "GatewayBackendClientCertificate",
        "HTTPRoute",
        "BackendTLSPolicy",
    ),
    "GatewayClassObservedGenerationBump": ("Gateway",),
    "GatewayFrontendClientCertificateValidation": (
        "Gateway", "HTTPRoute",
        "GatewayFrontendClientCertificateValidation",
    ),
    "GatewayFrontendClientCertificateValidationInsecureFallback": (
        "Gateway", "HTTPRoute",
        "GatewayFrontendClientCertificateValidation",
        "GatewayFrontendClientCertificateValidationInsecureFallback",
    ),
    "GatewayFrontendInvalidDefaultClientCertificateValidation": (
        "Gateway", "HTTPRoute",
        "GatewayFrontendClientCertificateValidation",
    ),
    "GatewayHTTPListenerIsolation": ("Gateway", "GatewayHTTPListenerIsolation", "HTTPRoute"),
    "GatewayInfrastructure": ("Gateway", "GatewayInfrastructurePropagation"),
    "GatewayInvalidFrontendClientCertificateValidation": (
        "Gateway", "HTTPRoute",
        "ReferenceGrant",
        "GatewayFrontendClientCertificateValidation",
    ),
    "GatewayInvalidRouteKind": ("Gateway",),
    "GatewayInvalidTLSBackendConfiguration": (
        "Gateway", "GatewayBackendClientCertificate",
        "HTTPRoute",
        "BackendTLSPolicy",
    ),
    "GatewayInvalidTLSConfiguration": ("Gateway",),
    "GatewayModifyListeners": ("Gateway",),
    "GatewayObservedGenerationBump": ("Gateway",),
    "GatewayOptionalAddressValue": ("Gateway", "GatewayAddressEmpty"),
    "GatewaySecretInvalidReferenceGrant": ("Gateway", "ReferenceGrant"),
    "GatewaySecretMissingReferenceGrant": ("Gateway", "ReferenceGrant"),
    "GatewaySecretReferenceGrantAllInNamespace": ("Gateway", "ReferenceGrant"),
    "GatewaySecretReferenceGrantSpecific": ("Gateway", "ReferenceGrant"),
    "GatewayStaticAddresses": ("Gateway", "GatewayStaticAddresses"),
    "GatewayWithAttachedRoutes": ("Gateway", "HTTPRoute"),
    "GatewayWithAttachedRoutesWithPort8080": ("Gateway", "GatewayPort8080", "HTTPRoute"),
    "HTTPRoute303Redirect": ("Gateway", "HTTPRoute", "HTTPRoute303RedirectStatusCode"),
    "HTTPRoute307Redirect": ("Gateway", "HTTPRoute", "HTTPRoute307RedirectStatusCode"),
    "HTTPRoute308Redirect": ("Gateway", "HTTPRoute", "HTTPRoute308RedirectStatusCode"),
    "HTTPRouteBackendProtocolH2C": ("Gateway", "HTTPRoute", "HTTPRouteBackendProtocolH2C"),
    "HTTPRouteBackendProtocolWebSocket": ("Gateway", "HTTPRoute", "HTTPRouteBackendProtocolWebSocket"),
    "HTTPRouteBackendRequestHeaderModifier": ("Gateway", "HTTPRoute", "HTTPRouteBackendRequestHeaderModification"),
    "HTTPRouteCORS": ("Gateway", "HTTPRoute", "HTTPRouteCORS"),
    "HTTPRouteCORSAllowCredentialsBehavior": ("Gateway", "HTTPRoute", "HTTPRouteCORS"),
    "HTTPRouteCrossNamespace": ("Gateway", "HTTPRoute"),
    "HTTPRouteDisallowedKind": ("Gateway", "HTTPRoute", "TLSRoute"),
    "HTTPRouteExactPathMatching": ("Gateway", "HTTPRoute"),
    "HTTPRouteHTTPSListener": ("Gateway", "HTTPRoute"),
    "HTTPRouteHTTPSListenerDetectMisdirectedRequests": (
        "Gateway", "GatewayHTTPSListenerDetectMisdirectedRequests",
        "HTTPRoute",
    ),
    "HTTPRouteHeaderMatching": ("Gateway", "HTTPRoute"),
    "HTTPRouteHostnameIntersection": ("Gateway", "HTTPRoute"),
    "HTTPRouteInvalidBackendRefUnknownKind": ("Gateway", "HTTPRoute"),
    "HTTPRouteInvalidCrossNamespaceBackendRef": ("Gateway", "HTTPRoute", "ReferenceGrant"),
    "HTTPRouteInvalidCrossNamespaceParentRef": ("Gateway", "HTTPRoute"),
    "HTTPRouteInvalidNonExistentBackendRef": ("Gateway", "HTTPRoute"),
    "HTTPRouteInvalidParentRefNotMatchingListenerPort": ("Gateway", "HTTPRoute", "HTTPRouteDestinationPortMatching"),
    "HTTPRouteInvalidParentRefNotMatchingSectionName": ("Gateway", "HTTPRoute"),
    "HTTPRouteInvalidParentRefSectionNameNotMatchingPort": ("Gateway", "HTTPRoute", "HTTPRouteParentRefPort"),
    "HTTPRouteInvalidReferenceGrant": ("Gateway", "HTTPRoute", "ReferenceGrant"),
    "HTTPRouteListenerHostnameMatching": ("Gateway", "HTTPRoute"),
    "HTTPRouteListenerPortMatching": ("Gateway", "HTTPRoute", "HTTPRouteParentRefPort"),
    "HTTPRouteMatching": ("Gateway", "HTTPRoute"),
    "HTTPRouteMatchingAcrossRoutes": ("Gateway", "HTTPRoute"),
    "HTTPRouteMethodMatching": ("Gateway", "HTTPRoute", "HTTPRouteMethodMatching"),
    "HTTPRouteNamedRule": ("Gateway", "HTTPRoute", "HTTPRouteNamedRouteRule"),
    "HTTPRouteObservedGenerationBump": ("Gateway", "HTTPRoute"),
    "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant": ("Gateway", "HTTPRoute", "ReferenceGrant"),
    "HTTPRoutePathMatchOrder": ("Gateway", "HTTPRoute"),
    "HTTPRouteQueryParamMatching": ("Gateway", "HTTPRoute", "HTTPRouteQueryParamMatching"),
    "HTTPRouteRedirectHostAndStatus": ("Gateway", "HTTPRoute"),
    "HTTPRouteRedirectPath": ("Gateway", "HTTPRoute", "HTTPRoutePathRedirect"),
    "HTTPRouteRedirectPort": ("Gateway", "HTTPRoute", "HTTPRoutePortRedirect"),
    "HTTPRouteRedirectPortAndScheme": ("Gateway", "HTTPRoute", "HTTPRoutePortRedirect", "GatewayPort8080"),
    "HTTPRouteRedirectScheme": ("Gateway", "HTTPRoute", "HTTPRouteSchemeRedirect"),
    "HTTPRouteReferenceGrant": ("Gateway", "HTTPRoute", "ReferenceGrant"),
    "HTTPRouteRequestHeaderModifier": ("Gateway", "HTTPRoute"),
    "HTTPRouteRequestHeaderModifierBackendWeights": (
        "Gateway", "HTTPRouteBackendRequestHeaderModification",
        "HTTPRoute",
    ),
    "HTTPRouteRequestMirror": ("Gateway", "HTTPRoute", "HTTPRouteRequestMirror"),
    "HTTPRouteRequestMultipleMirrors": (
        "Gateway", "HTTPRoute",
        "HTTPRouteRequestMirror",
        "HTTPRouteRequestMultipleMirrors",
    ),
    "HTTPRouteRequestPercentageMirror": ("Gateway", "HTTPRoute", "HTTPRouteRequestPercentageMirror"),
    "HTTPRouteResponseHeaderModifier": ("Gateway", "HTTPRoute", "HTTPRouteResponseHeaderModification"),
    "HTTPRouteRewriteHost": ("Gateway", "HTTPRoute", "HTTPRouteHostRewrite"),
    "HTTPRouteRewritePath": ("Gateway", "HTTPRoute", "HTTPRoutePathRewrite"),
    "HTTPRouteServiceTypes": ("Gateway", "HTTPRoute"),
    "HTTPRouteSimpleSameNamespace": ("Gateway", "HTTPRoute"),
    "HTTPRouteTimeoutBackendRequest": ("Gateway", "HTTPRoute", "HTTPRouteBackendTimeout"),
    "HTTPRouteTimeoutRequest": ("Gateway", "HTTPRoute", "HTTPRouteRequestTimeout"),
    "HTTPRouteWeight": ("Gateway", "HTTPRoute"),
    "ListenerSetAllowedNamespaceNone": ("Gateway", "ListenerSet"),
    "ListenerSetAllowedNamespaceSame": ("Gateway", "ListenerSet"),
    "ListenerSetAllowedNamespaceSelector": ("Gateway", "ListenerSet"),
    "ListenerSetAllowedRoutesNamespaces": ("Gateway", "ListenerSet", "HTTPRoute", "ReferenceGrant"),
    "ListenerSetAllowedRoutesSupportedKinds": ("Gateway", "ListenerSet", "TLSRoute"),
    "ListenerSetDefaultNotAllowed": ("Gateway", "ListenerSet"),
    "ListenerSetHTTPRouting": ("Gateway", "ListenerSet", "HTTPRoute"),
    "ListenerSetHostnameConflict": ("Gateway", "ListenerSet"),
    "ListenerSetProtocolConflict": ("Gateway", "ListenerSet"),
    "ListenerSetReferenceGrant": ("Gateway", "ListenerSet", "ReferenceGrant"),
    "MeshBasic": ("Mesh",),
    "MeshConsumerRoute": ("Mesh", "MeshConsumerRoute", "HTTPRoute", "HTTPRouteResponseHeaderModification"),
    "MeshFrontend": ("Mesh", "HTTPRoute", "HTTPRouteResponseHeaderModification"),
    "MeshFrontendHostname": ("Mesh", "MeshClusterIPMatching", "HTTPRoute", "HTTPRouteResponseHeaderModification"),
    "MeshGRPCRouteWeight": ("Mesh", "GRPCRoute"),
    "MeshHTTPRoute303Redirect": ("Mesh", "HTTPRoute", "HTTPRoute303RedirectStatusCode"),
    "MeshHTTPRoute307Redirect": ("Mesh", "HTTPRoute", "HTTPRoute307RedirectStatusCode"),
    "MeshHTTPRoute308Redirect": ("Mesh", "HTTPRoute", "HTTPRoute308RedirectStatusCode"),
    "MeshHTTPRouteBackendRequestHeaderModifier": ("Mesh", "HTTPRoute", "MeshHTTPRouteBackendRequestHeaderModification"),
    "MeshHTTPRouteMatching": ("Mesh", "HTTPRoute"),
    "MeshHTTPRouteNamedRule": ("Mesh", "HTTPRoute", "MeshHTTPRouteNamedRouteRule"),
    "MeshHTTPRouteQueryParamMatching": ("Mesh", "HTTPRoute", "MeshHTTPRouteQueryParamMatching"),
    "MeshHTTPRouteRedirectHostAndStatus": ("Mesh", "HTTPRoute"),
    "MeshHTTPRouteRedirectPath": ("Mesh", "HTTPRoute", "MeshHTTPRouteRedirectPath"),
    "MeshHTTPRouteRedirectPort": ("Mesh", "HTTPRoute", "MeshHTTPRouteRedirectPort"),
    "MeshHTTPRouteRequestHeaderModifier": ("Mesh", "HTTPRoute"),
    "MeshHTTPRouteRewritePath": ("Mesh", "HTTPRoute", "MeshHTTPRouteRewritePath"),
    "MeshHTTPRouteSchemeRedirect": ("Mesh", "HTTPRoute", "MeshHTTPRouteSchemeRedirect"),
    "MeshHTTPRouteSimpleSameNamespace": ("Mesh", "HTTPRoute"),
    "MeshHTTPRouteWeight": ("Mesh", "HTTPRoute"),
    "MeshPorts": ("Mesh", "HTTPRoute", "HTTPRouteParentRefPort", "HTTPRouteResponseHeaderModification"),
    "MeshTrafficSplit": ("Mesh", "HTTPRoute"),
    "TLSRouteHostnameIntersection": ("Gateway", "TLSRoute"),
    "TLSRouteInvalidBackendRefNonexistent": ("Gateway", "TLSRoute"),
    "TLSRouteInvalidBackendRefUnknownKind": ("Gateway", "TLSRoute"),
    "TLSRouteInvalidNoMatchingListener": ("Gateway", "TLSRoute"),
    "TLSRouteInvalidNoMatchingListenerHostname": ("Gateway", "TLSRoute"),
    "TLSRouteInvalidReferenceGrant": ("Gateway", "TLSRoute", "ReferenceGrant"),
    "TLSRouteListenerMixedTerminationNotSupported": ("Gateway", "TLSRoute", "TLSRouteModeTerminate"),
    "TLSRouteListenerPassthroughSupportedKinds": ("Gateway", "TLSRoute"),
    "TLSRouteListenerTerminateNotSupported": ("Gateway", "TLSRoute"),
    "TLSRouteListenerTerminateSupportedKinds": ("Gateway", "TLSRoute", "TLSRouteModeTerminate"),
    "TLSRouteMixedTerminationSameNamespace": ("Gateway", "TLSRoute", "TLSRouteModeTerminate", "TLSRouteModeMixed"),
    "TLSRouteSimpleSameNamespace": ("Gateway", "TLSRoute"),
    "TLSRouteTerminateSimpleSameNamespace": ("Gateway", "TLSRoute", "TLSRouteModeTerminate"),
    "UDPRoute": ("UDPRoute", "Gateway"),
}
PROVISIONAL = frozenset({
    "GRPCRouteNamedRule",
    "GatewayInfrastructure",
    "GatewayOptionalAddressValue",
    "HTTPRoute303Redirect",
    "HTTPRoute307Redirect",
    "HTTPRoute308Redirect",
    "HTTPRouteNamedRule",
    "HTTPRouteRequestPercentageMirror",
    "MeshHTTPRoute303Redirect",
    "MeshHTTPRoute307Redirect",
    "MeshHTTPRoute308Redirect",
    "MeshHTTPRouteNamedRule",
    "TLSRouteMixedTerminationSameNamespace",
    "TLSRouteTerminateSimpleSameNamespace",
    "UDPRoute",
})

# Tests of later releases that the runner replays too (the behaviours were asked for before the
# target version had them); reported apart from the target version's results.
LATER_TESTS: dict[str, tuple[str, ...]] = {
    "GatewayInvalidParametersRef": ("Gateway",),
    "HTTPRouteRetry": ("Gateway", "HTTPRoute", "HTTPRouteRetry"),
}

CORE = frozenset({"Gateway", "ReferenceGrant", "HTTPRoute", "TLSRoute", "GRPCRoute", "Mesh"})
PROFILES = ("GATEWAY-HTTP", "GATEWAY-TLS", "GATEWAY-GRPC", "MESH-HTTP", "MESH-GRPC")
PROFILE_CORE = {
    "GATEWAY-HTTP": frozenset({"Gateway", "ReferenceGrant", "HTTPRoute"}),
    "GATEWAY-TLS": frozenset({"Gateway", "ReferenceGrant", "TLSRoute"}),
    "GATEWAY-GRPC": frozenset({"Gateway", "ReferenceGrant", "GRPCRoute"}),
    "MESH-HTTP": frozenset({"Mesh", "HTTPRoute"}),
    "MESH-GRPC": frozenset({"Mesh", "GRPCRoute"}),
}


def profiles_of(features: tuple[str, ...]) -> tuple[str, ...]:
    """The profiles a test is reported in: by the route kind it needs; Gateway-only tests in every
    Gateway profile (as upstream runs them); tests needing no profile's kind (UDPRoute) in none."""
    f = set(features)
    if "Mesh" in f:
        return ("MESH-GRPC",) if "GRPCRoute" in f else ("MESH-HTTP",)
    if "UDPRoute" in f:
        return ()
    if "HTTPRoute" in f:
        return ("GATEWAY-HTTP",)
    if "GRPCRoute" in f:
        return ("GATEWAY-GRPC",)
    if "TLSRoute" in f:
        return ("GATEWAY-TLS",)
    if "ListenerSet" in f:
        return ("GATEWAY-HTTP",)
    return ("GATEWAY-HTTP", "GATEWAY-TLS", "GATEWAY-GRPC")


def is_core(features: tuple[str, ...], profile: str) -> bool:
    return set(features) <= PROFILE_CORE[profile]
