"""make_ca_client: the client the CA flags select, or an error naming the flags."""

import pytest

from shoal.core.identity.caclient import GRPC, JSON
from shoal.core.identity.options import make_ca_client


@pytest.mark.parametrize("protocol", [GRPC, JSON])
def test_no_credential_and_no_token_names_the_flags(protocol):
    # The json protocol used to pass None on to Path() (a TypeError).
    with pytest.raises(ValueError, match="--ca-token"):
        make_ca_client("127.0.0.1:15012", protocol)
