"""Only the optional C speedups live here; everything else is in pyproject.toml.

``optional=True``: without a C compiler the build skips the extension and rpcscope runs its
pure-Python log line encoder, metrics fold and server request path (same results, more CPU
per call; see src/rpcscope/_speedups.c).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("rpcscope._speedups", ["src/rpcscope/_speedups.c"], optional=True),
    ],
)
