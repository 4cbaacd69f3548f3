"""llmframe on Ray Data: the same run over a cluster, with limits for the whole job.

``pip install "llmframe[ray]"``, then::

    import llmframe.ray
    out = llmframe.ray.complete(df, "prompt", endpoints=[...], rps=5000, actors=8)

A polars DataFrame in gives a polars DataFrame out, row-aligned; a ``ray.data.Dataset`` in
gives a Dataset out (lazy: consuming it sends the requests) with the input columns plus
``response``/``error`` (and the metadata columns with ``metadata=True``, plus ``node``:
the Ray node that ran the row). Every other keyword is ``df.llm.complete``'s.

- **One long-lived engine per actor** (``_live.LiveEngine``): the connection pool, pacing
  and endpoint health carry over between batches, and ``max_concurrency`` batches are in
  flight per actor, so an actor does not idle on one batch's slowest rows.
- **Limits for the whole job.** ``rps`` is leased from one limiter actor in 50 ms slices
  (``_lease``): ~20 calls a second per actor, and the endpoint never sees more than
  ``rps`` in any second, however many actors start or die (the price: ~9% below ``rps``
  at steady state). ``concurrency`` is split evenly between the ``actors``.
- **Actors ask for little CPU** (``num_cpus=0.25``: the work is waiting on the network),
  spread over the nodes, so read tasks still get CPUs on small nodes.
- Every row ends in one result; a batch whose actor dies is run again by Ray Data (its
  rows may then be sent twice; each appears once in the output).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import polars as pl

from ._config import RunConfig, run_config
from ._exceptions import ConfigError
from ._lease import SLICE, LeaseBook, LeasedPacer

__all__ = ["complete"]

_ROW = "__llmframe_row"


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        msg = ('llmframe.ray needs Ray Data: pip install "llmframe[ray]" (or "ray[data]")')
        raise ImportError(msg) from None
    return ray


class _Limiter:
    """The job's request rate (a Ray actor): ``grant(want)`` -> ``(tokens, wait)``."""

    def __init__(self, rps: float) -> None:
        self.book = LeaseBook(rps)

    def grant(self, want: int) -> tuple[int, float]:
        return self.book.grant(want, time.monotonic())


class _Completer:
    """The ``map_batches`` callable class: one engine for the actor's life."""

    def __init__(self, column: str, config: RunConfig, limiter: Any, want: int,
                 output: str, error: str, metadata: bool) -> None:
        import ray

        from ._live import LiveEngine

        self.column, self.output, self.error, self.metadata = column, output, error, metadata
        self.node = ray.get_runtime_context().get_node_id()
        self.schema = config.schema
        pacer = None
        if limiter is not None:
            async def lease(n: int) -> tuple[int, float]:
                return await limiter.grant.remote(n)
            pacer = LeasedPacer(lease, want=want)
        self.engine = LiveEngine(config, pacer)

    def __call__(self, batch: Any) -> Any:
        from . import functions as f

        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        series = f._prompts(df, self.column)
        out = f._Collected(len(df), self.engine.config.schema)
        rows = list(f._rows(series, max(len(series), 1), self.engine.config.api))
        for result in self.engine.run(rows):
            if result is not None:
                out.put(result)
        frame = f._frame_out(df, out, output=self.output, error=self.error,
                             metadata=self.metadata)
        if self.metadata:
            frame = frame.with_columns(pl.lit(self.node, dtype=pl.String).alias("node"))
        return frame.to_arrow()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def complete(data: Any, column: str, *, endpoints: Any = None, actors: int = 2,
             batch_size: int = 256, max_concurrency: int = 4, num_cpus: float = 0.25,
             output: str = "response", error: str = "error", metadata: bool = False,
             config: RunConfig | None = None, **options: Any) -> Any:
    """Send one request per row of ``data[column]`` from ``actors`` Ray actors.

    ``data``: a polars DataFrame (a DataFrame comes back, row-aligned) or a
    ``ray.data.Dataset`` (a lazy Dataset comes back). Run options as in
    ``df.llm.complete`` (``rps``, ``concurrency``, ``max_attempts``, ``model``, ``system``,
    ``params``, ``schema``, ...): ``rps`` and ``concurrency`` are for the whole job.
    """
    ray = _ray()
    config = run_config(endpoints=endpoints, config=config, **options)
    if config.cache:
        msg = "llmframe.ray: cache= is not supported yet (run without the response cache)"
        raise ConfigError(msg)
    for name, value in (("actors", actors), ("batch_size", batch_size),
                        ("max_concurrency", max_concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"llmframe.ray: {name} must be an integer >= 1, got {value!r}"
            raise ConfigError(msg)
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS, or a local one
    limiter = None
    if config.rps:
        limiter = ray.remote(num_cpus=0)(_Limiter).remote(config.rps)
    share = dataclasses.replace(config, rps=None,
                                concurrency=max(1, math.ceil(config.concurrency / actors)))
    want = max(1, math.ceil((config.rps or 0) * SLICE / actors))
    kwargs = {"column": column, "config": share, "limiter": limiter, "want": want,
              "output": output, "error": error, "metadata": metadata}
    if isinstance(data, pl.DataFrame):
        return _complete_frame(ray, data, kwargs, actors, batch_size, max_concurrency,
                               num_cpus)
    return _map(ray, data, kwargs, actors, batch_size, max_concurrency, num_cpus)


def _map(ray: Any, ds: Any, kwargs: dict[str, Any], actors: int, batch_size: int,
         max_concurrency: int, num_cpus: float) -> Any:
    names = set(ds.schema().names)
    if kwargs["column"] not in names:
        msg = f"column {kwargs['column']!r} not found; the dataset has {', '.join(names)}"
        raise ConfigError(msg)
    taken = names & {kwargs["output"], kwargs["error"]}
    if taken:
        msg = (f"the dataset already has a column named {', '.join(sorted(taken))}: pass "
               "output=/error= names that are free")
        raise ConfigError(msg)
    import warnings

    with warnings.catch_warnings():  # Ray 2.5x: actor options as keywords, deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(
            _Completer, fn_constructor_kwargs=kwargs, batch_format="pyarrow",
            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=num_cpus, max_concurrency=max_concurrency, scheduling_strategy="SPREAD")


def _complete_frame(ray: Any, df: pl.DataFrame, kwargs: dict[str, Any], actors: int,
                    batch_size: int, max_concurrency: int, num_cpus: float) -> pl.DataFrame:
    from .functions import _check_collisions, _prompts

    _prompts(df, kwargs["column"])  # a missing or non-string column: before anything runs
    _check_collisions(df, kwargs["output"], kwargs["error"], kwargs["metadata"])
    table = df.with_row_index(_ROW).to_arrow()
    blocks = [table.slice(i, batch_size) for i in range(0, max(len(df), 1), batch_size)]
    ds = _map(ray, ray.data.from_arrow(blocks), kwargs, actors, batch_size, max_concurrency,
              num_cpus)
    import pyarrow as pa

    tables = ray.get(ds.to_arrow_refs())
    out = pl.from_arrow(pa.concat_tables(tables, promote_options="default"))
    assert isinstance(out, pl.DataFrame)
    return out.sort(_ROW).drop(_ROW)
