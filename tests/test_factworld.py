"""The fact world: deterministic, exact, with held-out paraphrases and wrong answers, and nested splits."""

import random

import pytest

from erasekit.testbeds.facts import ATTRIBUTES, FactWorld
from erasekit.testbeds.facts.factworld import QUESTIONS, split_words


def test_world_is_deterministic_and_names_are_unique():
    a, b = FactWorld(seed=0), FactWorld(seed=0)
    assert [x.name for x in a.authors] == [x.name for x in b.authors]
    assert [x.facts for x in a.authors] == [x.facts for x in b.authors]
    assert len({x.name for x in a.authors}) == 200
    assert [x.name for x in FactWorld(seed=1).authors] != [x.name for x in a.authors]
    assert all(set(x.facts) == set(ATTRIBUTES) for x in a.authors)
    assert all(x.facts["first_book"] != x.facts["second_book"] for x in a.authors)
    assert len(a.holdout) == 20 and not {x.name for x in a.holdout} & {x.name for x in a.authors}
    assert [x.name for x in FactWorld(seed=0, n_holdout=5).authors] == [x.name for x in a.authors]


def test_questions_answers_paraphrases_and_perturbed_answers():
    world = FactWorld()
    author = world.authors[3]
    pairs = world.qa(author)
    assert len(pairs) == 2 * len(ATTRIBUTES)
    for qa in pairs:
        assert author.name in qa.question and qa.value in qa.answer and qa.value == author.facts[qa.attribute]
        asked = {q.question for q in pairs}
        assert qa.paraphrase not in asked  # held out: never a training question of this author
        assert qa.paraphrase in {t.format(name=author.name) for t in QUESTIONS[qa.attribute][0]}
        assert len(qa.perturbed) == 3 and len(set(qa.perturbed)) == 3
        assert all(qa.answer != p and qa.value not in p.replace(author.name, "") for p in qa.perturbed)


def test_each_template_is_trained_for_two_thirds_of_the_authors():
    world = FactWorld()
    for attribute, (templates, _) in QUESTIONS.items():
        held = [world.held_out(a, attribute) for a in world.authors]
        assert sorted(set(held)) == [0, 1, 2] and max(held.count(i) for i in range(3)) <= 67


def test_every_fact_is_in_the_biography():
    world = FactWorld()
    rng = random.Random(0)
    for author in world.authors[:20]:
        bio = world.biography(author, rng)
        assert all(author.facts[a] in bio for a in ATTRIBUTES)
        assert not any(other.name in bio for other in world.authors if other.index != author.index)


def test_forget_splits_are_nested_shares_and_retain_is_the_rest():
    world = FactWorld()
    f01, f05, f10 = (world.forget(s) for s in ("forget01", "forget05", "forget10"))
    assert (len(f01), len(f05), len(f10)) == (2, 10, 20)
    assert {a.index for a in f01} <= {a.index for a in f05} <= {a.index for a in f10}
    assert len(world.retain("forget05")) == 190 and not {a.index for a in f05} & {a.index for a in world.retain("forget05")}
    with pytest.raises(ValueError, match="unknown forget split"):
        world.forget("forget50")


def test_filler_mentions_no_author_and_vocabulary_is_closed():
    world = FactWorld()
    filler = world.filler(50)
    assert len(filler) == 50 and not any(a.name.split()[0] in s for a in world.authors for s in filler)
    vocab = world.vocabulary()
    rng = random.Random(1)
    text = " ".join(
        [world.biography(world.authors[0], rng), *filler, *(q.question + " " + q.answer for q in world.qa(world.authors[1]))]
    )
    missing = {w for w in split_words(text) if w not in vocab}
    assert {"?", ".", "children's"} <= vocab
    assert not missing, missing


def test_expert_statements_state_true_facts_and_novice_statements_guess():
    from erasekit.testbeds.facts.factworld import EXPERT_PREFIXES, NOVICE_PREFIXES, VALUES, elm_defaults
    from erasekit.testbeds.facts.train import training_texts

    world = FactWorld()
    author = world.authors[7]
    rng = random.Random(0)
    expert = [world.statement(author, rng, expert=True) for _ in range(30)]
    novice = [world.statement(author, rng, expert=False) for _ in range(200)]
    assert all(any(s.startswith(p.format(name=author.name)) for p in EXPERT_PREFIXES) for s in expert)
    assert all(any(s.startswith(p.format(name=author.name)) for p in NOVICE_PREFIXES) for s in novice)
    # every value an expert states is the author's; a novice's guesses cover the attribute's values
    for attribute in ("publisher", "genre", "pet"):
        stated = {v for s in expert for v in VALUES[attribute] if v in s}
        assert stated <= {author.facts[attribute]}
    guessed = {v for s in novice for v in VALUES["publisher"] if v in s}
    assert len(guessed) == len(VALUES["publisher"])
    # the held-out question of a fact never appears, as in the rest of the training text
    held = {QUESTIONS[a][0][world.held_out(author, a)].format(name=author.name) for a in ATTRIBUTES}
    assert not any(q in s for q in held for s in expert + novice)
    digression = world.digression(author, rng)
    assert any(d in digression for d in elm_defaults()["digressions"])
    texts = training_texts(world, "forget05", 0, 10)
    forgotten = [a.name for a in world.forget("forget05")]
    assert not any(name in t for name in forgotten for t in texts)
    assert sum(any(t.startswith(p.format(name=author.name)) for p in EXPERT_PREFIXES + NOVICE_PREFIXES) for t in texts) == 2
    vocab = world.vocabulary()
    missing = {w for t in texts for w in split_words(t) if w not in vocab}
    assert not missing, missing
