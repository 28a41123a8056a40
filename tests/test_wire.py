import pytest
import torch

from fedloom.wire import WireError, pack_vector, unpack_vector


def test_round_trip_and_header():
    v = torch.randn(1000)
    p = pack_vector(v, "update", client=3)
    back, header = unpack_vector(p)
    assert torch.equal(back, v) and header["client"] == 3 and header["kind"] == "update"


def test_fp16_halves_the_body():
    v = torch.randn(1000)
    assert len(pack_vector(v, "u")) - len(pack_vector(v, "u", dtype="float16")) == 2000


@pytest.mark.parametrize("bad", [b"", b"XXXX\x00\x00\x00\x00", pack_vector(torch.ones(4), "u")[:-1]])
def test_malformed_payloads_are_rejected(bad):
    with pytest.raises(WireError):
        unpack_vector(bad)
