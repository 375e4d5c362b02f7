"""Fuzzing the decoders that face other processes or users (Hypothesis,
bounded in time: ~1-3 s each). Contract for each: whatever the input, the
only exception is the decoder's own error type, and what encodes decodes back.

- CNI plugin <-> node agent wire (cni/protocol.py)
- ZDS node agent <-> ztunnel messages (core/zds.py)
- the waypoint's HTTP/2 front end core (h2 + core.hbone.h2limits)
- the config loader (core.model.loader): YAML text and YAML-shaped objects

HBONE's own fuzz is tests/unit/hbone/test_fuzz.py, HTTP/1.1's
tests/unit/waypoint/test_http1_fuzz.py. Findings became regression tests in
tests/unit/routing/test_config_limits.py.
"""

from __future__ import annotations

import h2.config
import h2.exceptions
import hyperframe.frame as hf
import orjson
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shoal.cni import protocol as cni
from shoal.core import zds
from shoal.core.hbone.h2limits import GuardedH2Connection
from shoal.core.model import ConfigError, load_text
from tests.helpers.h2raw import PREFACE

# Bounded in time for CI (2 cores): ~1-3 s per test.
FAST = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

TEXT = st.text(max_size=40)


# -- CNI ----------------------------------------------------------------------

@FAST
@given(st.binary(max_size=300))
def test_cni_decoders_raise_only_protocol_error(data):
    for raw in (data, cni.MAGIC + data):
        for decode in (cni.decode_call, cni.decode_answer):
            try:
                decode(raw)
            except cni.ProtocolError:
                pass


@FAST
@given(st.dictionaries(st.text(max_size=10).map(lambda k: "CNI_" + k), TEXT, max_size=6),
       st.binary(max_size=200), st.integers(0, 255))
def test_cni_round_trip(env, stdin, status):
    call = cni.decode_call(cni.encode_call(cni.Call(env=env, stdin=stdin)))
    assert call.env == env and call.stdin == stdin
    ans = cni.decode_answer(cni.encode_answer(cni.Answer(status=status, stdout=stdin)))
    assert ans.status == status and ans.stdout == stdin


# -- ZDS ----------------------------------------------------------------------

JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | TEXT,
                       lambda kids: st.lists(kids, max_size=4)
                       | st.dictionaries(TEXT, kids, max_size=4), max_leaves=12)
ZDS_OBJ = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "add", "keep", "del", "snapshot_sent", "ack", "x"])},
    optional={"uid": JSONISH, "version": JSONISH, "instance": JSONISH, "error": JSONISH,
              "netns_path": JSONISH, "workload_info": JSONISH})


@FAST
@given(st.one_of(st.binary(max_size=200), ZDS_OBJ.map(orjson.dumps)), st.integers(0, 2),
       st.booleans())
@example(b'{"type":"hello","version":99999999999999999999999999}', 0, False)
@example(b'{"type":"keep","uid":"\\ud800"}', 0, False)          # lone surrogate
def test_zds_decode_raises_only_zds_error(data, nfds, truncated):
    try:
        zds.decode(data, nfds, truncated=truncated)
    except zds.ZdsError:
        pass


NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@FAST
@given(st.one_of(
    st.builds(zds.Hello, version=st.integers(0, 9), instance=TEXT),
    st.builds(zds.Add, uid=NAME, netns_path=TEXT,
              info=st.builds(zds.WorkloadInfo, name=NAME, namespace=NAME, service_account=NAME)),
    st.builds(zds.Keep, uid=NAME), st.builds(zds.Del, uid=NAME),
    st.builds(zds.SnapshotSent), st.builds(zds.Ack, error=TEXT)))
def test_zds_round_trip(msg):
    assert zds.decode(zds.encode(msg), zds.fds_expected(msg)) == msg


# -- HTTP/2 front end (the waypoint's h2 server core) ---------------------------

FRAME = st.tuples(st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0x9, 0xA]),
                  st.integers(0, 0xFF), st.integers(0, 9), st.binary(max_size=40))


def _frame(ftype, flags, sid, body) -> bytes:
    return len(body).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + body


@FAST
@given(st.lists(FRAME, max_size=12), st.integers(1, 64))
def test_h2_front_end_raises_only_protocol_errors(frames, step):
    conn = GuardedH2Connection(h2.config.H2Configuration(client_side=False,
                                                         header_encoding=None))
    conn.initiate_connection()
    data = PREFACE + hf.SettingsFrame(0).serialize() + b"".join(_frame(*f) for f in frames)
    try:
        for i in range(0, len(data), step):
            conn.receive_data(data[i:i + step])
            conn.data_to_send()
    except h2.exceptions.ProtocolError:
        conn.data_to_send()            # the GOAWAY can be drained


# -- config loader ---------------------------------------------------------------

KINDS = st.sampled_from([("v1", "Pod"), ("v1", "Service"), ("v1", "Namespace"),
                         ("apps/v1", "Deployment"),
                         ("security.istio.io/v1", "AuthorizationPolicy"),
                         ("gateway.networking.k8s.io/v1", "HTTPRoute"),
                         ("gateway.networking.k8s.io/v1", "Gateway")])
YAMLISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                       | TEXT,
                       lambda kids: st.lists(kids, max_size=3)
                       | st.dictionaries(st.sampled_from(
                           ["name", "namespace", "labels", "spec", "ports", "port", "rules",
                            "matches", "path", "type", "value", "selector", "from", "to",
                            "when", "backendRefs", "parentRefs", "containers", "x"]), kids,
                           max_size=4), max_leaves=16)


@settings(FAST, max_examples=40)
@given(KINDS, YAMLISH, YAMLISH)
def test_loader_raises_only_config_error_on_shaped_documents(kind, metadata, spec):
    doc = {"apiVersion": kind[0], "kind": kind[1], "metadata": metadata, "spec": spec}
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    try:
        load_text(text)
    except ConfigError:
        pass


@FAST
@given(st.text(max_size=300))
@example("? [a]\n: b\n")                                       # unhashable key
@example("a: !!python/object/apply:os.system [ls]\n")           # unsafe tag
@example("!!binary aGVsbG8=\n")                                 # bytes document
@example("apiVersion: !!binary aGVsbG8=\nkind: Pod\n")
@example("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {1: 2, null: x}}\n")
@example("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
         "spec: {containers: [{name: c, ports: [{containerPort: 1e400}]}]}")
@example("a: " + "[" * 200 + "]" * 200)                         # deep nesting
@example("a: &x [*x]\n")                                        # self-referencing alias
def test_loader_raises_only_config_error_on_any_text(text):
    try:
        load_text(text)
    except ConfigError:
        pass
