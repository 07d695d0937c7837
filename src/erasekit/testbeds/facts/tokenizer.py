"""A word-level tokenizer for the fact world: every word and punctuation mark of the world is one
token, anything else is ``<unk>``. It is a genuine ``transformers`` fast tokenizer, saved and loaded
with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` (offline)."""

from __future__ import annotations

from erasekit.testbeds.facts.factworld import PUNCTUATION, FactWorld

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def build_tokenizer(world: FactWorld):
    """``PreTrainedTokenizerFast`` over the world's closed vocabulary (specials first, then words sorted)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate((*SPECIALS, *sorted(world.vocabulary())))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(PUNCTUATION), behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, "born ?" -> "born?"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
