"""The Gateway API ConformanceReport for shoal's mesh test run (pure).

The tests of this directory translate the suite's `conformance/tests/mesh/`
(kubernetes-sigs/gateway-api at SUITE_REF); each carries the suite's short
name. The conftest records their outcomes; `build` turns them into the
suite's report (conformance/apis/v1: ConformanceReport, ProfileReport)
with the suite's rules (conformance/utils/suite/profiles.go, reports.go):

- a test belongs to a profile when every feature it needs is one of the
  profile's core or extended features;
- within a profile it is "extended" when any of its features is not core;
- core/extended result: failure if any failed, partial if any skipped,
  else success;
- provisional tests that passed are listed in succeededProvisionalTests.

A test of the table that did not run (deselected, or skipped for lack of
root) counts as skipped, so a partial run can never report success.

    python -m tests.e2e.conformance.report RESULTS.json OUT.yaml
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from dataclasses import dataclass

import yaml

import shoal

SUITE_REF = "main@4564255ac2c35d582249b3cdf261bdf51c8bca32"
MESH = "Mesh"
HTTP_ROUTE = "HTTPRoute"
GRPC_ROUTE = "GRPCRoute"
# pkg/features/mesh.go: MeshExtendedFeatures
MESH_EXTENDED = ("MeshClusterIPMatching", "MeshConsumerRoute", "MeshHTTPRouteRewritePath",
                 "MeshHTTPRouteSchemeRedirect", "MeshHTTPRouteRedirectPort",
                 "MeshHTTPRouteRedirectPath", "MeshHTTPRouteBackendRequestHeaderModification",
                 "MeshHTTPRouteQueryParamMatching", "MeshHTTPRouteNamedRouteRule")
PROFILES = {
    "MESH-HTTP": (frozenset({MESH, HTTP_ROUTE}), frozenset(MESH_EXTENDED)),
    "MESH-GRPC": (frozenset({MESH, GRPC_ROUTE}), frozenset(MESH_EXTENDED)),
}
# What shoal supports (every feature the mesh tests ask for).
SUPPORTED = frozenset({MESH, HTTP_ROUTE, GRPC_ROUTE, *MESH_EXTENDED,
                       "HTTPRouteResponseHeaderModification", "HTTPRouteParentRefPort",
                       "HTTPRoute303RedirectStatusCode", "HTTPRoute307RedirectStatusCode",
                       "HTTPRoute308RedirectStatusCode"})


@dataclass(frozen=True)
class Test:
    features: tuple[str, ...]
    provisional: bool = False


_H = (MESH, HTTP_ROUTE)
# Every test of conformance/tests/mesh/ with the features it declares.
TESTS: dict[str, Test] = {
    "MeshBasic": Test((MESH,)),
    "MeshConsumerRoute": Test((*_H, "MeshConsumerRoute", "HTTPRouteResponseHeaderModification")),
    "MeshFrontend": Test((*_H, "HTTPRouteResponseHeaderModification")),
    "MeshFrontendHostname": Test((*_H, "MeshClusterIPMatching",
                                  "HTTPRouteResponseHeaderModification")),
    "MeshPorts": Test((*_H, "HTTPRouteParentRefPort", "HTTPRouteResponseHeaderModification")),
    "MeshTrafficSplit": Test(_H),
    "MeshHTTPRoute303Redirect": Test((*_H, "HTTPRoute303RedirectStatusCode"), provisional=True),
    "MeshHTTPRoute307Redirect": Test((*_H, "HTTPRoute307RedirectStatusCode"), provisional=True),
    "MeshHTTPRoute308Redirect": Test((*_H, "HTTPRoute308RedirectStatusCode"), provisional=True),
    "MeshHTTPRouteMatching": Test(_H),
    "MeshHTTPRouteNamedRule": Test((*_H, "MeshHTTPRouteNamedRouteRule"), provisional=True),
    "MeshHTTPRouteQueryParamMatching": Test((*_H, "MeshHTTPRouteQueryParamMatching")),
    "MeshHTTPRouteRedirectHostAndStatus": Test(_H),
    "MeshHTTPRouteRedirectPath": Test((*_H, "MeshHTTPRouteRedirectPath")),
    "MeshHTTPRouteRedirectPort": Test((*_H, "MeshHTTPRouteRedirectPort")),
    "MeshHTTPRouteSchemeRedirect": Test((*_H, "MeshHTTPRouteSchemeRedirect")),
    "MeshHTTPRouteRequestHeaderModifier": Test(_H),
    "MeshHTTPRouteBackendRequestHeaderModifier": Test(
        (*_H, "MeshHTTPRouteBackendRequestHeaderModification")),
    "MeshHTTPRouteRewritePath": Test((*_H, "MeshHTTPRouteRewritePath")),
    "MeshHTTPRouteSimpleSameNamespace": Test(_H),
    "MeshHTTPRouteWeight": Test(_H),
    "MeshGRPCRouteRequestHeaderModifier": Test((MESH, GRPC_ROUTE)),
    "MeshGRPCRouteWeight": Test((MESH, GRPC_ROUTE)),
}
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


def _status() -> dict:
    return {"result": "", "statistics": {"Failed": 0, "Passed": 0, "Skipped": 0}}


def _result(st: dict) -> str:
    if st["statistics"]["Failed"]:
        return "failure"
    return "partial" if st["statistics"]["Skipped"] else "success"


def _summary(st: dict) -> str:
    r = st["result"]
    if r == "success":
        return "succeeded"
    if r == "partial":
        return f"partially succeeded with {st['statistics']['Skipped']} test skips"
    return f"failed with {st['statistics']['Failed']} test failures"


def _add(st: dict, name: str, outcome: str) -> None:
    field, listing = {PASSED: ("Passed", None), FAILED: ("Failed", "failedTests"),
                      SKIPPED: ("Skipped", "skippedTests")}[outcome]
    st["statistics"][field] += 1
    if listing:
        st.setdefault(listing, []).append(name)


def profile_report(name: str, outcomes: dict[str, str]) -> dict:
    core_features, extended_features = PROFILES[name]
    core, extended = _status(), None
    for test_name, test in TESTS.items():
        if not set(test.features) <= core_features | extended_features:
            continue
        outcome = outcomes.get(test_name, SKIPPED)
        if set(test.features) <= core_features:
            _add(core, test_name, outcome)
        else:
            extended = extended or _status()
            _add(extended, test_name, outcome)
    core["result"] = _result(core)
    out = {"name": name, "core": core}
    summary = f"Core tests {_summary(core)}"
    if extended is not None:
        extended["result"] = _result(extended)
        extended["supportedFeatures"] = sorted(extended_features & SUPPORTED)
        unsupported = sorted(extended_features - SUPPORTED)
        if unsupported:
            extended["unsupportedFeatures"] = unsupported
        out["extended"] = extended
        summary += f". Extended tests {_summary(extended)}"
    out["summary"] = summary + "."
    return out


def build(outcomes: dict[str, str], date: str | None = None) -> dict:
    """The ConformanceReport for `outcomes` (short name -> passed/failed/skipped)."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ConformanceReport",
        "date": date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gatewayAPIVersion": SUITE_REF,
        "gatewayAPIChannel": "standard",
        "mode": "default",
        "implementation": {"organization": "shoal", "project": "shoal",
                           "url": "docs/conformance.md", "version": shoal.__version__,
                           "contact": ["the shoal maintainers (README.md)"]},
        "profiles": [profile_report(name, outcomes) for name in PROFILES],
        "succeededProvisionalTests": sorted(n for n, t in TESTS.items()
                                            if t.provisional and outcomes.get(n) == PASSED),
    }


HEADER = ("# Gateway API conformance, mesh profiles, for shoal. Generated by the test run:\n"
          "#   SHOAL_CONFORMANCE_REPORT=docs/conformance-report.yaml \\\n"
          "#     flock /tmp/shoal-netns.lock .venv/bin/python -m pytest tests/e2e/conformance\n"
          "# Tests translated from kubernetes-sigs/gateway-api conformance/tests/mesh/ at the\n"
          "# commit in gatewayAPIVersion; see docs/conformance.md.\n")


def dump(report: dict) -> str:
    return HEADER + yaml.safe_dump(report, sort_keys=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        outcomes = json.load(f)
    with open(argv[1], "w") as f:
        f.write(dump(build(outcomes)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
