"""The interference positive control: a linear projector whose clients share a
low-rank map under large, conflicting client-specific components.

The registered ``"interference"`` dataset: :func:`data_section` (defaults),
:func:`validate` and :func:`build`. The construction, and why Fed-CMP's CRA
must beat FedAvg on it, is in ``fedjax_mm/data/interference.py``.

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only);
  Yadav et al., "TIES-Merging", NeurIPS 2023.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from fedjax_mm import configuration
from fedjax_mm.data import interference
from fedjax_mm.models import linear
from fedjax_mm.setups import Setup


def data_section(num_clients: int = 200) -> ml_collections.ConfigDict:
  """Default ``config.data``: a 32 x 16 projector, rank-2 shared map, ratio 0.85."""
  return ml_collections.ConfigDict(dict(
      name="interference", num_clients=num_clients, num_inputs=32, num_outputs=16,
      shared_rank=2,
      ratio=0.85,            # ‖B_k‖_F / ‖W*‖_F (see the data module for the window)
      num_directions=30,     # pool of client directions, <= num_inputs - shared_rank
      client_size=320, test_fraction=0.2,   # 256 train rows, 64 test rows
      noise=0.1))


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data`` of the interference control."""
  number, d = configuration.number, config.data
  number(config, "data.num_clients", lambda v: v >= 1, ">= 1", integer=True)
  number(config, "data.num_inputs", lambda v: v >= 2, ">= 2", integer=True)
  number(config, "data.num_outputs", lambda v: v >= 2, ">= 2", integer=True)
  widest = min(d.num_inputs, d.num_outputs) - 1
  number(config, "data.shared_rank", lambda v: 1 <= v <= widest,
         f"in [1, min(num_inputs, num_outputs) - 1 = {widest}]", integer=True)
  room = d.num_inputs - d.shared_rank
  number(config, "data.num_directions", lambda v: 1 <= v <= room,
         f"in [1, num_inputs - shared_rank = {room}]", integer=True)
  number(config, "data.ratio", lambda v: v >= 0, ">= 0")
  number(config, "data.client_size", lambda v: v >= 2, ">= 2 (a train and a test row)",
         integer=True)   # data.test_fraction is checked with the run's fields
  number(config, "data.noise", lambda v: v >= 0, ">= 0")


def build(config: ml_collections.ConfigDict, *, progress: bool = True) -> Setup:
  """The packed federation and the linear-projector task."""
  del progress  # generated in well under a second at the defaults
  d = config.data
  fed = interference.generate(
      config.seed, d.num_clients, num_inputs=d.num_inputs, num_outputs=d.num_outputs,
      shared_rank=d.shared_rank, ratio=d.ratio, num_directions=d.num_directions,
      client_size=d.client_size, test_fraction=d.test_fraction, noise=d.noise)
  energy = float(np.sum(fed.shared**2))   # E‖x W*‖² for x ~ N(0, I)
  return Setup(train=fed.train, test=fed.test,
               task=linear.task(d.num_inputs, d.num_outputs, energy),
               info={"train_examples": fed.train.num_examples,
                     "test_examples": fed.test.num_examples, "target_energy": energy})
