"""Head-to-head comparisons at equal size (``nasframe compare``) and the paper's protocol for
choosing a search's result (``nasframe select``).

::

    from nasframe.compare import compare
    result = compare(strategies=["darts-reversible", "spos", "random"],
                     baselines=["transformer"], seeds=3, out="runs/cmp")
    result.summary          # per row: n, mean and std of params, valid loss, BLEU, chrF, ...
"""
from __future__ import annotations

from nasframe.compare.report import describe_architecture, markdown, summarise
from nasframe.compare.runner import CompareResult, compare, target_parameters
from nasframe.compare.select import select
from nasframe.compare.spec import CompareSettings, CompareSpec, Row, load_spec, spec_from_names

__all__ = ["CompareResult", "CompareSettings", "CompareSpec", "Row", "compare",
           "describe_architecture", "load_spec", "markdown", "select", "spec_from_names",
           "summarise", "target_parameters"]
