"""cni.protocol: the plugin binary ↔ agent framing, byte for byte."""

import pytest

from shoal.cni import protocol
from shoal.cni.protocol import Answer, Call, ProtocolError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_ARGS": "K8S_POD_NAMESPACE=a"}
STDIN = b'{\n  "cniVersion": "1.0.0",\n  "name": "n",\n  "type": "shoal-cni"\n}\n'


def test_call_bytes_exact():
    data = protocol.encode_call(Call(env={"CNI_COMMAND": "VERSION"}, stdin=b""))
    assert data == b'SHOAL/1 {"CNI_COMMAND":"VERSION"}\n'


def test_call_roundtrip_keeps_stdin_byte_for_byte():
    # Pretty-printed configs hold newlines: only the first line is the header.
    call = Call(env=ENV, stdin=STDIN)
    assert protocol.decode_call(protocol.encode_call(call)) == call


def test_answer_bytes_exact_and_roundtrip():
    ans = Answer(status=1, stdout=b'{"code":11}\n')
    assert protocol.encode_answer(ans) == b'SHOAL/1 1\n{"code":11}\n'
    assert protocol.decode_answer(protocol.encode_answer(ans)) == ans
    assert protocol.decode_answer(b"SHOAL/1 0\n") == Answer(status=0, stdout=b"")


@pytest.mark.parametrize("bad", [
    b"", b"SHOAL/1 ", b'SHOAL/1 {"CNI_COMMAND":"ADD"}', b'SHOAL/2 {"CNI_COMMAND":"ADD"}\n',
    b"SHOAL/1 [1]\n", b'SHOAL/1 {"CNI_COMMAND":1}\n', b'SHOAL/1 {"HOME":"/root"}\n',
    b"SHOAL/1 {not json\n", b"POST /cmdadd HTTP/1.1\r\n\r\n"])
def test_bad_calls_refused(bad):
    with pytest.raises(ProtocolError):
        protocol.decode_call(bad)


@pytest.mark.parametrize("bad", [b"SHOAL/1 \n", b"SHOAL/1 256\n", b"SHOAL/1 -1\n",
                                 b"SHOAL/1 1", b"OK 0\n", b"SHOAL/1 0x1\n"])
def test_bad_answers_refused(bad):
    with pytest.raises(ProtocolError):
        protocol.decode_answer(bad)


def test_every_truncation_of_a_call_is_refused_or_a_prefix_of_stdin():
    """Cut anywhere: either refused, or the header is whole and stdin shorter."""
    data = protocol.encode_call(Call(env=ENV, stdin=STDIN))
    header_end = data.index(b"\n") + 1
    for i in range(len(data)):
        if i < header_end:
            with pytest.raises(ProtocolError):
                protocol.decode_call(data[:i])
        else:
            assert protocol.decode_call(data[:i]).stdin == STDIN[: i - header_end]


def test_limits():
    with pytest.raises(ProtocolError):
        protocol.decode_call(protocol.MAGIC + b"{}\n" + b" " * protocol.MAX_REQUEST_BYTES)
    with pytest.raises(ProtocolError):
        protocol.encode_call(Call(env={"CNI_ARGS": "x" * protocol.MAX_ENV_BYTES}, stdin=b""))
    with pytest.raises(ProtocolError):
        protocol.encode_answer(Answer(status=256, stdout=b""))


def test_names_match_the_plugin_binary():
    """The C plugin hard-codes the shared names; they must agree."""
    import os
    src = open(os.path.join(os.path.dirname(protocol.__file__), "native", "shoal_cni.c")).read()
    for macro, value in [("SOCKET_NAME", protocol.SOCKET_NAME), ("SNAPSHOT_NAME", protocol.SNAPSHOT_NAME),
                         ("SNAPSHOT_HEADER", protocol.SNAPSHOT_HEADER),
                         ("PENDING_DIR", protocol.PENDING_DIR),
                         ("WIRE_MAGIC", protocol.MAGIC.decode())]:
        assert f'#define {macro} "{value}"' in src, macro
    from shoal.cni import plugin, spec
    assert f'#define ALWAYS_EXCLUDED "{min(plugin.ALWAYS_EXCLUDED)}"' in src
    assert f'#define DEFAULT_RUN_DIR "{spec.DEFAULT_AGENT_RUN_DIR}"' in src
