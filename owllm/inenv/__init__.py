"""Code that runs under a model env's interpreter, not OWLLM's: the model servers, the demo
model builder, the GGUF converter, the env health probe and the request guard.

One rule: no module here imports the host-side ``owllm`` (only the standard library, the
env's own packages and relative imports of its siblings); ``tests/inenv/test_package.py``
checks it.  An env has none of OWLLM's dependencies, and OWLLM's module names must never
shadow the env's libraries, so the modules are not run from this folder on ``sys.path``:
the host starts them as ``python <this folder>/__main__.py <module> [args]`` (see
:mod:`owllm.envs.runner`), whose bootstrap loads this folder as a package under a private
name and runs the module as ``__main__``.  On the host the same files import as
``owllm.inenv.<module>`` (tests, the tool server's use of the guard's policy functions).
"""

from __future__ import annotations

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The bootstrap a host passes to an env's python (see __main__.py).
BOOTSTRAP = os.path.join(PACKAGE_DIR, "__main__.py")
# The modules meant to be run (each has a main() and reads its arguments from sys.argv).
SCRIPTS = ("demo_model", "gguf_convert", "llamacpp_server", "probe", "ray_serve",
           "tool_caller_train",
           "transformers_app")
