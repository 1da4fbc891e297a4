"""The CSV writer behind :class:`fabricmetrics.loggers.CSVLogger`: atomic rewrites, whole appends, cheap new keys.

Every use of Fabric's private writer API is in this module (``tests/test_log_durability.py`` checks
the parts it relies on): ``_ExperimentWriter.__init__(log_dir)`` sets ``.metrics`` (the pending
rows, each with a ``"step"`` key), ``.metrics_keys``, ``._fs`` (an fsspec file system),
``.log_dir`` and ``.metrics_file_path``, then calls ``._check_log_dir_exists()`` (from
lightning-fabric 2.2.1) before creating the folder; ``.log_metrics(metrics, step)`` appends a row
to ``.metrics``. Files of local folders are written with ``os`` calls (to sync them and rename
atomically); other folders (``s3://``, ``memory://``) through the writer's fsspec file system.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.utilities.rank_zero import rank_zero_warn

from fabricmetrics.exceptions import LogDirectoryError
from fabricmetrics.history import split_complete_lines

__all__ = ["DurableWriter", "describe_os_error"]

_ENCODING = "utf-8"


class DurableWriter(_ExperimentWriter):
    """Fabric's CSV writer, with atomic rewrites, cheap new keys, rollback of failed appends, and resume.

    ``metrics_keys`` is the header of the file (``step`` first, then keys in order of appearance);
    ``rewrites`` counts the times the whole file was rewritten.
    """

    def __init__(self, log_dir: str, resume: tuple[int, int | None] | None) -> None:
        self._resume = resume
        self._rows_on_disk: int | None = 0  # rows in the file (None: unknown)
        self.rewrites = 0
        super().__init__(log_dir)

    @property
    def _local(self) -> bool:
        """Whether the file is on this machine (then written with ``os`` calls, synced and renamed atomically)."""
        return "file" in _protocols(self._fs)

    # -- the hook Fabric calls before creating the folder -------------------------------------------
    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return  # other files (e.g. TensorBoard events sharing the folder) are left alone
        if self._resume is None:
            rank_zero_warn(
                f"{self.metrics_file_path} exists and this run does not resume from a checkpoint, so it is "
                "replaced (as Fabric's CSVLogger does). HINT: load the tracker's state_dict to keep its rows."
            )
            self._fs.rm_file(self.metrics_file_path)
        else:
            self.truncate_after(*self._resume)

    # -- writing ------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the pending rows: an append, or one atomic rewrite when they bring new keys.

        Raises:
            LogDirectoryError: the file could not be written; it is as it was, and the rows stay pending.
        """
        rows = self.metrics
        if not rows:
            return
        exists = self._fs.isfile(self.metrics_file_path)
        header = list(self.metrics_keys) if exists and self.metrics_keys else []
        if exists and not header:
            header = self._read_header()
        known, new = set(header), []
        for row in rows:
            for key in row:
                if key not in known:
                    known.add(key)
                    new.append(key)
        try:
            if not exists or not header:
                if not exists and self._rows_on_disk:
                    rank_zero_warn(
                        f"{self.metrics_file_path}, which held {self._rows_on_disk} rows, has disappeared; a new file "
                        f"is started with the {len(rows)} rows logged since."
                    )
                self._fs.makedirs(self.log_dir, exist_ok=True)
                fresh = ["step", *(key for key in new if key != "step")]
                self._replace(lambda out: out.write(_encode_lists([fresh]) + _encode(rows, fresh)))
                self._rows_on_disk, header = len(rows), fresh
            elif new or not self._ends_with_newline():
                header = self._rewrite(header, [*header, *new], rows)
            else:
                self._append(_encode(rows, header))
                self._rows_on_disk = None if self._rows_on_disk is None else self._rows_on_disk + len(rows)
        except OSError as err:
            raise LogDirectoryError(self._failure(err, rows, exists)) from err
        self.metrics_keys = header
        self.metrics = []

    def _rewrite(self, old: list[str], header: list[str], rows: list[dict[str, Any]]) -> list[str]:
        """Rewrite the file with ``header`` and ``rows`` appended, in one atomic replace.

        The new keys are the last columns, so each earlier row only gains empty cells at its end:
        one ``bytes.replace`` of the line ends pads them all, without parsing a row. A file that
        this writer did not write that way (other line ends, quoted cells, a torn last row) is
        parsed and written again instead.
        """
        with self._fs.open(self.metrics_file_path, "rb") as src:
            data = src.read()
        old_head, line_end = _encode_lists([old]), b"\r\n"
        body = data[len(old_head) :]
        plain = (
            data.startswith(old_head)
            and (not body or body.endswith(line_end))
            and b'"' not in body
            and body.count(b"\n") == body.count(line_end) == body.count(b"\r")
        )
        if plain:
            padded = body.replace(line_end, b"," * (len(header) - len(old)) + line_end)
            self._replace(lambda out: out.write(_encode_lists([header]) + padded + _encode(rows, header)))
            self._rows_on_disk = None if self._rows_on_disk is None else self._rows_on_disk + len(rows)
        else:
            file_header, records, torn = _parse(data)
            header = [*file_header, *(key for key in header if key not in file_header)]
            if torn:
                rank_zero_warn(f"{self.metrics_file_path} ended with an incomplete row, which was dropped: {torn!r}.")
            width = len(header)
            records = [record + [""] * (width - len(record)) for record in records]
            self._replace(lambda out: out.write(_encode_lists([header, *records]) + _encode(rows, header)))
            self._rows_on_disk = len(records) + len(rows)
        self.rewrites += 1
        return header

    def truncate_after(self, step: int, rows_at_step: int | None = None) -> None:
        """Rewrite ``metrics.csv`` without the rows logged after the checkpoint.

        Keeps the rows of steps before ``step`` and the first ``rows_at_step`` rows of ``step``
        (all of them when ``None``), in file order, which is the order they were logged in. Rows
        whose step is not a number are kept, with a warning; an incomplete last row is dropped,
        with a warning.
        """
        if not self._fs.isfile(self.metrics_file_path):
            return
        header, records, torn = self._read_records()
        position = header.index("step") if "step" in header else None
        kept, at_step, odd = [], 0, []
        for line, record in enumerate(records, start=2):
            row_step = _number(record[position]) if position is not None and position < len(record) else None
            if row_step is None:
                odd.append(line)
                kept.append(record)
                continue
            if row_step == step:
                at_step += 1
                if rows_at_step is not None and at_step > rows_at_step:
                    continue
            if row_step <= step:
                kept.append(record)
        if odd:
            rank_zero_warn(
                f"{self.metrics_file_path}: {len(odd)} row(s) have no numeric step (lines {odd[:5]}); the resume "
                "keeps them where they are."
            )
        if torn:
            rank_zero_warn(f"{self.metrics_file_path} ended with an incomplete row, which was dropped: {torn!r}.")
        try:
            self._replace(lambda out: out.write(_encode_lists([header]) + _encode_lists(kept)))
        except OSError as err:
            raise LogDirectoryError(
                f"Could not rewrite {self.metrics_file_path} for the resume from step {step}: "
                f"{describe_os_error(err)}. The file is unchanged (it still holds the rows logged after the "
                "checkpoint). HINT: free space on the disk or make the folder writable, then resume again."
            ) from err
        self.rewrites += 1
        self.metrics_keys, self._rows_on_disk = header, len(kept)

    # -- files --------------------------------------------------------------------------------------
    def _read_records(self) -> tuple[list[str], list[list[str]], str]:
        """The header, the complete records and the incomplete tail (``""`` if none) of the file."""
        with self._fs.open(self.metrics_file_path, "rb") as file:
            return _parse(file.read())

    def _read_header(self) -> list[str]:
        with self._fs.open(self.metrics_file_path, "rb") as file:
            first = file.readline().decode(_ENCODING, errors="replace")
        return next(csv.reader([first]), [])

    def _ends_with_newline(self) -> bool:
        with self._fs.open(self.metrics_file_path, "rb") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() == 0:
                return True
            file.seek(-1, os.SEEK_END)
            return file.read(1) in (b"\n", b"\r")

    def _append(self, data: bytes) -> None:
        """Append ``data`` whole or not at all (a failed append is cut off again)."""
        path = self.metrics_file_path
        if not self._local:
            with self._fs.open(path, "ab") as file:
                file.write(data)
            return
        size = os.path.getsize(path)
        try:
            with open(path, "ab") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.truncate(path, size)
            raise

    def _replace(self, write: Callable[[IO[bytes]], object]) -> None:
        """Write a sibling temporary file with ``write``, sync it, and rename it over the file."""
        path = self.metrics_file_path
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.tmp")
        if not self._local:  # remote folders (fsspec): write, then move
            try:
                with self._fs.open(tmp, "wb") as out:
                    write(out)
                self._fs.mv(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._fs.rm_file(tmp)
                raise
            return
        try:
            with open(tmp, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
            fd = os.open(directory or ".", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _failure(self, err: OSError, rows: list[dict[str, Any]], existed: bool) -> str:
        steps = [row.get("step") for row in rows]
        where = (
            f"The file is unchanged and keeps the {self._rows_on_disk} rows written before"
            if existed and self._rows_on_disk is not None
            else "The file is unchanged"
            if existed
            else "The file was not created"
        )
        return (
            f"CSVLogger could not write {self.metrics_file_path}: {describe_os_error(err)}. {where}; the "
            f"{len(rows)} row(s) logged since (steps {steps[0]}–{steps[-1]}) are only in memory and are written at "
            "the next flush (the tracker flushes at every epoch end). HINT: free space on the disk or make the "
            "folder writable again; if the process ends first, those rows are lost."
        )


def _encode(rows: Iterable[Mapping[str, Any]], header: list[str]) -> bytes:
    """CSV lines of ``rows`` under ``header`` (an empty cell for each key a row lacks, as Fabric writes)."""
    position = {key: i for i, key in enumerate(header)}
    lines = []
    for row in rows:
        cells: list[Any] = [""] * len(header)
        for key, value in row.items():
            cells[position[key]] = "" if value is None else value
        lines.append(cells)
    return _encode_lists(lines)


def _parse(data: bytes) -> tuple[list[str], list[list[str]], str]:
    """The header, the complete records and the incomplete last line (``""`` if none) of a CSV file."""
    complete, torn = split_complete_lines(data)
    records = list(csv.reader(io.StringIO(complete.decode(_ENCODING, errors="replace"), newline="")))
    return (records[0] if records else []), records[1:], torn.decode(_ENCODING, errors="replace")


def _encode_lists(records: Iterable[list[Any]]) -> bytes:
    """CSV lines of lists of cells, each ended by a CR LF as Fabric's writer ends them."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(records)
    return buffer.getvalue().encode(_ENCODING)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if value != value else value  # NaN is not a step


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return tuple(protocol) if isinstance(protocol, (tuple, list)) else (str(protocol),)


def describe_os_error(err: OSError) -> str:
    """``OSError: [Errno 28] No space left on device: '/path'`` (file names decoded, not bytes)."""
    if err.errno is None or not err.strerror:
        return f"{type(err).__name__}: {err}"
    text = f"{type(err).__name__}: [Errno {err.errno}] {err.strerror}"
    if err.filename is not None:
        text += f": {os.fsdecode(err.filename)!r}"
    return text
