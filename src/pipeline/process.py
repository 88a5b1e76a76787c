"""Process settings for training, made explicitly by the code that trains (never at import)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from types import FrameType

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def drop_failing_nvml_check() -> None:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import, so that asking whether CUDA is there
    does not initialise it (which would poison fork). Where NVML cannot load (no NVIDIA driver), torch
    then tries to load it on every torch.cuda.is_available(), fails, and falls back to the CUDA
    runtime's check anyway; Adam asks once per step, for the same answer. So the request is dropped
    where NVML cannot load. Elsewhere: nothing."""
    if os.environ.get(NVML_CHECK) != "1":
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        del os.environ[NVML_CHECK]


def keep_freed_memory() -> None:
    """Make glibc keep freed memory in the process (elsewhere: nothing). By default it returns large
    freed blocks, such as a conv layer's activations, to the OS, and the next training step
    page-faults them back in. The same as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647; the
    price: a process never shrinks."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def prepare_training_process() -> None:
    """Everything a training process sets before its first step: Lightning imported (its own
    import-time setting comes first), then the NVML check and the allocator settings above."""
    import pytorch_lightning  # noqa: F401 - for its import-time setting of NVML_CHECK

    # Lightning's own use of a deprecated torch API; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    # Lightning's hint, wherever SLURM is installed, to start the run under srun: the project submits
    # to SLURM itself (hydra/launcher=slurm, or batched with executor=slurm; docs/cluster.md).
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system")
    drop_failing_nvml_check()
    keep_freed_memory()


class Interrupted(SystemExit):
    """A job stopped by a signal (SIGTERM: a cluster's time limit or preemption; SIGINT: Ctrl-C). A
    SystemExit, so that nothing on the way treats it as an ordinary error (Hydra and submitit go on
    past an Exception) and, uncaught, it ends the process quietly with its `status`: the
    conventional 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        self.status = 128 + signum
        self.epoch: int | None = None
        self.step: int | None = None
        super().__init__(self.status)

    def __str__(self) -> str:
        return f"interrupted by {self.signal}"


# Every interruption this process received: what reports it after the exception has gone by (a
# sweep's summary, written as the process exits) reads the first (`interruption`).
_received: list[Interrupted] = []


def interruption() -> Interrupted | None:
    """The interruption that stopped this process (its first signal), or None."""
    return _received[0] if _received else None


def _drops_exceptions(frame: FrameType | None) -> bool:
    """Whether code on the stack of `frame` may be a finaliser (a `__del__`, or a weak reference's
    callback: the weakref module's containers), where Python prints an exception and drops it: an
    `Interrupted` raised there would be lost (matplotlib and torch free objects through these all
    the time)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or os.path.basename(code.co_filename) in (
            "weakref.py",
            "_weakrefset.py",
        ):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise `Interrupted` (in the main thread; elsewhere the
    handlers stay as they are), as soon as no finaliser that would drop it runs. Lightning chains
    its own SIGTERM handler in front of this one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if _drops_exceptions(frame):  # the signal again in a moment, once out of there
            threading.Timer(0.001, os.kill, (os.getpid(), signum)).start()
            return
        _received.append(Interrupted(signum))
        raise _received[-1]

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
