"""The one compiled part: the call data plane (runtime/server/_relay.c). Optional: without a C compiler the
package installs without it and the worker relays every call in Python (FAST_PATH has no effect)."""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform == "linux":  # epoll and timerfd
    ext_modules.append(
        Extension(
            "avr_runtime.server._relay",
            sources=["runtime/server/_relay.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
