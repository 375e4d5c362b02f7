"""The ConformanceReport writer (tests/e2e/conformance/report.py) follows the
suite's counting rules (conformance/utils/suite/reports.go, profiles.go)."""

import yaml

from tests.e2e.conformance import report


def _all(outcome):
    return {name: outcome for name in report.TESTS}


def test_profiles_count_only_their_tests_split_core_and_extended():
    r = report.build(_all(report.PASSED), date="2026-01-01T00:00:00Z")
    http, grpc = r["profiles"]
    assert http["name"] == "MESH-HTTP" and grpc["name"] == "MESH-GRPC"
    # as Istio's published MESH-HTTP report: 7 core, 7 extended
    assert http["core"]["statistics"] == {"Failed": 0, "Passed": 7, "Skipped": 0}
    assert http["extended"]["statistics"] == {"Failed": 0, "Passed": 7, "Skipped": 0}
    assert grpc["core"]["statistics"]["Passed"] == 3 and "extended" not in grpc
    assert http["summary"] == "Core tests succeeded. Extended tests succeeded."
    assert r["succeededProvisionalTests"] == ["MeshHTTPRoute303Redirect", "MeshHTTPRoute307Redirect",
                                              "MeshHTTPRoute308Redirect", "MeshHTTPRouteNamedRule"]


def test_a_failure_or_a_test_that_did_not_run_is_reported():
    outcomes = _all(report.PASSED)
    outcomes["MeshHTTPRouteWeight"] = report.FAILED
    del outcomes["MeshHTTPRouteRewritePath"]              # never ran: skipped
    http = report.build(outcomes)["profiles"][0]
    assert http["core"]["result"] == "failure" and http["core"]["failedTests"] == ["MeshHTTPRouteWeight"]
    assert http["extended"]["result"] == "partial"
    assert http["extended"]["skippedTests"] == ["MeshHTTPRouteRewritePath"]


def test_dump_is_the_suite_format():
    doc = yaml.safe_load(report.dump(report.build(_all(report.PASSED))))
    assert doc["apiVersion"] == "gateway.networking.k8s.io/v1" and doc["kind"] == "ConformanceReport"
    assert {"implementation", "gatewayAPIVersion", "profiles", "date", "mode"} <= set(doc)
