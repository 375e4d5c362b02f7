import logging

import pytest
import uvloop


def pytest_asyncio_loop_factories(config, item):
    # shoal's workers run on uvloop; test the adapters on it too.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def hbone_logs(caplog):
    """Capture shoal.hbone log lines (the logger does not propagate to root)."""
    logger = logging.getLogger("shoal")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="shoal")
    yield caplog
    logger.removeHandler(caplog.handler)
