"""The compression task's report: metrics (SPEC section 2) and figures of one fitted image,
beside JPEG at the same bytes (thesis Fig. 5.3). The task (tasks/compress.py) fits; this
module only measures and draws.
"""
from __future__ import annotations

import os

from dfm_flax.data import images
from dfm_flax.evaluation import figures
from dfm_flax.loop import logs


def report(original, recon, config, workdir: str, image_name: str,
                       n: int) -> dict:
  """Metrics (SPEC section 2) and figures for an image fitted by a net of n weights."""
  h, w, c = original.shape
  ref8 = images.to_uint8(original) / 255.0
  rec8 = images.to_uint8(recon) / 255.0
  nbytes = 4 * n
  jpeg = images.jpeg_at_size(original, nbytes)  # optimised Huffman tables
  plain = images.jpeg_at_size(original, nbytes, optimize=False)  # Pillow's default file
  metrics = {
      "image": image_name, "height": h, "width": w, "channels": c,
      "model_width": config.model.width, "model_depth": config.model.depth,
      "psnr": images.psnr(ref8, rec8),
      "ssim": images.ssim(ref8, rec8),
      "mse": images.mse(ref8, rec8),
      # The thesis's "final loss": MSE of the float output on the [-1, 1] scale.
      "final_loss": 4 * images.mse(original, recon),
      "num_params": n,
      "bytes": nbytes,
      "bpp": 8 * nbytes / (h * w),
      "percent_of_raw": 100 * nbytes / (h * w * c),
      "jpeg": {k: v for k, v in jpeg.items() if k != "image"},
      "jpeg_pillow_default": {k: v for k, v in plain.items() if k != "image"},
  }
  images.save_png(recon, os.path.join(workdir, "reconstruction.png"))
  quality = jpeg["quality"] or "1 (no JPEG is this small)"
  jpeg_title = (f"JPEG q={quality}, {jpeg['bytes'] / 1000:.1f} KB\n"
                f"PSNR {jpeg['psnr']:.2f} dB, SSIM {jpeg['ssim']:.3f}")
  figures.image_row(
      [(ref8, f"original {w}x{h}\n{h * w * c / 1000:.0f} KB raw"),
       (rec8, f"DFM {config.model.width}x{config.model.depth}, {nbytes / 1000:.1f} KB\n"
              f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"),
       (jpeg["image"], jpeg_title)],
      os.path.join(workdir, "comparison.png"),
      suptitle=f"{image_name}: DFM vs JPEG at equal size ({metrics['percent_of_raw']:.1f}% of raw)")
  figures.training_curves(logs.read_history(workdir), ["loss", "psnr"],
                          os.path.join(workdir, "training.png"))
  return metrics
