import json

from t2iops.models.tokenizer import build_clip_tokenizer, learn_merges, normalize_words

WORDS = ["red", "blue", "green", "circle", "with", "background", "a", "photo", "of", "reddish"]


def test_tokenizer_really_holds_the_generated_vocabulary(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "tok", WORDS)
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    # 256 bytes + 256 word-end bytes + merges + bos/eos: far more than the 3 tokens a
    # silently ignored vocabulary leaves.
    assert len(tok) == len(vocab) > 512
    ids = tok("red circle with blue background").input_ids
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens == ["<|startoftext|>", "red</w>", "circle</w>", "with</w>", "blue</w>", "background</w>", "<|endoftext|>"]
    assert [vocab[t] for t in tokens] == ids
    assert tok.model_max_length == 77
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"


def test_every_word_is_one_token_and_case_is_ignored(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "tok", WORDS + ["Red circle on GREEN"])
    for w in normalize_words(WORDS) + ["on", "RED"]:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w


def test_unknown_words_encode_byte_by_byte_without_crashing(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "tok", WORDS, model_max_length=16)
    out = tok(["purple zebra, 42!", "red"], padding="max_length", max_length=16, truncation=True)
    assert [len(x) for x in out.input_ids] == [16, 16]
    unknown = tok("purple", add_special_tokens=False).input_ids
    assert len(unknown) > 1 and tok.unk_token_id not in unknown
    assert tok.decode(tok("zebra", add_special_tokens=False).input_ids) == "zebra"


def test_reloaded_folder_matches(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_clip_tokenizer(tmp_path / "tok", WORDS, model_max_length=32)
    again = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(again) == len(tok) and again.model_max_length == 32
    assert again("green circle").input_ids == tok("green circle").input_ids


def test_merges_are_deterministic_and_overlapping_words_still_merge():
    # Words that share pieces in different positions: the naive left-to-right chain breaks here.
    words = ["ab", "cab", "xyabz", "abcdefg", "aaa", "aa"]
    assert learn_merges(words) == learn_merges(list(words))


def test_overlapping_words_each_one_token(tmp_path):
    words = ["ab", "cab", "xyabz", "abcdefg", "aaa", "aa", "aaaa"]
    tok = build_clip_tokenizer(tmp_path / "tok", words)
    for w in words:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w


def test_no_words_is_an_error_free_byte_tokenizer(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "tok", [])
    assert len(tok) == 514  # the 512 byte symbols + bos/eos
    assert len(tok("red", add_special_tokens=False).input_ids) == 3
