"""Let torchvision's Python package import next to a CPU torch its C extension cannot load.

torchvision's `_meta_registrations` calls `torch.library.register_fake("torchvision::nms")` (and `qnms`)
unconditionally, which fails with "operator torchvision::nms does not exist" when `torchvision/_C.so`
was built for another torch. This shim declares those two operator *schemas* just before torchvision is
imported, exactly as `_C.so` would. It registers no kernel: calling `torchvision.ops.nms` still raises
"no kernel", so nothing can be computed through it. The datasets and transforms the peers use are
plain Python and PIL, which the shim does not touch; it therefore cannot change a result.

Installed as a `.pth` file in a peer's own virtual environment only, and only when a plain
`import torchvision` fails there with that error (see ../setup_peer.sh): where `_C.so` loads, it
defines these schemas itself and the shim must stay out of its way.
"""

from __future__ import annotations

import importlib.abc
import sys

SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIB = None  # kept alive: dropping the Library object would remove the definitions


def declare() -> None:
    """Declare torchvision's unconditionally faked operators, if torchvision's own library did not."""
    global _LIB
    import torch

    if _LIB is not None:
        return
    missing = [s for s in SCHEMAS if not hasattr(torch.ops.torchvision, s.split("(")[0])]
    if missing:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
        for schema in missing:
            _LIB.define(schema)


class _Finder(importlib.abc.MetaPathFinder):
    """On the first `import torchvision`, declare the schemas, then step aside."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            declare()
        return None


def install() -> None:
    """Called from the .pth file at interpreter start-up: costs nothing until torchvision is imported."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
