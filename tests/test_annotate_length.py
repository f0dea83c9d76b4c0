from treasure.annotate.length import LengthAnnotator, count_paragraphs, count_sentences, length_bucket


def rec(text: str) -> dict:
    return {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}],
        "markers": {},
    }


def test_buckets_follow_the_papers_thresholds():
    assert [length_bucket(n) for n in (0, 299, 300, 1000, 1001)] == [
        "concise",
        "concise",
        "medium",
        "medium",
        "long",
    ]


def test_sentences_and_paragraphs():
    text = "First sentence. Second one! Third?\n\nNew paragraph without a stop\n\n\n- a list item"
    assert count_paragraphs(text) == 3
    assert count_sentences(text) == 5
    assert count_sentences("Version 3.5 is out. See https://x.org/a.b for more.") == 2
    assert count_sentences("这是第一句。这是第二句！") == 2
    code = "Run this:\n\n```python\nx = a.b.c()\ny = 1.5\n```\n\nDone."
    assert count_sentences(code) == 3  # "Run this:", the code block, "Done."


def test_token_counts_use_the_shipped_gpt2_tokenizer(shared_data):
    from tokenizers import Tokenizer

    ann = LengthAnnotator()
    assert ann.name == "length:gpt2"
    texts = ["Hello world", "word " * 400, "mot " * 1200]
    ref = Tokenizer.from_file(str(shared_data / "tokenizers" / "gpt2.json"))
    out = ann.annotate([rec(t) for t in texts])
    assert [o["length_tokens"] for o in out] == [len(ref.encode(t).ids) for t in texts]
    assert [o["length_bucket"] for o in out] == ["concise", "medium", "long"]


def test_tokenizer_option_takes_a_file(shared_data):
    ann = LengthAnnotator(str(shared_data / "tokenizers" / "gpt2.json"))
    assert ann.annotate([rec("Hello world")])[0]["length_tokens"] == 2
