"""``hubmerge.__all__`` is honest: sorted, and exactly what a fresh ``import hubmerge`` exports.

The package loads its exports on first use (so ``hubmerge --help`` does not import torch), so
``vars(hubmerge)`` in a fresh interpreter holds almost nothing: the test asks a fresh interpreter
for every public name ``dir(hubmerge)`` offers and resolves each, instead of looking at this
process's already-imported package.
"""

from __future__ import annotations

import json
import subprocess
import sys

import hubmerge
import hubmerge.errors

PROBE = """
import json, types, hubmerge
public = sorted(n for n in dir(hubmerge) if not n.startswith("_"))
found = {}
for name in public:
    value = getattr(hubmerge, name)
    # constants (METHODS, __version__) have no __module__ of their own: None
    found[name] = "module" if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
print(json.dumps({"all": hubmerge.__all__, "found": found}))
"""


def _fresh() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_all_is_sorted_and_equals_what_a_fresh_import_exports():
    fresh = _fresh()
    exported = set(fresh["all"]) - {"__version__"}
    # Submodules become attributes once imported (resolving the exports imports them): not exports.
    public = {name for name, where in fresh["found"].items() if where != "module"}
    assert fresh["all"] == sorted(fresh["all"])
    assert public == exported, (
        f"exported but missing: {exported - public}; public but not in __all__: {public - exported}"
    )
    for name, where in fresh["found"].items():
        if name in exported and where is not None:
            assert where.startswith("hubmerge"), f"{name} comes from {where}, not from hubmerge"


def test_exception_tree():
    assert set(hubmerge.errors.__all__) <= set(hubmerge.__all__)
    for name in hubmerge.errors.__all__:
        error = getattr(hubmerge, name)
        if name == "Problem":  # the record each IncompatibleAdaptersError problem is
            assert not issubclass(error, BaseException) and error.__doc__
            continue
        assert issubclass(error, hubmerge.HubmergeError)
        assert error.__doc__, f"{name} says when it is raised"
