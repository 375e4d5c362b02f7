"""cni.netlink: the capture's rtnetlink requests, byte for byte."""

import errno
import struct

import pytest

from shoal.cni import netlink


def test_fwmark_rule_bytes():
    msg = netlink.fwmark_rule(2, add=True, mark=0x111, mask=0xFFF, priority=32764, table=100)
    assert msg.hex() == ("3c000000" "2000" "0506" "02000000" "00000000"          # nlmsghdr
                         "02000000" "64000001" "00000000"                        # fib_rule_hdr
                         "08000600" "fc7f0000" "08000a00" "11010000"             # priority, fwmark
                         "08001000" "ff0f0000" "08000f00" "64000000")            # fwmask, table
    delete = netlink.fwmark_rule(2, add=False, mark=0x111, mask=0xFFF, priority=32764, table=100)
    assert delete[4:8] == struct.pack("=HH", netlink.RTM_DELRULE, 0x5)           # no CREATE|EXCL


def test_local_route_bytes():
    msg = netlink.local_default_route(3, add=True, table=100)
    assert msg.hex() == ("2c000000" "1800" "0506" "03000000" "00000000"          # nlmsghdr
                         "02000000" "6403fe02" "00000000"                        # rtmsg: boot, host, local
                         "08000400" "01000000" "08000f00" "64000000")            # oif lo, table


def test_big_table_goes_only_in_the_attribute():
    msg = netlink.local_default_route(3, add=True, table=1000)
    assert msg[16 + 4] == 0 and msg[-4:] == struct.pack("=I", 1000)


def test_link_up_bytes():
    assert netlink.link_up(1).hex() == ("20000000" "1000" "0500" "01000000" "00000000"
                                        "00000000" "01000000" "01000000" "01000000")


def ack(seq, err):
    return struct.pack("=IHHIIi", 36, netlink.NLMSG_ERROR, 0, seq, 0, -err) + bytes(16)


def test_parse_ack():
    assert netlink.parse_ack(ack(3, 0), 3) == 0
    assert netlink.parse_ack(ack(3, errno.EEXIST), 3) == errno.EEXIST
    other = struct.pack("=IHHII", 20, 3, 0, 9, 0) + bytes(4)          # something else first
    assert netlink.parse_ack(other + ack(3, errno.ENOENT), 3) == errno.ENOENT
    for bad in (b"", ack(4, 0), ack(3, 0)[:18], struct.pack("=IHHII", 8, 2, 0, 3, 0)):
        with pytest.raises(ValueError):
            netlink.parse_ack(bad, 3)
