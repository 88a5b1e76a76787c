"""Process settings for training: the NVML check, and the signals that stop a job."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.mark.parametrize(
    ("setting", "nvml_loads", "left"),
    [("1", False, None), ("1", True, "1"), ("0", False, "0"), (None, False, None)],
)
def test_nvml_check_is_dropped_only_where_nvml_cannot_load(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, nvml_loads: bool, left: str | None
) -> None:
    import ctypes

    from src.pipeline.process import NVML_CHECK, drop_failing_nvml_check

    def load(name: str) -> object:
        if not nvml_loads:
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    monkeypatch.setattr(ctypes, "CDLL", load)
    if setting is None:
        monkeypatch.delenv(NVML_CHECK, raising=False)
    else:
        monkeypatch.setenv(NVML_CHECK, setting)
    drop_failing_nvml_check()
    assert os.environ.get(NVML_CHECK) == left


def test_dropping_the_nvml_check_keeps_torchs_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where NVML is missing, torch falls back to the CUDA runtime's count: the same answer either way."""
    from src.pipeline.process import NVML_CHECK, drop_failing_nvml_check

    monkeypatch.setenv(NVML_CHECK, "1")
    with_nvml_check = torch.cuda.is_available()
    drop_failing_nvml_check()
    assert torch.cuda.is_available() == with_nvml_check


def test_a_signal_that_lands_in_a_finaliser_interrupts_once_out_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python drops an exception raised in a `__del__` (or a weak reference's callback): a SIGTERM
    handled there still stops the block, with its status, as soon as the finaliser has returned."""
    import signal
    import time

    from src.pipeline import process

    monkeypatch.setattr(process, "_received", [])

    class Freed:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs in here

    started = time.monotonic()
    with pytest.raises(process.Interrupted) as stopped, process.interrupt_on_signals():
        Freed()
        time.sleep(5)
    assert stopped.value.status == 143 and str(stopped.value) == "interrupted by SIGTERM"
    assert time.monotonic() - started < 2
    assert process.interruption() is stopped.value
