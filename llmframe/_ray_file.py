"""``llmframe run FILE --ray``: the file read by Ray tasks, the results streamed to disk.

The driver never holds the file or its results, so a file of any size runs in bounded
memory there:

- :func:`line_ranges` cuts the file into parts of ~8 MB that end at a line end, counting
  the lines before each (one pass over the file, 1 MB at a time), so every line keeps its
  own index (``line N`` in errors, the key of ``--resume``) wherever it is read;
- each part is read by a Ray task on the driver's node (the file's path is the driver's),
  as ``llmframe run`` reads it: a line that is not a JSON object becomes an error row;
  rows that already have a result in ``SAVE.ray/`` are skipped there;
- the actors write each block's results to ``SAVE.ray/`` and give back only counts;
- :func:`write_parts` writes the save and errors files from ``SAVE.ray/`` at the end (so
  they always match it, after a crash too).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._frame_io import request_frame, write_rows
from ._jsonl import rows_of
from ._ray_output import one_per_row, part_files
from ._sinks import FileSink

__all__ = ["dataset_of", "done_lines", "line_ranges", "write_parts"]

PART_BYTES = 8 << 20
_READ = 1 << 20


def line_ranges(path: Path, size: int = PART_BYTES) -> tuple[list[tuple[int, int, int]], int]:
    """``([(start, end, first line index), ...], lines)``: parts of ``path`` of about
    ``size`` bytes, each ending at a line end (or the file's end), and its line count.

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"a\\nbb\\ncc\\nd"); f.close()
    >>> line_ranges(Path(f.name), size=3)
    ([(0, 5, 0), (5, 8, 2), (8, 9, 3)], 4)
    >>> os.unlink(f.name)
    """
    ranges: list[tuple[int, int, int]] = []
    start = first = offset = lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while block := handle.read(_READ):
            end, last = offset + len(block), block[-1:]
            while end - start >= size:  # cut at the first line end past ``size``
                cut = block.find(b"\n", max(start + size - 1 - offset, 0))
                if cut < 0:
                    break
                lines_to = lines + block.count(b"\n", 0, cut + 1)
                ranges.append((start, offset + cut + 1, first))
                start, first = offset + cut + 1, lines_to
                lines, block, offset = lines_to, block[cut + 1:], offset + cut + 1
            lines += block.count(b"\n")
            offset = end
    total = lines + (last != b"\n")
    if start < offset:
        ranges.append((start, offset, first))
    return ranges, total


def done_lines(parts: Path) -> np.ndarray:
    """The sorted line indexes that have a result in ``parts`` (``SAVE.ray/``)."""
    files = part_files(parts)
    if not files:
        return np.zeros(0, dtype=np.int64)
    done = pl.scan_parquet(files).select("index").unique().collect()["index"]
    return np.sort(done.to_numpy())


def _read_parts(batch: dict[str, Any], path: str, api: str) -> Any:
    """A Ray task: a batch of parts (``start``, ``end``, ``first``, ``skip``) of ``path``
    in, their rows out (``read_jsonl``'s columns)."""
    name = Path(path).name
    frames = []
    with open(path, "rb") as handle:
        for start, end, first, skip in zip(batch["start"], batch["end"], batch["first"],
                                           batch["skip"], strict=True):
            handle.seek(int(start))
            lines = handle.read(int(end) - int(start)).split(b"\n")
            if lines and not lines[-1]:
                lines.pop()  # after the last line end: no line
            done = set(np.asarray(skip).tolist())
            rows = rows_of(lines, name, int(first),
                           keep=(lambda i, done=done: i not in done) if done else None)
            frames.append(request_frame(rows, name, api, check=False))
    return pl.concat(frames).to_arrow()


def dataset_of(ray: Any, path: Path, ranges: list[tuple[int, int, int]], done: np.ndarray,
               api: str) -> Any:
    """The file's rows as a Dataset, read by Ray tasks on this (the driver's) node,
    without the lines in ``done``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    items = []
    for start, end, first in ranges:
        lo, hi = np.searchsorted(done, [first, first + (end - start) + 1])
        items.append({"start": start, "end": end, "first": first,
                      "skip": done[lo:hi].tolist()})
    here = ray.get_runtime_context().get_node_id()
    with warnings.catch_warnings():  # Ray 2.6x: scheduling_strategy as a keyword, deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _read_parts, fn_kwargs={"path": str(path), "api": api}, batch_size=1,
            batch_format="numpy", num_cpus=0.25,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))


def write_parts(parts: Path, save: Path, errors: Path, api: str) -> tuple[int, int]:
    """The save and errors files, from the results in ``parts``, one part at a time."""
    saved = failed = 0
    with FileSink(save, errors) as sink:
        for frame in _frames(parts):
            ok, bad = write_rows(frame, sink, api=api)
            saved, failed = saved + ok, failed + bad
    return saved, failed


_FILE = "__llmframe_file"


def _frames(parts: Path) -> Iterator[pl.DataFrame]:
    files = part_files(parts)
    if not files:
        return
    # a block run twice (its actor died after writing it): each row once, the copy
    # one_per_row keeps (only the rows found twice are read whole here)
    scan = pl.scan_parquet(files, include_file_paths=_FILE)  # in the files' order
    twice = scan.group_by("index").len().filter(pl.col("len") > 1).collect()["index"]
    copies = scan.filter(pl.col("index").is_in(twice.implode()))  # (a filter keeps order)
    kept = one_per_row(copies, "index", "error").select("index", _FILE).collect()
    for file in files:
        frame = pl.read_parquet(file)
        if kept.height:
            mine = kept.filter(pl.col(_FILE) == str(file))["index"].implode()
            frame = frame.filter(~pl.col("index").is_in(kept["index"].implode())
                                 | pl.col("index").is_in(mine))
        yield frame
