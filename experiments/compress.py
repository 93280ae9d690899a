"""Compression: one Deep Fourier network per image, compared with JPEG at equal bytes.

Every variant fits the thesis's net (width 8, depth 6, 17,984 weights) unless told
otherwise; they differ in how it is trained.

  python -m experiments.run --config experiments/compress.py --workdir runs/compress
  python -m experiments.run --config experiments/compress.py:best --workdir runs/best
  python -m experiments.run --config experiments/compress.py:thesis --workdir runs/thesis
  python -m experiments.run --config experiments/compress.py:smoke --workdir /tmp/smoke
  python -m experiments.run --config experiments/compress.py --workdir runs/mine \
      --config.image=photo.png --config.model.width=6
  python -m experiments.run --config experiments/compress.py:best --workdir runs/many \
      --config.image=a.png,b.png,c.png   # one net per image, fitted at once (vmap)

The variants (VARIANTS below) differ in how the net is trained; why the default recipe is
what it is: docs/recipe.md.
"""
import ml_collections

from dfm_flax.data import images
from experiments import common

VARIANTS = {
    "": "the recipe for a run of a few minutes: `best` at batch 2,048 for 8,000 steps",
    "best": "the recipe (docs/recipe.md): coordinates [0, 0.5], per-layer lr 0.1 / 2^m with "
            "warm-up and cosine decay, Adam b1 0.95 eps 1e-3, batch 4,096, 10,000 steps, the "
            "divergence guard recovering; the studies use it",
    "codec": "`best` for 30,000 steps: what `experiments.codec encode` fits by default",
    "thesis": "the thesis's literal recipe (section 5.1.3): Adam 4e-4, batch 2^14, init "
              "N(0, 2e-10), positions in [0, 1]^2, 4,000 steps",
    "smoke": "a tiny run of the thesis recipe that checks the pipeline (< 60 s on 2 cores)",
    "siren": "COIN's sine MLP of about the same size on the same loop (the baseline)",
}
DEFAULT_STEPS = 8000
# The codec's fits are short of steps, not of stability: three times `best`'s steps gave
# better files at every size tried (docs/codec.md#training-length).
CODEC_STEPS = 30_000


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  common.check_variant("compress.py", variant, VARIANTS)
  c = thesis()
  if variant == "":
    best(c)
    # At batch 2,048 a step costs about half as much, and at equal time that beats 4,096.
    c.train.batch_size = 2**11
    c.train.steps = DEFAULT_STEPS
  elif variant == "best":
    best(c)
  elif variant == "codec":
    best(c)
    c.train.steps = CODEC_STEPS
  elif variant == "smoke":
    c.train.steps = 60
    c.train.batch_size = 2**12
    c.train.log_every = 10
    c.train.checkpoint_every = 20
    c.model.width = 4
    c.model.depth = 4
    c.wandb.mode = "disabled"
  elif variant == "siren":
    # COIN's recipe: sine MLP, w0 = 30, Adam 5e-4 (2e-4 in COIN), batch 2^14; the
    # default size (5 x 64) has 17,027 weights, about the width-8/depth-6 DFM's 17,984.
    c.model.kind = "siren"
    c.optim.lr = 5e-4
    c.train.steps = 2000
  return c


def thesis() -> ml_collections.ConfigDict:
  """The thesis's literal recipe (section 5.1.3)."""
  c = ml_collections.ConfigDict()
  c.task = "compress"
  c.seed = 0
  c.image = ""  # Empty: the built-in 400x400 crop of skimage's coffee photograph.

  c.model = ml_collections.ConfigDict()
  c.model.width = 8
  c.model.depth = 6
  c.model.method = "auto"  # per layer: "product" from 2^5 terms up, else "direct" (the faster one).
  c.model.init = "constant"  # "constant": N(0, init_variance); "fan_in": init_variance / 2^m.
  c.model.init_variance = 2e-10
  # > 0: the first layer's init variance alone. 1.0 puts every later layer's features at
  # high frequency from the start: for fine texture that a small start never leaves its
  # flat image on (worse on ordinary photographs).
  c.model.first_init_variance = 0.0
  c.model.coord_range = (0.0, 1.0)  # Pixel centres are scaled into [lo, hi]^2.
  c.model.quant_bits = 0  # > 0: quantisation-aware training for the .dfm codec.
  c.model.quant_steps = ()  # With quant_bits: one grid step per layer (the sensitivity grid).
  c.model.quant_start = ""  # With quant_bits: a run whose net the grid measures from (--init).
  c.model.kind = "fourier"  # or "siren": the COIN baseline (sine MLP) on the same loop.
  c.model.siren_hidden = 64
  c.model.siren_layers = 5
  c.model.siren_w0 = 30.0
  c.init_from = ""  # A finished run's workdir: start from its weights (fine-tuning).

  c.train = ml_collections.ConfigDict()
  c.train.steps = 4000
  c.train.batch_size = 2**14  # Pixels per step.
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.eval_chunk = images.RENDER_CHUNK  # Pixels rendered at once in evaluation.
  c.train.quiet = False
  c.train.stop_at = 0  # > 0: stop there, the lr schedule still spanning train.steps.

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.lr = 4e-4
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.end_lr = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8  # Adam's epsilon (optax's default).
  c.optim.grad_clip = 0.0
  c.optim.update_clip = 0.0  # > 0 (adam): clip the RMS of each array's Adam direction (dfm_flax/loop/optim.py).
  c.optim.scale_by_terms = False  # True: layer lr = optim.lr / 2^m (see tasks/compress.py).
  c.optim.depth_ref = 0  # > 0 (with scale_by_terms): nets deeper than this learn at lr * depth_ref / depth.

  # Thesis recipe: the guard reports a collapse but never intervenes (dfm_flax/loop/guard.py).
  c.guard = common.guard("detect")
  c.wandb = common.wandb()  # mode auto: online if logged in, else offline.
  c.mesh = common.mesh()  # Pixels of each batch split over all devices.
  c.dist = common.dist()  # Multi-process runs: SLURM or experiments.launch.
  return c


def best(c: ml_collections.ConfigDict) -> None:
  """The recipe: the thesis net, trained differently. Each change and the measurements
  behind it: docs/recipe.md."""
  # 1. Half a period: with positions in [0, 1] the first layer is periodic over the image,
  #    so the net must give opposite edges the same colour.
  c.model.coord_range = (0.0, 0.5)
  # 2. Layer lr = lr / 2^m: a layer sums 2^m terms, so one global lr moves the 256-term
  #    layers 64x further in function space than the 4-term first layer.
  c.optim.scale_by_terms = True
  c.optim.lr = 0.1  # the best peak on the stability map; 0.15 collapsed on some photographs
  # 3. Warm-up then cosine decay, and 4x smaller batches (4x more steps per second).
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 1000
  c.optim.end_lr = 0.001
  c.train.batch_size = 2**12
  c.train.steps = 10_000
  # 4. Adam's b1 0.95: twice the edge-of-stability margin of 0.9 at the same step size
  #    (Cohen et al. 2022); fewer fits collapse after the peak.
  c.optim.b1 = 0.95
  # 5. Adam's eps 1e-3: caps the step of small-gradient weights, so the stable lr no longer
  #    depends on the image's contrast.
  c.optim.eps = 1e-3
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.guard.mode = "recover"  # roll back and lower the lr on the collapses that remain


def with_steps(c: ml_collections.ConfigDict, steps: int) -> None:
  """Train `c` for `steps`, its warm-up capped at half of them (a run shorter than the
  recipe's warm-up would never reach its peak; the schema refuses it)."""
  c.train.steps = steps
  c.optim.warmup_steps = min(c.optim.warmup_steps, steps // 2)
