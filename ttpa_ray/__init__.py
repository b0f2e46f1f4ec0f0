"""ttpa-ray: TTPA (token-level tool-use preference alignment) on Ray."""

import os as _os

# Ray reads this when `ray` is first imported: with it, a local `ray.init()` binds
# 127.0.0.1 instead of the machine's interface address (DESIGN §8). Set it here so any
# entry point that imports ttpa_ray before ray gets loopback; `init_ray` covers the rest.
_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

__version__ = "0.1.0"
