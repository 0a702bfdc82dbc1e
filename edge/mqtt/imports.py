# SPDX-License-Identifier: Apache-2.0
"""aiomqtt and paho-mqtt, as the core imports them: without `urllib.request` until it is used.

paho-mqtt's client module imports `urllib.request`, and with it `http.client`, `email`,
`tempfile` and more, about 2.5 MB of an idle core, for one use: `Client._get_proxy` reads the
`mqtt_proxy` and `no_proxy` variables through it, and only when PySocks is installed (without
it, paho can't use a proxy and returns before). So this module, the one place the core imports
either library, imports them with `urllib.request` made lazy by the standard library's own
`importlib.util.LazyLoader`: paho gets a module object whose code runs the first time anything
reads an attribute of it, or imports it again (Python 3.11's import statement reads its
`__spec__`). Whoever uses it then gets it whole, as ever. Only while the two are imported is
a finder on `sys.meta_path`, and it answers for `urllib.request` alone. Nothing is made lazy:

* when `urllib.request` was imported before: paho gets that module;
* when PySocks is installed: paho reads the proxy variables on every connect, so the module is
  loaded here at once. Its first use would otherwise come from aiomqtt's connect thread, and
  Python 3.11's LazyLoader is not safe for a first use from two threads at once.

`tests/unit/test_mqtt_imports.py` checks each case, and that paho still finds a proxy;
`tests/integration/test_mqtt_imports.py` that a running core never loads the module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import ModuleType

#: The module paho imports for its proxy settings alone.
LAZY_MODULE = "urllib.request"


class _LazyFinder:
    """Finds `LAZY_MODULE` where the path finder would, and hands it out with a lazy loader."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        """The spec of `LAZY_MODULE` with its loader wrapped; None for any other module."""
        if fullname != LAZY_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


@contextmanager
def _lazily_imported() -> Iterator[None]:
    """While inside, a first import of `LAZY_MODULE` gives a lazy module (see the docstring)."""
    if LAZY_MODULE in sys.modules or importlib.util.find_spec("socks") is not None:
        yield
        return
    finder = _LazyFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


with _lazily_imported():
    import aiomqtt
    import paho.mqtt.client as paho

__all__ = ["LAZY_MODULE", "aiomqtt", "paho"]
