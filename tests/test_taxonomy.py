import pytest

from treasure.errors import TaxonomyError
from treasure.taxonomy import load_taxonomy, parse_taxonomy


def test_paper_taxonomy_has_the_papers_categories(paper):
    assert paper.names == (
        "quality", "quality_bucket", "length_tokens", "length_sentences", "length_paragraphs", "length_bucket",
        "task", "domain", "code_type", "format", "source", "style", "language",
    )  # fmt: skip
    sizes = {c.name: len(c.values) for c in paper if not c.numeric}
    assert sizes == {"quality_bucket": 4, "length_bucket": 3, "task": 14, "domain": 11, "code_type": 17,
                     "format": 8, "source": 4, "style": 3, "language": 23}  # fmt: skip
    assert paper["quality"].kind == "float" and paper["length_tokens"].kind == "int"
    # every value has a one-line description (the model-based annotators read them)
    for cat in paper:
        assert cat.description
        for v in cat.values:
            assert cat.value_descriptions[v].strip(), (cat.name, v)


def test_coerce_canonicalises_and_rejects(paper):
    assert paper.coerce("quality_bucket", 1) == "1"
    assert paper.coerce("domain", "sciences") == "Sciences"
    assert paper.coerce("length_tokens", "120") == 120
    assert paper.coerce("quality", "0.5") == 0.5
    for cat, bad in [("domain", "Astrology"), ("length_tokens", 1.5), ("length_tokens", -3), ("quality", "nan"),
                     ("task", True), ("format", ["JSON"])]:  # fmt: skip
        with pytest.raises(TaxonomyError, match=cat):
            paper.coerce(cat, bad)
    with pytest.raises(TaxonomyError, match="unknown category 'colour'"):
        paper.coerce("colour", "red")


def test_user_taxonomy_with_numeric_and_from_field(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "name: mine\nversion: 2\ncategories:\n"
        "  difficulty:\n    kind: int\n    min: 1\n    max: 5\n    description: how hard\n"
        "  team:\n    kind: categorical\n    from_field: meta.team\n    values:\n      red: the red team\n      blue: blue\n"
    )
    tax = load_taxonomy(f)
    assert tax.names == ("difficulty", "team") and tax.version == "2"
    assert tax["team"].from_field == "meta.team"
    with pytest.raises(TaxonomyError, match="above the maximum"):
        tax.coerce("difficulty", 9)
    # round trip through save
    tax.save(tmp_path / "copy.yaml")
    assert load_taxonomy(tmp_path / "copy.yaml").fingerprint() == tax.fingerprint()


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (
            "name: x\ncategories:\n  a:\n    kind: colour\n",
            r":4: categories\.a\.kind: 'colour' is not one of",
        ),
        (
            "name: x\ncategories:\n  a:\n    kind: categorical\n",
            r":3: categories\.a: a categorical category needs `values`",
        ),
        (
            "name: x\ncategories:\n  a:\n    kind: int\n    colour: red\n",
            r":5: categories\.a\.colour: unknown key",
        ),
        ("name: x\ncategories:\n  a:\n    kind: categorical\n    values: [p, p]\n", r"duplicate value 'p'"),
        (
            "name: x\ncategories:\n  a b:\n    kind: int\n",
            r":3: categories\.a b: category names must be identifiers",
        ),
        (
            "name: x\ncategories:\n  a:\n    kind: int\n    min: low\n",
            r":5: categories\.a\.min: expected a number",
        ),
        ("name: x\ncategories: [\n", r"invalid YAML"),
        ("name: x\n", r"needs `name` and `categories`"),
        ("name: x\nfoo: 1\ncategories: {}\n", r":2: unknown key 'foo'"),
    ],
)
def test_invalid_taxonomy_errors_name_line_and_key(tmp_path, text, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(TaxonomyError, match=expect) as err:
        load_taxonomy(f)
    assert str(err.value).startswith(str(f))


def test_parse_taxonomy_from_text():
    tax = parse_taxonomy("name: t\ncategories:\n  c:\n    kind: categorical\n    values: [a, b]\n")
    assert tax["c"].values == ("a", "b")
