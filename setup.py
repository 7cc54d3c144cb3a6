"""The compiled parts: the worker's call data plane (runtime/avr_runtime/server/_relay.c) and the reference echo
provider's (runtime/avr_runtime/reference/_echo.c). Both optional: without a C compiler the package installs without
them, the worker relays every call in Python (FAST_PATH has no effect) and the echo provider echoes in Python.

Each module is one translation unit that includes its parts (avr_runtime/_c/*.h shared by both, avr_runtime/_c/relay/
the data plane's own), so every one of those files is a dependency of both: an edit to any of them rebuilds them."""

import os
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup

# Import name -> (the folder that holds it, command). Each half keeps its own top-level folder, with the package
# inside it: the repository root holds no importable package, so nothing there shadows the standard library's
# `operator` module, whatever is on sys.path.
PACKAGES = {
    "avr_runtime": ("runtime", "avr-runtime"),
    "avr_operator": ("operator", "avr-operator"),
    "avr_devcluster": ("cluster", "avr-devcluster"),
}
# Each image builds a wheel of its own side only (AVR_PACKAGES=avr_runtime); by default, all three.
selected = [p for p in os.environ.get("AVR_PACKAGES", ",".join(PACKAGES)).split(",") if p]
unknown = set(selected) - set(PACKAGES)
if unknown:
    sys.exit(f"AVR_PACKAGES: unknown package(s) {sorted(unknown)}; choose from {sorted(PACKAGES)}")
package_dir = {name: f"{PACKAGES[name][0]}/{name}" for name in selected}
packages = [found for name in selected for found in find_packages(PACKAGES[name][0], include=[name, f"{name}.*"])]
scripts = [f"{PACKAGES[name][1]} = {name}.cli:main" for name in selected]

parts = sorted(str(p) for p in Path("runtime/avr_runtime/_c").rglob("*") if p.suffix in (".c", ".h"))
ext_modules = []
if sys.platform == "linux":  # epoll and timerfd
    ext_modules += [
        Extension(
            name,
            sources=[source],
            include_dirs=["runtime/avr_runtime/_c"],
            depends=parts,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
        for name, source in (
            ("avr_runtime.server._relay", "runtime/avr_runtime/server/_relay.c"),
            ("avr_runtime.reference._echo", "runtime/avr_runtime/reference/_echo.c"),
        )
    ]
if "avr_runtime" not in selected:
    ext_modules = []

setup(
    packages=packages,
    package_dir=package_dir,
    entry_points={"console_scripts": scripts},
    ext_modules=ext_modules,
)
