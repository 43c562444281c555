"""Every registered plug-in, built-in or installed, passes the conformance kit (wsolbench.testing)."""

from __future__ import annotations

import pytest

from wsolbench.plugin_host import registry
from wsolbench.testing import check_dataset, check_method, check_pooling

#: small settings per dataset that needs no files (the kit reads the first items of each split)
SMALL = {"synthetic": {"image_size": 32, "n_train": 4, "n_valid": 2, "n_test": 2}}


@pytest.mark.parametrize("name", registry("method").names())
def test_method_contract(name):
    check_method(name)


@pytest.mark.parametrize("name", registry("pooling").names())
def test_pooling_contract(name):
    check_pooling(name)


@pytest.mark.parametrize(
    "name", [n for n in registry("dataset").names() if not getattr(registry("dataset").resolve(n), "needs_root", True)]
)
def test_dataset_contract(name):
    check_dataset(name, **SMALL.get(name, {}))
