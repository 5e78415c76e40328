"""Stage kernels shut down without the SIGINT jupyter_client sends first (it made ipykernel log an ERROR)."""

from __future__ import annotations

import signal

import nbformat
import papermill as pm
from jupyter_client import AsyncKernelManager

from syllabus.cli import KERNEL_CONFIG, StageKernelManager


def signals_sent(manager_class, tmp_path) -> list[int]:
    sent: list[int] = []

    class Recording(manager_class):
        async def _async_signal_kernel(self, signum):
            sent.append(signum)
            await super()._async_signal_kernel(signum)

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1 + 1")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, source)
    pm.execute_notebook(str(source), str(out), kernel_name="python3", progress_bar=False, language="python",
                        config=KERNEL_CONFIG, kernel_manager_class=Recording)
    return sent


def test_a_stage_kernel_is_shut_down_without_an_interrupt(tmp_path):
    assert signal.SIGINT not in signals_sent(StageKernelManager, tmp_path)


def test_jupyter_clients_own_manager_interrupts_before_shutting_down(tmp_path):
    # what StageKernelManager avoids (if jupyter_client stops doing this, the class can go)
    assert signal.SIGINT in signals_sent(AsyncKernelManager, tmp_path)
