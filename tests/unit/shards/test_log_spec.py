"""Log levels in ztunnel's /logging syntax: `info`, `access:debug,info`."""

from __future__ import annotations

import logging
import os

import orjson
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


def test_plain_format_is_ztuntels_text_access_line():
    record = logging.LogRecord("shoal.access", logging.INFO, "x", 1, "connection complete", (), None)
    record.created, record.msecs = 0.0, 5
    record.fields = {"src.addr": "10.0.0.1:5000", "src.workload": "sleep", "bytes_sent": 67,
                     "duration": "13ms", "direction": "outbound"}
    line = core_log.PlainFormatter().format(record)
    assert line == ('1970-01-01T00:00:00.005000Z\tinfo\taccess\tconnection complete\t'
                    'src.addr=10.0.0.1:5000 src.workload="sleep" bytes_sent=67 duration="13ms" '
                    'direction="outbound"')


def test_log_format_from_env(monkeypatch):
    import io
    buf = io.StringIO()
    try:
        # ztunnel's default is its text format; LOG_FORMAT=json gives JSON lines.
        monkeypatch.delenv("LOG_FORMAT", raising=False)
        core_log.setup("info", stream=buf)
        core_log.get("access").info("hello", extra={"fields": {"dst.addr": "1.2.3.4:80"}})
        assert buf.getvalue().rstrip().endswith("\taccess\thello\tdst.addr=1.2.3.4:80")
        monkeypatch.setenv("LOG_FORMAT", "json")
        buf.truncate(0)
        buf.seek(0)
        core_log.setup("info", stream=buf)
        core_log.get("access").info("hello", extra={"fields": {"dst.addr": "1.2.3.4:80"}})
        line = orjson.loads(buf.getvalue())
        assert line["message"] == "hello" and line["scope"] == "access" and line["dst.addr"] == "1.2.3.4:80"
        # A field named like one of the line's own keys does not replace it.
        buf.truncate(0)
        buf.seek(0)
        core_log.get("routing").error("config refused", extra={"fields": {"message": "bad port"}})
        line = orjson.loads(buf.getvalue())
        assert line["message"] == "config refused" and line["field.message"] == "bad port"
        monkeypatch.setenv("LOG_FORMAT", "xml")
        with pytest.raises(ValueError):
            core_log.setup("info", stream=buf)
    finally:
        monkeypatch.undo()
        core_log.setup("info")


def test_log_format_flag_reaches_every_child(monkeypatch):
    """--log-format (env LOG_FORMAT) is exported for the workers and the watcher."""
    import click
    from click.testing import CliRunner

    from shoal.shards.options import supervisor_options
    monkeypatch.delenv("LOG_FORMAT", raising=False)

    @click.command()
    @supervisor_options
    def cmd(supervisor):
        click.echo(os.environ.get("LOG_FORMAT", "-"))

    assert CliRunner().invoke(cmd, ["--log-format", "json"]).output.strip() == "json"
    assert CliRunner().invoke(cmd, ["--log-format", "yaml"]).exit_code == 2
    monkeypatch.undo()
