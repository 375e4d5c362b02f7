"""controlplane/tokenauth.py: which caller a reviewed ServiceAccount token is (pure)."""

import asyncio

import pytest

from shoal.controlplane.authority import SigningError
from shoal.controlplane.tokenauth import Review, authenticate_token, caller_of_review

NODE_SA = "system:serviceaccount:shoal-system:shoal-ztunnel"
TRUSTED = ("shoal-system/shoal-ztunnel",)
PODS = {("shoal-system", "zt-a"): "node-a"}


def caller(review):
    return caller_of_review(review, trusted_nodes=TRUSTED, trust_domain="cluster.local",
                            node_of_pod=lambda ns, name: PODS.get((ns, name), ""))


def test_a_bound_node_token_names_the_node_of_its_pod():
    c = caller(Review(authenticated=True, username=NODE_SA, audiences=("istio-ca",), pod_name="zt-a"))
    assert (c.kind, c.name) == ("node", "node-a")
    assert c.identity.uri == "spiffe://cluster.local/ns/shoal-system/sa/shoal-ztunnel"


@pytest.mark.parametrize("review, status, code", [
    (Review(authenticated=False, error="invalid bearer token"), 401, "token_rejected"),
    (Review(authenticated=True, username=NODE_SA, audiences=("api",), pod_name="zt-a"), 401,
     "token_audience"),
    (Review(authenticated=True, username="alice", audiences=("istio-ca",)), 403,
     "not_a_service_account"),
    (Review(authenticated=True, username=NODE_SA, audiences=("istio-ca",)), 403, "token_not_bound"),
    (Review(authenticated=True, username=NODE_SA, audiences=("istio-ca",), pod_name="zt-gone"), 403,
     "caller_pod_unknown"),
])
def test_refusals_carry_a_status_and_a_code(review, status, code):
    with pytest.raises(SigningError) as e:
        caller(review)
    assert (e.value.status, e.value.code) == (status, code)


def test_other_accounts_are_callers_for_their_own_identity_only():
    c = caller(Review(authenticated=True, username="system:serviceaccount:shop:waypoint",
                      audiences=("istio-ca",)))
    assert (c.kind, c.name) == ("waypoint", "shop/waypoint")
    assert c.identity.uri == "spiffe://cluster.local/ns/shop/sa/waypoint"


@pytest.mark.parametrize("header", ["", "Basic abc", "Bearer ", "bearer"])
def test_a_missing_bearer_token_is_401(header):
    async def never(token):
        raise AssertionError("no review without a token")
    with pytest.raises(SigningError) as e:
        asyncio.run(authenticate_token(header, never, trusted_nodes=TRUSTED,
                                       node_of_pod=lambda ns, n: "", trust_domain="cluster.local"))
    assert (e.value.status, e.value.code) == (401, "no_credential")


def test_an_unreachable_api_is_503():
    async def down(token):
        raise OSError("connection refused")
    with pytest.raises(SigningError) as e:
        asyncio.run(authenticate_token("Bearer t", down, trusted_nodes=TRUSTED,
                                       node_of_pod=lambda ns, n: "", trust_domain="cluster.local"))
    assert e.value.status == 503
