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
- **Limits for the whole job**, held by one hub actor (``_ray_actor.Hub``) whatever
  actors start, die or autoscale: ``rps`` and ``tpm`` are leased in 50 ms slices
  (``_lease``: ~20 calls a second per actor, and the endpoint never sees more than the
  limit in any second; the price: ~9% below it at steady state); ``budget`` is drawn from
  one purse (``_purse``); a pause, cooldown, hold or *out* one actor sees at an endpoint
  reaches the others within 0.1 s (``_signals``). ``concurrency`` and the endpoints' own
  limits are split evenly between the actors.
- **Actors ask for little CPU** (``num_cpus=0.25``: the work is waiting on the network),
  spread over the nodes, so read tasks still get CPUs on small nodes.
- Every row ends in one result; a batch whose actor dies is run again by Ray Data (its
  rows may then be sent twice; each appears once in the output).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import polars as pl

from ._config import RunConfig, run_config
from ._exceptions import ConfigError
from ._lease import SLICE
from ._ray_actor import COST, Completer, Hub, Job, check_names, own_columns
from ._ray_output import (
    ROW,
    done_results,
    output_dir,
    same_rows,
    spent_before,
    write_manifest,
)

__all__ = ["complete"]

_ROW = ROW
_DRAWS = 50  # an actor draws 1/50 of its share of the budget at a time


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        msg = ('llmframe.ray needs Ray Data: pip install "llmframe[ray]" (or "ray[data]")')
        raise ImportError(msg) from None
    return ray


def complete(data: Any, column: str, *, endpoints: Any = None,
             actors: int | tuple[int, int] = 2,
             output: str | os.PathLike[str] | None = None, id_column: str | None = None,
             batch_size: int = 256, max_concurrency: int = 8, num_cpus: float = 0.25,
             response_column: str = "response", error_column: str = "error",
             metadata: bool = False, retry_errors: bool = False,
             config: RunConfig | None = None, **options: Any) -> Any:
    """Send one request per row of ``data[column]`` from ``actors`` Ray actors
    (``(min, max)``: an autoscaling pool of that many).

    ``data``: a polars DataFrame (a DataFrame comes back, row-aligned) or a
    ``ray.data.Dataset`` (a lazy Dataset comes back). Run options as in
    ``df.llm.complete`` (``rps``, ``concurrency``, ``max_attempts``, ``model``, ``system``,
    ``params``, ``schema``, ``tpm``, ``budget``, ``cache``, ...): the limits are for the
    whole job; a budget that stops it raises ``BudgetReached`` with the aligned frame
    (a Dataset: the rows not sent have the error "not sent: stopped by the budget").
    ``output=DIR``: each block's results are written there as a Parquet file as soon as
    the block is done, and a rerun with the same DIR sends only the rows that have none
    (rows are keyed by their position in a DataFrame, by ``id_column`` in a Dataset,
    which must name each row once); with ``retry_errors=True`` also the rows whose result
    there is an error.
    """
    ray = _ray()
    config = run_config(endpoints=endpoints, config=config, **options)
    _check_input(ray, data, column, response_column, error_column, num_cpus, metadata)
    run = plan(ray, config, column, actors=actors, output=output, batch_size=batch_size,
               max_concurrency=max_concurrency, num_cpus=num_cpus,
               response_column=response_column, error_column=error_column,
               metadata=metadata, retry_errors=retry_errors)
    if isinstance(data, pl.DataFrame):
        return _complete_frame(run, data)
    return _complete_dataset(run, data, id_column)


def plan(ray: Any, config: RunConfig, column: str, *, actors: int | tuple[int, int],
         output: str | os.PathLike[str] | None, batch_size: int, max_concurrency: int,
         num_cpus: float, response_column: str, error_column: str, metadata: bool,
         retry_errors: bool, lines: str | None = None) -> _Map:
    """The job (checked, its hub started) and how it maps a Dataset."""
    if config.cache:  # the same file for every actor (each node's own disk)
        config = dataclasses.replace(config, cache=Path(config.cache).resolve())
    low, high = _pool_size(actors)
    for name, value in (("batch_size", batch_size), ("max_concurrency", max_concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"llmframe.ray: {name} must be an integer >= 1, got {value!r}"
            raise ConfigError(msg)
    out_dir = None if output is None else output_dir(output)
    if retry_errors and out_dir is None:
        msg = "llmframe.ray: retry_errors=True needs output=DIR (the results to retry)"
        raise ConfigError(msg)
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS, or a local one
    env = {}
    for ep in config.endpoints:  # a key that is not set: before anything starts
        if ep.api_key() is not None:
            env[ep.api_key_env] = os.environ[ep.api_key_env]  # type: ignore[index]
    # the job's hub: its rps/tpm leases, its budget and the endpoints' signals; on the
    # driver's node (whose loss ends the job anyway), restarted if it dies
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    hub = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                     scheduling_strategy=here)(Hub).remote(config.rps, config.tpm,
                                                           config.budget)
    from ._workers import shard_config

    # the limits held in flight (concurrency, the endpoints' own) and the endpoints' rates
    # are shared out by the hub as the actors' work goes (``_shares``); refused now if as
    # many actors as the pool may grow to cannot each have one request in flight
    sharded = shard_config(config, high, "actors")
    share = dataclasses.replace(sharded, rps=None, concurrency=config.concurrency,
                                endpoints=config.endpoints)
    job = Job(column, share, hub, math.ceil((config.rps or 0) * SLICE / high),
              math.ceil((config.tpm or 0) / 60 * SLICE / high),
              response_column, error_column, metadata, out_dir, high,
              (config.budget or 0.0) / (_DRAWS * high), lines=lines, env=env)
    return _Map(ray, job, (low, high), batch_size, max_concurrency, num_cpus, retry_errors)


def _pool_size(actors: Any) -> tuple[int, int]:
    """``actors``: N, or ``(min, max)`` for an autoscaling pool."""
    sizes = actors if isinstance(actors, (tuple, list)) else (actors, actors)
    ok = len(sizes) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes)
    if not ok or sizes[0] > sizes[1]:
        msg = (f"llmframe.ray: actors must be an integer >= 1 or a (min, max) pair of them, "
               f"got {actors!r}")
        raise ConfigError(msg)
    return sizes[0], sizes[1]


def _check_input(ray: Any, data: Any, column: Any, response: str, error: str,
                 num_cpus: float, metadata: bool) -> None:
    """What can be checked before Ray starts anything."""
    if isinstance(data, pl.LazyFrame):
        msg = "llmframe.ray: a LazyFrame: collect() it first (or give a ray.data.Dataset)"
        raise ConfigError(msg)
    if not isinstance(data, (pl.DataFrame, ray.data.Dataset)):
        msg = (f"llmframe.ray: data must be a polars DataFrame or a ray.data.Dataset, got "
               f"{type(data).__name__}")
        raise ConfigError(msg)
    if not isinstance(column, str):
        msg = (f"llmframe.ray: column must be a column name, got {type(column).__name__} "
               "(build the prompt column first, e.g. with with_columns)")
        raise ConfigError(msg)
    if response == error:
        msg = f"llmframe.ray: response_column and error_column are both {response!r}"
        raise ConfigError(msg)
    ours = {_ROW, *own_columns(metadata)}
    for name, value in (("response_column", response), ("error_column", error)):
        if value in ours:
            msg = (f"llmframe.ray: {name}={value!r} is a column llmframe.ray makes itself; "
                   "give another name")
            raise ConfigError(msg)
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0:
        msg = f"llmframe.ray: num_cpus must be a number >= 0, got {num_cpus!r}"
        raise ConfigError(msg)


@dataclasses.dataclass
class _Map:
    ray: Any
    job: Job
    actors: tuple[int, int]  # the pool's (min, max) size
    batch_size: int
    max_concurrency: int
    num_cpus: float
    retry_errors: bool = False

    def check(self, ds: Any, id_column: str | None = None) -> None:
        """What can be checked before the Dataset runs: its schema, when known without
        running it (else each batch is checked by the actors)."""
        schema = ds.schema(fetch_if_missing=False)
        if schema is None:
            return
        job = self.job
        check_names(schema.names, job)
        if id_column is not None and id_column not in schema.names:
            msg = (f"llmframe.ray: id_column {id_column!r} not found; the dataset has "
                   f"{', '.join(schema.names)}")
            raise ConfigError(msg)
        kind = str(schema.types[schema.names.index(job.column)])
        if "string" not in kind and kind != "null":  # string, large_string, string_view
            msg = (f"the prompt column {job.column!r} must hold strings, got {kind}; cast "
                   "it first")
            raise ConfigError(msg)

    def __call__(self, ds: Any) -> Any:
        import warnings

        # several batches at once in each actor: Ray Data runs a plain (not async) class
        # one call at a time unless told it is thread-safe (the engine is)
        compute = self.ray.data.ActorPoolStrategy(
            min_size=self.actors[0], max_size=self.actors[1],
            max_concurrent_calls_per_actor=self.max_concurrency,
            enable_true_multi_threading=True)
        with warnings.catch_warnings():  # Ray 2.5x: actor options as keywords, deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            return ds.map_batches(
                Completer, fn_constructor_kwargs={"job": self.job}, batch_format="pyarrow",
                batch_size=self.batch_size, compute=compute, num_cpus=self.num_cpus,
                scheduling_strategy="SPREAD")


def _complete_frame(run: _Map, df: pl.DataFrame) -> pl.DataFrame:
    from .functions import _check_collisions, _prompts

    job, ray = run.job, run.ray
    _prompts(df, job.column)  # a missing or non-string column: before anything runs
    _check_collisions(df, job.response, job.error, job.metadata)
    for name in (_ROW, COST, *(("node",) if job.metadata else ())):
        if name in df.columns:
            msg = f"the frame already has a column named {name!r}: rename it first"
            raise ConfigError(msg)
    write_manifest(job, _ROW)
    table = df.with_row_index(_ROW)
    done = done_results(job, _ROW, run.retry_errors)
    if done is not None:
        done = same_rows(done, table, job)
        table = table.filter(~pl.col(_ROW).is_in(done[_ROW].implode()))
    spent_before(job, done)
    parts = [] if done is None else [done]
    if not parts and not table.height:  # an empty frame: its columns, nothing to send
        from .functions import _Collected, _frame_out

        return _frame_out(df, _Collected(0, job.config.schema), output=job.response,
                          error=job.error, metadata=job.metadata)
    if table.height:
        arrow = table.to_arrow()
        blocks = [arrow.slice(i, run.batch_size) for i in range(0, len(arrow), run.batch_size)]
        # from_blocks: the blocks' metadata read here (from_arrow runs a Ray task per
        # block for it: ~1.5 s before the first request while a worker starts)
        tables = ray.get(run(ray.data.from_blocks(blocks)).to_arrow_refs())
        import pyarrow as pa

        new = pl.from_arrow(pa.concat_tables(tables, promote_options="default"))
        assert isinstance(new, pl.DataFrame)
        parts.append(new)
    made = [c for c in parts[0].columns if c == _ROW or c not in df.columns]
    results = pl.concat([p.select(made) for p in parts], how="vertical_relaxed")
    out = df.with_row_index(_ROW).join(results, on=_ROW, how="left", maintain_order="left")
    return _budget_check(job, out.drop(_ROW))


def _budget_check(job: Job, out: pl.DataFrame) -> pl.DataFrame:
    """A run the budget stopped raises BudgetReached with the frame (as df.llm.complete)."""
    from ._files import budget_reached
    from ._results import NOT_SENT

    not_sent = int((out[job.error] == NOT_SENT).sum())
    spent = float(out[COST].sum() or 0.0)
    out = out.drop(COST)
    if not not_sent:
        return out
    how = ("the same output= and a larger budget= (it sends only the rest)"
           if job.out_dir is not None else
           f"a larger budget= on the rows of exc.partial whose error is {NOT_SENT!r}")
    raise budget_reached(not_sent, spent, out, how)


def _complete_dataset(run: _Map, ds: Any, id_column: str | None) -> Any:
    # the rows' costs stay in DIR (for the budget of a rerun): not a column of the output
    # (dropped by the actors: a separate step would ask for a whole CPU per task)
    job = dataclasses.replace(run.job, keep_cost=False)
    run = dataclasses.replace(run, job=job)
    if job.out_dir is not None and id_column is None:
        msg = ("llmframe.ray: output= with a Dataset needs id_column= (a column that names "
               "each row, to know on a rerun which rows have a result)")
        raise ConfigError(msg)
    run.check(ds, id_column)  # before anything is written to DIR
    if job.out_dir is None:
        return run(ds)
    write_manifest(job, id_column)
    done = done_results(job, id_column, run.retry_errors)
    if done is None:
        return run(ds)
    spent_before(job, done)
    # each actor gets the stored results: a row that has one keeps it (checked to be
    # this row's), the others are sent; one pass over the input, in its order
    job = dataclasses.replace(job, done=run.ray.put(done.to_arrow()), id_column=id_column)
    return dataclasses.replace(run, job=job)(ds)
