import doctest
import importlib
import pkgutil

import pytest

import llmframe


def test_all_is_exactly_the_public_names():
    public = {n for n in dir(llmframe) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(llmframe, n)).__name__ == "module"}
    assert set(llmframe.__all__) - {"__version__"} == public - modules


MODULES = ["llmframe"] + [m.name for m in pkgutil.walk_packages(llmframe.__path__, "llmframe.")
                          if not m.name.endswith("__main__")]


@pytest.mark.parametrize("name", MODULES)
def test_doctests_of_every_module(name):
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0


def test_the_modules_that_show_examples_run_them():
    """The examples in the package docstring and the main entry points are real."""
    for name in ("llmframe", "llmframe._engine", "llmframe._files", "llmframe.functions",
                 "llmframe._retry", "llmframe._health", "llmframe._sinks"):
        _, attempted = doctest.testmod(importlib.import_module(name))
        assert attempted > 0, name
