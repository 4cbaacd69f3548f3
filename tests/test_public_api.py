import doctest
import importlib

import pytest

import llmframe


def test_all_is_exactly_the_public_names():
    public = {n for n in dir(llmframe) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(llmframe, n)).__name__ == "module"}
    assert set(llmframe.__all__) - {"__version__"} == public - modules


@pytest.mark.parametrize("name", ["_config", "_retry", "_balancer"])
def test_doctests(name):
    module = importlib.import_module(f"llmframe.{name}")
    failed, attempted = doctest.testmod(module)
    assert attempted > 0 and failed == 0
