"""JPEG at a file's bytes with Pillow's default Huffman tables and with optimised ones
(optimize=True, the project's anchor), and WebP beside them: what a comparison at equal
bytes is worth under each anchor.

  python -m studies.jpeg_anchor --images coffee,astronaut,chelsea --bpp 0.3 [--out T.md]

For each built-in photograph (dfm_flax/data/photos.py) the budget is bpp x pixels / 8 bytes,
the size the codec aims its file at; each anchor is the largest quality whose file fits.
"""
import argparse
import tempfile

from dfm_flax.data import images, photos

COLUMNS = ("image", "pixels", "budget bytes", "JPEG default q", "JPEG default dB",
           "JPEG optimised q", "JPEG optimised dB", "optimised - default", "WebP dB")


def row(name: str, bpp: float, directory: str) -> list:
  image = images.load_image(photos.path(name, directory))  # as the panel reads it
  h, w, c = image.shape
  budget = int(bpp * h * w / 8)
  plain = images.jpeg_at_size(image, budget, optimize=False)
  tuned = images.jpeg_at_size(image, budget)
  webp = images.jpeg_at_size(image, budget, "WEBP")
  dB = lambda j: f"{j['psnr']:.2f}" if j["quality"] else "none that small"  # noqa: E731
  gain = f"{tuned['psnr'] - plain['psnr']:+.2f}" if plain["quality"] and tuned["quality"] else "-"
  return [name, f"{w}x{h}x{c}", budget, plain["quality"] or "-", dB(plain),
          tuned["quality"] or "-", dB(tuned), gain, dB(webp)]


def table(rows: list[list]) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  return "\n".join(lines + ["| " + " | ".join(str(v) for v in r) + " |" for r in rows])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", required=True, help="built-in photograph names, comma-separated")
  parser.add_argument("--bpp", type=float, required=True, help="bits per pixel of the budget")
  parser.add_argument("--out", default="", help="also write the table to this markdown file")
  a = parser.parse_args()
  names = [n for n in a.images.split(",") if n]
  photos.check_names(names)
  with tempfile.TemporaryDirectory() as directory:
    text = table([row(n, a.bpp, directory) for n in names])
  print(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
