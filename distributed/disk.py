"""A failed write into the run directory (a full disk, a quota, an I/O error), said in one line.

Every file the driver writes goes through ``core.atomic.write_atomically``: a failed write
removes its temporary file and leaves the previous whole file in place. What the user needs
then is which files are whole, of which learner step, and what to do. Mid-run the driver
says so and trains on (stopping would save nothing more: the next periodic write may find
space again, e.g. once the user frees some); at the end it says so and exits non-zero.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed.checkpoint import CHECKPOINT, REPLAY_FILE


class SaveFailed(Exception):
    """The final export or checkpoint could not be written: the message says what is intact."""


class Saved:
    """Which files of the run directory are whole, and of which learner step (what the driver
    wrote this session, or found there when it started)."""

    def __init__(self, run_dir: Path, checkpoint_step: int | None = None) -> None:
        self.run_dir = run_dir
        self.files: dict[str, str] = {}
        if (run_dir / "policy.h5").is_file():
            self.files["policy.h5"] = "written before this session"
        if (run_dir / "best-policy.h5").is_file():
            self.files["best-policy.h5"] = "written before this session"
        if checkpoint_step is not None:
            self.files[CHECKPOINT] = f"learner step {checkpoint_step:,}"
        self.write_error: tuple[str, BaseException] | None = None  # the last failed write

    def wrote(self, name: str, what: str) -> None:
        self.files[name] = what

    def save_or_say(self, save: Callable[[], Any], name: str, final: bool = False) -> bool:
        """Run ``save()`` (which writes RUN_DIR/``name``); False on a failed write (a full disk), kept
        in ``write_error``. Mid-run it also says in one line what failed and what is whole on disk,
        and the run goes on; at the end (``final``) the caller says it and exits non-zero."""
        try:
            save()
            return True
        except Exception as exc:
            if not is_write_error(exc):
                raise
            if os_error(exc) is not exc:  # raised in the replay actor: it was writing replay.npz
                name = REPLAY_FILE
            self.write_error = (name, exc)
            if not final:
                print(self.failure(name, exc, final), flush=True)
            return False

    def failure(self, name: str, exc: BaseException, final: bool) -> str:
        """The one line for a failed write of RUN_DIR/``name``."""
        why = os_error(exc)
        reason = why.strerror if isinstance(why, OSError) and why.strerror else str(why).splitlines()[0]
        whole = ", ".join(f"{name} ({what})" for name, what in self.files.items()) or "nothing yet"
        free = _free(self.run_dir)
        space = f" ({free} free there)" if free else ""
        hint = f"free space in {self.run_dir}{space}" if _is_full(why) else f"fix {self.run_dir}"
        if not final:
            then = "; training goes on and tries again at the next periodic write"
        elif CHECKPOINT in self.files:
            then = (f"; continue from that checkpoint with `launch.py --resume {self.run_dir}` (the learner steps "
                    f"since it are lost)")
        else:
            then = "; there is no checkpoint to resume from"
        return (f"could not write {name} in {self.run_dir} ({reason}); whole on disk: {whole}{then}; "
                f"{hint}")


def os_error(exc: BaseException) -> BaseException:
    """The OSError behind ``exc``: a write inside a Ray actor arrives wrapped in a RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, OSError) else exc


def is_write_error(exc: BaseException) -> bool:
    """An OSError, also one raised inside a Ray actor (the replay writing replay.npz)."""
    return isinstance(os_error(exc), OSError)


def _is_full(exc: Any) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _free(folder: Path) -> str:
    try:
        mib = shutil.disk_usage(folder).free / 2**20
    except OSError:
        return ""
    return f"{mib:,.1f} MiB" if mib < 1024 else f"{mib / 1024:,.1f} GiB"

