"""Meta-learning a starting point for Fourier nets (Reptile or MAML; dfm_flax/tasks/meta_learning.py).

  python -m experiments.run --config experiments/meta.py --workdir runs/meta
  python -m experiments.run --config experiments/meta.py:smoke --workdir /tmp/meta_smoke
  # a compression fit from the learned start (same net size and coordinate range):
  python -m experiments.run --config experiments/compress.py --workdir runs/from_dict \\
      --config.init_from=runs/meta --config.model.width=6 --config.model.depth=5

Crops of the built-in colour photographs train it; `meta.held_out` photographs are never
drawn in training and score it. Any other source the suite reads (a folder of photographs
of any sizes, MNIST, CIFAR, TFDS, .npz) trains it with `--config.meta.source=data` and the
`data` settings of the generation configs; the last `meta.held_out_last` images are then
never drawn in training and score it:
  python -m experiments.run --config experiments/meta.py --workdir runs/meta_folder \
      --config.meta.source=data --config.data.source=folder --config.data.dir=PHOTOS
  python -m experiments.run --config experiments/meta.py:mnist --workdir runs/meta_mnist
The net is the compress task's (init, coordinates, method), so a compress run of the same
width and depth can start from it.

The variants (VARIANTS below); `lm`, `lm_search` and `lm_refit` go on from another start:
  python -m experiments.run --config experiments/meta.py:small --workdir runs/meta_small
  python -m experiments.run --config experiments/meta.py:lm_search \
      --workdir runs/meta_lm_search --config.init_from=runs/meta_small
`python -m experiments.codec encode IMAGE --out F.dfm --init RUN` fits from a learned start
and stores the difference from it; `python -m studies.meta_start --start RUN --out DIR`
measures what the start buys (docs/meta_learning.md).
"""
import ml_collections

from dfm_flax.nets import levenberg
from dfm_flax.tasks import meta_learning
from experiments import common, compress

VARIANTS = {
    "": "Reptile (outer SGD 0.1), 5 inner gradient steps, 32x32 crops, a 6x5 net",
    "small": "the same for a 4x3 net (256 weights) and 10 inner steps, 1,000 outer steps",
    "lm": "goes on from a `small` start with 10 Levenberg-Marquardt inner steps, 200 outer "
          "steps: a start for `codec encode --lm_steps`",
    "lm_search": "`lm` with steps that each try several dampings and lengths",
    "lm_refit": "goes on from an `lm_search` start for 100 outer steps with steps that also "
                "refit the last layer at every point they try",
    "mnist": "the 1,000 bundled MNIST digits (28x28 grey, a 5x4 net, inner step 0.3, the "
             "last 100 held out)",
    "maml": "second-order MAML through 3 inner steps (Adam 1e-4, not tuned)",
    "smoke": "a tiny run that checks the pipeline (< 60 s on 2 cores)",
}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  common.check_variant("meta.py", variant, VARIANTS)
  c = ml_collections.ConfigDict()
  c.task = "meta"
  c.seed = 0
  c.model = compress.thesis().model
  c.model.width, c.model.depth = 6, 5
  c.model.coord_range = (0.0, 0.5)  # as compress.py's default, so its fits can start here
  c.init_from = ""
  c.meta = ml_collections.ConfigDict({
      "algorithm": "reptile",   # reptile | maml
      "first_order": False,     # maml: drop the inner steps' second derivatives
      "inner_steps": 5,
      "inner_optimizer": "sgd",  # sgd | lm (Levenberg-Marquardt, dfm_flax/nets/levenberg.py)
      "inner_lr": 1.0,          # sgd: layer l steps by inner_lr / 2^m_l
      # lm: the first step's damping (times each weight's own curvature), divided by lm_down
      # after each step that lowers the loss.
      "lm_damping": meta_learning.LM_DAMPING,
      "lm_down": meta_learning.LM_DOWN,
      # lm: each step keeps the best of 7 dampings x 4 step lengths from its one Jacobian
      # (levenberg.fit's search; lm_down unused): about 1.5x a plain step's time.
      "lm_search": False,
      # lm: Gauss-Newton iterations refitting the last layer at every point a step tries
      # (levenberg.fit's refit, variable projection); 0: none.
      "lm_refit": 0,
      "tasks_per_step": 8,      # crops adapted to per outer step
      "crop": 32,
      # Crops are the mean of scale x scale pixels of a (crop * scale)-pixel window. 1:
      # the photographs' own pixels; a start meant for whole photographs needs their scale,
      # e.g. 8 (256-pixel windows seen at 32x32).
      "scale": 1,
      "pool": 4096,             # crops drawn once from meta.photos, sampled each step
      "source": "photos",       # photos: the built-in ones below; data: config.data
      "photos": "astronaut,coffee_full,rocket,retina,hubble,ihc",
      "held_out": "chelsea,cat",  # never drawn in training; the evaluation's crops
      "held_out_last": 64,      # source=data: the last images, never drawn in training
      "eval_crops": 64,
  })
  c.data = common.bundled_mnist()  # read only with meta.source=data
  c.train = common.train(steps=3000, batch_size=8, log_every=50, checkpoint_every=500)
  # Reptile's outer step: theta moves 0.1 of the way to the crops' mean adapted weights
  # (SGD on its loss). Adam moves these tiny weights by its lr every step, far too much.
  c.optim = common.adam(0.1, "constant")  # the optim keys every config has...
  c.optim.name = "sgd"                    # ...with optax's sgd (momentum 0.9)
  c.optim.scale_by_terms = False
  c.guard = common.guard("recover")
  c.wandb = common.wandb()
  c.mesh = common.mesh()
  c.dist = common.dist()
  if variant == "maml":
    c.meta.algorithm = "maml"
    c.meta.inner_steps = 3
    c.optim = common.adam(1e-4, "constant")  # not tuned: worse than a random start so far
    c.optim.scale_by_terms = False
  elif variant in ("small", "lm", "lm_search", "lm_refit"):
    # A net of a codec's size for 32x32 crops (256 weights: 2 bpp at 8 bits), adapted in
    # 10 steps. `small` learns a start for gradient steps; `lm` goes on from it
    # (--config.init_from) with Levenberg-Marquardt steps, which the start then serves.
    c.model.width, c.model.depth = 4, 3
    c.meta.inner_steps = 10
    c.train.steps = 1000
    if variant in ("lm", "lm_search", "lm_refit"):
      c.meta.inner_optimizer = "lm"
      c.meta.lm_search = variant in ("lm_search", "lm_refit")
      c.train = common.train(steps=200, batch_size=8, log_every=10, checkpoint_every=50)
    if variant == "lm_refit":  # Goes on from an lm_search start: 100 more outer steps.
      c.meta.lm_refit = levenberg.REFIT
      c.train = common.train(steps=100, batch_size=8, log_every=10, checkpoint_every=25)
  elif variant == "mnist":
    c.meta.source = "data"
    c.meta.crop = 28
    c.meta.held_out_last = 100
    # At inner_lr 1 the start's first layer grew until its phases wrapped (a collapse that
    # draws the mean digit); 0.3 adapts.
    c.meta.inner_lr = 0.3
    c.model.width, c.model.depth = 5, 4
  elif variant == "smoke":
    c.meta.inner_steps = 2
    c.meta.tasks_per_step = 4
    c.meta.crop = 16
    c.meta.pool = 64
    c.meta.eval_crops = 8
    c.model.width, c.model.depth = 3, 3
    c.train = common.train(steps=20, batch_size=4, log_every=5, checkpoint_every=10)
    c.wandb.mode = "disabled"
  return c
