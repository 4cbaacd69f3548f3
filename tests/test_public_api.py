import doctest
import importlib
import pkgutil

import pytest

import llmframe


def test_all_is_exactly_the_public_names():
    public = {n for n in dir(llmframe) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(llmframe, n)).__name__ == "module"}
    assert set(llmframe.__all__) - {"__version__"} == public - modules


MODULES = ["llmframe"] + [f"llmframe.{m.name}" for m in pkgutil.iter_modules(llmframe.__path__)
                          if m.name not in ("__main__",)] + ["llmframe.testing._server"]


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
