"""``df.llm`` and ``pl.col(...).llm``: thin classes that forward to ``functions``."""

from __future__ import annotations

from typing import Any

import polars as pl

from . import functions


@pl.api.register_dataframe_namespace("llm")
class LLMFrameNamespace:
    """``df.llm.complete(column, endpoints=..., rps=...)``; see ``llmframe.functions``."""

    def __init__(self, df: pl.DataFrame) -> None:
        self._df = df

    def complete(self, column: str | pl.Expr, **kwargs: Any) -> pl.DataFrame:
        return functions.complete(self._df, column, **kwargs)

    async def acomplete(self, column: str | pl.Expr, **kwargs: Any) -> pl.DataFrame:
        return await functions.acomplete(self._df, column, **kwargs)

    complete.__doc__ = functions.complete.__doc__
    acomplete.__doc__ = functions.acomplete.__doc__


@pl.api.register_expr_namespace("llm")
class LLMExprNamespace:
    """``pl.col("prompt").llm.complete(endpoints=...)`` -> Struct{response, error}."""

    def __init__(self, expr: pl.Expr) -> None:
        self._expr = expr

    def complete(self, **kwargs: Any) -> pl.Expr:
        return functions.complete_expr(self._expr, **kwargs)

    complete.__doc__ = functions.complete_expr.__doc__
