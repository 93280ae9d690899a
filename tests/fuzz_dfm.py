"""Crafted .dfm files with valid CRCs: each decodes or is refused with a UserError.

Run as a script (tests/test_codec_fuzz.py does) so that the peak memory it reports is
the decoder's alone. Prints one JSON line: cases tried, decoded, refused, other
exceptions (type: message), and the growth of peak RSS in MiB.
"""
import json
import random
import resource
import struct
import sys
import zlib

import numpy as np

from dfm_flax.codec import fileformat
from dfm_flax.errors import UserError
from dfm_flax.nets import fourier

# Header fields: (name, struct format, offset) in codec._HEAD ("<4sBHHBBBffBBB").
FIELDS = [("version", "B", 4), ("height", "H", 5), ("width", "H", 7), ("channels", "B", 9),
          ("net_width", "B", 10), ("net_depth", "B", 11), ("lo", "f", 12), ("hi", "f", 16),
          ("method", "B", 20), ("bits", "B", 21), ("coder", "B", 22)]
EXTREMES = {"B": [0, 1, 2, 3, 4, 12, 13, 16, 17, 24, 64, 255], "H": [0, 1, 2, 65535],
            "f": [0.0, -1.0, 1e30, -1e30, float("inf"), float("nan")]}


def with_crc(body: bytes) -> bytes:
  return body + struct.pack("<I", zlib.crc32(body))


def valid_files():
  rng = np.random.default_rng(0)
  for bits, coder in ((8, "ans"), (6, "raw"), (16, "raw")):
    params = [(rng.normal(0, 0.1, (r, n)), rng.normal(0, 0.1, (r, n)))
              for r, n in fourier.param_shapes(3, 3, 3)]
    yield fileformat.encode(params, (20, 30, 3), 3, 3, (0.0, 0.5), "auto", bits, coder)


def cases():
  rnd = random.Random(0)
  for data in valid_files():
    body = data[:-4]
    yield data
    for name, fmt, offset in FIELDS:  # Every header field at its extremes.
      for value in EXTREMES[fmt]:
        yield with_crc(body[:offset] + struct.pack("<" + fmt, value)
                       + body[offset + struct.calcsize(fmt):])
    for cut in range(len(body)):  # Truncated, CRC recomputed.
      yield with_crc(body[:cut])
    stats_end = fileformat._HEAD.size + 3 * fileformat._LAYER.size
    for _ in range(200):  # Random payload (and length) bytes.
      tail = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 64)))
      yield with_crc(body[:stats_end] + struct.pack("<I", len(tail)) + tail)
      yield with_crc(body[:stats_end] + bytes(rnd.getrandbits(8) for _ in range(8)) + tail)
    for _ in range(200):  # Random bytes anywhere after the magic.
      b = bytearray(body)
      for _ in range(rnd.randrange(1, 6)):
        b[rnd.randrange(4, len(b))] = rnd.getrandbits(8)
      yield with_crc(bytes(b))
    for value in (1.0, 0.0, -1.0, float("nan"), float("inf"), 1e30):  # Layer statistics.
      for field in range(3):
        off = fileformat._HEAD.size + field * 4
        yield with_crc(body[:off] + struct.pack("<f", value) + body[off + 4:])


def main():
  base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  tried = decoded = refused = 0
  other = []
  for data in cases():
    tried += 1
    try:
      fileformat.decode(data)
      decoded += 1
    except UserError:
      refused += 1
    except Exception as e:  # What the test forbids.
      other.append(f"{type(e).__name__}: {str(e)[:100]}")
  growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
  print(json.dumps({"tried": tried, "decoded": decoded, "refused": refused,
                    "other": other[:20], "rss_growth_mib": round(growth, 1)}))


if __name__ == "__main__":
  sys.exit(main())
