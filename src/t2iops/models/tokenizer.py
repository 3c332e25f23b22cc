"""A small CLIP tokenizer built offline for a known set of words.

Tiny test models and the toy base need a real :class:`transformers.CLIPTokenizer` (the pipelines
call it), but no network. We learn a byte-level BPE on the given words until every word is one
token, write ``vocab.json`` + ``merges.txt`` the way CLIP ships them (``</w>`` word endings,
``<|startoftext|>`` / ``<|endoftext|>``), and load the folder back with ``from_pretrained``.

Why the folder round-trip: in transformers 5, ``CLIPTokenizer(vocab_file=..., merges_file=...)``
silently ignored a generated vocabulary (3 tokens were left). ``from_pretrained(folder)`` reads
the files the same way it reads a real model's ``tokenizer/`` folder, and we check the result.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
WORD_END = "</w>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


# CLIP's pre-tokenizer keeps runs of letters together and splits digits one by one.
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def normalize_words(words: list[str]) -> list[str]:
    """The distinct letter runs CLIP's pre-tokenizer would see in ``words`` (lower-cased, in
    first-seen order). Digits and punctuation need no merges: single bytes are in the vocab."""
    seen: dict[str, None] = {}
    for text in words:
        for w in _WORD_RE.findall(str(text).lower()):
            seen.setdefault(w, None)
    return list(seen)


def _symbols(word: str) -> tuple[str, ...]:
    byte_map = bytes_to_unicode()
    chars = [byte_map[b] for b in word.encode("utf-8")]
    chars[-1] += WORD_END
    return tuple(chars)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE training on the distinct words until each is a single symbol.

    Every word counts once; ties break on the pair itself, so the result is deterministic.
    Training to completion means applying the merges in rank order re-creates each word."""
    corpus = {w: _symbols(w) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for syms in corpus.values():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for w, syms in corpus.items():
            out: list[str] = []
            i = 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            corpus[w] = tuple(out)


def write_clip_vocab(folder: str | Path, words: list[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` covering ``words`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Every byte alone and as a word end, as in CLIP: unseen words still encode, byte by byte.
    base = list(bytes_to_unicode().values())
    vocab_list = base + [c + WORD_END for c in base]
    merges = learn_merges(normalize_words(words))
    for a, b in merges:
        vocab_list.append(a + b)
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_clip_tokenizer(out_dir: str | Path, words: list[str], model_max_length: int = 77):
    """Build, save and load back a CLIP tokenizer in which every word of ``words`` is one token.

    ``words`` may also hold whole captions: they are split the way CLIP's pre-tokenizer splits
    text. ``out_dir`` ends up with the usual tokenizer files, loadable by
    ``CLIPTokenizer.from_pretrained(out_dir)`` (and so by a pipeline's ``tokenizer/`` folder).
    Raises ``ValueError`` if the loaded tokenizer does not hold the vocabulary we wrote.
    """
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    write_clip_vocab(out_dir, words)
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": model_max_length,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "do_lower_case": True,
            },
            indent=2,
        )
    )
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=2)
    )
    tokenizer = CLIPTokenizer.from_pretrained(str(out_dir))
    expected = len(json.loads((out_dir / "vocab.json").read_text(encoding="utf-8")))
    if len(tokenizer) != expected:
        raise ValueError(f"tokenizer in {out_dir} loaded {len(tokenizer)} tokens, wrote {expected}")
    for word in normalize_words(words):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"word {word!r} encodes to {len(ids)} tokens in {out_dir}, expected 1")
    # Save once more through transformers so the folder also carries tokenizer.json, exactly
    # what a pipeline's save_pretrained would write.
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
