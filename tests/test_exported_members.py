"""``hubmerge.__all__`` is honest: sorted, complete, and every name exists."""

from __future__ import annotations

import hubmerge
import hubmerge.errors


def test_all_is_sorted_and_resolves():
    assert hubmerge.__all__ == sorted(hubmerge.__all__)
    for name in hubmerge.__all__:
        assert hasattr(hubmerge, name), name


def test_every_public_name_is_exported():
    public = {
        name
        for name, value in vars(hubmerge).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("hubmerge")
    }
    assert public <= set(hubmerge.__all__)


def test_exception_tree():
    assert set(hubmerge.errors.__all__) <= set(hubmerge.__all__)
    for name in hubmerge.errors.__all__:
        error = getattr(hubmerge, name)
        if name == "Problem":  # the record each IncompatibleAdaptersError problem is
            assert not issubclass(error, BaseException) and error.__doc__
            continue
        assert issubclass(error, hubmerge.HubmergeError)
        assert error.__doc__, f"{name} says when it is raised"
