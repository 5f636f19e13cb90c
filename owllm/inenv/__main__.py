"""Bootstrap: ``python <owllm/inenv>/__main__.py <module> [args...]`` runs ``<module>`` of
this package as ``__main__`` under an env's interpreter, without OWLLM installed there.

Python puts this script's folder first on ``sys.path``; it is removed at once, so no module
here can shadow a library of the env.  The folder is then loaded as a package under a private
name (``_owllm_inenv``: never ``owllm``, which the env may lack or hold in another version),
so the modules' relative imports of their siblings work, and the named module runs with
``runpy`` exactly as ``python -m`` would run it.  Standard library only.
"""

import importlib.util
import os
import runpy
import sys

PACKAGE = "_owllm_inenv"


def _bootstrap(argv: list[str]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    # Python 3.11's -I/-P leave the folder out already; without them it is sys.path[0].
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if len(argv) < 2 or argv[1].startswith("-"):
        sys.exit(f"usage: python {argv[0]} <module> [args...]")
    name = argv[1]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, os.path.join(here, "__init__.py"), submodule_search_locations=[here])
    if spec is None or spec.loader is None:
        sys.exit(f"owllm in-env bootstrap: cannot load the package at {here}")
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    if not os.path.isfile(os.path.join(here, f"{name}.py")) or name.startswith("_"):
        sys.exit(f"owllm in-env bootstrap: no module {name!r} in {here}")
    sys.argv = [os.path.join(here, f"{name}.py"), *argv[2:]]
    runpy.run_module(f"{PACKAGE}.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _bootstrap(sys.argv)
