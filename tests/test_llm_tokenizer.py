"""The fact world's tokenizer: one token per world word, a real transformers tokenizer."""

import random

from transformers import AutoTokenizer

from erasekit.testbeds.facts import FactWorld
from erasekit.testbeds.facts.factworld import split_words
from erasekit.testbeds.facts.tokenizer import build_tokenizer


def test_every_world_word_is_one_token_and_text_round_trips(tmp_path):
    world = FactWorld()
    tok = build_tokenizer(world)
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in sorted(world.vocabulary())[:300])
    text = world.biography(world.authors[0], random.Random(0)) + " " + world.qa(world.authors[0])[0].question
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids and len(ids) == len(split_words(text))
    assert split_words(tok.decode(ids)) == split_words(text)
    assert tok("zebra", add_special_tokens=False).input_ids == [tok.unk_token_id]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False).input_ids == ids
