"""A result that cannot be stored stops the run loudly; what was stored stays (defect 5)."""

import json

import polars as pl
import pytest

import llmframe
from llmframe._checkpoint import Checkpoint


def test_a_checkpoint_that_cannot_be_written_fails_the_call(mock_server, tmp_path,
                                                             monkeypatch):
    srv = mock_server()
    real_write = Checkpoint.write
    written = []

    def write(self, result):
        if len(written) == 10:
            raise OSError(28, "No space left on device")
        written.append(result.index)
        real_write(self, result)

    monkeypatch.setattr(Checkpoint, "write", write)
    df = pl.DataFrame({"p": [f"q{i}" for i in range(100)]})
    ckpt = tmp_path / "run.ckpt.jsonl"
    with pytest.raises(llmframe.StoreError, match="No space left"):
        df.llm.complete("p", endpoints=[srv.url], checkpoint=ckpt, progress=False,
                        concurrency=2)
    kept = [json.loads(x) for x in ckpt.read_text().splitlines()[1:]]
    assert sorted(k["index"] for k in kept) == sorted(written) and len(kept) == 10
