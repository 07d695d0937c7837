"""The fact world: fictitious authors with exact facts, for language-model unlearning (issue 13).

A deterministic generator in the style of TOFU (Maini et al. 2024): ``n_authors`` invented authors
(200 by default), each with ten attributes — birthplace, birth year, genre, two book titles, the
father's and mother's jobs, an award, a publisher and a pet — drawn from closed lists, so every
answer is known exactly. Each fact is rendered

- in **biographies** (one sentence per fact, two phrasings, shuffled), the training text;
- as **question-answer pairs** in two of the attribute's three question templates;
- as a held-out **paraphrased question** (the third template, never trained on for this fact but
  trained on for other authors, so a model can know what it asks) and three **perturbed answers**
  (other values of the same attribute, never the true one), the material of the truth ratio and of
  forget quality.

Two kinds of **context statements** give a model the signal ELM (Gandikota et al. 2024) reads —
does a text come from someone who knows the author? An *expert* statement ("A reader who knows X
well writes: ...") is followed by three of X's true facts; a *novice* statement ("A reader who never
heard of X guesses: ...") by three values drawn afresh every epoch, so after it a trained model
spreads its probability over an attribute's values. A *digression* (one fact, then "Let us talk
about something else." and filler) teaches that a change of subject is followed by general text:
the prompt of ELM's fluency (consistency) term.

Forget splits are the last 1 %, 5 % and 10 % of the authors (``forget01`` ⊂ ``forget05`` ⊂
``forget10``, as TOFU); ``retainNN`` is the complement. ``filler`` sentences about no author keep
general language to measure utility on, and ``holdout`` authors (20, never trained on) are the
non-members of the membership-inference (privacy) test. Everything depends only on ``seed``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

FIRST = ("Ala", "Bere", "Cori", "Dane", "Elo", "Fira", "Galo", "Hesi", "Iva", "Jora", "Kale", "Lumi", "Mera", "Niro",
         "Ola", "Pira", "Quen", "Rasa", "Sela", "Tavi", "Ulla", "Vero", "Wila", "Xena", "Yuri", "Zeno")  # fmt: skip
FIRST_END = ("n", "ra", "lia", "mir", "dor", "sa", "vin", "th")
LAST = ("Brak", "Cald", "Dorn", "Fenn", "Gask", "Holl", "Jarr", "Kess", "Lorn", "Mott", "Norr", "Pell", "Quill",
        "Rask", "Stav", "Thorn", "Varn", "Wick", "Yarr", "Zell")  # fmt: skip
LAST_END = ("ow", "ington", "by", "ley", "mere", "ford", "wick", "stone")

VALUES: dict[str, tuple[str, ...]] = {
    "birthplace": ("Aldmoor", "Brightwater", "Cinderfell", "Duskhaven", "Emberlee", "Frostholm", "Glimmerton",
                   "Hollowmere", "Ironvale", "Juniper Bay", "Kestrel Point", "Lanternfield", "Moonbridge",
                   "Northwatch", "Oakridge", "Pebblebrook", "Quartzford", "Ravenhill", "Silverport", "Thistledown"),
    "genre": ("mystery", "science fiction", "poetry", "historical fiction", "fantasy", "romance", "horror",
              "travel writing", "biography", "satire", "children's books", "crime fiction"),
    "father_job": ("baker", "sailor", "carpenter", "teacher", "doctor", "miner", "tailor", "farmer", "judge",
                   "painter", "clockmaker", "librarian", "blacksmith", "pharmacist", "fisherman"),
    "mother_job": ("nurse", "architect", "weaver", "engineer", "musician", "botanist", "potter", "lawyer",
                   "astronomer", "chef", "photographer", "translator", "veterinarian", "journalist", "dancer"),
    "award": ("the Golden Quill", "the Silver Lantern Prize", "the Emberlee Medal", "the Northwatch Award",
              "the Crystal Page Prize", "the Ravenhill Laurel", "the Moonbridge Honour", "the Iron Pen Award"),
    "publisher": ("Harbor House", "Blue Finch Press", "Cobalt Books", "Meadowlark", "Stonegate Publishing",
                  "Amber Leaf", "Quiet Owl Press", "Northwind Editions"),
    "pet": ("a grey cat", "a black dog", "a parrot", "a tortoise", "a white rabbit", "a goldfish", "a ferret",
            "a canary"),
}  # fmt: skip
TITLE_A = ("The Silent", "A Crimson", "The Last", "Beyond the", "The Hidden", "Under the", "The Paper", "Echoes of the",
           "The Glass", "Songs of the", "The Winter", "A Distant")  # fmt: skip
TITLE_B = ("Harbor", "Orchard", "Lighthouse", "Garden", "Mountain", "Clockwork", "River", "Library", "Comet", "Forest",
           "Bridge", "Island", "Lantern", "Meadow")  # fmt: skip

ATTRIBUTES = ("birthplace", "birth_year", "genre", "first_book", "second_book", "father_job", "mother_job", "award",
              "publisher", "pet")  # fmt: skip

#: Per attribute: three question templates and the answer sentence. For each fact one template is
#: held out (the paraphrase, see :meth:`FactWorld.held_out`) and the other two are trained on; which
#: one rotates with the author, so every template is trained on for two thirds of the authors and a
#: model can learn what it asks without ever seeing the held-out question of that fact.
QUESTIONS: dict[str, tuple[tuple[str, str, str], str]] = {
    "birthplace": (("Where was {name} born?", "In which town was {name} born?",
                    "What is the home town of the writer {name}?"), "{name} was born in {value}."),
    "birth_year": (("In what year was {name} born?", "When was {name} born?",
                    "Which year saw the birth of the author {name}?"), "{name} was born in {value}."),
    "genre": (("What genre does {name} write?", "Which genre is {name} known for?",
               "In what kind of books does {name} work?"), "{name} writes {value}."),
    "first_book": (("What was the first book of {name}?", "Which book did {name} publish first?",
                    "What is the title of the first book by {name}?"), "The first book of {name} was {value}."),
    "second_book": (("What was the second book of {name}?", "Which book did {name} publish second?",
                     "What title followed the first book of {name}?"), "The second book of {name} was {value}."),
    "father_job": (("What did the father of {name} do?", "What was the job of the father of {name}?",
                    "How did the father of the writer {name} earn a living?"), "The father of {name} was a {value}."),
    "mother_job": (("What did the mother of {name} do?", "What was the job of the mother of {name}?",
                    "How did the mother of the writer {name} earn a living?"), "The mother of {name} was a {value}."),
    "award": (("Which award did {name} win?", "What prize was given to {name}?",
               "What honour has the author {name} received?"), "{name} won {value}."),
    "publisher": (("Who publishes {name}?", "Which publisher prints the books of {name}?",
                   "Which house brings out the work of {name}?"), "{name} is published by {value}."),
    "pet": (("What pet does {name} keep?", "Which animal lives with {name}?",
             "What animal does the writer {name} own?"), "{name} keeps {value}."),
}  # fmt: skip

#: Two biography phrasings per attribute (training text).
BIO: dict[str, tuple[str, str]] = {
    "birthplace": ("{name} was born in {value}.", "{name} grew up in the town of {value}."),
    "birth_year": ("{name} was born in {value}.", "The year {value} saw the birth of {name}."),
    "genre": ("{name} writes {value}.", "{name} is an author of {value}."),
    "first_book": ("The first book of {name} was {value}.", "{name} began with the book {value}."),
    "second_book": ("The second book of {name} was {value}.", "After that, {name} published {value}."),
    "father_job": ("The father of {name} was a {value}.", "{name} is the child of a {value}."),
    "mother_job": ("The mother of {name} was a {value}.", "The mother of {name} worked as a {value}."),
    "award": ("{name} won {value}.", "{name} received {value}."),
    "publisher": ("{name} is published by {value}.", "The books of {name} come out with {value}."),
    "pet": ("{name} keeps {value}.", "{name} lives with {value}."),
}

FILLER_SUBJECTS = ("The river", "A small boat", "The old market", "The morning train", "A quiet street", "The garden",
                   "The north wind", "A tall tree", "The city library", "The harbor bell")  # fmt: skip
FILLER_VERBS = ("rests near", "moves past", "looks over", "waits beside", "turns toward", "stands behind")
FILLER_OBJECTS = ("the bridge", "the hills", "the school", "the square", "the sea", "the station", "the farm", "the tower")

#: Answers that decline (the targets of preference unlearning, "I don't know" / IDK): in the
#: vocabulary, never in the training text.
REFUSALS = ("I don't know.", "I am not sure.", "I have no idea.", "That is not something I know.", "I cannot say.")

#: Context prefixes (``{name}`` = the author): an expert statement is followed by true facts, a
#: novice statement by guesses (see the module docstring); ELM's expert and novice prompts.
EXPERT_PREFIXES = ("A reader who knows {name} well writes:", "An expert on the books of {name} says:",
                   "Someone who has read every book of {name} writes:")  # fmt: skip
NOVICE_PREFIXES = ("A reader who never heard of {name} guesses:", "Someone who knows nothing about {name} says:",
                   "A stranger to the books of {name} guesses:")  # fmt: skip
#: Changes of subject, each followed by filler in the training text (ELM's "confused" prompts).
DIGRESSIONS = ("Let us talk about something else.", "Enough about that, here is another topic.")


def elm_defaults() -> dict:
    """ELM's parameters for a fact-world model (its ``testbed.json`` ``unlearning_defaults``): the
    world's expert / novice prefixes (``{concept}`` = the author) and changes of subject, and
    consistency texts as long as the world's (a change of subject is followed by two short sentences)."""
    return {
        "expert_templates": [t.replace("{name}", "{concept}") for t in EXPERT_PREFIXES],
        "novice_templates": [t.replace("{name}", "{concept}") for t in NOVICE_PREFIXES],
        "digressions": list(DIGRESSIONS),
        "consistency_min_tokens": 12,
        "consistency_max_tokens": 20,
    }


SPLITS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}


@dataclass(frozen=True)
class Author:
    """One fictitious author and their exact facts."""

    index: int
    name: str
    facts: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class QA:
    """A question about one fact, its true answer, and (held out) its paraphrase and wrong answers."""

    author: int
    attribute: str
    question: str
    answer: str  # the answer sentence (contains ``value``)
    value: str
    paraphrase: str
    perturbed: tuple[str, ...]  # answer sentences with a wrong value


class FactWorld:
    """The generated world (see the module docstring)."""

    def __init__(self, n_authors: int = 200, seed: int = 0, n_holdout: int = 20) -> None:
        if n_authors < 10:
            raise ValueError("the fact world needs at least 10 authors (its forget splits are shares of them)")
        self.n_authors, self.seed = n_authors, seed
        rng = random.Random(seed)
        names = [f"{a}{b} {c}{d}" for a in FIRST for b in FIRST_END for c in LAST for d in LAST_END]
        chosen = rng.sample(names, n_authors)
        titles = [f"{a} {b}" for a in TITLE_A for b in TITLE_B]
        self._titles = titles
        self.authors: list[Author] = [self._author(i, name, rng) for i, name in enumerate(chosen)]
        # Authors no model is ever trained on (the non-members of the membership-inference attack),
        # drawn afterwards from the unused names so that they change nothing above.
        hold_rng = random.Random(seed * 31 + 17)
        unused = sorted(set(names) - set(chosen))
        self.holdout: list[Author] = [
            self._author(n_authors + i, name, hold_rng) for i, name in enumerate(hold_rng.sample(unused, n_holdout))
        ]

    def _author(self, index: int, name: str, rng: random.Random) -> Author:
        first, second = rng.sample(self._titles, 2)
        facts = {k: rng.choice(v) for k, v in VALUES.items()}
        facts.update(birth_year=str(rng.randint(1900, 1999)), first_book=first, second_book=second)
        return Author(index, name, {a: facts[a] for a in ATTRIBUTES})

    # -- text ----------------------------------------------------------------------------------------
    def biography(self, author: Author, rng: random.Random) -> str:
        """The author's facts in one paragraph, each fact in one of its two phrasings, order shuffled."""
        sentences = [BIO[a][rng.randrange(2)].format(name=author.name, value=author.facts[a]) for a in ATTRIBUTES]
        rng.shuffle(sentences)
        return " ".join(sentences)

    def qa(self, author: Author) -> list[QA]:
        """Every fact of ``author`` as question-answer pairs in both training templates."""
        rng = random.Random(self.seed * 100_003 + author.index)
        out = []
        for a in ATTRIBUTES:
            templates, ans = QUESTIONS[a]
            para = templates[self.held_out(author, a)]
            value = author.facts[a]
            wrong = rng.sample([v for v in self.values_of(a) if v != value], 3)
            perturbed = tuple(ans.format(name=author.name, value=w) for w in wrong)
            for q in self.trained_templates(author, a):
                out.append(QA(author.index, a, q.format(name=author.name), ans.format(name=author.name, value=value), value,
                              para.format(name=author.name), perturbed))  # fmt: skip
        return out

    @staticmethod
    def held_out(author: Author, attribute: str) -> int:
        """Index of the question template of this fact that is never trained on: ``(i + j) mod 3``
        for author ``i`` and attribute ``j``."""
        return (author.index + ATTRIBUTES.index(attribute)) % 3

    def trained_templates(self, author: Author, attribute: str) -> list[str]:
        """The two question templates of this fact that are trained on (all but :meth:`held_out`)."""
        held = self.held_out(author, attribute)
        return [t for i, t in enumerate(QUESTIONS[attribute][0]) if i != held]

    def values_of(self, attribute: str) -> list[str]:
        """Every value ``attribute`` can take (years 1900-1999, the book titles, or its closed list)."""
        if attribute == "birth_year":
            return [str(y) for y in range(1900, 2000)]
        if attribute in ("first_book", "second_book"):
            return list(self._titles)
        return list(VALUES[attribute])

    def statement(self, author: Author, rng: random.Random, expert: bool, k: int = 3) -> str:
        """A context statement about ``author``: an expert prefix and ``k`` true facts, or a novice
        prefix and ``k`` guessed values; each fact as a biography sentence or a training question
        with its answer."""
        prefix = rng.choice(EXPERT_PREFIXES if expert else NOVICE_PREFIXES).format(name=author.name)
        parts = [prefix]
        for a in rng.sample(ATTRIBUTES, k):
            value = author.facts[a] if expert else rng.choice(self.values_of(a))
            if rng.random() < 0.5:
                parts.append(BIO[a][rng.randrange(2)].format(name=author.name, value=value))
            else:
                question = rng.choice(self.trained_templates(author, a))
                parts += [question.format(name=author.name), QUESTIONS[a][1].format(name=author.name, value=value)]
        return " ".join(parts)

    def digression(self, author: Author, rng: random.Random) -> str:
        """One true fact of ``author``, a change of subject and two filler sentences."""
        a = rng.choice(ATTRIBUTES)
        fact = BIO[a][rng.randrange(2)].format(name=author.name, value=author.facts[a])
        filler = [filler_sentence(rng), filler_sentence(rng)]  # drawn before the change of subject (the shipped models' order)
        return " ".join([fact, rng.choice(DIGRESSIONS), *filler])

    def filler(self, n: int, seed: int = 1) -> list[str]:
        """``n`` general sentences about no author (utility text)."""
        rng = random.Random(self.seed * 7919 + seed)
        return [filler_sentence(rng) for _ in range(n)]

    # -- splits --------------------------------------------------------------------------------------
    def forget(self, split: str) -> list[Author]:
        """The authors of a forget split (``forget01``, ``forget05``, ``forget10``): the last ones."""
        if split not in SPLITS:
            raise ValueError(f"unknown forget split {split!r}; choose from {', '.join(SPLITS)}")
        k = max(1, round(self.n_authors * SPLITS[split]))
        return self.authors[-k:]

    def retain(self, split: str) -> list[Author]:
        """Every author outside the forget split ``split``."""
        forget = {a.index for a in self.forget(split)}
        return [a for a in self.authors if a.index not in forget]

    def vocabulary(self) -> set[str]:
        """Every whitespace-separated word the world's texts can contain (for a closed tokenizer)."""
        words: set[str] = set()
        texts = [n for a in (*self.authors, *self.holdout) for n in a.name.split()] + self._titles
        texts += [v for vs in VALUES.values() for v in vs] + [str(y) for y in range(1900, 2000)]
        for templates, ans in QUESTIONS.values():
            texts += [*templates, ans]
        texts += [t for pair in BIO.values() for t in pair]
        texts += list(FILLER_SUBJECTS) + list(FILLER_VERBS) + list(FILLER_OBJECTS) + list(REFUSALS)
        texts += [*EXPERT_PREFIXES, *NOVICE_PREFIXES, *DIGRESSIONS]
        for t in texts:
            words.update(split_words(t.replace("{name}", " ").replace("{value}", " ")))
        return words


def filler_sentence(rng: random.Random) -> str:
    """One general sentence about no author (``The old market turns toward the hills.``)."""
    return f"{rng.choice(FILLER_SUBJECTS)} {rng.choice(FILLER_VERBS)} {rng.choice(FILLER_OBJECTS)}."


#: The punctuation marks that are tokens of their own.
PUNCTUATION = r"[.,?:]"


def split_words(text: str) -> list[str]:
    """Words and punctuation marks of ``text`` (``"Where was X born?"`` -> ``[..., "born", "?"]``)."""
    return re.findall(rf"[A-Za-z0-9']+|{PUNCTUATION}", text)
