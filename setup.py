"""The compiled parts: the worker's call data plane (runtime/server/_relay.c) and the reference echo provider's
(runtime/reference/_echo.c). Both optional: without a C compiler the package installs without them, the worker
relays every call in Python (FAST_PATH has no effect) and the echo provider echoes in Python."""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform == "linux":  # epoll and timerfd
    ext_modules += [
        Extension(
            name,
            sources=[source],
            include_dirs=["runtime/_c"],
            depends=["runtime/_c/common.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
        for name, source in (
            ("avr_runtime.server._relay", "runtime/server/_relay.c"),
            ("avr_runtime.reference._echo", "runtime/reference/_echo.c"),
        )
    ]

setup(ext_modules=ext_modules)
