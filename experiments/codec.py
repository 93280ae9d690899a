"""Write and read .dfm files: an image as a quantised, entropy-coded Fourier Net.

  python -m experiments.codec encode IMAGE --out FILE.dfm [--from DIR] [--bits B] [--coder ans|raw]
                                  [--workdir DIR] [--config experiments/compress.py:codec --config.KEY=VALUE]
                                  [--init META_RUN] [--bpp B [--grid sensitivity|uniform]]
  python -m experiments.codec decode FILE.dfm --out IMAGE.png [--size WxH] [--init META_RUN]

encode trains a net on IMAGE with the compress config (`:codec` by default: the recipe for
30,000 steps; --config.train.steps=10000 encodes in a third of the time, about 1 dB lower),
or takes the net of a finished compress run (--from DIR). It fine-tunes the net with its
weights rounded as the file stores them (--qat_steps), codes it and prints bytes, bpp and
the PSNR of what the file decodes to. Run directories sit beside the file (FILE.dfm.run,
FILE.dfm.qatBITS), so rerunning an interrupted encode resumes.

--bpp B picks the net for the size. On the default sensitivity grid each layer gets its own
quantisation step, scaled together to the size; when the picked net ends near its flat
image, a wider net and then a first layer at high frequency are tried too and the best kept.
--grid uniform (or any --bits with --bpp) moves one bit depth until the file is within 10%.

--init RUN fits from a learned start (experiments/meta.py) and stores the difference from
it; decode needs the same --init. --lm_steps N fits small images from such a start in N
Levenberg-Marquardt steps, without a training run.

decode needs no training code; --size renders the continuous image at any resolution.
Output files appear whole or not at all. The format and the choices behind it:
docs/codec.md.
"""
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from dfm_flax import files
from dfm_flax.codec import encoding, fileformat, lm_encoding, sizes
from dfm_flax.codec.encoding import QAT_STEPS
from dfm_flax.codec.fileformat import MAX_PIXELS
from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.loop import restore, train
from dfm_flax.loop import workdir as workdir_lib
from dfm_flax.tasks import starts
from experiments.cli import config_value, fail, parse_flags, run_main

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compress.py") + ":codec"
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Compress config for training.",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output file (.dfm for encode, .png for decode).")
_FROM = flags.DEFINE_string("from", None, "A finished compress workdir to take the net from.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where encode trains (default: OUT.run).")
_BITS = flags.DEFINE_integer("bits", 8, "16 for float16, or 4..12 for uniform per-layer "
                             "quantisation (with --bpp: the uniform grid, its search starting "
                             "there; without it, --bpp codes on the sensitivity grid).")
_CODER = flags.DEFINE_enum("coder", "ans", ["ans", "raw"], "Entropy coder for quantised weights.")
_SIZE = flags.DEFINE_string("size", None, "decode: render at WxH instead of the stored size.")
_BPP = flags.DEFINE_float("bpp", None, "encode: pick the net size for about this many bits per "
                          "pixel (instead of --config.model.width/depth).", lower_bound=0.0)
_QAT = flags.DEFINE_integer("qat_steps", QAT_STEPS, "Quantisation-aware fine-tuning steps "
                            "before coding (straight-through rounding); 0 to skip.", lower_bound=0)
flags.DEFINE_alias("qat-steps", "qat_steps")
_GRID = flags.DEFINE_enum("grid", None, ["uniform", "sensitivity"],
                          "encode --bpp: the quantisation grid (default sensitivity). uniform: "
                          "the bit depth's; sensitivity: a step per layer from how much its "
                          "weights move the picture, scaled to the size (dfm_flax/codec/grids.py).")
_INIT = flags.DEFINE_string("init", None, "A run whose net is the start: encode fits from it and "
                            "codes the difference; decode adds it back.")
_LM_STEPS = flags.DEFINE_integer("lm_steps", 0, "encode --init: fit with this many Levenberg-"
                                 "Marquardt steps that search, with and without refitting the "
                                 "last layer, and keep the file that decodes closer (no "
                                 "training run, no fine-tune): for images of the start's crop "
                                 "size.", lower_bound=0)
flags.mark_flags_as_required(["out"])

def parse_size(text: str):
  m = re.fullmatch(r"(\d+)x(\d+)", text or "")
  if not m:
    raise UserError(f"--size must look like 800x600, got {text!r}")
  w, h = int(m.group(1)), int(m.group(2))
  if w < 1 or h < 1 or w * h > MAX_PIXELS:
    raise UserError(f"--size {w}x{h} is out of range (1x1 to {MAX_PIXELS:,} pixels)")
  return w, h


def _encode(image_path: str):
  out = _OUT.value
  if _BITS.value != 16 and not 4 <= _BITS.value <= 12:
    raise UserError(f"--bits must be 16 (fp16) or 4..12, got {_BITS.value}")
  # --bpp codes on the sensitivity grid unless a bit depth (the uniform grid's) is asked for.
  bits_given = flags.FLAGS["bits"].present
  grid = _GRID.value or ("sensitivity" if _BPP.value is not None and not bits_given else "uniform")
  if grid != "uniform" and _BPP.value is None:
    raise UserError(f"--grid {grid} sets each layer's step to hit a size: give --bpp")
  if grid != "uniform" and bits_given:
    raise UserError(f"--bits is the uniform grid's bit depth; on the {grid} grid the size "
                    f"sets the steps: drop --bits or use --grid uniform")
  image = images.load_image(image_path)
  raw_bpp = 8 * image.shape[2]
  if _BPP.value is not None and not 0 < _BPP.value < raw_bpp:
    raise UserError(f"--bpp {_BPP.value:g} is not allowed: use a number above 0 and below "
                    f"{raw_bpp}, the raw image's bits per pixel")
  bits = _BITS.value
  if _BPP.value is not None and not bits_given:
    # At a size budget, more bits on a smaller net win (docs/codec.md#choosing-the-net).
    bits = sizes.BPP_BITS
  start = os.path.abspath(_INIT.value) if _INIT.value else None
  if _LM_STEPS.value:
    return _encode_lm(image, out, start, bits)
  start_model = restore.load_start(start)[0] if start else None
  source = _FROM.value
  if not source:
    config = config_value(_CONFIG)
    with config.unlocked():
      config.image = os.path.abspath(image_path)
      if start_model is not None:  # The start fixes the net; --bpp moves only the bit depth.
        for key in ("width", "depth", "coord_range", "method"):
          config.model[key] = start_model[key]
        config.init_from = start
    source = _WORKDIR.value or out + ".run"
    if _BPP.value is not None and start_model is None:
      source, _ = encoding.fit_for_bpp(config, source, image, _BPP.value, bits, grid)
    else:
      train.train_and_evaluate(config, source)
  if _BPP.value is not None:
    r, bits, note = encoding.encode_to_bpp(source, image, out, _BPP.value, bits, _CODER.value,
                                           _QAT.value, start=start, grid=grid)
    if note:
      print(note, file=sys.stderr)
  else:
    r = encoding.encode_run(source, image, out, bits, _CODER.value, _QAT.value, start=start)
  print(f"wrote {out}: {r['bytes']:,} bytes, {r['bpp']:.4f} bpp, PSNR {r['psnr']:.2f} dB "
        f"({'sensitivity grid' if grid == 'sensitivity' else f'{bits}-bit'}, "
        f"{_CODER.value if bits != 16 else 'fp16'}"
        f"{', difference from ' + _INIT.value if start else ''})")


def _encode_lm(image, out: str, start, bits: int):
  if not start:
    raise UserError("--lm_steps fits from a learned start: give --init META_RUN")
  for name in ("from", "bpp", "workdir", "qat_steps", "grid"):
    if flags.FLAGS[name].present:
      raise UserError(f"--lm_steps fits and codes without a training run: drop --{name}")
  if note := starts.size_note(start, [image.shape]):
    print(note, file=sys.stderr)
  r = lm_encoding.encode_lm(image, out, start, _LM_STEPS.value, bits, _CODER.value)
  print(f"wrote {out}: {r['bytes']:,} bytes, {r['bpp']:.4f} bpp, PSNR {r['psnr']:.2f} dB "
        f"({_LM_STEPS.value} LM steps {'with' if r['refit'] else 'without'} the last-layer "
        f"refit; the other's file {r['other']['bytes']:,} bytes at {r['other']['psnr']:.2f} dB; "
        f"two fits in {r['encode_s']:.2f} s with the coding, "
        f"{f'{bits}-bit' if bits != 16 else 'fp16'}, difference from {_INIT.value})")


def _decode(path: str):
  out = _OUT.value
  if not out.lower().endswith(".png"):
    raise UserError(f"--out must name a .png file, got {out}")
  size = parse_size(_SIZE.value) if _SIZE.value else None
  workdir_lib.prepare(os.path.dirname(os.path.abspath(out)), "output directory")  # before rendering
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"cannot read {path}: {e.strerror}") from None
  start = None
  if _INIT.value:
    start = restore.load_start(_INIT.value)[1]
  header, params = fileformat.decode(data, start)
  w, h = size or (header["width"], header["height"])
  img = images.render_params(params, h, w, header["coord_range"], header["method"])
  with files.atomic_path(out) as tmp:
    images.save_png(img, tmp)
  print(f"wrote {out}: {w}x{h} from a {header['width']}x{header['height']} "
        f"{header['net_width']}x{header['net_depth']} net")


def _main(argv):
  if len(argv) != 3 or argv[1] not in ("encode", "decode"):
    fail("usage: python -m experiments.codec encode IMAGE --out FILE.dfm [...] | "
         "decode FILE.dfm --out IMAGE.png [--size WxH]", 2)
  (_encode if argv[1] == "encode" else _decode)(argv[2])


def main(argv):
  run_main(_main, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
