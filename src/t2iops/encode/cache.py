"""The latent + text-embedding cache: its layout on disk and random access to it.

Layout of a cache folder ``C`` (published atomically, ``_manifest.json`` last)::

    C/cache.json                     what was encoded from what (see below) + the sample index
    C/config.resolved.yaml
    C/text/<text_key>/part.json      unique captions, in row order of the shards
    C/text/<text_key>/shard-00000.safetensors   prompt_embeds [n, L, D] (+ pooled_prompt_embeds [n, P])
    C/text/<text_key>/empty.safetensors         the empty prompt's embeddings (caption dropout)
    C/latents/<latent_key>/part.json            ids in stored order, shards (each with its bucket),
                                                geometry, scaling factor
    C/latents/<latent_key>/shard-00000.safetensors   the samples of ONE bucket [h, w]:
        latent_moments [n, 2C, h, w]  VAE posterior (mean, logvar)  -- encode.latents=sample
        latent_mean    [n, C, h, w]   posterior mean                -- encode.latents=mean
        *_flipped                     the same for the mirrored image  -- encode.random_flip
        conditions_png [bytes]        each condition as a lossless PNG at its bucket's size
        conditions_png_offsets [n+1]  (unflipped; greyscale when R == G == B), decoded in the
                                      loader's workers. Format 1 stored raw uint8 ``conditions``
                                      [n, 3, H, W] (12x larger at 1024 px); it is still read.
        time_ids       [n, 6]         SDXL time ids (orig h, w, crop top, left, target h, w)
        time_ids_flipped [n, 6]                                       -- encode.random_flip

Text shards hold ``TEXT_SHARD_SIZE`` captions each (an SDXL caption is 316 KB), so a streamed
batch fetches only the few small text shards its captions live in, not the whole text part.

Text and latents are two *parts*, each in a folder named by its own key: the text key hashes
the captions and the text encoders, the latent key hashes the images, the VAE, the resolution
and the augmentation policy. Changing the VAE re-encodes latents only; editing captions
re-encodes text only. Captions are deduplicated (fill50k-style data repeats them a lot).

``cache.json`` holds ``dataset_version``, ``base_model`` (path, revision, config hash),
``resolution``, ``buckets`` (the bucket list, ``[[height, width], ...]``), ``augmentation``, both
part keys and, per split, the sample ids (in id order) with their latent row, text row and
bucket (an index into ``buckets``).

Aspect-ratio buckets (format 3): latents of different buckets differ in shape, so each latent
shard holds one bucket's samples; buckets are stored one after another, each starting a new
shard, and a latent row is an address (``shard * shard_size + position``) that skips the unused
tail of a bucket's last shard (:mod:`t2iops.encode.bucketing`). The shard of row ``r`` is
``r // shard_size`` in every format. Formats 1 and 2 read as one square bucket of their
``resolution``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

CACHE_FORMAT = 3
# format 1: raw uint8 conditions, text shards of encode.shard_size; formats 1 and 2: one square
# bucket of ``resolution``, latent rows 0, 1, 2, ...
READABLE_FORMATS = (1, 2, 3)
TEXT_SHARD_SIZE = 8  # SDXL: 2.5 MB objects; a streamed batch of 8 reads at most 8 of them
INDEX = "cache.json"
PART = "part.json"
EMPTY_PROMPT = "empty.safetensors"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def read_index(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / INDEX
    if not path.exists():
        from ..errors import DataError

        raise DataError(f"{cache_dir} is not a t2iops cache ({INDEX} missing); run `t2iops encode` first")
    index = json.loads(path.read_text())
    if index.get("format") not in READABLE_FORMATS:
        from ..errors import DataError

        raise DataError(f"{path}: cache format {index.get('format')} is not one of {READABLE_FORMATS} "
                        "this version reads; encode again")
    return index


def encode_png(condition) -> bytes:
    """Lossless PNG of a uint8 ``[3, H, W]`` condition; one grey channel when R == G == B (edge,
    outline and depth maps), which also makes decoding three times cheaper."""
    import io

    import numpy as np
    from PIL import Image

    pixels = condition.numpy() if hasattr(condition, "numpy") else np.asarray(condition)
    if (pixels[0] == pixels[1]).all() and (pixels[0] == pixels[2]).all():
        image = Image.fromarray(np.ascontiguousarray(pixels[0]), "L")
    else:
        image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes, where: str):
    """The uint8 ``[3, H, W]`` tensor :func:`encode_png` stored (bit-exact)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.mode not in ("L", "RGB"):
                raise ValueError(f"{image.format} {image.mode}")
            pixels = np.asarray(image, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a broken cache
        from ..errors import DataError

        raise DataError(f"{where}: stored condition is not a valid PNG ({exc})") from None
    if pixels.ndim == 2:
        return torch.from_numpy(pixels.copy())[None].expand(3, -1, -1).contiguous()
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


class ShardedTable:
    """Row access to tensors split over safetensors shards of ``shard_size`` rows each.

    Files are memory-mapped by ``safe_open`` and rows read with slices, so a 50k-sample SDXL
    cache (tens of GB) is never loaded whole. At most ``MAX_OPEN`` shards stay open: a streamed
    cache evicts used shards, and an open handle would keep an evicted file on disk."""

    MAX_OPEN = 4

    def __init__(self, folder: Path, shard_size: int, num_shards: int):
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.num_shards = num_shards
        self._handles: dict[int, Any] = {}

    def _open(self, shard: int):
        handle = self._handles.pop(shard, None)
        if handle is None:
            from safetensors import safe_open

            if len(self._handles) >= self.MAX_OPEN:
                self._handles.pop(next(iter(self._handles)))  # least recently used
            handle = safe_open(str(self.folder / shard_name(shard)), framework="pt")
        self._handles[shard] = handle  # most recently used last
        return handle

    def has(self, name: str, i: int) -> bool:
        return name in self._open(int(i) // self.shard_size).keys()

    def file_of(self, i: int) -> str:
        return shard_name(int(i) // self.shard_size)

    def blob(self, name: str, i: int) -> bytes:
        """Row ``i`` of a variable-length column (``name`` bytes cut at ``name_offsets``)."""
        shard, local = divmod(int(i), self.shard_size)
        handle = self._open(shard)
        start, end = handle.get_slice(name + "_offsets")[local : local + 2].tolist()
        return handle.get_slice(name)[start:end].numpy().tobytes()

    def keys(self) -> set[str]:
        return set(self._open(0).keys()) if self.num_shards else set()

    def row(self, name: str, i: int):
        shard, local = divmod(int(i), self.shard_size)
        return self._open(shard).get_slice(name)[local : local + 1][0]

    def __getstate__(self):  # DataLoader workers open their own handles
        return {**self.__dict__, "_handles": {}}


def cache_buckets(index: dict, split: str, where: str) -> tuple[list[tuple[int, int]], Optional[list[int]]]:
    """The bucket list ``[(height, width), ...]`` of a cache and, per sample of ``split``, its index
    into that list (None: every sample is in bucket 0). Formats 1 and 2 cropped every sample to
    one ``resolution`` square, which their index records."""
    if index.get("format", 0) >= 3:
        buckets = [(int(h), int(w)) for h, w in index["buckets"]]
        return buckets, [int(b) for b in index["samples"][split]["buckets"]]
    resolution = index.get("resolution")
    if not isinstance(resolution, int):
        from ..errors import DataError

        raise DataError(f"{where}: a format {index.get('format')} cache without its resolution in {INDEX}; "
                        "its bucket is unknown; encode again")
    return [(resolution, resolution)], None


class CacheReader:
    """One split of a cache: ``len()`` samples, ``sample(i)`` their cached tensors."""

    def __init__(self, cache_dir: str | Path, split: str):
        self.root = Path(cache_dir)
        self.index = read_index(self.root)
        samples = self.index["samples"].get(split)
        if not samples or not samples["ids"]:
            from ..errors import DataError

            raise DataError(f"cache {self.root} has no samples of split {split!r} (encoded: "
                            f"{', '.join(k for k, v in self.index['samples'].items() if v['ids']) or 'none'})")
        self.split = split
        self.ids: list[str] = samples["ids"]
        self.latent_rows: list[int] = samples["latent_rows"]
        self.text_rows: list[int] = samples["text_rows"]
        text, latents = self.index["text"], self.index["latents"]
        self.text_part = json.loads((self.root / text["dir"] / PART).read_text())
        self.latent_part = json.loads((self.root / latents["dir"] / PART).read_text())
        self.text = ShardedTable(self.root / text["dir"], self.text_part["shard_size"], len(self.text_part["shards"]))
        self.latents = ShardedTable(
            self.root / latents["dir"], self.latent_part["shard_size"], len(self.latent_part["shards"])
        )
        self.has_flip = bool(self.latent_part["augmentation"]["random_flip"])
        self.latent_kind = self.latent_part["latents"]  # "sample" | "mean"
        self.family = self.index["family"]
        self.buckets, self._bucket_of = cache_buckets(self.index, split, str(self.root))

    def bucket_of(self, i: int) -> int:
        """The bucket of sample ``i``: an index into :attr:`buckets`. Samples of one bucket share
        their latent, condition and time-id shapes, so a batch must not mix buckets."""
        return self._bucket_of[i] if self._bucket_of is not None else 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def scaling_factor(self) -> float:
        return float(self.latent_part["scaling_factor"])

    @property
    def shift_factor(self) -> Optional[float]:
        value = self.latent_part.get("shift_factor")
        return None if value is None else float(value)

    def sample(self, i: int, flipped: bool = False) -> dict:
        """Cached tensors of sample ``i``. ``flipped`` returns the mirrored latents, condition and
        time ids (only when the cache was encoded with ``random_flip``)."""
        if flipped and not self.has_flip:
            raise ValueError("this cache was encoded without random_flip")
        row = self.latent_rows[i]
        suffix = "_flipped" if flipped else ""
        latent_name = ("latent_moments" if self.latent_kind == "sample" else "latent_mean") + suffix
        if self.latents.has("conditions", row):  # format 1
            condition = self.latents.row("conditions", row)
        else:
            condition = decode_png(self.latents.blob("conditions_png", row),
                                   f"{self.root}/{self.latents.folder.name} row {row}")
        if flipped:
            condition = condition.flip(-1)  # exact on uint8 pixels; the latent flip is not
        out = {
            "latent": self.latents.row(latent_name, row),
            "condition": condition,
            "time_ids": self.latents.row("time_ids" + suffix, row),
        }
        out.update(self.text_embeddings(self.text_rows[i]))
        return out

    def files_of(self, i: int) -> list[str]:
        """The shard files (relative to the cache root) sample ``i`` is read from."""
        return [f"{self.index['latents']['dir']}/{self.latents.file_of(self.latent_rows[i])}",
                f"{self.index['text']['dir']}/{self.text.file_of(self.text_rows[i])}"]

    def latent_shard_of(self, i: int) -> int:
        return self.latent_rows[i] // self.latents.shard_size

    def text_embeddings(self, text_row: int) -> dict:
        out = {"prompt_embeds": self.text.row("prompt_embeds", text_row)}
        if self.text_part["pooled"]:
            out["pooled_prompt_embeds"] = self.text.row("pooled_prompt_embeds", text_row)
        return out

    def empty_prompt(self) -> dict:
        """Embeddings of the empty prompt (what caption dropout and unconditional guidance use)."""
        from safetensors.torch import load_file

        loaded = load_file(str(self.root / self.index["text"]["dir"] / EMPTY_PROMPT))
        return {k: v[0] for k, v in loaded.items()}

    def caption(self, i: int) -> str:
        return self.text_part["captions"][self.text_rows[i]]
