"""Node identity on a cluster: a ServiceAccount token checked with TokenReview.

As istiod does for ztunnel (reference/istio-ztunnel.md §7): the node proxy
sends its projected ServiceAccount token (audience `istio-ca`) as
`authorization: Bearer <token>`; the CA asks the API server whether the token
is valid for that audience (TokenReview), and

- a token of a *trusted node account* (the ztunnel DaemonSet's, Istio's
  CA_TRUSTED_NODE_ACCOUNTS) that is bound to a pod (the kubelet's projected
  tokens are: `user.extra["authentication.kubernetes.io/pod-name"]`) names
  the caller's node: that pod's `spec.nodeName`, read from the CA's
  Kubernetes source. The caller may then obtain the identities of pods
  scheduled on that node (nodeauth.authorize), as with a node credential;
- any other service account's token may obtain only its own identity
  (a waypoint replica, a workload asking for itself).

`authenticate_token` is the one check: the JSON API (server.py) calls it, and
so can an Istio gRPC CreateCertificate endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from shoal.controlplane.authority import SigningError
from shoal.controlplane.nodeauth import Caller
from shoal.core.identity.spiffe import Identity

# Istio's audience for tokens sent to the CA (ztunnel's `istio-ca` projected token).
CA_AUDIENCE = "istio-ca"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
SA_PREFIX = "system:serviceaccount:"
# A bearer token longer than this is not a Kubernetes token (JWTs are ~1 KiB).
MAX_TOKEN_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Review:
    """What the API server said about a token (TokenReview status)."""
    authenticated: bool
    username: str = ""
    audiences: tuple[str, ...] = ()
    pod_name: str = ""
    error: str = ""


# namespace, pod name -> the pod's node ("" when the pod is unknown)
NodeOfPod = Callable[[str, str], str]
ReviewToken = Callable[[str], Awaitable[Review]]


def caller_of_review(review: Review, *, trusted_nodes: Iterable[str], node_of_pod: NodeOfPod,
                     trust_domain: str) -> Caller:
    """The CA caller a reviewed token stands for (pure).

    Raises:
        SigningError: 401 when the token is not valid for the CA, 403 when a
            node account's token is not bound to a pod we know on a node.
    """
    if not review.authenticated:
        raise SigningError("token_rejected", "the ServiceAccount token was rejected by the "
                           f"TokenReview: {review.error or 'not authenticated'}", 401)
    if CA_AUDIENCE not in review.audiences:
        raise SigningError("token_audience", f"the token is not for audience {CA_AUDIENCE!r} "
                           f"(got {list(review.audiences)}); project it with that audience", 401)
    if not review.username.startswith(SA_PREFIX) or review.username.count(":") != 3:
        raise SigningError("not_a_service_account",
                           f"{review.username!r} is not a ServiceAccount token", 403)
    namespace, sa = review.username[len(SA_PREFIX):].split(":")
    identity = Identity(trust_domain=trust_domain, namespace=namespace, service_account=sa)
    if f"{namespace}/{sa}" not in set(trusted_nodes):
        return Caller(kind="waypoint", name=f"{namespace}/{sa}", identity=identity)
    if not review.pod_name:
        raise SigningError("token_not_bound", f"node account {namespace}/{sa} must use a token "
                           "bound to its pod (a projected token), not a legacy Secret token", 403)
    node = node_of_pod(namespace, review.pod_name)
    if not node:
        raise SigningError("caller_pod_unknown", f"pod {namespace}/{review.pod_name} of the "
                           "calling node proxy is not scheduled on a node the CA knows", 403)
    return Caller(kind="node", name=node, identity=identity)


async def authenticate_token(header: str, review_token: ReviewToken, *,
                             trusted_nodes: Iterable[str], node_of_pod: NodeOfPod,
                             trust_domain: str) -> Caller:
    """`authorization` header value -> Caller (TokenReview, then caller_of_review).

    Raises:
        SigningError: 401 without a bearer token or when the review fails.
    """
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise SigningError("no_credential", "present a node credential (mutual TLS) or "
                           "`authorization: Bearer <ServiceAccount token>`", 401)
    if len(token) > MAX_TOKEN_BYTES:
        raise SigningError("token_too_large", "bearer token too large", 401)
    try:
        review = await review_token(token)
    except SigningError:
        raise
    except Exception as e:     # the API server is down: the caller retries later
        raise SigningError("token_review_failed", f"TokenReview failed: {e}", 503) from e
    return caller_of_review(review, trusted_nodes=trusted_nodes, node_of_pod=node_of_pod,
                            trust_domain=trust_domain)


def review_of_status(status: Any) -> Review:
    """A TokenReview `status` (lightkube model) as a Review."""
    user = status.user if status is not None else None
    extra = (user.extra or {}) if user is not None else {}
    pods = extra.get(POD_NAME_EXTRA) or []
    return Review(authenticated=bool(status and status.authenticated),
                  username=(user.username or "") if user is not None else "",
                  audiences=tuple(status.audiences or ()) if status is not None else (),
                  pod_name=pods[0] if pods else "", error=(status.error or "") if status else "")


class TokenReviewer:
    """TokenReview through lightkube (`create` of authentication.k8s.io/v1 TokenReview)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def __call__(self, token: str) -> Review:
        from lightkube.models.authentication_v1 import TokenReviewSpec
        from lightkube.resources.authentication_v1 import TokenReview
        out = await self.client.create(TokenReview(spec=TokenReviewSpec(
            token=token, audiences=[CA_AUDIENCE])))
        return review_of_status(out.status)
