"""A test-only ``oban`` package: Oban.py's import name, backed by oban_pro.

It lets a program written for Oban.py run *unchanged* (``from oban import Oban, worker``) in
the compatibility tests. It is not shipped: the wheel holds only ``oban_pro``, so it never
clashes with the real ``oban`` package. Put this folder on ``sys.path`` (PYTHONPATH) to use it.

``oban`` re-exports oban_pro's public names, and ``oban.<module>`` is oban_pro's module of the
same name (``oban.schema``, ``oban.job``, ``oban.worker``, ``oban.testing``, ...), the same
module objects, so classes are identical whichever name imported them. Oban.py's
``oban.decorators`` is ``oban_pro.worker``, where oban_pro keeps ``worker`` and ``job``.
"""

import importlib
import importlib.abc
import importlib.util
import sys

import oban_pro  # noqa: F401 - imported first: the aliases below need it

_RENAMED = {"decorators": "worker"}


def _target(fullname):
    head, _, rest = fullname.partition(".")
    parts = rest.split(".")
    parts[0] = _RENAMED.get(parts[0], parts[0])
    return "oban_pro." + ".".join(parts)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``oban.X`` -> the already imported (or now imported) module ``oban_pro.X``."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("oban."):
            return None
        if importlib.util.find_spec(_target(fullname)) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(_target(spec.name))
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # The oban_pro module is already executed; give it back its own spec, which the import
        # system replaced with ours.
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)

    def __init__(self):
        self._specs = {}


sys.meta_path.insert(0, _Alias())

# Load the submodules first, so that importing one later never replaces a name below (the
# ``job`` decorator and the ``oban.job`` module share a name, as in Oban.py).
for _name in ("job", "worker", "schema", "oban", "decorators"):
    importlib.import_module(f"{__name__}.{_name}")

from oban_pro import *  # noqa: E402,F403
from oban_pro import Oban, QueueInfo, __all__, __version__, current_job, job, worker  # noqa: E402,F401
