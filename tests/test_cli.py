"""The real `treasure` command, run as a user runs it."""

import json
import subprocess
import sys

import pytest


def treasure(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "treasure.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)  # fmt: skip


def test_help_lists_commands():
    out = treasure("--help")
    assert out.returncode == 0
    for cmd in ("taxonomy", "annotate", "stats", "demo"):
        assert cmd in out.stdout


def test_taxonomy_show_and_validate(tmp_path):
    out = treasure("taxonomy", "show")
    assert out.returncode == 0 and "CodeFix" in out.stdout and "find and fix a bug" in out.stdout
    assert "13 categories" in treasure("taxonomy", "validate").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncategories:\n  a:\n    kind: nope\n")
    out = treasure("taxonomy", "validate", bad)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and f"{bad}:4: categories.a.kind" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b'{"messages": [{"role": "user", "content": "hi"}]\n', ":1: invalid JSON"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', ":1: messages: no assistant turn"),
        (b'{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}\n',
         ":1: messages[0].content: empty"),
        (b'{"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "a"}]}\n',
         ":1: messages[0].content: expected a string, got list"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "a"}]}\n',
         ":1: messages[0].role: unknown role 'wizard'"),
        (b'{"messages": [{"role": "user", "content": "\xff\xfe"}, {"role": "assistant", "content": "a"}]}\n',
         ":1: invalid UTF-8 at byte"),
        (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}], '
         b'"markers": {"language": "Klingon"}}\n', ":1: markers.language: unknown value 'Klingon'"),
        (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "'
         + b"x" * (10 * 1024 * 1024) + b'"}]}\n', ":1: messages[1].content: 10,485,760 characters is over the limit"),
    ],
)  # fmt: skip
def test_annotate_bad_input_is_one_line(tmp_path, content, expect):
    f = tmp_path / "in.jsonl"
    f.write_bytes(content)
    out = treasure("annotate", f, "-o", tmp_path / "out.jsonl", "--categories", "length_tokens")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert str(f) + expect in out.stderr


def test_annotate_and_stats_end_to_end(tmp_path):
    f = tmp_path / "in.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "word " * (i * 20)
             + "end."}], "meta": {"origin": "human" if i % 10 else "synthetic"}} for i in range(60)]  # fmt: skip
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = treasure("annotate", f, "-o", tmp_path / "a.jsonl", "--categories", "length_tokens,length_bucket,source",
                   "--map", "source=meta.origin")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "read 60, written 60, rejected 0" in out.stdout
    stats = treasure("stats", tmp_path / "a.jsonl", "--json", "--plot", tmp_path / "s.png")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout[: stats.stdout.rindex("}") + 1])
    assert data["n"] == 60
    src = data["categories"]["source"]["values"]
    assert src["Human"]["count"] == 54 and src["Synthetic"]["count"] == 6 and not src["Synthetic"]["tail"]
    buckets = data["categories"]["length_bucket"]["values"]
    assert buckets["long"]["tail"] is (buckets["long"]["share"] < 0.05)
    assert (tmp_path / "s.png").stat().st_size > 10_000
    table = treasure("stats", tmp_path / "a.jsonl")
    assert "long tail" in table.stdout and "Synthetic" in table.stdout


def test_annotate_option_errors(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n')
    out = treasure("annotate", f, "-o", tmp_path / "o.jsonl", "--categories", "colour")
    assert out.returncode == 2 and "unknown category 'colour'" in out.stderr
    out = treasure("annotate", f, "-o", tmp_path / "o.jsonl", "--map", "source")
    assert out.returncode == 2 and "expected CATEGORY=FIELD" in out.stderr
    out = treasure("annotate", tmp_path / "missing.jsonl", "-o", tmp_path / "o.jsonl")
    assert out.returncode == 2 and "missing.jsonl: no such file" in out.stderr
