"""Rate-distortion: DFM files vs JPEG, WebP and a SIREN (COIN) at matched bytes.

  python -m experiments.rd IMAGES... --out DIR [--sizes 4x6,6x6,8x6] [--bits 6,8,10]
      [--steps 3000] [--qat_steps 300] [--siren] [--siren_bits 8] [--siren_steps N] [--seed 0]
      [--set optim.eps=1e-2 ...]

IMAGES are files or the built-in names coffee, astronaut, chelsea, camera (scikit-image).
For each DFM size (width x depth) one net per image is trained (compress:best, --steps;
DIR/runs, resumable). The images with the same channel count are fitted at once: one
stack of nets, vmapped over images, each net exactly as if trained alone. Each net is
then coded at each bit depth after a quantisation-aware fine-tune; JPEG and WebP get
the largest quality whose file is no larger than the DFM file; with --siren a SIREN
whose fp16 weights take about the same bytes is trained (--siren_steps) for the files
of --siren_bits. Writes DIR/rd.csv (image, codec, setting, bytes, bpp, psnr, ssim,
encode_s, decode_s), DIR/rd.png (PSNR vs bpp, mean over images per setting),
DIR/summary.md (per DFM setting: the mean over images of every codec at the DFM file's
bytes; * counts images where even JPEG quality 1 is larger than the DFM file) and
DIR/fits.csv (images fitted at once, size, steps, seconds). --replot redraws rd.png and
summary.md from rd.csv alone, with the rows of each --also OTHER/rd.csv replacing those of
the same image and DFM setting (e.g. a net refitted with another --seed). --set KEY=VALUE
changes a setting of compress.py:best for every DFM fit (experiments/settings.py).
"""
import csv
import os

from absl import app, flags

from dfm_flax.codec.rate_distortion import merge
from dfm_flax.errors import UserError
from experiments import rd_study, settings
from experiments.cli import parse_flags, run_main

_OUT = flags.DEFINE_string("out", None, "Output directory.")
_SIZES = flags.DEFINE_string("sizes", "4x6,6x6,8x6", "DFM widths x depths.")
_BITS = flags.DEFINE_string("bits", "6,8,10", "Bit depths of the .dfm files.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per net.", lower_bound=1)
_QAT = flags.DEFINE_integer("qat_steps", 300, "Quantisation-aware fine-tune steps.", lower_bound=0)
_SIREN = flags.DEFINE_bool("siren", True, "Also train a SIREN at matched bytes.")
_SIREN_BITS = flags.DEFINE_string("siren_bits", "", "Match SIRENs to the DFM files of these bit "
                                  "depths only (default: all of --bits); each SIREN is a full fit.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first image's nets (image i of a group: "
                             "seed + i); another seed refits a net that diverged.")
_REPLOT = flags.DEFINE_bool("replot", False, "Only redraw DIR/rd.png and DIR/summary.md from "
                            "DIR/rd.csv (no training; for a study still running).")
_ALSO = flags.DEFINE_multi_string("also", [], "--replot: another rd.csv whose DFM files (and "
                                  "their comparisons) replace those of the same image and setting.")
_SIREN_STEPS = flags.DEFINE_integer("siren_steps", 0, "SIREN training steps (default: --steps).",
                                    lower_bound=0)
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE: a setting of compress.py:best for every "
                                 "DFM fit (repeatable; OUT records it and refuses other settings).")
flags.mark_flags_as_required(["out"])

def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.split(",") if v)


def _rd(argv):
  csv_path = os.path.join(_OUT.value, "rd.csv")
  if _REPLOT.value:
    if not os.path.exists(csv_path):
      raise UserError(f"--replot: no {csv_path} to read")
    tables = []
    for path in [csv_path, *_ALSO.value]:
      try:
        with open(path, newline="") as f:
          tables.append(list(csv.DictReader(f)))
      except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return rd_study.report(merge(tables), _OUT.value)
  if len(argv) < 2:
    raise UserError("usage: python -m experiments.rd IMAGES... --out DIR")
  try:
    sizes = tuple(tuple(int(v) for v in s.split("x")) for s in _SIZES.value.split(","))
    bits, siren_bits = _ints(_BITS.value), _ints(_SIREN_BITS.value)
  except ValueError:
    raise UserError(f"--sizes takes WxD,WxD... and --bits/--siren_bits B,B...; got "
                    f"{_SIZES.value!r}, {_BITS.value!r}, {_SIREN_BITS.value!r}") from None
  if any(len(s) != 2 for s in sizes):
    raise UserError(f"--sizes takes WIDTHxDEPTH,...; got {_SIZES.value!r}")
  overrides = settings.recorded(_OUT.value, _SET.value)
  rd_study.Study(_OUT.value, sizes=sizes, bits=bits, steps=_STEPS.value, qat_steps=_QAT.value,
                 siren=_SIREN.value, siren_bits=siren_bits, siren_steps=_SIREN_STEPS.value,
                 seed=_SEED.value, settings=tuple(overrides.items())).run(argv[1:])


def main(argv):
  run_main(_rd, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
