"""core.zds: ZDS messages, bytes and rules."""

import pytest

from shoal.cni import redirect
from shoal.core import zds
from shoal.core.zds import Ack, Add, Del, Hello, Keep, SnapshotSent, WorkloadInfo, ZdsError

INFO = WorkloadInfo(name="ratings-0", namespace="bookinfo", service_account="bookinfo-ratings")


def test_hello_bytes():
    assert zds.encode(Hello()) == b'{"type":"hello","version":1,"instance":""}'
    assert zds.decode(b'{"type":"hello","version":1}') == Hello()


def test_add_bytes():
    data = zds.encode(Add(uid="Kubernetes//Pod/bookinfo/ratings-0", info=INFO, netns_path="/run/netns/p"))
    assert data == (b'{"type":"add","uid":"Kubernetes//Pod/bookinfo/ratings-0","netns_path":"/run/netns/p",'
                    b'"workload_info":{"name":"ratings-0","namespace":"bookinfo",'
                    b'"service_account":"bookinfo-ratings"}}')


@pytest.mark.parametrize("msg", [Hello(), Hello(instance="zt-1"), Add(uid="u", info=INFO), Keep(uid="u"), Del(uid="u"),
                                 SnapshotSent(), Ack(), Ack(error="boom")])
def test_roundtrip(msg):
    assert zds.decode(zds.encode(msg), zds.fds_expected(msg)) == msg


def test_add_needs_exactly_one_fd():
    data = zds.encode(Add(uid="u", info=INFO))
    for n in (0, 2):
        with pytest.raises(ZdsError, match="exactly 1"):
            zds.decode(data, n)


def test_other_messages_carry_no_fd():
    with pytest.raises(ZdsError, match="exactly 0"):
        zds.decode(zds.encode(Del(uid="u")), 1)


def test_truncated_refused():
    with pytest.raises(ZdsError, match="truncated"):
        zds.decode(zds.encode(Ack()), 0, truncated=True)


@pytest.mark.parametrize("bad", [b"", b"{", b"[]", b'{"type":"nope"}', b'{"type":"del"}',
                                 b'{"type":"del","uid":""}', b'{"type":"hello","version":"1"}',
                                 b'{"type":"add","uid":"u"}', b'{"type":"add","uid":"u","workload_info":{"name":"a"}}'])
def test_malformed_refused(bad):
    with pytest.raises(ZdsError):
        zds.decode(bad, 1 if b"add" in bad else 0)


def test_oversized_refused():
    with pytest.raises(ZdsError):
        zds.encode(Add(uid="u" * zds.MAX_MESSAGE_BYTES, info=INFO))
    with pytest.raises(ZdsError):
        zds.decode(b" " * (zds.MAX_MESSAGE_BYTES + 1))


def test_keep_only_before_snapshot():
    st = zds.ClientState()
    st.check(Keep(uid="u"))
    st.check(SnapshotSent())
    with pytest.raises(ZdsError, match="keep after"):
        st.check(Keep(uid="u"))
    with pytest.raises(ZdsError):
        st.check(Ack())


def test_redirect_ruleset_follows_istio_order():
    text = redirect.ruleset(redirect.RedirectConfig(ipv6=False))
    lines = [l.strip() for l in text.splitlines()]
    assert lines[:3] == ["table inet shoal-ambient", "delete table inet shoal-ambient",
                         "table inet shoal-ambient {"]
    out = lines[lines.index("chain output-nat {") + 2:]
    assert out[:4] == [
        "ip daddr 169.254.7.127 meta l4proto tcp accept",
        "meta nfproto ipv4 meta l4proto tcp meta mark & 0x00000fff == 0x00000111 accept",
        'ip daddr != 127.0.0.1 oifname "lo" accept',
        "ip daddr != 127.0.0.1 meta l4proto tcp meta mark & 0x00000fff != 0x00000539 redirect to :15001",
    ]
    pre = lines[lines.index("chain prerouting-nat {") + 2:]
    assert pre[:2] == [
        "ip saddr 169.254.7.127 meta l4proto tcp accept",
        "ip daddr != 127.0.0.1 tcp dport != 15008 meta mark & 0x00000fff != 0x00000539 redirect to :15006",
    ]
    assert "ct mark set ct mark & 0xfffff000 | 0x00000111" in text
    assert "meta mark set ct mark" in text
    assert "ip6" not in text


def test_redirect_dns_capture_optional():
    assert "15053" not in redirect.ruleset()
    assert "redirect to :15053" in redirect.ruleset(redirect.RedirectConfig(dns_capture=True))
    with pytest.raises(ValueError):
        redirect.RedirectConfig(outbound_port=0)
