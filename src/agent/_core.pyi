# The cffi-built core (native/build_core.py); only agent.native imports it.
from typing import Any

ffi: Any
lib: Any
