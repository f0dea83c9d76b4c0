"""CodeTypeAnnotator: fence tags and aliases, untagged detection for all 17 languages, prose without code."""

from __future__ import annotations

import pytest

from treasure.annotate.base import Annotator
from treasure.annotate.code import (
    ALIASES,
    LANGUAGES,
    CodeTypeAnnotator,
    detect_code_type,
    detect_language,
    normalize_tag,
)
from treasure.taxonomy import load_taxonomy

# One typical, untagged snippet per language. Each must be recognised without a fence tag.
SNIPPETS: dict[str, str] = {
    "python": """import os

def list_files(path: str) -> list[str]:
    result = []
    for name in os.listdir(path):
        if name.endswith(".py"):
            result.append(name)
    return result
""",
    "javascript": """const express = require('express');
const app = express();

app.get('/', (req, res) => {
  console.log('request received');
  res.send('Hello World');
});
""",
    "typescript": """interface User {
  id: number;
  name: string;
}

function greet(user: User): string {
  const message = `Hello, ${user.name}`;
  console.log(message);
  return message;
}
""",
    "cpp": """#include <iostream>
#include <vector>

int main() {
    std::vector<int> v = {1, 2, 3};
    for (auto x : v) {
        std::cout << x << std::endl;
    }
    return 0;
}
""",
    "c": """#include <stdio.h>
#include <stdlib.h>

int main(void) {
    int *arr = malloc(10 * sizeof(int));
    if (arr == NULL) return 1;
    printf("allocated\\n");
    free(arr);
    return 0;
}
""",
    "java": """import java.util.ArrayList;

public class Main {
    public static void main(String[] args) {
        ArrayList<String> names = new ArrayList<>();
        names.add("Ada");
        System.out.println(names);
    }
}
""",
    "csharp": """using System;
using System.Collections.Generic;

namespace Demo
{
    class Program
    {
        static void Main(string[] args)
        {
            var items = new List<int> { 1, 2, 3 };
            foreach (var item in items)
                Console.WriteLine(item);
        }
    }
}
""",
    "go": """package main

import "fmt"

func main() {
    nums := []int{1, 2, 3}
    for _, n := range nums {
        fmt.Println(n)
    }
}
""",
    "rust": """use std::collections::HashMap;

fn main() {
    let mut counts: HashMap<&str, i32> = HashMap::new();
    counts.insert("a", 1);
    println!("{:?}", counts);
}
""",
    "swift": """import Foundation

struct Point {
    var x: Double
    var y: Double
}

func distance(_ a: Point, _ b: Point) -> Double {
    guard let dx = Optional(a.x - b.x) else { return 0 }
    return (dx * dx).squareRoot()
}
print("Distance: \\(distance(Point(x: 0, y: 0), Point(x: 3, y: 4)))")
""",
    "kotlin": """data class User(val name: String, val age: Int)

fun main() {
    val users = listOf(User("Ada", 36), User("Alan", 41))
    for (u in users) {
        println("${u.name} is ${u.age}")
    }
}
""",
    "php": """<?php
function greet($name) {
    return "Hello, " . $name;
}
$user = $_GET['name'];
echo greet($user);
?>
""",
    "ruby": """require 'json'

class Greeter
  attr_accessor :name

  def initialize(name)
    @name = name
  end

  def greet
    puts "Hello, #{@name}"
  end
end
""",
    "haskell": """module Main where

import Data.List (sort)

factorial :: Integer -> Integer
factorial 0 = 1
factorial n = n * factorial (n - 1)

main :: IO ()
main = do
  putStrLn (show (factorial 5))
""",
    "sql": """SELECT c.name, COUNT(o.id) AS orders
FROM customers c
LEFT JOIN orders o ON o.customer_id = c.id
WHERE c.active = 1
GROUP BY c.name
ORDER BY orders DESC;
""",
    "shell": """#!/bin/bash
for f in *.log; do
  if [ -s "$f" ]; then
    grep -c ERROR "$f" | tee -a summary.txt
  fi
done
""",
    "cobol": """       IDENTIFICATION DIVISION.
       PROGRAM-ID. HELLO.
       DATA DIVISION.
       WORKING-STORAGE SECTION.
       01 WS-NAME PIC X(10) VALUE 'WORLD'.
       PROCEDURE DIVISION.
           DISPLAY 'HELLO ' WS-NAME.
           STOP RUN.
""",
}

TAGS = {
    "python": "python", "javascript": "js", "typescript": "ts", "cpp": "c++", "c": "c", "java": "java",
    "csharp": "cs", "go": "golang", "rust": "rs", "swift": "swift", "kotlin": "kt", "php": "php",
    "ruby": "rb", "haskell": "hs", "sql": "postgresql", "shell": "bash", "cobol": "cobol",
}  # fmt: skip


def rec(response: str, prompt: str = "Write some code.") -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        "markers": {},
    }


def test_languages_match_the_taxonomy():
    assert set(LANGUAGES) == set(load_taxonomy("paper")["code_type"].values)
    assert set(ALIASES.values()) == set(LANGUAGES)
    assert set(SNIPPETS) == set(LANGUAGES)


def test_is_an_annotator():
    ann = CodeTypeAnnotator()
    assert isinstance(ann, Annotator)
    assert ann.name == "code_type:rules" and ann.categories == ("code_type",)


@pytest.mark.parametrize("lang", sorted(SNIPPETS))
def test_untagged_snippet_is_recognised(lang):
    assert detect_language(SNIPPETS[lang]) == lang
    fenced = f"Here is the code:\n\n```\n{SNIPPETS[lang]}```\n\nIt works."
    assert detect_code_type(fenced) == lang


@pytest.mark.parametrize("lang", sorted(SNIPPETS))
def test_tagged_snippet_uses_the_tag(lang):
    fenced = f"Sure:\n\n```{TAGS[lang]}\n{SNIPPETS[lang]}```\n"
    assert detect_code_type(fenced) == lang


@pytest.mark.parametrize(
    ("tag", "lang"),
    [
        ("py", "python"), ("python3", "python"), ("Python", "python"), ("js", "javascript"),
        ("jsx", "javascript"), ("c++", "cpp"), ("cxx", "cpp"), ("cs", "csharp"), ("c#", "csharp"),
        ("sh", "shell"), ("bash", "shell"), ("zsh", "shell"), ("console", "shell"), ("ts", "typescript"),
        ("tsx", "typescript"), ("kt", "kotlin"), ("rb", "ruby"), ("hs", "haskell"), ("golang", "go"),
        ("rs", "rust"), ("mysql", "sql"), ("cbl", "cobol"), ("{.python}", "python"),
        ('python title="x.py"', "python"), ("python3.11", "python"), ("php8", "php"),
    ],
)  # fmt: skip
def test_aliases(tag, lang):
    assert normalize_tag(tag) == lang


def test_tag_wins_over_content():
    # The info string is trusted even when the body would look like another language.
    assert detect_code_type("```ruby\nputs 'hi'\nprint('x')\n```") == "ruby"


def test_unknown_language_tags_give_nothing():
    assert normalize_tag("html") is None
    assert detect_code_type("```html\n<div>Hello</div>\n```") is None
    assert detect_code_type('```json\n{"a": 1}\n```') is None
    assert detect_code_type("```text\nimport os\ndef f():\n    pass\n```") is None


def test_most_code_lines_wins():
    text = (
        "Install it:\n\n```bash\npip install requests\n```\n\nThen:\n\n```python\n"
        "import requests\n\nr = requests.get('https://example.com')\nprint(r.status_code)\nprint(r.text)\n```\n"
    )
    assert detect_code_type(text) == "python"
    text2 = "```sh\nls\ncd x\nmake\nmake install\n```\n\n```py\nprint(1)\n```"
    assert detect_code_type(text2) == "shell"


def test_indented_code_is_detected():
    text = "You can write:\n\n    def add(a, b):\n        return a + b\n\n    print(add(1, 2))\n\nThat is it."
    assert detect_code_type(text) == "python"


def test_bare_code_response_is_detected():
    assert detect_code_type(SNIPPETS["go"]) == "go"
    assert detect_code_type(SNIPPETS["rust"]) == "rust"


def test_unterminated_fence_still_counts():
    assert detect_code_type("```python\nimport os\nprint(os.getcwd())\n") == "python"


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris. It is known for the Eiffel Tower.",
        "To import goods you must declare them at customs. Then you pay the duty.",
        "1. Preheat the oven.\n2. Mix flour and sugar.\n3. Bake for 20 minutes.",
        "Use a for loop when you know how many times to repeat; use while otherwise.",
        "Select the option you like, then click Save. Finally, go back to the start.",
        "    This paragraph is merely indented.\n    It is still prose, not code at all.",
        "",
    ],
)
def test_prose_has_no_code_type(text):
    assert detect_code_type(text) is None


def test_annotate_leaves_category_out_without_code():
    out = CodeTypeAnnotator().annotate([rec("Just words."), rec("```go\npackage main\n```")])
    assert out == [{}, {"code_type": "go"}]
