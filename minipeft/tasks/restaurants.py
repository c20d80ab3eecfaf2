"""The demo task: describe a restaurant in one sentence from a list of its attributes.

This is data-to-text generation in the style of the E2E NLG challenge (Novikova,
Dušek and Rieser, "The E2E Dataset: New Challenges for End-to-End Generation",
SIGDIAL 2017), the task on which the LoRA paper (Hu et al., 2021) fine-tunes GPT-2.
The input is a meaning representation, a few ``slot[value]`` pairs; the output is
a sentence that says all of them and nothing else:

    name[Little Fig] | food[Italian] | area[riverside]
    Sentence: Little Fig is an Italian place by the riverside.

Unlike E2E, whose 50k sentences were written by crowd workers, these examples come
from a small grammar in this file, with invented restaurant names. That keeps the
task offline and reproducible, and small enough to learn in minutes, but it is far
easier than E2E: one fixed wording per input, a vocabulary of a few dozen words.

The grammar has three wordings: adjectives in one sentence, a second "It ..."
sentence, or "there is ... called <name>". Which one is used depends on the name
(each restaurant has a "house style"), so the reference is a function of the
prompt, and a model can only reach full exact match by learning that rule too.

Metrics (``score``):
- ``exact_match``: the fraction of predictions equal to the reference (after
  stripping spaces). Strict: a correct paraphrase scores 0.
- ``slot_error``: the fraction of the prompt's slot values that a prediction
  misses. A value counts as said when one of its phrases is found (``cheap``,
  ``moderate``, ``by the riverside``/``riverside``, ``a high customer rating``,
  ``not family-friendly``, ...). This is keyword matching tuned to the grammar's
  own phrases, like the slot-matching scripts used on E2E: a paraphrase it does
  not know ("near the river") counts as a miss, and a wrong statement that reuses
  the keyword ("not cheap") counts as said.
- ``hallucinated``: how many values the predictions mention that their prompt
  does not hold (another name, another food, a rating never given, ...), by the
  same matching; E2E's slot error rate adds these to the misses.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import InputError

NAMES = (
    "Little Fig", "The Red Fox", "Blue Heron", "The Copper Kettle", "Saffron House",
    "The Lemon Tree", "Golden Lantern", "The Old Forge", "Willow Garden",
    "The Brass Anchor", "Moonstone", "Harbour Lights",
)
SLOT_VALUES = {
    "eat_type": ("restaurant", "pub", "coffee shop"),
    "food": ("Italian", "French", "Chinese", "Indian", "English", "Japanese"),
    "price": ("cheap", "moderate", "expensive"),
    "area": ("riverside", "city centre"),
    "rating": ("low", "average", "high"),
    "family_friendly": ("yes", "no"),
}
SLOTS = ("name", *SLOT_VALUES)          # the order slots appear in a prompt
PROMPT_END = "\nSentence:"

# --- the grammar ------------------------------------------------------------

PRICE_ADJ = {"cheap": "cheap", "moderate": "moderately priced", "expensive": "expensive"}
AREA = {"riverside": "by the riverside", "city centre": "in the city centre"}
FAMILY_ADJ = {"yes": "family-friendly", "no": "adults-only"}
FAMILY_IS = {"yes": "is family-friendly", "no": "is not family-friendly"}
FAMILY_WELCOMES = {"yes": "welcomes children", "no": "does not welcome children"}


def make_examples(n: int, seed: int) -> list[dict]:
    """``n`` examples {"prompt", "completion", "slots"}, the same for the same seed.

    Each has a name and 2 to 4 of the other six slots, with values drawn uniformly.
    The completion starts with a space (see ``minipeft.train.data``).
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"make_examples: n={n!r} must be a non-negative integer.")
    rng = np.random.default_rng(seed)
    others = list(SLOT_VALUES)
    examples = []
    for _ in range(n):
        slots = {"name": NAMES[rng.integers(len(NAMES))]}
        chosen = rng.choice(len(others), size=rng.integers(2, 5), replace=False)
        for k in sorted(chosen):
            values = SLOT_VALUES[others[k]]
            slots[others[k]] = values[rng.integers(len(values))]
        examples.append({"prompt": make_prompt(slots), "completion": " " + realize(slots),
                         "slots": slots})
    return examples


def make_prompt(slots: dict[str, str]) -> str:
    """``{"name": "Moonstone", "food": "French"}`` -> ``"name[Moonstone] | food[French]\\nSentence:"``."""
    return " | ".join(f"{s}[{slots[s]}]" for s in SLOTS if s in slots) + PROMPT_END


def parse_prompt(prompt: str) -> dict[str, str]:
    """The slots of a prompt written by ``make_prompt``."""
    head = prompt[:-len(PROMPT_END)] if prompt.endswith(PROMPT_END) else prompt
    slots = dict(re.findall(r"(\w+)\[([^\]]*)\]", head))
    unknown = [f"{s}[{v}]" for s, v in slots.items()
               if s != "name" and v not in SLOT_VALUES.get(s, ())]
    if "name" not in slots or unknown:
        raise InputError(f"Not a restaurants prompt: {prompt!r} (needs name[...]"
                         f"{'; unknown ' + ', '.join(unknown) if unknown else ''}). Slots are "
                         f"{', '.join(SLOTS)}, with values {SLOT_VALUES}.")
    return slots


def realize(slots: dict[str, str]) -> str:
    """The reference sentence for ``slots``, in the name's house style."""
    name = slots["name"]
    style = NAMES.index(name) % 3 if name in NAMES else 0
    price, area, rating, family = (slots.get(k) for k in ("price", "area", "rating", "family_friendly"))
    food, eat_type = slots.get("food"), slots.get("eat_type")
    noun = (f"{food} {eat_type}" if food and eat_type else eat_type or
            (f"{food} place" if food else "place to eat"))
    rated = rating and f"{_a(rating)} customer rating"

    if style == 0:   # Little Fig is a cheap adults-only Italian pub by the riverside with ...
        adjectives = [PRICE_ADJ.get(price), FAMILY_ADJ.get(family)]
        sentence = f"{name} is {_a(_words(*adjectives, noun))}"
        return _words(sentence, AREA.get(area), rated and f"with {rated}") + "."
    if style == 1:   # The Red Fox is an Italian pub by the riverside. It is cheap and ...
        first = _words(f"{name} is {_a(noun)}", AREA.get(area)) + "."
        details = [f"is {PRICE_ADJ[price]}" if price else None,
                   rated and f"has {rated}", FAMILY_IS.get(family)]
        details = [d for d in details if d]
        return first + (f" It {_and(details)}." if details else "")
    # style 2: By the riverside, there is a cheap Italian pub called Blue Heron, which ...
    opening = f"{AREA[area][0].upper()}{AREA[area][1:]}, there is" if area else "There is"
    sentence = f"{opening} {_a(_words(PRICE_ADJ.get(price), noun))} called {name}"
    rest = [d for d in (rated and f"has {rated}", FAMILY_WELCOMES.get(family)) if d]
    return sentence + (f", which {_and(rest)}" if rest else "") + "."


def _a(phrase: str) -> str:
    """Prefix the right indefinite article: "an Italian pub", "a cheap pub"."""
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _words(*parts) -> str:
    return " ".join(p for p in parts if p)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- scoring ----------------------------------------------------------------

def _value_patterns() -> dict[str, dict[str, re.Pattern]]:
    """slot -> value -> the regex that says a sentence mentions that value."""
    p = {"eat_type": {v: rf"\b{v}\b" for v in SLOT_VALUES["eat_type"]},
         "food": {v: rf"\b{v}\b" for v in SLOT_VALUES["food"]},
         "price": {"cheap": r"\bcheap", "moderate": r"\bmoderate", "expensive": r"\bexpensive"},
         "area": {"riverside": r"\briverside\b", "city centre": r"\bcity cent(?:re|er)\b"},
         "rating": {v: rf"\b{v} (?:customer )?rating\b|\brated {v}\b" for v in SLOT_VALUES["rating"]},
         "family_friendly": {
             "yes": r"(?<!not )(?<!non-)\bfamily[- ]friendly\b|(?<!not )\bwelcomes? children\b",
             "no": r"\bnot family[- ]friendly\b|\bnon-family[- ]friendly\b|\badults?[- ]only\b"
                   r"|\bnot welcome children\b"},
         }
    return {slot: {v: re.compile(rx, re.IGNORECASE) for v, rx in values.items()}
            for slot, values in p.items()}


PATTERNS = _value_patterns()


def mentions(sentence: str, slot: str, value: str) -> bool:
    """Whether ``sentence`` says ``slot`` = ``value``, by the keyword rules above."""
    if slot == "name":
        return re.search(re.escape(value), sentence, re.IGNORECASE) is not None
    return PATTERNS[slot][value].search(sentence) is not None


def check(sentence: str, slots: dict[str, str]) -> tuple[list[str], list[str]]:
    """(missed, hallucinated): the prompt's values the sentence does not say, and the
    values it says that the prompt does not hold, each as ``"slot[value]"``."""
    missed = [f"{s}[{v}]" for s, v in slots.items() if not mentions(sentence, s, v)]
    names = NAMES if slots["name"] in NAMES else (*NAMES, slots["name"])
    candidates = [("name", n) for n in names] + [(s, v) for s, vs in SLOT_VALUES.items() for v in vs]
    extra = [f"{s}[{v}]" for s, v in candidates
             if slots.get(s) != v and mentions(sentence, s, v)]
    return missed, extra


def score(predictions: list[str], examples: list[dict]) -> dict:
    """Exact match and slot error of ``predictions[i]`` against ``examples[i]``.

    Returns {"exact_match", "slot_error", "missed", "hallucinated", "slots",
    "examples"}: two fractions in [0, 1], then counts (values missed, values
    hallucinated, slot values in all prompts, examples). An example without a
    "slots" entry (e.g. read back with ``read_jsonl``) has its prompt parsed.
    """
    if len(predictions) != len(examples):
        raise InputError(f"score: {len(predictions)} predictions for {len(examples)} examples; "
                         "give one prediction per example, in the same order.")
    if not examples:
        raise InputError("score: no examples to score.")
    exact = missed = extra = total = 0
    for pred, ex in zip(predictions, examples):
        slots = ex.get("slots") or parse_prompt(ex["prompt"])
        exact += pred.strip() == ex["completion"].strip()
        m, h = check(pred, slots)
        missed, extra, total = missed + len(m), extra + len(h), total + len(slots)
    return {"exact_match": exact / len(examples), "slot_error": missed / total,
            "missed": missed, "hallucinated": extra, "slots": total, "examples": len(examples)}


def format_examples(examples: list[dict], predictions: list[str] | None = None,
                    limit: int | None = None) -> str:
    """A readable listing: each prompt's slots, its reference and, if given, the
    prediction with what it got wrong."""
    lines = []
    shown = examples if limit is None else examples[:limit]
    for i, ex in enumerate(shown):
        lines.append(f"[{i}] {ex['prompt'].removesuffix(PROMPT_END)}")
        lines.append(f"    reference:  {ex['completion'].strip()}")
        if predictions is not None:
            pred = predictions[i]
            missed, extra = check(pred, ex.get("slots") or parse_prompt(ex["prompt"]))
            verdict = "exact" if pred.strip() == ex["completion"].strip() else "; ".join(
                [f"missed {', '.join(missed)}"] * bool(missed) +
                [f"hallucinated {', '.join(extra)}"] * bool(extra)) or "all slots, other words"
            lines.append(f"    prediction: {pred.strip()}   ({verdict})")
    if len(shown) < len(examples):
        lines.append(f"... and {len(examples) - len(shown)} more")
    return "\n".join(lines)
