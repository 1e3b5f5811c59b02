"""Loading a saved replay (replay.npz) without a second copy of its frames.

``np.load`` reads each array whole, and copying that into the preallocated ring holds the
frames twice (14 GB at the peak for a 1M replay, where launch.py's memory check budgets 7):
the frames are read straight into the memory's own array instead, 8 MB at a time.
"""

from __future__ import annotations

import json
import zipfile
from typing import Any

import numpy as np

from replay.memory import ReplayMemory

TAG_KEY = "checkpoint"  # the save's tag: which checkpoint.npz it belongs to (JSON bytes)


def load_npz(memory: ReplayMemory, path: str) -> None:
    """Restore a ``np.savez`` of :meth:`ReplayMemory.state_dict` from ``path`` into ``memory``.
    Everything but the frames is read and checked first, so a save of another shape changes nothing.
    Saved frames that end early (a member cut short) have been read in place over the memory's own:
    they are zeroed again, so a fresh memory (a resume's) is left as it was, empty."""
    with zipfile.ZipFile(path) as z:
        state = {}
        for name in z.namelist():
            key = name.removesuffix(".npy")
            if key not in ("frames", TAG_KEY):
                with z.open(name) as f:
                    state[key] = np.lib.format.read_array(f)
        memory.check_state(state)
        with z.open("frames.npy") as f:
            try:
                read_npy_into(f, memory._frames)
            except ValueError:
                memory._frames.fill(0)  # part of them was read in place: none of it may stay
                raise
    state["frames"] = memory._frames  # load_state_dict leaves an array read in place as it is
    memory.load_state_dict(state)


def read_tag(path: str) -> dict | None:
    """The tag a save carries (see :meth:`replay.server.ReplayServer.save`), without reading its
    frames; None for a save without one. Raises OSError or zipfile.BadZipFile for an unreadable file."""
    with zipfile.ZipFile(path) as z:
        if TAG_KEY + ".npy" not in z.namelist():
            return None
        with z.open(TAG_KEY + ".npy") as f:
            return json.loads(bytes(np.lib.format.read_array(f)).decode())


def read_npy_into(f: Any, out: np.ndarray, chunk: int = 8 << 20) -> None:
    """Read one ``.npy`` stream into ``out`` (same shape and dtype), ``chunk`` bytes at a time."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if tuple(shape) != out.shape or dtype != out.dtype or fortran:
        raise ValueError(f"saved frames are {dtype} {tuple(shape)}, this memory's {out.dtype} {out.shape}")
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        n = f.readinto(view[done: done + chunk])
        if not n:
            raise ValueError(f"saved frames end after {done:,} of {len(view):,} bytes: the file is truncated")
        done += n
