"""Progress on the terminal while ``syllabus run`` works.

Per stage: the code cell being executed out of the total and the elapsed time; inside a stage, the
long loops (teacher generation, SFT steps, smoke tests, grid cells, policy x seed runs, lm-eval
models) with their count and an estimate of the time left.

The notebooks run in a kernel, another process, so loops report through a file: ``syllabus run``
names a fresh file in ``$SYLLABUS_PROGRESS_FILE``, inside a temporarily named folder of the run folder
(``.progress-<stage>.XXXX.tmp``, removed when the stage ends, or by the next run after a kill);
``task``/``track`` in the kernel append one JSON line per step; ``StageProgress`` in the command line
reads the file and draws one line on stderr (redrawn in place on a terminal; a line every few seconds
in a log). Without the variable (a notebook opened by hand, ``--quiet``) the loop helpers write
nothing. Nothing here touches a result table, a manifest or a stage's folder.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, TypeVar


ENV_VAR = "SYLLABUS_PROGRESS_FILE"
ENGINE_NAME = "syllabus"
T = TypeVar("T")

_task_ids = itertools.count()


# --------------------------------------------------------------------------- kernel side: loops report
def _emit(event: dict) -> None:
    """Append one event line to the progress file, if there is one; never fails the caller."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    try:  # one write of one short line with O_APPEND: readers never see half a line from two writers
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


class Task:
    """One loop's progress: ``advance()`` after each item, ``close()`` at the end (``task`` does both)."""

    def __init__(self, label: str, total: int, unit: str = ""):
        self.id = f"{os.getpid()}-{next(_task_ids)}"
        self.label, self.total, self.unit, self.done = label, int(total), unit, 0
        self.active = bool(os.environ.get(ENV_VAR)) and self.total > 0
        self._report(end=False)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._report(end=False)

    def close(self) -> None:
        self._report(end=True)
        self.active = False

    def _report(self, end: bool) -> None:
        if self.active:
            _emit({"id": self.id, "label": self.label, "done": self.done, "total": self.total, "unit": self.unit,
                   "end": end, "t": time.time()})


@contextlib.contextmanager
def task(label: str, total: int, unit: str = "") -> Iterator[Task]:
    """``with task("grid cells", 12) as t: ... t.advance()``: the loop's progress, closed on exit."""
    t = Task(label, total, unit)
    try:
        yield t
    finally:
        t.close()


def track(items: Iterable[T], label: str, total: int | None = None, unit: str = "") -> Iterator[T]:
    """Yield ``items`` unchanged, reporting one step after each (``total`` defaults to ``len(items)``)."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    with task(label, len(items) if total is None else total, unit) as t:  # type: ignore[arg-type]
        for item in items:
            yield item
            t.advance()


# --------------------------------------------------------------------------- command-line side: one line
def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Loop:
    """One loop as the command line knows it from its events."""

    def __init__(self, event: dict):
        self.label, self.unit, self.first_t = event["label"], event.get("unit", ""), event["t"]
        self.done, self.total, self.last_t, self.ended = 0, 0, event["t"], False
        self.update(event)

    def update(self, event: dict) -> None:
        self.done, self.total, self.last_t, self.ended = event["done"], event["total"], event["t"], event["end"]

    def describe(self, now: float) -> str:
        unit = f" {self.unit}" if self.unit else ""
        text = f"{self.label} {self.done}/{self.total}{unit}"
        if self.ended:
            return f"{text} in {format_seconds(self.last_t - self.first_t)}"
        if 0 < self.done < self.total:
            per_item = (self.last_t - self.first_t) / self.done
            left = per_item * (self.total - self.done) - (now - self.last_t)
            text += f", ~{format_seconds(max(left, 0))} left"
        return text


class StageProgress:
    """The progress line of one stage while papermill executes it (a context manager).

    Sets ``$SYLLABUS_PROGRESS_FILE`` for the kernel, reads the loops' events from it in a thread and
    draws ``<stage>: cell i/n, elapsed | loop done/total, ~time left`` on ``stream``. Disabled, it
    does nothing and the kernel gets no progress file. The file lies in a folder with a temporary name
    (``.progress-<stage>.XXXX.tmp``) inside ``folder`` (the run folder; default: the system's temporary
    directory), removed on exit; one that a killed run left is removed by the next ``RunDir.prepare``.
    """

    def __init__(self, stage: str, enabled: bool = True, stream: IO[str] | None = None,
                 interval: float = 0.5, log_interval: float = 10.0, folder: str | os.PathLike | None = None):
        self.stage, self.enabled = stage, enabled
        self.parent = None if folder is None else Path(folder)
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval, self.log_interval = interval, log_interval
        self.cell, self.cells = 0, 0
        self._next_cell: tuple[int, int, float] | None = None
        self.loops: dict[str, _Loop] = {}
        self._started = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._folder: Path | None = None
        self._path: Path | None = None
        self._offset, self._pending = 0, b""
        self._last_state, self._last_emit = None, 0.0
        self._saved_env: str | None = None

    # the papermill engine calls this before each code cell
    def cell_started(self, index: int, total: int) -> None:
        with self._lock:
            self._next_cell = (index, total, time.time())  # applied by the drawing thread, after the last events

    def __enter__(self) -> "StageProgress":
        if not self.enabled:
            return self
        self._folder = Path(tempfile.mkdtemp(prefix=f".progress-{self.stage}.", suffix=".tmp", dir=self.parent))
        self._path = self._folder / "events.jsonl"
        self._path.touch()
        self._saved_env = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = str(self._path)  # the kernel inherits the environment when papermill starts it
        self._thread = threading.Thread(target=self._loop, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._saved_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = self._saved_env
        if self.live:
            self._write("\r\x1b[K")
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    # ------------------------------------------------------------------ drawing
    def line(self, now: float | None = None, finished: list[_Loop] | None = None) -> str:
        """The progress line (without a newline): the cell, the elapsed time and the running loops
        (outer first), followed by ``finished`` loops."""
        now = time.time() if now is None else now
        with self._lock:
            head = f"  {self.stage}: "
            head += f"cell {self.cell}/{self.cells}, " if self.cells else "starting, "
            head += format_seconds(now - self._started)
            loops = [loop.describe(now) for loop in [*self.loops.values(), *(finished or [])]]
        return " | ".join([head, *loops])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()
        self._tick()

    def _tick(self) -> None:
        finished = self._read_events()
        if finished and not self.loops and not self.live:  # an outermost loop ended: say so, within its cell
            self._log_line(force=True, finished=[min(finished, key=lambda loop: loop.first_t)])
        with self._lock:
            if self._next_cell is not None:
                self.cell, self.cells, since = self._next_cell
                self._next_cell = None
                # a loop runs within one cell: drop any left from the last one (a loop left open by an error)
                self.loops = {k: v for k, v in self.loops.items() if v.first_t >= since - 0.5}
        if self.live:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self._write("\r\x1b[K" + self.line()[:width])
        else:
            self._log_line(force=False)

    def _log_line(self, force: bool, finished: list[_Loop] | None = None) -> None:
        """In a log: a line when forced, else at most every ``log_interval`` seconds and only when something moved."""
        now = time.time()
        with self._lock:
            state = (self.cell, tuple((k, v.done) for k, v in self.loops.items()))
        if force or (self.cell and state != self._last_state and now - self._last_emit >= self.log_interval):
            self._write(self.line(now, finished) + "\n")
            self._last_state, self._last_emit = state, now

    def _read_events(self) -> list[_Loop]:
        """Read the new complete lines of the progress file; return the loops that ended (and drop them)."""
        if self._path is None:
            return []
        try:
            with open(self._path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        self._offset += len(data)
        data = self._pending + data
        *lines, self._pending = data.split(b"\n")
        with self._lock:
            for raw in lines:
                try:
                    event = json.loads(raw)
                    loop = self.loops.get(event["id"])
                    if loop is None:
                        self.loops[event["id"]] = _Loop(event)
                    else:
                        loop.update(event)
                except (ValueError, KeyError, TypeError):  # not an event of ours: the display carries on
                    continue
            finished = [loop for loop in self.loops.values() if loop.ended]
            self.loops = {key: loop for key, loop in self.loops.items() if not loop.ended}
        return finished

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr never stops a run
            pass


# --------------------------------------------------------------------------- papermill: cell events
def papermill_engine() -> str:
    """Register and name the papermill engine that reports cells: ``execute_notebook(...,
    engine_name=papermill_engine(), on_cell=progress.cell_started)``. papermill is imported here, not
    with the module: through nbformat and jsonschema it takes ~4 s to import, and every stage kernel and
    worker imports this module (``track``) but only ``syllabus run`` drives papermill."""
    from papermill.engines import NBClientEngine, papermill_engines

    class CellProgressEngine(NBClientEngine):
        """papermill's nbclient engine, calling ``on_cell(i, n)`` before the i-th of n code cells."""

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_cell: Callable[[int, int], None] | None = None,
                                     **kwargs):
            if on_cell is not None:
                code_cells = [i for i, cell in enumerate(nb_man.nb.cells) if cell.get("cell_type") == "code"]
                position = {index: n for n, index in enumerate(code_cells, start=1)}
                cell_start = nb_man.cell_start

                def announce_then_start(cell, cell_index=None, **kw):
                    if cell_index in position:
                        on_cell(position[cell_index], len(code_cells))
                    return cell_start(cell, cell_index, **kw)

                nb_man.cell_start = announce_then_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE_NAME, CellProgressEngine)  # registering again replaces it
    return ENGINE_NAME
