"""Aggregation of the cohort's uploads: preprocessors, streaming and whole-cohort reductions.

Three registries: ``AGGREGATORS`` (``config.aggregation.kind`` and
``config.aggregation.<kind>.<option>``), ``PREPROCESSORS`` (the ordered
``config.preprocess.chain`` and ``config.preprocess.<name>.<option>``) and
``WRAPPERS`` around the aggregator (``config.wrap.chain``, innermost first,
and ``config.wrap.<name>.<option>``; each takes the aggregator it wraps as
its ``inner`` context argument).
Adding one is a module with a factory and a ``Part`` line, plus that line
here.

The whole-cohort reductions are also plain public functions (stacked pytree
``[C, ...]``, weights ``[C]``, mask ``[C]`` -> aggregate), callable outside a
round: :func:`coordinate_median`, :func:`trimmed_mean`, :func:`krum`, :func:`bulyan`,
:func:`geometric_median`, :func:`canonical_fusion`, :func:`ties_merge`,
:func:`knots_merge`.
"""

from __future__ import annotations

from fedjax_mm.aggregation import bulyan as _bulyan
from fedjax_mm.aggregation import central_noise as _central_noise
from fedjax_mm.aggregation import clipping as _clipping
from fedjax_mm.aggregation import coordinatewise as _coordinatewise
from fedjax_mm.aggregation import cra as _cra
from fedjax_mm.aggregation import geometric_median as _geometric_median
from fedjax_mm.aggregation import knots as _knots
from fedjax_mm.aggregation import krum as _krum
from fedjax_mm.aggregation import mean as _mean
from fedjax_mm.aggregation import secure_sum as _secure_sum
from fedjax_mm.aggregation import ties as _ties
from fedjax_mm.aggregation import topk as _topk
from fedjax_mm.aggregation.base import (Aggregator, CohortAggregator, Preprocessor,
                                        StreamingAggregator, require_sum, stack_bytes,
                                        stateless)
from fedjax_mm.aggregation.bulyan import bulyan
from fedjax_mm.aggregation.canonical import (CanonicalState, canonical_aggregator,
                                             canonical_fusion)
from fedjax_mm.aggregation.canonical_streamed import canonical_streaming
from fedjax_mm.aggregation.central_noise import gaussian_noise
from fedjax_mm.aggregation.clipping import l2_clip
from fedjax_mm.aggregation.coordinatewise import coordinate_median, trimmed_mean
from fedjax_mm.aggregation.geometric_median import geometric_median
from fedjax_mm.aggregation.knots import knots_merge
from fedjax_mm.aggregation.krum import krum, krum_scores
from fedjax_mm.aggregation.mean import weighted_mean
from fedjax_mm.aggregation.secure_sum import secure_sum
from fedjax_mm.aggregation.ties import ties_merge
from fedjax_mm.registry import Registry

AGGREGATORS = Registry("aggregator", [
    _mean.PART,
    _coordinatewise.MEDIAN,
    _coordinatewise.TRIMMED_MEAN,
    _krum.KRUM,
    _krum.MULTI_KRUM,
    _bulyan.PART,
    _geometric_median.PART,
    _cra.PART,
    _ties.PART,
    _knots.PART,
])

PREPROCESSORS = Registry("preprocessor", [
    _clipping.PART,
    _topk.PART,
])

WRAPPERS = Registry("aggregator wrapper", [
    _central_noise.PART,
    _secure_sum.PART,
])

__all__ = ["AGGREGATORS", "PREPROCESSORS", "WRAPPERS", "bulyan", "gaussian_noise",
           "require_sum", "secure_sum", "CanonicalState", "canonical_aggregator",
           "canonical_fusion", "canonical_streaming", "Aggregator", "CohortAggregator",
           "Preprocessor", "StreamingAggregator", "coordinate_median", "geometric_median",
           "krum", "knots_merge", "krum_scores", "l2_clip", "stack_bytes", "stateless",
           "ties_merge", "trimmed_mean", "weighted_mean"]
