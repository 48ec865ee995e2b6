"""Only the optional C speedups live here; everything else is in pyproject.toml.

``optional=True``: without a C compiler the build skips the extension and rpcscope runs on its
pure-Python encoder (same output, more CPU per logged call; see src/rpcscope/_speedups.c).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("rpcscope._speedups", ["src/rpcscope/_speedups.c"], optional=True),
    ],
)
