from transformers import CLIPTokenizer

from erasekit.testbeds.image import world
from erasekit.testbeds.image.tokenizer import MODEL_MAX_LENGTH, build_tokenizer, save_tokenizer


def test_every_world_word_is_one_token():
    tok = build_tokenizer()
    for w in world.vocabulary():
        assert tok.tokenize(w) == [w + "</w>"]


def test_unknown_words_fall_back_to_bytes_and_ids_are_framed():
    tok = build_tokenizer()
    assert len(tok.tokenize("zebra")) > 1
    ids = tok("a red star", padding="max_length", max_length=MODEL_MAX_LENGTH).input_ids
    assert len(ids) == MODEL_MAX_LENGTH
    assert ids[0] == tok.bos_token_id and ids[4] == tok.eos_token_id
    assert all(i == tok.pad_token_id for i in ids[4:])
    assert tok.pad_token_id == tok.eos_token_id  # CLIP pads with end-of-text


def test_tokenizer_round_trips_through_files(tmp_path):
    tok = build_tokenizer()
    save_tokenizer(tok, tmp_path)
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    again = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a picture of a purple hollow lozenge on a gray background"
    assert again(text).input_ids == tok(text).input_ids
    assert again.model_max_length == MODEL_MAX_LENGTH
    from_classic = CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    assert from_classic(text).input_ids == tok(text).input_ids
