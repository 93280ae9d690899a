"""The .dfm file: a Fourier Net's weights, quantised and entropy coded, self-describing.

The format alone (bytes <-> weights); turning a trained run into a file (fine-tune, size
and bit-depth choice) is `encoding`'s job.

Layout (little-endian):
  magic  b"DFMc" | version u8 | height u16 | width u16 | channels u8 | net width u8 |
  net depth u8 | coord lo f32 | coord hi f32 | method u8 | bits u8 | coder u8 |
  per layer: step f32, loc f32, spread f32 | payload length u32 | payload | CRC-32 u32
(the CRC covers every byte before it).

bits = 16: the weights as float16 (coder 0, raw). bits = 4..12: per-layer uniform
quantisation, q = round(w / step) with step = max|w| / (2^(bits-1) - 1); the integers
are bit-packed (coder 0) or ANS-coded with a per-layer quantised Laplace model
(coder 1, constriction), whose location and spread are stored in the header.

Difference coding (version 2): the weights are stored as their difference from a start
that the reader already has (a meta-learned initialisation, experiments/meta.py), and
16 bytes after the fixed header name that start by a content hash (`start_digest`: of
its shape and float32 weights). A fit that stays near its start has small differences:
a finer grid at the same bit depth. Decoding adds the start back, and refuses a start
whose digest differs. Files without a start are version 1, byte for byte as before.
"""
from __future__ import annotations

import hashlib
import struct
import zlib

import constriction
import numpy as np

from dfm_flax.errors import UserError
from dfm_flax.nets import fourier

MAGIC = b"DFMc"
VERSION = 1
VERSION_WITH_START = 2
DIGEST_BYTES = 16
# Frozen: files store the index into these tuples (not fourier.METHODS, which may grow).
METHODS = ("auto", "product", "direct")
CODERS = ("raw", "ans")
_HEAD = struct.Struct("<4sBHHBBBffBBB")
_LAYER = struct.Struct("<fff")
# The format's limits, checked on every header field before anything is allocated: a
# CRC guards against accidents, not against a crafted file.
MAX_PIXELS = 2**28  # Stored image size (16384 x 16384), as for decode's --size.
MAX_NET_WIDTH = 14  # 2^14 terms per layer: far beyond any net the encoder writes (<= 10).
MAX_NET_DEPTH = 64
MAX_WEIGHTS = 2**22  # 16 MiB of float32 weights.
MAX_COORD = 1e3


def header_bytes(depth: int, with_start: bool = False) -> int:
  """Bytes of a file that are not the coded weights: header, layer stats, length, CRC."""
  return _HEAD.size + _LAYER.size * depth + 8 + (DIGEST_BYTES if with_start else 0)


def start_digest(params, channels: int) -> bytes:
  """The content hash that names a start: its net shape and float32 weights."""
  h = hashlib.blake2b(digest_size=DIGEST_BYTES)
  h.update(struct.pack("<BB", len(params), channels))
  for a, _ in params:  # Every layer's shape (2^m, n), then the weights.
    h.update(struct.pack("<II", *np.shape(a)))
  for layer in flat_layers(params):
    h.update(layer.astype("<f4").tobytes())
  return h.digest()


def _check_start(start, width: int, depth: int, channels: int) -> None:
  want = fourier.param_shapes(width, depth, channels)
  got = [tuple(np.shape(a)) for a, _ in start]
  if got != [tuple(s) for s in want]:
    raise UserError(f"the start's net ({len(got)} layers of shapes {got}) is not this file's "
                    f"{width}x{depth} net with {channels} channels")


def _levels(bits: int) -> int:
  return 2 ** (bits - 1) - 1


def quantize(w: np.ndarray, bits: int, step: float | None = None) -> tuple[np.ndarray, float]:
  """(integers, step) of one layer on a uniform grid: by default the finest that holds the
  layer's peak in 2^(bits-1) - 1 levels; an encoder's own `step` is raised to that floor,
  so that no weight is clipped."""
  peak = float(np.max(np.abs(w))) if w.size else 0.0
  floor = peak / _levels(bits) if peak > 0 else 1.0
  step = np.float32(max(step, floor) if step else floor)
  q = np.clip(np.round(w / step), -_levels(bits), _levels(bits)).astype(np.int32)
  return q, float(step)


def flat_layers(params) -> list[np.ndarray]:
  return [np.concatenate([np.ravel(a), np.ravel(b)]).astype(np.float32) for a, b in params]


def _laplace(q: np.ndarray) -> tuple[float, float]:
  loc = float(np.float32(np.mean(q)))
  spread = float(np.float32(max(np.mean(np.abs(q - loc)), 0.05)))
  return loc, spread


def _ans(bits: int):
  return constriction, constriction.stream.model.QuantizedLaplace(-_levels(bits), _levels(bits) + 1)


def encode(params, image_shape, width: int, depth: int, coord_range=(0.0, 1.0),
           method: str = "auto", bits: int = 8, coder: str = "ans", start=None,
           steps=None) -> bytes:
  """Serialise per-layer (a, b) weights. bits 16 means float16; else 4..12-bit uniform.
  With `start` (per-layer (a, b) of the same net), the difference from it is coded.
  `steps` (one per layer) sets each layer's grid step (see `quantize`): the file stores
  the step either way, so a reader needs nothing else."""
  if bits != 16 and not 4 <= bits <= 12:
    raise UserError(f"--bits must be 16 (fp16) or 4..12, got {bits}")
  h, w, c = image_shape
  layers = flat_layers(params)
  if not all(np.all(np.isfinite(x)) for x in layers):
    raise UserError("the net's weights are not all finite numbers (its fit diverged): "
                    "nothing to code")
  if start is not None:
    _check_start(start, width, depth, c)
    layers = [x - x0 for x, x0 in zip(layers, flat_layers(start))]
  if bits == 16:
    coder = "raw"
    payload = b"".join(x.astype("<f2").tobytes() for x in layers)
    stats = [(1.0, 0.0, 1.0)] * len(layers)
  else:
    steps = [None] * len(layers) if steps is None else list(steps)
    if len(steps) != len(layers):
      raise ValueError(f"{len(steps)} grid steps for {len(layers)} layers")
    quantised = [quantize(x, bits, step) for x, step in zip(layers, steps)]
    stats = []
    for q, step in quantised:
      stats.append((step, *_laplace(q)))
    if coder == "raw":
      payload = _pack(np.concatenate([q for q, _ in quantised]), bits)
    else:
      constriction, model = _ans(bits)
      enc = constriction.stream.stack.AnsCoder()
      for (q, _), (_, loc, spread) in zip(reversed(quantised), reversed(stats)):
        enc.encode_reverse(q, model, np.full(q.size, loc), np.full(q.size, spread))
      payload = enc.get_compressed().astype("<u4").tobytes()
  head = _HEAD.pack(MAGIC, VERSION if start is None else VERSION_WITH_START, h, w, c, width,
                    depth, *coord_range, METHODS.index(method), bits, CODERS.index(coder))
  if start is not None:
    head += start_digest(start, c)
  body = head + b"".join(_LAYER.pack(*s) for s in stats) + struct.pack("<I", len(payload)) + payload
  return body + struct.pack("<I", zlib.crc32(body))


def decode(data: bytes, start=None) -> tuple[dict, list]:
  """(header, per-layer (a, b)) from .dfm bytes; UserError for anything malformed, or
  for a difference-coded file without its start (or with another one).

  Every header field is checked against the format's limits and the file's own length
  before any weight is decoded, so a crafted file costs at most MAX_WEIGHTS floats.
  """
  if len(data) < 4 or data[:4] != MAGIC:
    raise UserError("not a .dfm file (wrong magic bytes)")
  if len(data) < _HEAD.size + 8:
    raise UserError("truncated .dfm file (shorter than its header)")
  (_, version, h, w, c, width, depth, lo, hi, method, bits, coder) = _HEAD.unpack_from(data)
  if version not in (VERSION, VERSION_WITH_START):
    raise UserError(f".dfm format version {version} is not supported (this reader: "
                    f"{VERSION} and {VERSION_WITH_START})")
  if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
    raise UserError(".dfm checksum mismatch: the file is truncated or corrupted")
  _check_header(h, w, c, width, depth, lo, hi, method, bits, coder)
  header = {"height": h, "width": w, "channels": c, "net_width": width, "net_depth": depth,
            "coord_range": (lo, hi), "method": METHODS[method], "bits": bits,
            "coder": CODERS[coder], "start": None}
  offset = _HEAD.size
  if version == VERSION_WITH_START:
    header["start"] = data[offset:offset + DIGEST_BYTES].hex()
    offset += DIGEST_BYTES
  elif start is not None:
    raise UserError("this file was coded without a start: decode it without --init")
  if len(data) < header_bytes(depth, header["start"] is not None):
    raise UserError(f".dfm file too short for the {depth} layers its header names")
  stats = layer_stats(data, header)
  _check_stats(stats, bits)
  offset += depth * _LAYER.size
  (length,) = struct.unpack_from("<I", data, offset)
  payload = data[offset + 4:offset + 4 + length]
  if len(payload) != length or offset + 4 + length + 4 != len(data):
    raise UserError("truncated .dfm file (payload length differs from its header)")
  shapes = fourier.param_shapes(width, depth, c)
  sizes = [2 * r * n for r, n in shapes]
  layers = _decode_layers(payload, bits, header["coder"], stats, sizes)
  if not all(np.all(np.isfinite(x)) for x in layers):
    raise UserError(".dfm weights are not finite numbers")
  if header["start"] is not None:
    layers = _add_start(layers, start, header, c)
  params = []
  for flat, (r, n) in zip(layers, shapes):
    params.append((flat[:r * n].reshape(r, n), flat[r * n:].reshape(r, n)))
  return header, params


def layer_stats(data: bytes, header: dict) -> list[tuple[float, float, float]]:
  """Each layer's (step, Laplace location, spread) as the file stores them; `header` is
  decode's for these bytes (decode checks the file first)."""
  offset = _HEAD.size + (DIGEST_BYTES if header["start"] is not None else 0)
  return [_LAYER.unpack_from(data, offset + i * _LAYER.size) for i in range(header["net_depth"])]


def _add_start(layers, start, header: dict, channels: int) -> list[np.ndarray]:
  if start is None:
    raise UserError(f"this .dfm file stores the difference from a start (digest "
                    f"{header['start']}); decode it with --init RUN, the run it was coded from")
  _check_start(start, header["net_width"], header["net_depth"], channels)
  given = start_digest(start, channels).hex()
  if given != header["start"]:
    raise UserError(f"--init is not the start this file was coded from (the file names "
                    f"{header['start']}, the start given is {given})")
  return [x + x0 for x, x0 in zip(layers, flat_layers(start))]


def _check_header(h, w, c, width, depth, lo, hi, method, bits, coder) -> None:
  if method >= len(METHODS) or coder >= len(CODERS) or not (bits == 16 or 4 <= bits <= 12):
    raise UserError(".dfm header has invalid settings (method, coder or bit depth)")
  if not (1 <= h and 1 <= w and h * w <= MAX_PIXELS and c in (1, 3)):
    raise UserError(f".dfm header names an invalid image ({w}x{h}x{c}; at most "
                    f"{MAX_PIXELS:,} pixels, 1 or 3 channels)")
  if not (1 <= width <= MAX_NET_WIDTH and 1 <= depth <= MAX_NET_DEPTH):
    raise UserError(f".dfm header names an invalid net (width {width}, depth {depth}; at most "
                    f"{MAX_NET_WIDTH} and {MAX_NET_DEPTH})")
  if fourier.num_params(width, depth, c) > MAX_WEIGHTS:
    raise UserError(f".dfm header names a net of {fourier.num_params(width, depth, c):,} "
                    f"weights, more than the format allows ({MAX_WEIGHTS:,})")
  if not (np.isfinite(lo) and np.isfinite(hi) and -MAX_COORD <= lo < hi <= MAX_COORD):
    raise UserError(f".dfm header has an invalid coordinate range ({lo}, {hi})")


def _check_stats(stats, bits: int) -> None:
  if bits == 16:
    return
  for step, loc, spread in stats:
    if not (np.isfinite(step) and step > 0 and np.isfinite(loc) and abs(loc) <= 2**bits
            and np.isfinite(spread) and 0 < spread <= 2**bits):
      raise UserError(".dfm header has invalid quantisation parameters")


def _decode_layers(payload: bytes, bits: int, coder: str, stats, sizes) -> list[np.ndarray]:
  if bits == 16:
    if len(payload) != 2 * sum(sizes):
      raise UserError(".dfm payload does not match the net size in its header")
    flat = np.frombuffer(payload, "<f2").astype(np.float32)
    return np.split(flat, np.cumsum(sizes)[:-1])
  if coder == "raw":
    if len(payload) != (sum(sizes) * bits + 7) // 8:
      raise UserError(".dfm payload does not match the net size in its header")
    ints = _unpack(payload, bits, sum(sizes))
    chunks = np.split(ints, np.cumsum(sizes)[:-1])
  else:
    chunks = _decode_ans(payload, bits, stats, sizes)
  return [q.astype(np.float32) * np.float32(step) for q, (step, _, _) in zip(chunks, stats)]


def _decode_ans(payload: bytes, bits: int, stats, sizes) -> list[np.ndarray]:
  """The ANS-coded integers; a payload must decode to exactly the expected count (a
  coder left with unread words held something else)."""
  if len(payload) % 4:
    raise UserError(".dfm payload is not a whole number of ANS words")
  constriction, model = _ans(bits)
  try:
    dec = constriction.stream.stack.AnsCoder(np.frombuffer(payload, "<u4").copy())
    chunks = [dec.decode(model, np.full(n, loc), np.full(n, spread))
              for n, (_, loc, spread) in zip(sizes, stats)]
  except (ValueError, RuntimeError) as e:  # constriction's word for invalid data.
    raise UserError(f".dfm payload is not valid ANS data ({e})") from None
  if not dec.is_empty():
    raise UserError(".dfm payload does not decode to the number of weights its header names")
  return chunks


def _pack(q: np.ndarray, bits: int) -> bytes:
  u = (q + _levels(bits)).astype(np.uint32)
  bit_matrix = (u[:, None] >> np.arange(bits)[None, :]) & 1
  return np.packbits(bit_matrix.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _unpack(payload: bytes, bits: int, count: int) -> np.ndarray:
  raw = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
  if raw.size < count * bits:
    raise UserError(".dfm payload does not match the net size in its header")
  bit_matrix = raw[:count * bits].reshape(count, bits).astype(np.uint32)
  u = np.sum(bit_matrix << np.arange(bits, dtype=np.uint32)[None, :], axis=1)
  return u.astype(np.int32) - _levels(bits)
