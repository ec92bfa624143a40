"""Write clrepro's embedded MNIST split as torchvision's raw IDX files, so every tool reads the same images.

`<out>/MNIST/raw/train-images-idx3-ubyte` holds the 4,000-image train pool of `mnist_embedded` in its
order (a tool that carves a seed-42 `random_split` 10 % validation set gets clrepro's validation set),
`t10k-*` its 1,000 test images. Pixels are the original uint8 values (`mnist_embedded` is uint8 / 255).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from clrepro.data.sources import mnist_embedded

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file: magic (0, 0, 0x08 = ubyte, ndim), big-endian int32 dims, then the uint8 data."""
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes()


def export(out: Path) -> dict:
    """Write the four IDX files under out/MNIST/raw and return their sha256 digests."""
    d = mnist_embedded()
    raw = out / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split, (x, y) in {"train": (d.train_x, d.train_y), "test": (d.test_x, d.test_y)}.items():
        pixels = np.rint(x.numpy()[:, 0] * 255.0).astype(np.uint8)  # exact: the source is uint8 / 255
        assert np.array_equal(pixels.astype(np.float32) / 255.0, x.numpy()[:, 0])
        for name, arr in zip(FILES[split], (pixels, y.numpy().astype(np.uint8))):
            data = idx_bytes(arr)
            (raw / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
    (out / "MNIST" / "export.json").write_text(json.dumps(
        {"source": "clrepro mnist_embedded", "train": len(d.train_y), "test": len(d.test_y), "sha256": digests},
        indent=2))
    return digests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="data root; files go to <out>/MNIST/raw/")
    args = ap.parse_args()
    for name, h in export(args.out).items():
        print(f"{args.out}/MNIST/raw/{name}  sha256 {h[:16]}")


if __name__ == "__main__":
    main()
