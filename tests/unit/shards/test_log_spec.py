"""Log levels in ztunnel's /logging syntax: `info`, `access:debug,info`."""

from __future__ import annotations

import logging

import pytest

from shoal.core import log as core_log


def test_parse_spec_scopes_and_default():
    default, scopes = core_log.parse_spec("access:debug,info")
    assert default == logging.INFO and scopes == {"access": logging.DEBUG}
    assert core_log.parse_spec("warn") == (logging.WARNING, {})
    assert core_log.parse_spec("ztunnel:trace") == (None, {"ztunnel": 5})


@pytest.mark.parametrize("bad", ["", "loud", "nosuch:debug", "access:loud", ","])
def test_parse_spec_refuses(bad):
    with pytest.raises(ValueError):
        core_log.parse_spec(bad)


def test_apply_and_current_spec_round_trip():
    try:
        core_log.set_level("access:debug,warning")
        assert logging.getLogger("shoal.access").getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("shoal.ztunnel").getEffectiveLevel() == logging.WARNING
        assert core_log.current_spec() == "access:debug,warning"
        codes = core_log.scope_codes({"access": logging.DEBUG})
        assert core_log.scopes_of(codes) == {"access": logging.DEBUG}
        core_log.set_level("info")           # scopes not named inherit again
        assert core_log.current_spec() == "info"
    finally:
        core_log.set_level("info")
