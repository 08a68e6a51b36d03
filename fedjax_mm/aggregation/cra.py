"""Fed-CMP's canonical reliability-aware aggregation (CRA) as a registered part.

One part, two computations of the same aggregate (a reconstruction, see
``canonical.py``): the stacked cohort (``canonical.canonical_aggregator``) or
the one-pass second-moment stream (``canonical_streamed.canonical_streaming``).
``path`` picks one: ``"auto"`` streams when the stacked cohort would exceed
the run's memory cap and the options allow streaming (``score_with=
"previous"``, a streamable reliability and none of the stacked-only variants,
``canonical_streamed.STACKED_ONLY``), else stacks (and the round then
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
                                                      canonical_streaming, streamable,
                                                      unstreamable_option)
from fedjax_mm.registry import Part
from fedjax_mm.types import PyTree

PATHS = ("auto", "stacked", "streamed")


def streams(path: str, reliability: str, score_with: str, template: PyTree | None,
            cohort_size: int, max_stack_bytes: int, **variants) -> bool:
  """Whether CRA takes its streamed path (see the module doc for ``"auto"``)."""
  if path != "auto":
    return path == "streamed"
  if template is None:
    return False
  too_big = stack_bytes(template, cohort_size) > max_stack_bytes
  return too_big and streamable(reliability, score_with, **variants)


def cra(rank: int = 0, reliability: str = "explained", temperature: float = 0.1,
        fusion: str = "coefficients", score_with: str = "current", decompose: str = "updates",
        path: str = "auto", weighting: str = "client", direction_score: str = "sign_agreement",
        trim: float = 0.0, sign_election: bool = False, residual: str = "drop",
        standardize: bool = False, side: str = "input", basis_decay: float = 0.9, *,
        template: PyTree | None = None, cohort_size: int = 1,
        max_stack_bytes: int = 2**62) -> Aggregator:
  """CRA with its options (``rank`` 0 = full rank per matrix).

  Args:
    rank, reliability, temperature, fusion, score_with, decompose: see
      ``canonical.canonical_fusion``.
    path: one of ``PATHS``.
    weighting, direction_score, trim, sign_election, residual, standardize,
      side, basis_decay: the variants of ``canonical.py``'s module doc
      (defaults: CRA as first reconstructed).
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
  variants = dict(weighting=weighting, direction_score=direction_score, trim=trim,
                  sign_election=sign_election, residual=residual, standardize=standardize,
                  side=side, basis_decay=basis_decay)
  canonical.check_options(score_with=score_with, **options, **variants)
  blocking = unstreamable_option(**variants)
  if path == "streamed" and blocking is not None:
    raise ValueError(f"path: 'streamed' does not compute {blocking}={variants[blocking]!r} "
                     "(it needs every client's coefficients or extra state; use 'stacked' "
                     "or 'auto')")
  if path == "streamed" and not streamable(reliability, score_with):
    raise ValueError(
        "path: 'streamed' scores each client as it streams past, before this round's basis "
        "exists: it needs score_with='previous' and reliability in "
        f"{STREAMABLE_RELIABILITIES}, got {score_with!r} and {reliability!r}")
  if streams(path, reliability, score_with, template, cohort_size, max_stack_bytes,
             **variants):
    return canonical_streaming(**options)
  return canonical.canonical_aggregator(score_with=score_with, **options, **variants)


PART = Part("canonical", cra, "Fed-CMP CRA",
            "canonical reliability-aware aggregation in a shared basis (a reconstruction)",
            context=("template", "cohort_size", "max_stack_bytes"))
