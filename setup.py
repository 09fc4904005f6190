"""Build glue: setuptools compiles the C core through cffi; metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build_core.py:ffibuilder"])
