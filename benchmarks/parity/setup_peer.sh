#!/usr/bin/env bash
# Build one parity peer in its own virtual environment: setup_peer.sh <peer>  (prints the venv path).
# The venv lives under $PARITY_CACHE/venvs/<peer> (default ~/.cache/clrepro/parity), never in the project's
# .venv. It is rebuilt when the peer's pins, the torchvision shim or the peer's declared patches change.
set -euo pipefail
peer=${1:?usage: setup_peer.sh <peer>}
here=$(cd "$(dirname "$0")" && pwd)
cache=${PARITY_CACHE:-$HOME/.cache/clrepro/parity}
venv=$cache/venvs/$peer
req=$here/peers/$peer-requirements.txt
[ -f "$req" ] || { echo "setup_peer.sh: no pins for peer '$peer' ($req)" >&2; exit 2; }
patches=$(ls "$here"/peer_patches/"$peer"-*.patch 2>/dev/null || true)
stamp=$venv/.installed-$(cat "$req" "$here/tv_shim/tv_schema_shim.py" $patches | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then echo "$venv"; exit 0; fi
PY=${PY:-python3.11}
echo "setup_peer.sh: building $peer in $venv" >&2
rm -rf "$venv"
"$PY" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip >&2
"$venv/bin/pip" install -q torch==2.13.0 >&2          # the same CPU torch as the project (never a CUDA build)
"$venv/bin/pip" install -q -r "$req" >&2               # the peer and its pinned closure
sp=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
    # torchvision's wheel cannot load its C extension next to this CPU torch: declare the two operator
    # schemas its Python import needs (no kernels; see tv_shim/tv_schema_shim.py).
    cp "$here/tv_shim/tv_schema_shim.py" "$sp/"
    echo "import tv_schema_shim; tv_schema_shim.install()" > "$sp/tv_schema_shim.pth"
    "$venv/bin/python" -c "import torchvision" >&2
    echo "setup_peer.sh: torchvision imports through tv_schema_shim" >&2
fi
for p in $patches; do                                  # declared reference-bug fixes (peer_patches/README.md)
    echo "setup_peer.sh: applying $(basename "$p")" >&2
    patch -s -d "$sp" -p1 < "$p" >&2
done
touch "$stamp"
echo "$venv"
