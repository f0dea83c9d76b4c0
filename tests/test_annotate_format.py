"""FormatAnnotator: each detector on positive and (tricky) negative examples, priority, and the annotator."""

from __future__ import annotations

import pytest

from treasure.annotate.base import Annotator
from treasure.annotate.format import (
    DETECTORS,
    PRIORITY,
    FormatAnnotator,
    detect_chain_of_thought,
    detect_enumeration,
    detect_format,
    detect_json,
    detect_latex,
    detect_markdown,
    detect_mcq_answer,
    detect_tabular,
    detect_xml,
)
from treasure.taxonomy import load_taxonomy

PROSE = "Paris is the capital of France. It has been the seat of government for centuries."


def rec(response: str, prompt: str = "Tell me something.") -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        "markers": {},
    }


def test_values_match_the_taxonomy():
    values = set(load_taxonomy("paper")["format"].values)
    assert set(PRIORITY) == values == set(DETECTORS)


def test_is_an_annotator():
    ann = FormatAnnotator()
    assert isinstance(ann, Annotator)
    assert ann.name == "format:rules" and ann.categories == ("format",)


# ------------------------------------------------------------------------------------------------------- JSON


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "age": 36}',
        '[1, 2, {"a": null}]',
        'Here you go:\n```json\n{"items": [1, 2, 3], "ok": true}\n```',
        '```\n{"a": 1}\n```',
        '  \n{"nested": {"deep": [true, false]}}\n',
    ],
)
def test_json_positive(text):
    assert detect_json(text)


@pytest.mark.parametrize(
    "text",
    [
        "{name: 'Ada', age: 36}",  # JavaScript object literal, not JSON
        '{"a": 1,}',  # trailing comma
        "[citation needed]",
        '"just a string"',
        "42",
        'The config is {"a": 1} and that is all you need to know about it, really.',
        'An essay.\n\n```json\n{"a": 1}\n```\n\n' + PROSE * 5,  # small snippet in a long answer
        PROSE,
    ],
)
def test_json_negative(text):
    assert not detect_json(text)


# -------------------------------------------------------------------------------------------------------- XML


@pytest.mark.parametrize(
    "text",
    [
        "<note><to>Tove</to><from>Jani</from></note>",
        '<?xml version="1.0" encoding="UTF-8"?>\n<catalog>\n  <book id="1"><title>X</title></book>\n</catalog>',
        '```xml\n<root a="1">\n  <child/>\n</root>\n```',
        "<svg xmlns='http://www.w3.org/2000/svg'><circle r='4'/></svg>",
    ],
)
def test_xml_positive(text):
    assert detect_xml(text)


@pytest.mark.parametrize(
    "text",
    [
        "<note><to>Tove</to><from>Jani</note>",  # not well-formed
        "<b>Bold</b> text after the root",
        "<br>",
        "Use the <div> element for layout.",
        "a < b and c > d",
        PROSE,
    ],
)
def test_xml_negative(text):
    assert not detect_xml(text)


# ------------------------------------------------------------------------------------------------------ Latex


@pytest.mark.parametrize(
    "text",
    [
        r"The solution is $x = \frac{-b \pm \sqrt{b^2-4ac}}{2a}$.",
        "\\begin{align}\na &= b \\\\\nc &= d\n\\end{align}",
        r"We get \(\alpha + \beta = \pi\).",
        r"So $$\sum_{i=1}^n i = \frac{n(n+1)}{2}$$",
        r"The area is $\pi r^2$.",
        r"Final: \boxed{42}",
    ],
)
def test_latex_positive(text):
    assert detect_latex(text)


@pytest.mark.parametrize(
    "text",
    [
        "It costs $5 and the other one costs $10.",
        "Save the file to C:/Users/me/notes.txt",
        "```bash\necho $HOME \\\n  && ls\n```",
        "Price: $3.50, tax $0.20",
        PROSE,
    ],
)
def test_latex_negative(text):
    assert not detect_latex(text)


# ---------------------------------------------------------------------------------------------------- Tabular


@pytest.mark.parametrize(
    "text",
    [
        "| Name | Age |\n|------|-----|\n| Ada  | 36  |\n| Alan | 41  |",
        "Name | Age\n--- | ---\nAda | 36",
        "Here:\n\n| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |\n\nDone.",
        "name\tage\tcity\nAda\t36\tLondon\nAlan\t41\tWilmslow",
        "name,age,city\nAda,36,London\nAlan,41,Wilmslow\nGrace,85,New York",
    ],
)
def test_tabular_positive(text):
    assert detect_tabular(text)


@pytest.mark.parametrize(
    "text",
    [
        "Use the pipe | to chain commands in a shell.",
        "a | b\nc | d",  # pipes but no separator row
        "Apples, pears, and plums are fruit.\nCarrots, leeks, and beans are vegetables.\nOats, rye, and wheat are grains.",
        "-----\nJust a rule, then text.",
        PROSE,
    ],
)
def test_tabular_negative(text):
    assert not detect_tabular(text)


# ------------------------------------------------------------------------------------------------------ MCQ

MCQ_PROMPT = "What is the capital of France?\nA) Berlin\nB) Paris\nC) Rome\nD) Madrid"


@pytest.mark.parametrize(
    ("text", "prompt"),
    [
        ("B", MCQ_PROMPT),
        ("B) Paris", MCQ_PROMPT),
        ("(B) Paris is the capital.", MCQ_PROMPT),
        ("The correct answer is B, Paris.", MCQ_PROMPT),
        ("Paris is the capital of France, so the answer is (B).", MCQ_PROMPT),
        ("Answer: C", ""),  # no options in the prompt: explicit short answer
        ("(D)", ""),
        ("The answer is **B**.", "Which one? (A) x (B) y (C) z"),
        ("**Answer:** B", MCQ_PROMPT),
        ("THE ANSWER IS C", ""),
    ],
)
def test_mcq_positive(text, prompt):
    assert detect_mcq_answer(text, prompt)


@pytest.mark.parametrize(
    ("text", "prompt"),
    [
        ("A cat is a small mammal.", MCQ_PROMPT),  # article "A", not option A
        ("A) Berlin\nB) Paris\nC) Rome", "Give me four options."),  # the response lists options
        ("It could be A or B.", MCQ_PROMPT),  # no single choice
        ("The answer is E.", MCQ_PROMPT),  # E is not an option
        ("C is a programming language created by Dennis Ritchie.", ""),
        ("I will answer a few questions about it today.", ""),  # "answer a" names no option
        (PROSE, MCQ_PROMPT),
        (PROSE, ""),
    ],
)
def test_mcq_negative(text, prompt):
    assert not detect_mcq_answer(text, prompt)


# ------------------------------------------------------------------------------------------ ChainOfThought


@pytest.mark.parametrize(
    "text",
    [
        "Step 1: 3 apples plus 2 apples is 5 apples.\nStep 2: Half of 5 is 2.5.\nTherefore, the answer is 2.5.",
        "Let's think step by step. Tom has 3 cars and buys 2 more, so 3 + 2 = 5. The answer is 5.",
        "First, we find the total: 4 * 3 = 12. Then we subtract 2 to get 10. Therefore the result is 10.",
        "Paso 1: sumamos 2 y 3.\nPaso 2: multiplicamos por 4.\nPor lo tanto, la respuesta es 20.",
        "Step 1. Square both sides.\nStep 2. Solve for x.\n\n**Final answer:** x = 4",
    ],
)
def test_cot_positive(text):
    assert detect_chain_of_thought(text)


@pytest.mark.parametrize(
    "text",
    [
        "Step 1: open the lid.\nStep 2: pour the water.\nStep 3: enjoy your tea.",  # steps but no answer
        "Therefore, the answer is 42.",  # an answer but no steps
        "First of all, thank you for asking! Paris is lovely in spring.",
        PROSE,
    ],
)
def test_cot_negative(text):
    assert not detect_chain_of_thought(text)


# ------------------------------------------------------------------------------------------------ Enumeration


@pytest.mark.parametrize(
    "text",
    [
        "Shopping list:\n1. Milk\n2. Eggs\n3. Bread",
        "- apples\n- pears",
        "* one\n* two\n* three",
        "Options:\n\n1. First item\n   with a continuation line\n\n2. Second item",
        "1) red\n2) green",
        "• alpha\n• beta",
        "a) first\nb) second",
    ],
)
def test_enumeration_positive(text):
    assert detect_enumeration(text)


@pytest.mark.parametrize(
    "text",
    [
        "The treaty was signed on 1. January 1900 in Vienna.",
        "1. January was cold.\nThe rest of the year was warm.",
        "2023. It was a good year.\n1999. It was a better year.",  # years, not a sequence
        "- only one bullet",
        "```\n- yaml: 1\n- yaml: 2\n```",  # list syntax inside code
        "I scored 5 - 3 in the first game.\nThen 2 - 1 in the second.",
        PROSE,
    ],
)
def test_enumeration_negative(text):
    assert not detect_enumeration(text)


# --------------------------------------------------------------------------------------------------- Markdown


@pytest.mark.parametrize(
    "text",
    [
        "# Title\n\nSome text.",
        "This is **important**.",
        "See [the docs](https://example.com).",
        "Run:\n\n```\nmake\n```",
        "> quoted wisdom",
        "Use `ls` or `dir`, *depending* on the system.",
    ],
)
def test_markdown_positive(text):
    assert detect_markdown(text)


@pytest.mark.parametrize(
    "text",
    [
        "2 * 3 * 4 = 24",
        "I use C# and F# at work.",
        "Email me at a_b_c@example.com",
        "Call `make` to build.",  # one weak sign only
        PROSE,
    ],
)
def test_markdown_negative(text):
    assert not detect_markdown(text)


# ----------------------------------------------------------------------------------------- priority, annotator


def test_priority_picks_the_most_specific():
    # JSON wins over Markdown (fence) and over nothing else
    assert detect_format('```json\n{"a": [1, 2]}\n```') == "JSON"
    # A Markdown answer with a list and a formula: Latex wins over Enumeration and Markdown
    assert detect_format("## Steps\n\n1. Take $\\frac{1}{2}$\n2. Double it") == "Latex"
    # A table inside Markdown is Tabular
    assert detect_format("# Data\n\n| a | b |\n|---|---|\n| 1 | 2 |") == "Tabular"
    # Steps with a final answer beat the plain list they are written as
    cot = "Step 1: 2 + 2 = 4\nStep 2: 4 * 3 = 12\nTherefore the answer is 12."
    assert detect_format(cot) == "ChainOfThought"
    assert detect_format("1. a\n2. b\n\n**done**") == "Enumeration"
    assert detect_format("B) Paris", MCQ_PROMPT) == "MCQAnswer"
    assert detect_format(PROSE) is None


def test_annotate():
    out = FormatAnnotator().annotate(
        [rec(PROSE), rec('{"a": 1}'), rec("B", MCQ_PROMPT), rec("- x\n- y"), rec("<a><b/></a>")]
    )
    assert out == [
        {},
        {"format": "JSON"},
        {"format": "MCQAnswer"},
        {"format": "Enumeration"},
        {"format": "XML"},
    ]


def test_huge_response_is_bounded():
    text = ("word " * 400_000) + "\n# late heading"
    assert detect_format(text) is None  # the heading lies beyond the scanned prefix


@pytest.mark.parametrize(
    "text",
    [
        PROSE,
        '{"a": 1}',
        "<a><b/></a>",
        "## Steps\n\n1. Take $\\frac{1}{2}$\n2. Double it",
        "| a | b |\n|---|---|\n| 1 | 2 |",
        "Step 1: 2 + 2 = 4\nStep 2: 4 * 3 = 12\nTherefore the answer is 12.",
        "B) Paris",
        "- x\n- y",
        "# Title\n\ntext",
        "```python\nprint(1)\n```",
    ],
)
def test_detect_format_is_the_priority_order_of_the_detectors(text):
    # detect_format shares intermediate results between detectors; it must still equal the plain definition.
    expected = next(
        (v for v in PRIORITY if (DETECTORS[v](text, MCQ_PROMPT) if v == "MCQAnswer" else DETECTORS[v](text))),
        None,
    )
    assert detect_format(text, MCQ_PROMPT) == expected
