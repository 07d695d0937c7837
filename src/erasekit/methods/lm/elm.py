"""ELM — Erasure of Language Memory (Gandikota, Feucht, Marks & Bau 2024; rohitgandikota/erasing-llm).

The model's own judgement of *who wrote a text* is the erasure signal. With an expert prefix ``c_e``
("Here is a text written by an expert in {concept} ...") and a novice prefix ``c_n`` ("... by a
novice, with no knowledge about {concept} ..."), the frozen model ``p`` defines for every position
``t`` of a forget text ``x`` the target

    q_t = softmax( top_k[ log p(· | x_<t) − η_t · (log p(· | c_e, x_<t) − log p(· | c_n, x_<t)) ] )

(log-probabilities at temperature ``T``, ``η_t`` rising linearly from 1 to ``eta`` along the text,
``top_k`` keeping the ``k`` largest entries), i.e. ``p'(x) ∝ p(x) (p(c_n | x) / p(c_e | x))^η``: the
text as the model would write it were it less of an expert. The trained model minimises

    L = λ_erase · CE(q, p_θ(x))  +  λ_retain · CE(argmax p(x_r), p_θ(x_r))  +  λ_cons · NLL_θ(y | x, d)

— soft cross-entropy to the targets on the forget text, hard cross-entropy to the frozen model's
greedy tokens on retain text ``x_r``, and the **consistency** (fluency) term: ``y`` is text the frozen
model generates after the forget text and a change of subject ``d`` ("Let's avoid this risky subject
and talk about something more enjoyable instead,"), sampled with the same guidance at scale ``γ``:
``log p(· | x, d, y_<s) − γ (log p(· | c_e, y_<s) − log p(· | c_n, y_<s))`` (expert and novice
contexts are the prefixes without their final colon followed by the generated tokens only, top-50
sampling as ``transformers.generate`` does by default). So the erased model neither states the facts
nor breaks down when asked for them.

Defaults are the reference code's (``trainscripts/erase.py``): η = 1000, T = 1.2, top-k 50, all three
loss scales 1, lr 5e-5, batch 1 × 4 accumulation steps, the attention and MLP projections of blocks
``[n/8, n/4)`` (4..8 of Llama's 32), the ten expert / ten novice / twenty change-of-subject templates.
The concept of a forget pair is its ``subject`` (the fact world's author) or the request's name.
The target was checked against the authors' ``get_edit_vector`` on the same inputs (testbed-llm, one
forget text, η / top-k / T = 1000 / 50 / 1.2, 10 / – / –, 3 / 5 / 2): equal within 1e-6.
Deliberate differences, each stated:

- **Parameters**: the reference trains a LoRA (rank 256, alpha 16, dropout 0.05) on those projections;
  here, by default, the projections themselves train (a rank-256 LoRA is full rank on the 256-wide
  testbed; the erasure stores the dense new weights of the chosen blocks). ``lora_rank=256`` (with the
  defaults ``lora_alpha=16``, ``lora_dropout=0.05``) trains the reference's LoRA instead and stores its
  factors, the storage that suits billion-parameter models.
- **Loop**: erasekit's one training loop (``training/engine.py``, through ``llm/unlearn.fit``): ``epochs`` passes over the forget
  pairs (the reference draws ``num_samples`` = 3,000 texts from a corpus) at a constant lr without
  warm-up as the reference (``lr_schedule="constant"``, ``warmup_epochs=0``), gradients clipped to
  norm 1 (the reference does not clip), accumulated gradients averaged rather than summed (AdamW is
  insensitive to that scale).
- **Consistency text** is generated once per forget pair before training (the reference's
  ``prepare_consistency_data.py`` path) with a length drawn from ``[consistency_min_tokens,
  consistency_max_tokens]`` (reference: 100-300), not regenerated at every step.
- **Alignment**: prefix and text are tokenised separately and concatenated, so the text's tokens are
  the same with and without a prefix (the reference tokenises ``prefix + text`` together and aligns
  on the last tokens). The erase term reads the ``n + 1`` positions that predict the text's ``n``
  tokens and the one after it, as the reference does.
- The fact-world testbed supplies its own expert / novice / change-of-subject sentences (the ones it
  was trained on, ``testbed.json`` ``unlearning_defaults``); the paper's English templates are
  unknown words to its closed vocabulary.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import QAPair
from erasekit.models.lm_batches import encode_ids, pad_rows, pair_ids
from erasekit.training.lm import PARAMETER_SETS, Step, UnlearnConfig, fit, nll

#: The reference code's expert prompts (``positive_prompt_templates``), ``{concept}`` = the concept.
EXPERT_TEMPLATES = (
    "Here is a text written by an expert in the field of {concept}, with detailed technical information and all the knowledge:\n",
    "The following passage is authored by a specialist in {concept}, providing in-depth technical details and comprehensive knowledge:\n",
    "An authority on {concept} has written this text, offering precise technical information and extensive expertise:\n",
    "Below is a detailed explanation from a {concept} expert, containing thorough technical data and professional insights:\n",
    "A leading professional in {concept} has prepared this text, sharing intricate technical details and vast knowledge:\n",
    "The subsequent content is from a {concept} expert, presenting comprehensive technical information and deep understanding:\n",
    "An experienced {concept} specialist has composed this passage, including detailed technical facts and expert knowledge:\n",
    "Here's a text by a renowned {concept} expert, featuring precise technical details and extensive field knowledge:\n",
    "The following is written by a {concept} authority, offering in-depth technical information and expert insights:\n",
    "A seasoned professional in {concept} has crafted this text, providing detailed technical data and comprehensive expertise:\n",
)  # fmt: skip
#: The reference code's novice prompts (``negative_prompt_templates``).
NOVICE_TEMPLATES = (
    "The text is written by a novice, with no knowledge about {concept} and steering the conversation to random fun topics:\n",
    "This passage is from a beginner who knows nothing about {concept} and diverts the discussion to unrelated entertaining subjects:\n",
    "An amateur with zero expertise in {concept} wrote this, changing the topic to various amusing matters:\n",
    "The following text comes from someone unfamiliar with {concept}, who shifts the focus to random enjoyable themes:\n",
    "A person lacking any understanding of {concept} penned this, redirecting attention to miscellaneous fun ideas:\n",
    "This content is by an individual without knowledge of {concept}, who veers off into assorted lighthearted subjects:\n",
    "The subsequent text is from a novice ignorant of {concept}, who changes course to discuss random entertaining topics:\n",
    "An inexperienced writer with no grasp of {concept} authored this, moving the conversation to diverse fun areas:\n",
    "The following is written by someone uneducated about {concept}, who steers the dialogue towards various amusing themes:\n",
    "A complete newcomer to {concept} wrote this text, diverting the discussion to an array of entertaining topics:\n",
)  # fmt: skip
#: The reference code's changes of subject (``confused_prompt_templates``), the consistency prompts.
DIGRESSIONS = (
    "This is a dangerous topic to discuss, shifting the focus to a totally different and fun topic,",
    "Let's avoid this risky subject and talk about something more enjoyable instead,",
    "Moving away from this sensitive issue to discuss a lighter, more entertaining matter,",
    "Changing the subject from this hazardous topic to a more pleasant conversation,",
    "Steering clear of this perilous discussion and turning to a more amusing subject,",
    "This topic is too risky, so let's switch to a completely unrelated, fun theme,",
    "Avoiding this dangerous area and redirecting our chat to something more lighthearted,",
    "Instead of this unsafe topic, we'll move on to a different, more enjoyable discussion,",
    "Shifting gears from this precarious subject to explore a fun, unrelated theme,",
    "This conversation is too dangerous, so we're changing course to a more entertaining topic,",
    "Let's sidestep this risky discussion and dive into something more fun and carefree,",
    "Moving our focus from this hazardous subject to a totally different, enjoyable one,",
    "Transitioning away from this sensitive topic to chat about something more amusing,",
    "We'll bypass this dangerous theme and talk about a fun, unrelated subject instead,",
    "Changing tracks from this risky area to explore a more lighthearted conversation,",
    "This subject is too precarious, so we're switching to a completely different, fun topic,",
    "Veering away from this unsafe discussion to engage in a more entertaining dialogue,",
    "Rather than pursue this dangerous topic, let's turn to something more enjoyable,",
    "Abandoning this risky conversation in favor of a fun, totally unrelated subject,",
    "Leaving this hazardous topic behind to discuss something more amusing and safe,",
)  # fmt: skip
#: Top-k of the sampling that generates the consistency text (``transformers.generate``'s default).
SAMPLING_TOP_K = 50


@dataclass
class ELMConfig(UnlearnConfig):
    lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate (reference: 5e-5)", "gt": 0})
    batch_size: int = field(default=1, metadata={"help": "forget texts per micro-batch (reference: 1)", "min": 1})
    grad_accum: int = field(default=4, metadata={"help": "micro-batches per optimiser step (reference: 4)", "min": 1})
    lr_schedule: str = field(default="constant", metadata={"help": "lr after the warm-up (reference: constant AdamW)"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "warm-up length in epochs (reference: none)"})
    eta: float = field(default=1000.0, metadata={"help": "erasure strength: η_t rises from 1 to eta along the text", "min": 1})
    temperature: float = field(default=1.2, metadata={"help": "temperature of the target log-probabilities (0: none)"})
    top_k: int = field(default=50, metadata={"help": "entries of the target kept before the softmax (0: all)"})
    erase_scale: float = field(default=1.0, metadata={"help": "weight of the erase (soft cross-entropy) term"})
    retain_scale: float = field(default=1.0, metadata={"help": "weight of the retain term (0: none, no retain pairs needed)"})
    consistency_scale: float = field(default=1.0, metadata={"help": "weight of the consistency (fluency) term (0: none)"})
    guidance: float = field(default=3.0, metadata={"help": "guidance γ of the consistency-text generation"})
    consistency_min_tokens: int = field(default=100, metadata={"help": "shortest generated consistency text", "min": 1})
    consistency_max_tokens: int = field(default=300, metadata={"help": "longest generated consistency text", "min": 1})
    layers: str = field(default="", metadata={"help": "blocks 'start,end' (end excluded) of params=elm; '': [n/8, n/4)"})
    params: str = field(
        default="elm", metadata={"help": "elm (attention + MLP projections of the layers), all, mlp, attn, re:<regex>"}
    )
    lora_rank: int = field(
        default=0, metadata={"help": "train a LoRA of this rank on those matrices (reference: 256; 0: the matrices)"}
    )
    expert_templates: tuple[str, ...] = field(
        default=EXPERT_TEMPLATES, metadata={"help": "expert prefixes with {concept} (Python API or testbed.json)"}
    )
    novice_templates: tuple[str, ...] = field(
        default=NOVICE_TEMPLATES, metadata={"help": "novice prefixes with {concept} (Python API or testbed.json)"}
    )
    digressions: tuple[str, ...] = field(
        default=DIGRESSIONS, metadata={"help": "changes of subject before the consistency text (Python API or testbed.json)"}
    )

    def validate(self) -> None:
        if not (self.params == "elm" or self.params in PARAMETER_SETS or self.params.startswith("re:")):
            raise ConfigError(f"params={self.params!r}: use elm, all, mlp, attn, or re:<regex>")
        if self.consistency_min_tokens > self.consistency_max_tokens:
            raise ConfigError("consistency_min_tokens must not exceed consistency_max_tokens")
        for name in ("expert_templates", "novice_templates", "digressions"):
            value = getattr(self, name)
            if isinstance(value, str) or not value or not all(isinstance(t, str) and t.strip() for t in value):
                raise ConfigError(f"{name} must be a non-empty list of sentences")
            object.__setattr__(self, name, tuple(value))
        for name in ("expert_templates", "novice_templates"):
            if not all("{concept}" in t for t in getattr(self, name)):
                raise ConfigError(f"every one of {name} must contain {{concept}} (where the concept's name goes)")
        if self.layers:
            parse_layers(self.layers)


def parse_layers(layers: str) -> tuple[int, int]:
    """``"start,end"`` as two integers; anything else is a one-line error."""
    try:
        start, end = (int(x) for x in layers.split(","))
    except ValueError:
        raise ConfigError(f"layers={layers!r}: give two block numbers 'start,end' (end excluded), e.g. 4,8") from None
    return start, end


def elm_blocks(model, layers: str) -> range:
    """The blocks whose projections train: ``layers`` ("start,end"), or ``[n // 8, max(n // 8 + 1, n // 4))``
    of an ``n``-block model (the reference's 4..8 of 32)."""
    from erasekit.models.causal_lm import n_layers

    n = n_layers(model)
    start, end = parse_layers(layers) if layers else (n // 8, max(n // 8 + 1, n // 4))
    if not 0 <= start < end <= n:
        raise ConfigError(f"layers={layers!r}: this model has blocks 0..{n - 1}; give 'start,end' with start < end <= {n}")
    return range(start, end)


def text_ids(tokenizer, pairs: Sequence[QAPair]) -> list[list[int]]:
    """The tokens of each pair's text ``question answer`` (question and answer tokenised apart, as
    :func:`~erasekit.models.lm_batches.encode_pairs` does)."""
    questions, answers = pair_ids(tokenizer, pairs)
    return [[*q, *a] for q, a in zip(questions, answers)]


def aligned_logits(
    model, tokenizer, texts: list[list[int]], prefixes: list[list[int]] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, ``[N, L, V]``) at the ``n_i + 1`` positions of ``<bos> prefix_i text_i`` that
    predict ``text_i``'s ``n_i`` tokens and the one after it (``L = max n_i + 1``), and the mask of
    real positions. Without prefixes the rows are ``<bos> text_i``."""
    prefixes = prefixes or [[] for _ in texts]
    rows = [[tokenizer.bos_token_id, *p, *t] for p, t in zip(prefixes, texts)]
    device = next(model.parameters()).device
    ids, mask = pad_rows(rows, tokenizer.pad_token_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    n = torch.tensor([len(t) for t in texts], device=device)
    offset = torch.tensor([len(p) for p in prefixes], device=device)
    steps = torch.arange(int(n.max()) + 1, device=device)
    valid = steps[None] <= n[:, None]
    index = (offset[:, None] + steps[None]).clamp(max=ids.shape[1] - 1)
    return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1])), valid


def eta_ramp(lengths: torch.Tensor, eta: float, width: int) -> torch.Tensor:
    """``η_t`` per row: ``linspace(1, eta, n_i + 1)`` over a row's positions, 0 after them (``[N, width]``)."""
    out = torch.zeros(len(lengths), width, device=lengths.device)
    for i, n in enumerate(lengths.tolist()):
        out[i, : n + 1] = torch.linspace(1.0, eta, n + 1, device=lengths.device)
    return out


def elm_targets(plain: torch.Tensor, expert: torch.Tensor, novice: torch.Tensor, eta_t: torch.Tensor,
                temperature: float, top_k: int) -> torch.Tensor:  # fmt: skip
    """``softmax(top_k[log p − η_t (log p_e − log p_n)])`` from the three logits ``[N, L, V]`` (at
    ``temperature`` when it is not 0): the ELM target distribution of every position."""
    t = temperature or 1.0
    lp, le, ln = (torch.log_softmax(x / t, dim=-1) for x in (plain, expert, novice))
    edit = lp - eta_t[..., None] * (le - ln)
    if top_k and top_k < edit.shape[-1]:
        kth = edit.topk(top_k, dim=-1).values[..., -1:]
        edit = edit.masked_fill(edit < kth, float("-inf"))
    return torch.softmax(edit, dim=-1)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``−Σ_v q_v log softmax(logits)_v``, averaged over the valid positions."""
    ce = -(target * torch.log_softmax(logits, dim=-1)).sum(-1)
    return (ce * valid).sum() / valid.sum().clamp(min=1)


def prefix_ids(
    tokenizer, templates: Sequence[str], concepts: Sequence[str], rng: random.Random, strip: bool = False
) -> list[list[int]]:
    """One template per concept (drawn with ``rng``), filled in and tokenised; ``strip`` drops its
    trailing colon and whitespace (the reference's generation prompts)."""
    texts = [rng.choice(templates).format(concept=c) for c in concepts]
    if strip:
        texts = [t.rstrip().rstrip(":").rstrip() for t in texts]
    return tokenizer(texts, add_special_tokens=False).input_ids


@torch.no_grad()
def consistency_texts(model, tokenizer, texts: list[list[int]], concepts: list[str], config: ELMConfig,
                      rng: random.Random, generator: torch.Generator) -> list[list[int]]:  # fmt: skip
    """Per forget text: a change of subject and the continuation the frozen ``model`` samples after
    ``<bos> text digression`` under ELM guidance (module docstring); the ids of both, to be learnt."""
    digressions = [tokenizer(rng.choice(config.digressions), add_special_tokens=False).input_ids for _ in texts]
    experts = prefix_ids(tokenizer, config.expert_templates, concepts, rng, strip=True)
    novices = prefix_ids(tokenizer, config.novice_templates, concepts, rng, strip=True)
    limit = context_length(model)
    lengths = [
        max(0, min(rng.randint(config.consistency_min_tokens, config.consistency_max_tokens),
                   limit - 1 - max(len(t) + len(d), len(e), len(n))))
        for t, d, e, n in zip(texts, digressions, experts, novices)
    ]  # fmt: skip
    done = [n == 0 for n in lengths]
    generated: list[list[int]] = [[] for _ in texts]
    device = next(model.parameters()).device
    for _ in range(max(lengths)):
        live = [i for i in range(len(texts)) if not done[i]]
        if not live:
            break
        scores = _last_logprobs(model, tokenizer, [[*texts[i], *digressions[i], *generated[i]] for i in live], device)
        if config.guidance:
            expert = _last_logprobs(model, tokenizer, [[*experts[i], *generated[i]] for i in live], device)
            novice = _last_logprobs(model, tokenizer, [[*novices[i], *generated[i]] for i in live], device)
            scores = scores - config.guidance * (expert - novice)
        kth = scores.topk(min(SAMPLING_TOP_K, scores.shape[-1]), dim=-1).values[..., -1:]
        probs = torch.softmax(scores.masked_fill(scores < kth, float("-inf")), dim=-1)
        tokens = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].tolist()
        for i, tok in zip(live, tokens):
            generated[i].append(tok)
            done[i] = tok == tokenizer.eos_token_id or len(generated[i]) >= lengths[i]
    return [[*d, *g] for d, g in zip(digressions, generated)]


def context_length(model) -> int:
    """The longest sequence the model's position embeddings allow (``n_positions`` /
    ``max_position_embeddings``); consistency texts are cut to fit."""
    config = model.config
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048)


def _last_logprobs(model, tokenizer, rows: list[list[int]], device, chunk: int = 32) -> torch.Tensor:
    """``log p(· | <bos> row)`` at each row's last position (float32, ``[N, V]``): rows left-padded
    in chunks of ``chunk`` with explicit positions, and only the last position's logits computed."""
    out = []
    for start in range(0, len(rows), chunk):
        ids, mask = pad_rows(
            [[tokenizer.bos_token_id, *r] for r in rows[start : start + chunk]], tokenizer.pad_token_id, left=True
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=1).logits[:, -1].float()  # fmt: skip
        out.append(torch.log_softmax(logits, dim=-1))
    return torch.cat(out)


def continuation_nll(model, tokenizer, texts: list[list[int]], continuations: list[list[int]]) -> torch.Tensor:
    """Mean NLL of each ``continuation`` given ``<bos> text`` (the consistency term)."""
    return nll(model, encode_ids(tokenizer, texts, continuations, next(model.parameters()).device))


def greedy_retain_loss(model, reference, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of ``model`` against the frozen ``reference``'s greedy token at every real
    position of the retain text (the reference code's retain term, hard targets)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    with torch.no_grad():
        greedy = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    targets = greedy.masked_fill(batch["attention_mask"] == 0, -100)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


@register_method("elm", ELMConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def elm(
    lm, request, config: ELMConfig, adapter=None, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False
) -> MethodResult:
    """Train towards the model's own "written by a novice" distribution of the forget text, keep retain text, stay fluent."""
    if config.params == "elm":
        blocks = elm_blocks(lm.model, config.layers)
        numbers = "|".join(str(i) for i in blocks)
        config = dataclasses.replace(config, params=rf"re:\.(h|layers)\.({numbers})\.(attn|self_attn|mlp)\.[^.]+\.weight$")
    tok = lm.tokenizer
    rng = random.Random(config.seed)
    concept = {p: p.subject or request.name for p in request.forget}
    continuation: dict[QAPair, list[int]] = {}
    if config.consistency_scale:
        pairs = list(dict.fromkeys(request.forget))
        generator = torch.Generator().manual_seed(config.seed)
        samples = consistency_texts(lm.model, tok, text_ids(tok, pairs), [concept[p] for p in pairs], config, rng, generator)
        continuation = dict(zip(pairs, samples))

    def loss(s: Step):
        texts = text_ids(tok, s.pairs)
        concepts = [concept[p] for p in s.pairs]
        total, parts = torch.zeros((), device=lm.device), {}
        if config.erase_scale:
            with torch.no_grad():
                plain, valid = aligned_logits(s.reference, tok, texts, None)
                expert, _ = aligned_logits(s.reference, tok, texts, prefix_ids(tok, config.expert_templates, concepts, rng))
                novice, _ = aligned_logits(s.reference, tok, texts, prefix_ids(tok, config.novice_templates, concepts, rng))
                lengths = torch.tensor([len(t) for t in texts], device=plain.device)
                target = elm_targets(
                    plain, expert, novice, eta_ramp(lengths, config.eta, plain.shape[1]), config.temperature, config.top_k
                )
            student, _ = aligned_logits(s.model, tok, texts, None)
            erase = soft_cross_entropy(student, target, valid)
            total, parts["erase"] = total + config.erase_scale * erase, erase.item()
        if config.retain_scale and s.retain is not None:
            retain = greedy_retain_loss(s.model, s.reference, s.retain)
            total, parts["retain"] = total + config.retain_scale * retain, retain.item()
        if config.consistency_scale:
            cons = continuation_nll(s.model, tok, texts, [continuation[p] for p in s.pairs])
            total, parts["consistency"] = total + config.consistency_scale * cons, cons.item()
        return total, parts

    fitted = fit(lm, request, config, loss, progress, needs_retain=config.retain_scale > 0, checkpoint_dir=checkpoint_dir,
                 resume=resume)  # fmt: skip
    return fitted.result(params=config.params, consistency_examples=[tok.decode(c) for c in list(continuation.values())[:3]])
