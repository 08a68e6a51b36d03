"""Fed-MA: federated alignment of a projector between frozen towers (LLaVA stage-1).

The synthetic multimodal world, 1,000 clients with Dirichlet(0.1) concept skew
over shape x color, 100 clients per round, FedAvg.

Run:
  python -m fedjax_mm.main --config=configs/fedma.py --workdir=runs/fedma
Heterogeneity presets (the argument after the colon):
  configs/fedma.py:iid         IID clients
  configs/fedma.py:dirichlet   Dirichlet(0.1) concept skew (default)
  configs/fedma.py:domain      each client sees one rendering domain
  configs/fedma.py:style       each client writes captions in one style
  configs/fedma.py:missing     30% of clients keep only 10% of their captions
Towers are pretrained once per tower config and cached in
$FEDJAX_MM_CACHE (default ~/.cache/fedjax_mm); `--config.model.cache_dir` overrides.
"""

import ml_collections

from fedjax_mm import configuration

PRESETS = ("iid", "dirichlet", "domain", "style", "missing")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "dirichlet"
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {arg!r}")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_rounds = 60
  config.clients_per_round = 100
  config.chunk_size = 0
  config.num_devices = 0
  config.sampling = "uniform"

  config.data = ml_collections.ConfigDict()
  config.data.name = "world"
  config.data.num_clients = 1000
  config.data.examples_per_client = 40     # mean; total = clients x this
  config.data.test_fraction = 0.25
  config.data.eval_clients = 300           # evaluate on this many random clients (0: all)
  config.data.public_vision_examples = 20_000
  config.data.public_text_examples = 30_000
  config.data.feature_dtype = "float32"    # float32 | bfloat16 (feature cache)
  config.data.world = ml_collections.ConfigDict()
  config.data.world.distractor_prob = 0.5
  config.data.world.noise = 0.04
  config.data.world.jitter = 0.5
  config.data.partition = ml_collections.ConfigDict()
  p = config.data.partition
  p.kind = "dirichlet"                     # iid | dirichlet | shards
  p.alpha = 0.1                            # dirichlet concentration (shape x color)
  p.shards_per_client = 2                  # shards only
  p.quantity = "equal"                     # equal | power_law
  p.quantity_exponent = 1.5
  p.min_size = 4
  p.domains_per_client = 0                 # 0: off; k: each client sees k domains
  p.style_mode = "none"                    # none | per_client | iid (caption styles)
  p.missing_fraction = 0.0                 # fraction of clients with few captions
  p.caption_rate = 0.1
  if preset == "iid":
    p.kind = "iid"
  elif preset == "domain":
    p.kind, p.domains_per_client = "iid", 1
  elif preset == "style":
    p.kind, p.style_mode = "iid", "per_client"
  elif preset == "missing":
    p.kind, p.missing_fraction = "iid", 0.3

  config.model = ml_collections.ConfigDict()
  config.model.objective = "captioning"    # captioning | contrastive
  config.model.temperature = 0.07
  config.model.cache_dir = ""              # "" -> $FEDJAX_MM_CACHE or ~/.cache/fedjax_mm
  config.model.projector = ml_collections.ConfigDict()
  config.model.projector.kind = "mlp2x_gelu"   # linear | mlp2x_gelu
  config.model.projector.pool_to = 0           # 0: keep all visual tokens
  config.model.projector.hidden_dim = 0        # 0: LM width
  config.model.vision = ml_collections.ConfigDict(dict(
      patch_size=8, width=128, depth=2, num_heads=4, mlp_dim=256, stem="conv", steps=1000,
      batch_size=64, learning_rate=3e-3))
  config.model.lm = ml_collections.ConfigDict(dict(
      width=128, depth=2, num_heads=4, mlp_dim=256, max_len=64, steps=2000,
      batch_size=32, learning_rate=3e-3))

  config.local = ml_collections.ConfigDict()
  config.local.mode = "steps"
  config.local.num_epochs = 1
  config.local.num_steps = 5
  config.local.batch_size = 8

  # Optimizer sections (shared layout, see fedjax_mm.configuration); e.g.
  # --config.server.kind=fedadam --config.server.fedadam.convention=flower
  config.client = configuration.client_section("adam", 3e-3)
  config.server = configuration.server_section("fedavg", 1.0)

  # The algorithm (client + server work), the per-client preprocessing chain and
  # the aggregation, each a registry of parts with their own options (see
  # fedjax_mm.registry; `--help` lists them), e.g. --config.algorithm.kind=scaffold
  # --config.aggregation.kind=trimmed_mean --config.aggregation.trimmed_mean.trim_fraction=0.2
  # --config.preprocess.chain=l2_clip --config.preprocess.l2_clip.max_norm=1.0
  config.algorithm = configuration.algorithm_section("fedavg")
  config.preprocess = configuration.preprocess_section()
  config.aggregation = configuration.aggregation_section()
  config.wrap = configuration.wrap_section()

  config.eval_every = 10
  config.eval_batch_size = 512
  # Stop when the training loss exceeds this multiple of the run's first one.
  config.divergence_factor = 100.0
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 20
  config.checkpoint.max_to_keep = 2
  config.checkpoint.async_save = True
  return config
