"""The results ``llmframe.ray`` keeps in part files (no Ray needed): a block run twice (its
actor died after writing it) leaves two results per row, and both readers of the parts
(a rerun's stored results, the CLI's save and errors files) keep the same one."""

from __future__ import annotations

import polars as pl

from llmframe._ray_file import _frames
from llmframe._ray_output import one_per_row


def test_a_block_written_twice_gives_each_row_once_the_answer_over_the_error(tmp_path):
    first = {"index": [0, 1, 2], "error": ["boom", None, "x"], "response": [None, "b", None]}
    again = {"index": [0, 1, 2], "error": [None, None, "y"], "response": ["a", "b2", None]}
    pl.DataFrame(first).write_parquet(tmp_path / "part-a.parquet")
    pl.DataFrame(again).write_parquet(tmp_path / "part-b.parquet")
    pl.DataFrame({"index": [3], "error": [None], "response": ["c"]}).write_parquet(
        tmp_path / "part-c.parquet")
    written = pl.concat(list(_frames(tmp_path))).sort("index")
    expected = [(0, None, "a"), (1, None, "b"), (2, "x", None), (3, None, "c")]
    assert written.rows() == expected  # the CLI's save/errors writer, part by part
    stored = one_per_row(pl.read_parquet(tmp_path / "part-*.parquet"), "index", "error")
    assert stored.sort("index").rows() == expected  # a rerun's stored results
