"""The screen's machine check must pass wherever torch has fbgemm: the screened-head tests skip where it fails, so a
product broken in the package (not in the machine) would otherwise turn the screen off and the tests with it."""

import pytest
import torch

from evospec_hf.ops import screened_head


@pytest.mark.skipif(
    "fbgemm" not in torch.backends.quantized.supported_engines, reason="torch without fbgemm (not an x86 build)"
)
def test_the_probe_passes_where_fbgemm_exists():
    assert screened_head._probe() is True
