"""The restaurants task: deterministic varied examples, a grammar that says every slot
and nothing else, and a scorer that counts misses and hallucinations correctly."""
from __future__ import annotations

import json
import re

import pytest

from minipeft.errors import InputError
from minipeft.tasks import restaurants
from minipeft.tasks.restaurants import (
    NAMES,
    SLOT_VALUES,
    check,
    format_examples,
    make_examples,
    parse_prompt,
    realize,
    score,
)
from minipeft.train.data import read_jsonl


@pytest.fixture(scope="module")
def examples():
    return make_examples(600, seed=0)


def test_deterministic_per_seed():
    assert make_examples(50, seed=1) == make_examples(50, seed=1)
    assert make_examples(50, seed=1) != make_examples(50, seed=2)
    assert make_examples(10, seed=1) == make_examples(50, seed=1)[:10]
    assert make_examples(0, seed=1) == []


def test_varied(examples):
    assert len({e["prompt"] for e in examples}) > 0.9 * len(examples)
    assert {e["slots"]["name"] for e in examples} == set(NAMES)
    for slot, values in SLOT_VALUES.items():
        assert {e["slots"][slot] for e in examples if slot in e["slots"]} == set(values), slot
    assert {len(e["slots"]) for e in examples} == {3, 4, 5}
    # the three wordings all occur
    assert any(" It " in e["completion"] for e in examples)
    assert any("there is" in e["completion"].lower() for e in examples)
    assert any(" It " not in e["completion"] and "there is" not in e["completion"].lower()
               for e in examples)


def test_prompt_and_completion_format(examples):
    for e in examples:
        slots = e["slots"]
        assert list(slots)[0] == "name"
        assert e["prompt"].endswith("\nSentence:")
        assert parse_prompt(e["prompt"]) == slots
        assert e["prompt"].split("\n")[0] == " | ".join(f"{k}[{v}]" for k, v in slots.items())
        assert e["completion"].startswith(" ") and e["completion"].endswith(".")
        assert e["completion"] == " " + realize(slots)


def test_prompt_example_from_docstring():
    slots = {"name": "Little Fig", "food": "Italian", "area": "riverside"}
    assert restaurants.make_prompt(slots) == "name[Little Fig] | food[Italian] | area[riverside]\nSentence:"
    assert realize(slots) == "Little Fig is an Italian place by the riverside."


def test_articles(examples):
    for e in examples:
        text = e["completion"]
        assert not re.search(r"\ba [aeiouAEIOU]", text), text
        assert not re.search(r"\ban [^aeiouAEIOU]", text), text


def test_references_say_every_slot_and_nothing_else(examples):
    for e in examples:
        assert check(e["completion"], e["slots"]) == ([], []), e


def test_references_score_perfectly(examples):
    result = score([e["completion"] for e in examples], examples)
    assert result["exact_match"] == 1.0 and result["slot_error"] == 0.0
    assert result["missed"] == 0 and result["hallucinated"] == 0
    assert result["slots"] == sum(len(e["slots"]) for e in examples)
    assert result["examples"] == len(examples)
    stripped = score(["  " + e["completion"].strip() + "\n" for e in examples[:5]], examples[:5])
    assert stripped["exact_match"] == 1.0


def example(**slots):
    slots = {"name": "Moonstone", **slots}
    return {"prompt": restaurants.make_prompt(slots), "completion": " " + realize(slots), "slots": slots}


def test_score_counts_misses_and_hallucinations():
    ex = [example(food="Italian", area="riverside"),                  # 3 slot values
          example(eat_type="pub", price="cheap", family_friendly="yes")]  # 4 slot values
    preds = ["Moonstone is a French place by the riverside.",          # misses Italian, adds French
             "Moonstone is a cheap pub. It is not family-friendly."]   # says no instead of yes
    result = score(preds, ex)
    assert result["exact_match"] == 0.0
    assert result["missed"] == 2 and result["slots"] == 7
    assert result["slot_error"] == pytest.approx(2 / 7)
    assert result["hallucinated"] == 2
    assert check(preds[1], ex[1]["slots"]) == (["family_friendly[yes]"], ["family_friendly[no]"])


@pytest.mark.parametrize("pred, missed, extra", [
    ("", ["name[Moonstone]", "rating[high]", "area[city centre]"], []),
    ("Moonstone has a high customer rating, in the city centre.", [], []),
    ("Moonstone, rated high, city center.", [], []),
    ("Moonstone has a low customer rating in the city centre.", ["rating[high]"], ["rating[low]"]),
    ("Blue Heron and Moonstone are by the riverside, with a high rating.",
     ["area[city centre]"], ["name[Blue Heron]", "area[riverside]"]),
    ("Moonstone, a cheap Japanese pub in the city centre, high customer rating.",
     [], ["eat_type[pub]", "food[Japanese]", "price[cheap]"]),
])
def test_check(pred, missed, extra):
    slots = {"name": "Moonstone", "area": "city centre", "rating": "high"}
    got_missed, got_extra = check(pred, slots)
    assert sorted(got_missed) == sorted(missed) and sorted(got_extra) == sorted(extra)


@pytest.mark.parametrize("pred, says", [
    ("It is family-friendly.", "yes"), ("It welcomes children.", "yes"),
    ("A family friendly pub.", "yes"),
    ("It is not family-friendly.", "no"), ("It does not welcome children.", "no"),
    ("An adults-only pub.", "no"), ("A non-family-friendly pub.", "no"),
])
def test_family_friendly_negation(pred, says):
    other = {"yes": "no", "no": "yes"}[says]
    assert restaurants.mentions(pred, "family_friendly", says)
    assert not restaurants.mentions(pred, "family_friendly", other)


def test_score_after_a_jsonl_round_trip(tmp_path, examples):
    path = tmp_path / "restaurants.jsonl"
    path.write_text("".join(json.dumps({"prompt": e["prompt"], "completion": e["completion"]}) + "\n"
                            for e in examples[:20]), encoding="utf-8")
    loaded = read_jsonl(path)                       # no "slots": parsed back from the prompt
    assert score([e["completion"] for e in loaded], loaded)["slot_error"] == 0.0


def test_score_errors(examples):
    with pytest.raises(InputError, match="2 predictions for 3 examples"):
        score(["a", "b"], examples[:3])
    with pytest.raises(InputError, match="Not a restaurants prompt"):
        score(["a"], [{"prompt": "food[Italian]\nSentence:", "completion": " x"}])
    with pytest.raises(InputError, match=r"unknown food\[Thai\]"):
        parse_prompt("name[X] | food[Thai]\nSentence:")


def test_format_examples(examples):
    ex = examples[:3]
    preds = [ex[0]["completion"], "Moonstone.", ex[2]["completion"].replace(".", "!")]
    text = format_examples(ex, preds)
    assert ex[0]["prompt"].split("\n")[0] in text
    assert "(exact)" in text and "missed" in text and "all slots, other words" in text
    assert format_examples(examples, limit=2).endswith(f"... and {len(examples) - 2} more")
