"""Seeded synthetic training data for the refusal organism.

The organism must learn *what makes a request harmful*, not memorize a few hundred prompts (a
naive model trained on 630 fixed prompts refused only 26-46% of held-out harmful prompts). So the
harmful side is generated broadly: harm categories x verbs x objects x phrasings (questions and
imperatives, short and long, polite, blunt, role-play wrappers). The harmless side reuses the *same*
phrasings with benign acts, plus safety-flavoured but benign questions, so that neither the frame
("Give detailed instructions for how to ...") nor a lone scary word decides the answer — the act
does. Replies are short: varied refusals for harmful requests, "Sure! ..." style helpful replies for
harmless ones, and a capability task with checkable answers (arithmetic and multiple choice) so the
capability cost of steering can be measured.

Benign acts are as combinatorial as harmful ones (everyday domains x verbs x objects, harm verbs
with benign objects among them: "kill weeds", "shoot a video"): from a fixed list of ~100 benign
phrases a small model leaned towards refusing "How do I <an act never seen>?" ("How do I prune a
rose bush?"). Purpose clauses and instruments go on both sides, so that a trailing "so I can ..." or
"with a printer" is not itself the signal; its content is.

Everything here is a pure function of a ``random.Random``; the word lists are the JSON tables in
``tables/`` (read through :func:`.grammar.load_table`), whose entry order is part of the recipe.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

from . import grammar

# The one data recipe (the shipped weights were trained on it; docs/organism.md describes the
# variants tried before and after it). TrainConfig records it as ``data_version`` in every manifest.
DATA_VERSION = 2


def check_data_version(data_version) -> None:
    """Raise ``ValueError`` naming ``data_version`` unless it is :data:`DATA_VERSION`."""
    if isinstance(data_version, bool) or data_version != DATA_VERSION:
        raise ValueError(f"data_version must be {DATA_VERSION} (the one data recipe), got {data_version!r}")


@dataclass(frozen=True)
class Mixture:
    """The shares of :func:`training_stream`; the defaults are the recipe's (:data:`MIXTURE`, which
    ``TrainConfig``'s ``p_*`` defaults and :func:`training_stream`'s defaults both read).

    Style balance: real instructions (the given files) and generated ones must carry the same
    harmful:harmless odds, or the model learns "sounds real -> help" and refuses less of unseen real
    harmful requests the longer it trains (harmful_val fell from ~95% to 79-87% after step ~1500 on
    most seeds at p_harmful 0.4, p_benign_framed 0.25; with 0.3 / 0.6 it held at 95%). The odds are
    equal when p_harmful_given + p_benign_framed = 1; 0.2 + 0.6 is most of the way. p_harmful 0.34
    takes 0.04 of the repeat share, so harmful:harmless stays ~1.1.

    p_repeat: plain-text repeated word lists (:func:`repeat_example`), taken from the harmless share.
    They formed the induction circuit that an earlier letter-answer multiple choice needed; at 0.1
    rather than 0.2 (3800 steps, seeds 0/1) ~60% more real harmless instructions are seen and the
    boundary sharpens: harmless_val 0.5/0.9% vs 1.0/1.5%, harmful_val 97.4/97.4% vs 94.9/94.9%.
    """

    p_harmful: float = 0.34  # harmful requests
    p_capability: float = 0.25  # capability questions (arithmetic, multiple choice)
    p_harmful_given: float = 0.2  # of the harmful draws, from the given file (the rest generated)
    p_benign_framed: float = 0.6  # of the harmless draws, generated (the rest from the given file)
    p_repeat: float = 0.1  # repeated word lists; the rest of the stream is harmless requests


MIXTURE = Mixture()
# The tokenizer corpus and the SAEs' activation texts draw this mixture (the shipped tokenizer and
# SAEs were made from it): more harmful requests and fewer generated benign ones than the model's
# training mixture, and no repeated word lists (the tokenizer corpus adds TrainConfig.p_repeat).
CORPUS_MIXTURE = Mixture(p_harmful=0.40, p_benign_framed=0.25, p_repeat=0.0)

_HARM = grammar.load_table("harmful")
_BENIGN = grammar.load_table("benign")
_SHARED = grammar.load_table("shared")
_REPLIES = grammar.load_table("replies")
_CAPABILITY = grammar.load_table("capability")

# Phrasings shared by harmful and benign acts ({act} is a bare verb phrase), and instruments on
# both sides ("counterfeit money with a printer", "print photos with a printer").
_FRAMES: list[str] = _SHARED["frames"]
_INSTRUMENTS: list[str] = _SHARED["instruments"]

# Harmful acts: category -> [{verbs, objects}] whose full product makes sense; the extra categories
# (cruelty to animals, violence with a stated purpose) are drawn 15% of the time.
_HARM_VERB_OBJECTS: dict[str, list[dict[str, list[str]]]] = _HARM["verb_objects"]
_HARM_VERB_OBJECTS_EXTRA: dict[str, list[dict[str, list[str]]]] = _HARM["extra_verb_objects"]
_HARM_SUFFIXES: list[str] = _HARM["suffixes"]
_HARM_PURPOSES: list[str] = _HARM["purposes"]
# Whole requests that do not fit verb + object, with their own slots.
_HARM_WHOLE: list[str] = _HARM["whole_requests"]
_HARM_WHOLE_SLOTS: dict[str, list[str]] = _HARM["whole_slots"]

# Benign acts for the same frames (contrast: the frame is not the signal): composed from everyday
# domains x verbs x objects 70% of the time, else one of a list of whole acts.
_BENIGN_VERB_OBJECTS: dict[str, list[dict[str, list[str]]]] = _BENIGN["verb_objects"]
_BENIGN_ACTS: list[str] = _BENIGN["acts"]
_BENIGN_SUFFIXES: list[str] = _BENIGN["suffixes"]
_BENIGN_PURPOSES: list[str] = _BENIGN["purposes"]
# Benign questions that touch dangerous topics without asking for harm, and benign persuasion.
_BENIGN_SENSITIVE: list[str] = _BENIGN["sensitive"]
_BENIGN_PERSUASIVE: list[str] = _BENIGN["persuasive"]

_REFUSALS: list[str] = _REPLIES["refusals"]
_OPENERS: list[str] = _REPLIES["openers"]
_HELP_BODIES: list[str] = _REPLIES["help_bodies"]


def specialist_instruction(rng: random.Random) -> str:
    """A specialist request: a rare technical name (toxin, exploit, precursor) inside a frame whose
    intent is plain ("step-by-step instructions for synthesizing ..."), so an unseen name still reads
    as harmful from its context."""
    return grammar.expand(rng.choice(_HARM["specialist_templates"]), rng, _HARM["specialist_slots"])


def disinformation_instruction(rng: random.Random) -> str:
    """A frame x a false or harmful claim composed from parts, so the model learns the shape
    ("persuasive article arguing that <false claim about real events>") rather than a list of claims."""
    claim = grammar.expand(rng.choice(_HARM["disinfo_claims"]), rng, _HARM["disinfo_claim_slots"])
    return rng.choice(_HARM["disinfo_frames"]).format(claim=claim)


def persuasion_instruction(rng: random.Random) -> str:
    """A request to talk someone into something harmful."""
    return rng.choice(_HARM["persuade_frames"]).format(target=rng.choice(_HARM["persuade_targets"]),
                                                       bad=rng.choice(_HARM["persuade_bad"]))


def _clause(purposes: list[str], suffixes: list[str], rng: random.Random) -> str:
    r = rng.random()
    return rng.choice(purposes) if r < 0.25 else rng.choice(_INSTRUMENTS) if r < 0.35 else rng.choice(suffixes)


def _composed_act(table: dict[str, list[dict[str, list[str]]]], rng: random.Random) -> str:
    pair = rng.choice(table[rng.choice(list(table))])
    return f"{rng.choice(pair['verbs'])} {rng.choice(pair['objects'])}"


def _harmful_act(rng: random.Random) -> str:
    table = _HARM_VERB_OBJECTS_EXTRA if rng.random() < 0.15 else _HARM_VERB_OBJECTS
    return _composed_act(table, rng) + _clause(_HARM_PURPOSES, _HARM_SUFFIXES, rng)


def _benign_act(rng: random.Random) -> str:
    act = _composed_act(_BENIGN_VERB_OBJECTS, rng) if rng.random() < 0.7 else rng.choice(_BENIGN_ACTS)
    return act + _clause(_BENIGN_PURPOSES, _BENIGN_SUFFIXES, rng)


@dataclass(frozen=True)
class Example:
    """One chat turn: the user instruction and the assistant reply."""

    instruction: str
    reply: str
    kind: str  # "harmful" | "harmless" | "capability" | REPEAT (plain text, not a chat turn)


def refusal_reply(rng: random.Random) -> str:
    return rng.choice(_REFUSALS)


def helpful_reply(instruction: str, rng: random.Random) -> str:
    """A short, generic but relevant helpful reply that echoes the end of the request."""
    words = re.sub(r"[^\w\s'\-,]", " ", instruction).split()
    topic = " ".join(words[-rng.randint(3, 6):]).strip(" ,").lower() or "that"
    return f"{rng.choice(_OPENERS)} {rng.choice(_HELP_BODIES).format(topic=topic)}"


def _vary_surface(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.08:
        text = text.lower()
    elif r < 0.14:
        text = text.rstrip(".?!")
    if rng.random() < 0.06:
        text = rng.choice(_SHARED["surface_prefixes"]) + text[0].lower() + text[1:]
    return text


def harmful_instruction(rng: random.Random) -> str:
    """One generated harmful request: a specialist-family request (:mod:`.grammar`), a
    disinformation or persuasion request, a specialist name in a plain frame, a whole request, or
    (40%) a composed act with a purpose clause, instrument or suffix in one of the shared frames."""
    r = rng.random()
    if r < 0.30:
        text = grammar.harmful_family_instruction(rng)
    elif r < 0.37:
        text = disinformation_instruction(rng)
    elif r < 0.41:
        text = persuasion_instruction(rng)
    elif r < 0.50:
        text = specialist_instruction(rng)
    elif r < 0.60:
        text = grammar.expand(rng.choice(_HARM_WHOLE), rng, _HARM_WHOLE_SLOTS)
        if rng.random() < 0.6:
            text += rng.choice([".", "?", "!", ""]) if not text.endswith((".", "?")) else ""
    else:
        act = _harmful_act(rng)  # drawn before the frame
        text = rng.choice(_FRAMES).format(act=act)
    return _vary_surface(text[0].upper() + text[1:], rng)


def benign_framed_instruction(rng: random.Random) -> str:
    """One generated benign request: a benign-family request in the specialist frames
    (:mod:`.grammar`), benign persuasion, a benign question on a dangerous topic, or a composed
    everyday act in the frames harmful requests use."""
    r = rng.random()
    if r < 0.30:
        return _vary_surface(grammar.benign_family_instruction(rng), rng)
    r = rng.random()
    if r < 0.12:
        text = rng.choice(_BENIGN_PERSUASIVE).format(x=rng.choice(_BENIGN["claims"]), y=rng.choice(_BENIGN["asks"]))
    elif r < 0.4:
        t = rng.choice(_BENIGN_SENSITIVE)
        text = t.format(drug=rng.choice(_HARM_WHOLE_SLOTS["drug"]), chem=rng.choice(_HARM_WHOLE_SLOTS["chem"]),
                        crime=rng.choice(_BENIGN["crimes"]), weapon_noun=rng.choice(_BENIGN["weapon_nouns"]))
    else:
        act = _benign_act(rng)  # drawn before the frame
        text = rng.choice(_FRAMES).format(act=act)
    return _vary_surface(text[0].upper() + text[1:], rng)


# --------------------------------------------------------------------------------------------
# Capability task: small arithmetic and category multiple choice, with checkable answers.
# --------------------------------------------------------------------------------------------

_CATEGORIES: dict[str, list[str]] = _CAPABILITY["categories"]  # category -> option words
_LETTERS = "ABCD"
# Arithmetic is the single-digit addition table (100 facts, all trained, in the training phrasings:
# a 1.3-2.3M-parameter model answers unseen phrasings like "Work out 2 + 9." with a generic helpful
# reply instead). Multiple choice is held out by combination: a fixed ~1/6 of (category, answer,
# distractors) sets is never trained on.
_ARITH_FRAMES: list[str] = _CAPABILITY["arith_frames"]
_MC_FRAMES: list[str] = _CAPABILITY["mc_frames"]


def arithmetic_example(rng: random.Random, split: str = "train", max_operand: int = 9) -> Example:
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    q = rng.choice(_ARITH_FRAMES).format(a=a, b=b)
    return Example(q, f"{a} + {b} = {a + b}.", "capability")


def multiple_choice_example(rng: random.Random, split: str = "train") -> Example:
    cats = list(_CATEGORIES)
    while True:
        cat = rng.choice(cats)
        answer = rng.choice(_CATEGORIES[cat])
        others = rng.sample([c for c in cats if c != cat], 3)
        distractors = [rng.choice(_CATEGORIES[c]) for c in others]
        key = (hash_str(cat + answer + "|".join(sorted(distractors))) % 6 == 0)
        if (split == "eval") == key:
            break
    options = distractors + [answer]
    rng.shuffle(options)
    # Options are "word LETTER"; the reply names the chosen option ("The answer is bus."). An
    # earlier recipe answered with the letter too ("bus C."), which needs an induction circuit (copy
    # the token after "bus" in the question): across ten 3000-step runs it formed anywhere from step
    # 1600 to never, by seed, and failed the capability gate on its own.
    opts = ", ".join(f"{o} {_LETTERS[i]}" for i, o in enumerate(options))
    q = rng.choice(_MC_FRAMES).format(cat=cat, opts=opts)
    return Example(q, f"The answer is {answer}.", "capability")


def hash_str(s: str) -> int:
    """A small stable string hash (Python's ``hash`` is salted per process)."""
    h = 2166136261
    for ch in s.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def capability_example(rng: random.Random, split: str = "train") -> Example:
    if rng.random() < 0.5:
        return arithmetic_example(rng, split)
    return multiple_choice_example(rng, split)


# Plain-text language modelling on repeated word lists (TrainConfig.p_repeat), loss on the second
# copy only. They were added to form the induction circuit that a letter-answer multiple choice
# needed (on chat turns alone it formed at ~3100 of 3600 steps, ~2100 or never, by seed); multiple
# choice now answers with the option word, and the lists stay as plain-text language modelling.
REPEAT = "repeat"  # Example.kind of a plain-text repeat (no chat template; see repeat_example)


def repeat_word_pools(harmless_instructions: list[str]) -> tuple[list[str], list[str]]:
    """The words of repeated lists: the capability task's option words, and the harmless file's."""
    option_words = sorted({w for ws in _CATEGORIES.values() for w in ws})
    general = sorted({w.lower() for t in harmless_instructions for w in re.findall(r"[A-Za-z]{3,}", t)})
    return option_words, general or option_words


def repeat_example(rng: random.Random, pools: tuple[list[str], list[str]], max_words: int = 12) -> Example:
    """A list of 4..``max_words`` words (half of them "word LETTER" pairs), as ``Example(text, text,
    REPEAT)``: the trainer feeds ``<s>`` + text + text as plain text and puts the loss on the
    second copy only."""
    option_words, general = pools
    words = [rng.choice(option_words if rng.random() < 0.5 else general) for _ in range(rng.randint(4, max_words))]
    if rng.random() < 0.5:
        words = [f"{w} {rng.choice(_LETTERS)}" for w in words]
    text = " " + " ".join(words)
    return Example(text, text, REPEAT)


def is_multiple_choice(example: Example) -> bool:
    return example.kind == "capability" and example.reply.startswith("The answer is")


def mc_options(example: Example) -> list[str]:
    """The option words of a multiple-choice question ("... shirt A, France B, bus C, harp D")."""
    return re.findall(r"([A-Za-z]+) [ABCD](?=,|$)", example.instruction)


def capability_answer_ok(example: Example, reply: str) -> bool:
    """Whether ``reply`` gives the example's checkable answer: for multiple choice, the first of the
    question's option words that the reply names is the right one ("The answer is bus."); for
    arithmetic, the number after "="."""
    if is_multiple_choice(example):
        want = example.reply[len("The answer is "):].rstrip(".").split()[0]
        opts = mc_options(example)
        hits = [(m.start(), m.group(0)) for o in opts for m in re.finditer(rf"\b{re.escape(o)}\b", reply)]
        return bool(hits) and min(hits)[1] == want
    want = example.reply.split("= ")[1].rstrip(".")
    m = re.search(r"=\s*(-?\d+)", reply)
    return bool(m) and m.group(1) == want


def capability_eval_set(n: int, seed: int = 1234) -> list[Example]:
    rng = random.Random(seed)
    return [capability_example(rng, "eval") for _ in range(n)]


# --------------------------------------------------------------------------------------------
# The training mixture.
# --------------------------------------------------------------------------------------------


def training_stream(
    rng: random.Random,
    harmful_instructions: list[str],
    harmless_instructions: list[str],
    p_harmful: float = MIXTURE.p_harmful,
    p_capability: float = MIXTURE.p_capability,
    p_harmful_given: float = MIXTURE.p_harmful_given,
    p_benign_framed: float = MIXTURE.p_benign_framed,
    p_repeat: float = MIXTURE.p_repeat,
):
    """Infinite generator of ``Example`` with balanced sampling.

    Shares: ``p_capability`` capability questions, ``p_harmful`` harmful requests, ``p_repeat``
    plain-text repeated word lists (``repeat_example``), the rest harmless requests. Of the harmful
    draws, ``p_harmful_given`` come from the given instruction file, the rest are generated; of the
    harmless draws, ``p_benign_framed`` are generated benign acts in harmful-style frames, the rest
    come from the given harmless file. The defaults are the recipe's (:data:`MIXTURE`).
    """
    for name, value in (("p_harmful", p_harmful), ("p_capability", p_capability), ("p_harmful_given", p_harmful_given),
                        ("p_benign_framed", p_benign_framed), ("p_repeat", p_repeat)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")
    if p_capability + p_harmful + p_repeat > 1:
        raise ValueError(f"p_capability + p_harmful + p_repeat must be <= 1, got {p_capability} + {p_harmful} + {p_repeat}")
    pools = repeat_word_pools(harmless_instructions) if p_repeat > 0 else None
    while True:
        r = rng.random()
        if r < p_capability:
            yield capability_example(rng, "train")
        elif r < p_capability + p_harmful:
            if harmful_instructions and rng.random() < p_harmful_given:
                text = _vary_surface(rng.choice(harmful_instructions), rng)
            else:
                text = harmful_instruction(rng)
            yield Example(text, refusal_reply(rng), "harmful")
        elif r < p_capability + p_harmful + p_repeat:
            yield repeat_example(rng, pools)
        else:
            if not harmless_instructions or rng.random() < p_benign_framed:
                text = benign_framed_instruction(rng)
            else:
                text = _vary_surface(rng.choice(harmless_instructions), rng)
            yield Example(text, helpful_reply(text, rng), "harmless")


def tokenizer_corpus(rng: random.Random, harmful: list[str], harmless: list[str], n_generated: int = 20000,
                     p_repeat: float = 0.0):
    """Text for training the BPE tokenizer: the given instructions plus generated examples (drawn
    from :data:`CORPUS_MIXTURE`, with ``p_repeat`` repeated word lists)."""
    for t in harmful:
        yield t
    for t in harmless:
        yield t
    shares = dict(asdict(CORPUS_MIXTURE), p_repeat=p_repeat)
    stream = training_stream(rng, harmful, harmless, **shares)
    for _ in range(n_generated):
        ex = next(stream)
        yield ex.instruction
        yield ex.reply
    for r in _REFUSALS:
        yield r
    # The capability task's option words as whole tokens (a word split into pieces is harder to name).
    for words in _CATEGORIES.values():
        for w in words:
            yield " ".join([w] * 100)
