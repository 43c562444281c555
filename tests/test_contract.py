"""Every registered method, built-in or from an installed plug-in, meets the method contract."""

from __future__ import annotations

import pytest

from wsolbench.plugins import registry
from wsolbench.testing import check_method


@pytest.mark.parametrize("name", registry("method").names())
def test_method_contract(name):
    check_method(name)
