"""Fed-CMP's canonical reliability-aware aggregation (CRA) as a registered part.

One part, two computations of the same aggregate (a reconstruction, see
``canonical.py``): the stacked cohort (``canonical.canonical_aggregator``) or
the one-pass second-moment stream (``canonical_streamed.canonical_streaming``).
``path`` picks one: ``"auto"`` streams when the stacked cohort would exceed
the run's memory cap and the options allow streaming (``score_with=
"previous"`` and a streamable reliability), else stacks (and the round then
refuses a stack over the cap, naming the numbers).

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
"""

from __future__ import annotations

from fedjax_mm import checks
from fedjax_mm.aggregation import canonical
from fedjax_mm.aggregation.base import Aggregator, stack_bytes
from fedjax_mm.aggregation.canonical_streamed import (STREAMABLE_RELIABILITIES,
                                                      canonical_streaming, streamable)
from fedjax_mm.registry import Part
from fedjax_mm.types import PyTree

PATHS = ("auto", "stacked", "streamed")


def streams(path: str, reliability: str, score_with: str, template: PyTree | None,
            cohort_size: int, max_stack_bytes: int) -> bool:
  """Whether CRA takes its streamed path (see the module doc for ``"auto"``)."""
  if path != "auto":
    return path == "streamed"
  if template is None:
    return False
  too_big = stack_bytes(template, cohort_size) > max_stack_bytes
  return too_big and streamable(reliability, score_with)


def cra(rank: int = 0, reliability: str = "explained", temperature: float = 0.1,
        fusion: str = "coefficients", score_with: str = "current", decompose: str = "updates",
        path: str = "auto", *, template: PyTree | None = None, cohort_size: int = 1,
        max_stack_bytes: int = 2**62) -> Aggregator:
  """CRA with its options (``rank`` 0 = full rank per matrix).

  Args:
    rank, reliability, temperature, fusion, score_with, decompose: see
      ``canonical.canonical_fusion``.
    path: one of ``PATHS``.
    template: one client's update (run context; ``"auto"`` sizes the stack).
    cohort_size: clients per round (run context).
    max_stack_bytes: the run's cap on stacked updates (run context).

  Returns:
    The stacked or the streamed aggregator.
  """
  checks.one_of("path", path, PATHS)
  checks.number("rank", rank, lambda v: v >= 0, ">= 0 (0 = full rank)", integer=True)
  options = dict(rank=rank or None, reliability=reliability, temperature=temperature,
                 fusion=fusion, decompose=decompose)
  canonical.check_options(score_with=score_with, **options)
  if path == "streamed" and not streamable(reliability, score_with):
    raise ValueError(
        "path: 'streamed' scores each client as it streams past, before this round's basis "
        "exists: it needs score_with='previous' and reliability in "
        f"{STREAMABLE_RELIABILITIES}, got {score_with!r} and {reliability!r}")
  if streams(path, reliability, score_with, template, cohort_size, max_stack_bytes):
    return canonical_streaming(**options)
  return canonical.canonical_aggregator(score_with=score_with, **options)


PART = Part("canonical", cra, "Fed-CMP CRA",
            "canonical reliability-aware aggregation in a shared basis (a reconstruction)",
            context=("template", "cohort_size", "max_stack_bytes"))
