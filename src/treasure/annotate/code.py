"""The `code_type` annotator: which programming language the code in a response is written in.

Rules, no model. Code is found in three places, in this order of trust:

1. fenced blocks (```lang ... ```, also ~~~) whose info string names a language: the name is mapped through
   `ALIASES` (``py``, ``python3``, ``c++``, ``cs``, ``sh``, ``golang``, ...) to one of the taxonomy's 17 values;
2. fenced blocks without a language, and runs of indented code (4 spaces or a tab) outside fences: the language
   is recognised by `detect_language`, which scores distinctive keyword/syntax signatures per language;
3. a response with no fence and no indented block that still looks like bare code (a third or more of its first
   lines carry code syntax) goes through `detect_language` with a stricter threshold.

Each block votes for its language with its number of non-blank lines; the language with the most code lines
wins. A block whose language is not one of the 17 (```html, ```yaml, ```json, ```text) carries no vote, and a
response without recognisable code gets no `code_type` at all: the category is left out, never guessed.

Speed: all regexes are compiled once; only a bounded prefix of a huge response is read (`MAX_SCAN_CHARS`), and
each block is scored on at most `MAX_BLOCK_CHARS` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from treasure.records import last_assistant

# Only the first part of a huge response is looked at: the language of its code is clear long before 20k chars.
MAX_SCAN_CHARS = 20_000
MAX_BLOCK_CHARS = 1_500

LANGUAGES = (
    "python", "javascript", "cpp", "cobol", "java", "go", "rust", "swift", "csharp", "php", "typescript",
    "shell", "c", "kotlin", "ruby", "haskell", "sql",
)  # fmt: skip

# Fence info strings (lower-cased, first word) -> canonical value. Names from GitHub Linguist / highlight.js.
ALIASES: dict[str, str] = {
    **dict.fromkeys(["python", "py", "python3", "python2", "py3", "py2", "ipython", "ipython3", "pycon",
                     "pyi", "pyw", "sage", "jython", "micropython", "cython", "pyx"], "python"),
    **dict.fromkeys(["javascript", "js", "jsx", "node", "nodejs", "node.js", "mjs", "cjs", "ecmascript",
                     "es6", "javascriptreact"], "javascript"),
    **dict.fromkeys(["typescript", "ts", "tsx", "mts", "cts", "typescriptreact", "deno"], "typescript"),
    **dict.fromkeys(["cpp", "c++", "cxx", "cc", "hpp", "hxx", "hh", "h++", "cplusplus", "c++11", "c++14",
                     "c++17", "c++20", "cpp11", "cpp14", "cpp17", "cpp20", "arduino", "ino"], "cpp"),
    **dict.fromkeys(["c", "h", "ansic", "ansi-c", "c89", "c99", "c11", "c17"], "c"),
    **dict.fromkeys(["cobol", "cbl", "cob", "cpy", "cobol85", "gnucobol"], "cobol"),
    **dict.fromkeys(["java", "jsp", "java8", "java11", "java17"], "java"),
    **dict.fromkeys(["go", "golang"], "go"),
    **dict.fromkeys(["rust", "rs", "rustc"], "rust"),
    **dict.fromkeys(["swift", "swiftui"], "swift"),
    **dict.fromkeys(["csharp", "cs", "c#", "c-sharp", "c_sharp", "dotnet", "cake", "csx"], "csharp"),
    **dict.fromkeys(["php", "php3", "php4", "php5", "php7", "php8", "phtml"], "php"),
    **dict.fromkeys(["shell", "sh", "bash", "zsh", "ksh", "dash", "fish", "console", "shellsession",
                     "shell-session", "bash-session", "sh-session", "terminal", "shellscript", "bashrc",
                     "zshrc"], "shell"),
    **dict.fromkeys(["kotlin", "kt", "kts", "ktm"], "kotlin"),
    **dict.fromkeys(["ruby", "rb", "irb", "jruby", "rake", "gemspec", "podspec"], "ruby"),
    **dict.fromkeys(["haskell", "hs", "lhs", "ghci", "literatehaskell"], "haskell"),
    **dict.fromkeys(["sql", "mysql", "postgresql", "postgres", "psql", "pgsql", "plpgsql", "plsql", "sqlite",
                     "sqlite3", "tsql", "t-sql", "mssql", "mariadb", "oraclesql", "sparksql", "hiveql",
                     "bigquery", "snowflake", "ddl"], "sql"),
}  # fmt: skip
# Info strings that mean "not code" (program output, prose): such a block is not run through the detector.
_NOT_CODE = frozenset(
    ["text", "txt", "plaintext", "plain", "output", "out", "result", "markdown", "md", "log"]
)

# A fenced block: opening fence (``` or ~~~, up to 3 spaces of indent), info string, body, closing fence of the
# same kind or the end of the text (an unterminated fence runs to the end, as in CommonMark).
FENCE_RE = re.compile(
    r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)(?:^[ \t]{0,3}(?P=fence)[`~]*[ \t]*$|\Z)",
    re.M | re.S,
)
_INFO_WORD_RE = re.compile(r"[{.\s]*([^\s{},=:]+)")

# ---------------------------------------------------------------------------------------------------------------
# Signatures for untagged code, per language: (gate, regex, weight, flags). Most regexes are anchored to a line
# start or need syntax that prose does not use, so a paragraph *about* code ("use the import statement") scores
# little. Speed: a regex costs a few ns per character, ~150 of them would cost ~1 ms per block, so each has a
# gate: words (checked against the set of words in the block, lower-cased for re.I patterns) or literal snippets
# (substring test); the regex only runs when one of them is present. Literal-first regexes without a leading \b
# also let `re` skip ahead quickly.
_M = re.M
_MI = re.M | re.I
_SHELL_COMMANDS = (
    "sudo", "apt", "apt-get", "pip", "pip3", "npm", "npx", "yarn", "brew", "cd", "ls", "mkdir", "rm", "cp", "mv",
    "chmod", "chown", "export", "grep", "curl", "wget", "git", "docker", "tar", "source", "kubectl", "conda",
    "systemctl", "ssh", "make", "touch", "cat", "echo",
)  # fmt: skip
_Sig = tuple[tuple[str, ...], str, float, int]
_SIGNATURES: dict[str, list[_Sig]] = {
    "python": [
        (("def",), r"^[ \t]*def \w+\(.*\)\s*(->\s*[^:\n]+)?:[ \t]*(#.*)?$", 3, _M),
        (("import",), r"^[ \t]*(from [\w.]+ )?import [\w.]+( as \w+)?(, *[\w.]+)*[ \t]*$", 2, _M),
        (("class",), r"^[ \t]*class \w+(\([\w., ]*\))?:[ \t]*$", 3, _M),
        (
            ("elif", "else", "try", "except", "finally"),
            r"^[ \t]*(elif .+|else|try|except( \w+)?( as \w+)?|finally):[ \t]*$",
            2,
            _M,
        ),
        (("if", "while", "for", "with"), r"^[ \t]*(if|while|for|with) .+:[ \t]*$", 1, _M),
        (("self.",), r"self\.\w", 1.5, 0),
        (("__main__", 'f"'), r"__name__ == ['\"]__main__['\"]|f\"[^\"\n]*\{", 3, 0),
        (("print(",), r"print\(", 0.5, 0),
        (("None", "True", "False"), r"(?:None|True|False)\b", 0.5, 0),
        (("lambda",), r"lambda \w*:", 1.5, 0),
        (("range(", "len(", ".append("), r"(?:range|len)\(|\.append\(", 0.5, 0),
        (('"""', "'''"), r"^[ \t]*(\"\"\"|''')", 1.5, _M),  # docstrings
        ((">>>",), r"^[ \t]*>>> \w", 1.5, _M),  # doctests
    ],
    "javascript": [
        (("console.",), r"console\.(log|error|warn)\(", 3, 0),
        (("const", "let", "var"), r"(?:const|let|var) \w+ = ", 1, 0),
        (("function",), r"function\s*\w*\s*\([^$\n]*\)\s*\{", 2, 0),
        # Arrow functions; not "==>" or "=>" after a number, as in "f(1) => 2" in a docstring example.
        (("=>",), r"=>(?<![=!<>]=>)(?<!\d\) =>) ?[{(\w`'\"]", 1, 0),
        (("require(", "module.exports"), r"require\(['\"]|module\.exports\b", 3, 0),
        (
            ("document.", "window.", ".addEventListener("),
            r"(?:document|window)\.\w|\.addEventListener\(",
            2.5,
            0,
        ),
        (("import",), r"^[ \t]*import .+ from ['\"]", 1.5, _M),
        (("export",), r"^[ \t]*export (default |const |function |class )", 1.5, _M),
        (("===", "!=="), r"===|!==", 1.5, 0),
        (("undefined", "null"), r"(?:undefined|null)\b", 0.5, 0),
        ((".then(", "async", "await"), r"\.then\(|async function\b|await \w", 0.5, 0),
    ],
    "c": [
        (("#include",), r"^[ \t]*#include\s*[<\"][\w/]+\.h[>\"]", 3, _M),
        (
            ("#define", "#ifndef", "#ifdef", "#endif", "#pragma"),
            r"^[ \t]*#(define|ifndef|ifdef|endif|pragma)\b",
            1.5,
            _M,
        ),
        (("printf(", "scanf(", "puts("), r"(?:printf|scanf|fprintf|puts)\(", 1.5, 0),
        (("main",), r"int main\s*\(", 2, 0),
        (("malloc", "calloc", "free", "sizeof"), r"(?:malloc|calloc|free|sizeof)\(", 1.5, 0),
        (
            ("int", "char", "void", "float", "double", "long", "short", "size_t"),
            r"^[ \t]*(static |const |unsigned |extern )*(int|char|void|float|double|long|short|size_t)\s+\**\w+\s*"
            r"[=;(\[,]",
            1,
            _M,
        ),
        (("struct",), r"struct \w+\s*[{*]", 1, 0),
        (("NULL",), r"NULL\b", 1, 0),
        (("->",), r"->\w", 0.5, 0),
    ],
    "cpp": [  # C++-only signals; `language_scores` adds them on top of the C score
        (("std::",), r"std::\w", 3, 0),
        (("cout", "cin", "cerr", "endl"), r"(?:cout|cin|cerr|endl)\b", 3, 0),
        (
            ("#include",),
            r"^[ \t]*#include\s*<(iostream|vector|string|map|unordered_map|set|algorithm|memory|sstream|fstream|"
            r"utility|queue|stack|thread|mutex|cmath|cstdio|cstdlib|bits/stdc\+\+\.h)>",
            3,
            _M,
        ),
        (("template",), r"^[ \t]*template\s*<", 3, _M),
        (("namespace",), r"^[ \t]*using namespace \w+;", 3, _M),
        (("nullptr", "auto", "constexpr"), r"nullptr\b|auto\s+\w+\s*=|constexpr\b", 2, 0),
        (
            ("vector<", "unique_ptr<", "shared_ptr<", "map<", "pair<"),
            r"(?:vector|unique_ptr|shared_ptr|map|pair)<",
            1.5,
            0,
        ),
        (("::",), r"::\w+\(", 1, 0),
        (("public:", "private:", "protected:"), r"^[ \t]*(public|private|protected):[ \t]*$", 2, _M),
    ],
    "java": [
        (("main",), r"public static void main\s*\(\s*String", 4, 0),
        (("System.",), r"System\.(out|err)\.print", 3, 0),
        (("java", "javax"), r"^[ \t]*import java(x)?\.", 3, _M),
        (("package",), r"^[ \t]*package [\w.]+;", 3, _M),
        (
            ("public", "private", "protected"),
            r"^[ \t]*(public|private|protected)( static)?( final)?( abstract)? (class|interface|enum|void|int|"
            r"String|boolean|double|long|List<)\b",
            1.5,
            _M,
        ),
        (("@",), r"@(?:Override|Autowired|SpringBootApplication)\b", 2.5, 0),
        (
            ("ArrayList", "HashMap", "HashSet", "LinkedList", "String[]"),
            r"(?:ArrayList|HashMap|HashSet|LinkedList)<|String\[\]",
            1.5,
            0,
        ),
        (("new",), r"new \w+(<[^>\n]*>)?\(", 0.5, 0),
        (("throws",), r"throws \w", 1.5, 0),
    ],
    "csharp": [
        (("System",), r"^[ \t]*using System(\.[\w.]+)?;", 3, _M),
        (("Console.",), r"Console\.(Write|WriteLine|ReadLine)\(", 3, 0),
        (("Main",), r"static (async )?(void|Task|int) Main\(", 3, 0),
        (("get;",), r"\{\s*get;\s*(private |init; |set;\s*)?\}", 3, 0),
        (("namespace",), r"^[ \t]*namespace [\w.]+", 1.5, _M),
        (("var",), r"var \w+ = new\b", 1, 0),
        (("foreach",), r"foreach\s*\(\s*var\b", 2, 0),
        (
            ("HttpGet", "HttpPost", "Serializable", "Test", "Fact", "ApiController"),
            r"^[ \t]*\[(HttpGet|HttpPost|Serializable|Test|Fact|ApiController)\b",
            2.5,
            _M,
        ),
        (
            ("public", "private", "internal"),
            r"(?:public|private|internal) (async |static |override )*(Task|void|string|int|bool)\b",
            1,
            0,
        ),
        (
            (".ToString()", "IsNullOrEmpty", "List<"),
            r"\.ToString\(\)|string\.IsNullOrEmpty\b|List<\w+> \w+ = new",
            1.5,
            0,
        ),
    ],
    "go": [
        (("package",), r"^package \w+[ \t]*$", 3, _M),
        (("func",), r"^[ \t]*func (\(\w+ \*?\w+\) )?\w+\(", 2.5, _M),
        (("fmt.",), r"fmt\.\w+\(", 3, 0),
        (("import",), r"^import \($|^import \"", 3, _M),
        ((":=",), r":= (?<=\w :=.)", 2, 0),
        (("err != nil",), r"err != nil\b", 3, 0),
        (("go", "chan", "defer"), r"go func\b|chan \w|defer \w", 2, 0),
        (("[]", "map["), r"\[\]\w+\{|make\(\[\]|map\[\w+\]", 1.5, 0),
    ],
    "rust": [
        (("fn",), r"^[ \t]*(pub(\([\w:]+\))? )?(async )?fn \w+", 3, _M),
        (("let mut",), r"let mut\b", 3, 0),
        (("impl",), r"^[ \t]*impl\b", 3, _M),
        (("use",), r"^[ \t]*use \w+(::[\w{},* ]+)+;", 3, _M),
        (("!(", "vec!["), r"(?:println|format|vec|panic|assert_eq|write|eprintln)!\(|vec!\[", 3, 0),
        (
            ("&mut", "&str", "String::", "Option<", "Result<", "Box<"),
            r"&mut \w|&str\b|String::\w|(?:Option|Result|Box)<",
            2,
            0,
        ),
        (("#[",), r"^[ \t]*#\[(derive|test|cfg)", 3, _M),
        (("Some(", "Ok(", "Err(", ".unwrap()"), r"(?:Some|Ok|Err)\(|\.unwrap\(\)", 1, 0),
        (("match",), r"match \w+ \{", 1, 0),
    ],
    "swift": [
        (
            ("UIKit", "Foundation", "SwiftUI", "Combine", "XCTest"),
            r"^[ \t]*import (UIKit|Foundation|SwiftUI|Combine|XCTest)\b",
            3,
            _M,
        ),
        (("guard", "let"), r"guard let\b|if let \w+ = ", 3, 0),
        (
            ("func",),
            r"^[ \t]*(@\w+ )*(private |public |override |static |mutating )*func \w+(<[^>\n]*>)?\([^)\n]*\)\s*"
            r"(->|\{)",
            2,
            _M,
        ),
        (("var", "let"), r"(?:var|let) \w+\s*:\s*\[?[A-Z]\w*[\]?!]*\s*[={\n]", 1.5, 0),
        (("\\(",), r"print\(\"[^\"\n]*\\\(", 3, 0),
        (
            ("@State", "@Published", "@IBOutlet", "some View"),
            r"@(?:State|Published|IBOutlet)\b|some View\b",
            3,
            0,
        ),
        (
            ("struct", "class", "enum", "protocol", "extension"),
            r"^[ \t]*(struct|class|enum|protocol|extension) \w+\s*:\s*\w+",
            1.5,
            _M,
        ),
        (("nil",), r"nil\b(?<!\wnil)", 1, 0),
        (("let",), r"let \w+ = ", 0.5, 0),
    ],
    "kotlin": [
        (("fun",), r"^[ \t]*(private |public |override |suspend |inline )*fun (<[^>\n]*> )?[\w.]+\(", 3, _M),
        (("val",), r"val \w+(\s*:\s*[\w<>?]+)?\s*=", 2, 0),
        (("data", "companion", "sealed"), r"data class\b|companion object\b|sealed class\b", 3, 0),
        (("println(",), r"println\(", 1, 0),
        (("when",), r"when\s*(\([^)\n]*\))?\s*\{", 1.5, 0),
        (("var",), r"var \w+\s*:\s*\w", 0.5, 0),
        (("?.", "!!.", "?:"), r"\?\.\w|!!\.|\?:", 1, 0),
        (("listOf", "mutableListOf", "mapOf", "setOf"), r"(?:listOf|mutableListOf|mapOf|setOf)\(", 2.5, 0),
    ],
    "php": [
        (("<?php",), r"<\?php", 5, 0),
        (("$this->",), r"\$this->", 3, 0),
        (("function",), r"function \w+\s*\([^)\n]*\$", 3, 0),
        (("$",), r"^[ \t]*\$\w+\s*=\s*[^=\n]", 1.5, _M),
        (("echo",), r"echo ['\"$]", 1, 0),
        (("->",), r"->\w+\(|(?:public|private|protected) function\b", 1, 0),
        (("array(", "($"), r"(?<![\w$])array\(|(?:isset|empty|count|explode|implode|str_replace)\(\$", 2, 0),
        (("$_",), r"\$_(GET|POST|SERVER|SESSION)\b", 3, 0),
    ],
    "ruby": [
        (("def",), r"^[ \t]*def (self\.)?\w+[?!]?(\(.*\))?[ \t]*$", 2, _M),
        (("end",), r"^[ \t]*end[ \t]*$", 1.5, _M),
        (("puts",), r"^[ \t]*puts\b|puts ['\"]", 2, _M),
        ((".each", "do |"), r"\.each(_with_index)? do\b|do \|[\w, ]+\|", 3, 0),
        (("require", "require_relative"), r"^[ \t]*require(_relative)? ['\"]", 2, _M),
        (("attr_",), r"attr_(accessor|reader|writer)\b", 3, 0),
        (("class",), r"^[ \t]*class \w+( < [\w:]+)?[ \t]*$", 1.5, _M),
        (("module",), r"^[ \t]*module \w+[ \t]*$", 2, _M),
        (("#{",), r"#\{[^}\n]*\}", 2, 0),
        ((".new", "elsif"), r"\.new\b|elsif\b", 1, 0),
    ],
    "haskell": [
        (("::",), r"^[ \t]*[a-z]\w*'?\s*::\s*[^\n]*->", 3, _M),
        (("::",), r"^[ \t]*[a-z]\w*'?\s*::\s*[A-Z(\[]", 1.5, _M),
        (("module",), r"^[ \t]*module [\w.]+( \([^)\n]*\))? where\b", 3, _M),
        (("qualified", "Data", "Control"), r"^import qualified\b|^import Data\.|^import Control\.", 3, _M),
        (("main",), r"^[ \t]*main\s*=\s*do\b", 4, _M),
        (("putStrLn", "mapM_", "foldr", "foldl"), r"(?:putStrLn|mapM_|foldr|foldl)\b", 2.5, 0),
        (("data", "newtype"), r"^[ \t]*(data|newtype) \w+.*=", 2, _M),
        (("instance",), r"^[ \t]*instance \w+", 2, _M),
        (("Maybe", "Just", "Nothing", "IO"), r"(?:Maybe|Just|Nothing|IO \(\))\b", 1, 0),
        ((" | ",), r"^[ \t]*\w+( \w+)* \| .+ = ", 1, _M),
        ((" <- ",), r" <- ", 0.5, 0),
    ],
    "sql": [
        (("select",), r"^[ \t]*SELECT\b[\s\S]{0,300}?\bFROM\b", 3, _MI),
        (
            ("insert", "update", "delete", "create", "alter", "drop"),
            r"^[ \t]*(INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (OR REPLACE )?(TABLE|INDEX|VIEW|DATABASE|"
            r"PROCEDURE|FUNCTION)|ALTER TABLE|DROP (TABLE|INDEX|VIEW))\b",
            3,
            _MI,
        ),
        (
            ("where", "group", "order", "having", "join", "limit"),
            r"^[ \t]*(WHERE|GROUP BY|ORDER BY|HAVING|(INNER |LEFT |RIGHT |FULL )?(OUTER )?JOIN|LIMIT)\b",
            1,
            _MI,
        ),
        (
            ("primary", "foreign", "varchar", "null", "auto_increment"),
            r"(?:PRIMARY KEY|FOREIGN KEY|VARCHAR\(|NOT NULL|AUTO_INCREMENT)\b",
            2,
            re.I,
        ),
        (("count", "sum", "avg", "max", "min"), r"(?:COUNT|SUM|AVG|MAX|MIN)\(\*?\w*\)", 0.5, re.I),
    ],
    "shell": [
        (("#!",), r"^#!\s*/(usr/)?bin/(env )?(ba|z|k|da)?sh\b", 5, _M),
        (("$ ",), r"^[ \t]*\$ \w", 2, _M),
        (_SHELL_COMMANDS, rf"^[ \t]*(\$ )?(?:{'|'.join(_SHELL_COMMANDS)})( |$)", 1.5, _M),
        (("fi", "done", "esac"), r"^[ \t]*(fi|done|esac)[ \t]*;?[ \t]*$", 2.5, _M),
        (("[ ",), r"^[ \t]*(if|while) \[\[? ", 3, _M),
        (("do",), r"^[ \t]*for \w+ in [^\n]*;\s*do\b", 3, _M),
        (("|",), r"\|\s*(grep|awk|sed|xargs|sort|uniq|head|tail|wc|cut|tr)\b", 2, 0),
        (("$",), r"\$\{\w+[}:#%]|\$\(\w|\"\$\w+\"|\$[1-9@#?]", 1.5, 0),
        (("=",), r"^[ \t]*\w+=(\"|'|\$|\w)", 0.5, _M),
        (("local", "readonly", "declare"), r"^[ \t]*(local|readonly|declare) ", 1.5, _M),
    ],
    "cobol": [
        (("division",), r"(?:IDENTIFICATION|PROCEDURE|DATA|ENVIRONMENT) DIVISION\b", 5, re.I),
        (("section", "program"), r"(?:WORKING-STORAGE SECTION|FILE SECTION|PROGRAM-ID)\b", 5, re.I),
        (("PIC", "PICTURE"), r"PIC(TURE)?\s+[XxAaSs9]", 3, 0),
        (("STOP",), r"STOP RUN\b", 4, 0),
        (("DISPLAY", "MOVE", "PERFORM", "ACCEPT"), r"DISPLAY ['\"]|MOVE \S+ TO\b|PERFORM \w|ACCEPT \w", 2, 0),
        (("PIC", "."), r"^\s*\d{2} +[\w-]+( +PIC| *\.)", 2, _M),
    ],
}
# TypeScript = JavaScript + type syntax: its own signals are only counted on top of a JavaScript score.
_TS_EXTRA: list[_Sig] = [
    ((":",), r": ?(?:string|number|boolean|any|void|unknown|never|Record<|Promise<)\b", 2, 0),
    (("interface", "type"), r"^[ \t]*(export )?(interface|type) \w+(<[^>\n]*>)?\s*(=|\{|extends)", 3, _M),
    (("as", "<"), r"as (?:string|number|const|any|unknown)\b|<\w+>\(", 1.5, 0),
    (
        ("private", "public", "readonly", "protected"),
        r"(?:private|public|readonly|protected) \w+\s*[:?]",
        2,
        0,
    ),
    (("enum",), r"^[ \t]*(export )?enum \w+ \{", 1.5, _M),
    ((":",), r"\)\s*:\s*[\w<>\[\]|]+\s*(=>|\{)", 2, 0),
]
_Compiled = tuple[frozenset[str], tuple[str, ...], re.Pattern, float, bool]


def _compile(sig: _Sig) -> _Compiled:
    gate, pattern, weight, flags = sig
    words = frozenset(g for g in gate if g.isidentifier())
    snippets = tuple(g for g in gate if not g.isidentifier())
    return words, snippets, re.compile(pattern, flags), weight, bool(flags & re.I)


_COMPILED: dict[str, list[_Compiled]] = {
    lang: [_compile(s) for s in sigs] for lang, sigs in _SIGNATURES.items()
}
_TS_COMPILED = [_compile(s) for s in _TS_EXTRA]
_WORD_RE = re.compile(r"[A-Za-z_]\w*")


def _score(patterns: list[_Compiled], code: str, words: set[str], lower: set[str]) -> float:
    total = 0.0
    for gate_words, snippets, rx, weight, insensitive in patterns:
        if not (gate_words and not gate_words.isdisjoint(lower if insensitive else words)) and not any(
            s in code for s in snippets
        ):
            continue
        # Count up to 3 hits per signature: repetition adds confidence, but one noisy pattern must not win.
        n = 0
        for _ in rx.finditer(code):
            n += 1
            if n == 3:
                break
        total += weight * n
    return total


# Cheap pre-filter for a response without fences: lines that carry code syntax. Only when enough lines match is
# the whole response scored (a bare-code answer); prose never pays for the 17-language scoring.
_CODE_LINE_RE = re.compile(
    r"^[ \t]*(?:def |class |import |from \S+ import|#include|package |func |fn |let |const |var |public |"
    r"private |using |SELECT |INSERT |CREATE |UPDATE |#!/|return\b|if\s*\(|for\s*\(|while\s*\(|\}|end$|"
    r"\w+\s*(?::=|=)\s*\S.*[;)]?$|.*[;{]$|.*\)$|@\w+)",
    re.M,
)
_INDENTED_RUN_RE = re.compile(r"(?:^(?:\t| {4})[^\n]*\S[^\n]*\n?(?:[ \t]*\n)*){2,}", re.M)
_LIST_LINE_RE = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s")

# Thresholds: a fenced block without a language is code by construction, so a weak signal is enough; indented
# text must show one distinctive construct, and a response without any code layout must show more.
MIN_SCORE_FENCED = 2.0
MIN_SCORE_INDENTED = 3.0
MIN_SCORE_BARE = 4.0


def _first_word(info: str) -> str:
    m = _INFO_WORD_RE.match(info.strip().lower())
    return m.group(1) if m else ""


def normalize_tag(info: str) -> str | None:
    """The canonical language for a fence info string (``python3``, ``{.cpp}``, ``js title="x"``), or None."""
    word = _first_word(info)
    if not word:
        return None
    # "python3.11", "php8.2": a version suffix does not change the language.
    return ALIASES.get(word) or ALIASES.get(word.rstrip("0123456789."))


def language_scores(code: str) -> dict[str, float]:
    """Signature score per language for an untagged piece of code (only languages with a positive score)."""
    code = code[:MAX_BLOCK_CHARS]
    words = set(_WORD_RE.findall(code))
    lower = {w.lower() for w in words}
    scores: dict[str, float] = {}
    for lang, patterns in _COMPILED.items():
        s = _score(patterns, code, words, lower)
        if s > 0:
            scores[lang] = s
    # C++ is C plus C++-only signals; TypeScript is JavaScript plus types.
    cpp_only = scores.pop("cpp", 0.0)
    if cpp_only:
        scores["cpp"] = cpp_only + scores.get("c", 0.0)
    js = scores.get("javascript", 0.0)
    if js:
        ts_only = _score(_TS_COMPILED, code, words, lower)
        if ts_only:
            scores["typescript"] = js + ts_only
    return scores


def detect_language(code: str, min_score: float = MIN_SCORE_FENCED) -> str | None:
    """The most likely of the 17 languages for untagged code, or None when no language scores `min_score`."""
    scores = language_scores(code)
    if not scores:
        return None
    lang, best = max(scores.items(), key=lambda kv: kv[1])
    return lang if best >= min_score else None


def iter_fenced(text: str) -> Iterator[tuple[str, str, int, int]]:
    """Yield (info string, body, start, end) for each fenced code block of `text`."""
    for m in FENCE_RE.finditer(text):
        yield m.group("info").strip(), m.group("body"), m.start(), m.end()


def strip_fenced(text: str, replacement: str = "\n") -> str:
    """`text` with every fenced code block replaced by `replacement`."""
    if "```" not in text and "~~~" not in text:
        return text
    return FENCE_RE.sub(replacement, text)


def _code_lines(body: str) -> int:
    return sum(1 for line in body.splitlines() if line.strip())


def code_blocks(text: str) -> list[tuple[str | None, int]]:
    """(language or None, number of code lines) for each piece of code found in a response."""
    text = text[:MAX_SCAN_CHARS]
    blocks: list[tuple[str | None, int]] = []
    has_fence = "```" in text or "~~~" in text
    rest = text
    if has_fence:
        pieces, last = [], 0
        for info, body, start, end in iter_fenced(text):
            pieces.append(text[last:start])
            last = end
            if not body.strip():
                continue
            if info:
                lang = normalize_tag(info)
                if lang is None:
                    if _first_word(info) in _NOT_CODE:
                        continue  # program output or prose in a fence
                    # A named language outside the 17 (html, yaml, json, lua...): code, but none of our values.
                    blocks.append((None, _code_lines(body)))
                    continue
            else:
                lang = detect_language(body, MIN_SCORE_FENCED)
            blocks.append((lang, _code_lines(body)))
        pieces.append(text[last:])
        rest = "".join(pieces)
    # Indented code outside fences (list continuation lines are excluded: they are prose).
    if "    " in rest or "\t" in rest:
        for m in _INDENTED_RUN_RE.finditer(rest):
            run = m.group(0)
            lines = [ln for ln in run.splitlines() if ln.strip()]
            if sum(1 for ln in lines if _LIST_LINE_RE.match(ln)) * 2 >= len(lines):
                continue
            lang = detect_language(run, MIN_SCORE_INDENTED)
            if lang:
                blocks.append((lang, len(lines)))
    if not blocks and not has_fence:
        # A bare-code response: a third or more of its first non-blank lines look like code.
        lines = [ln for ln in text[:MAX_BLOCK_CHARS].splitlines() if ln.strip()]
        if len(lines) >= 2:
            hits = sum(1 for ln in lines if _CODE_LINE_RE.match(ln))
            if hits * 3 >= len(lines):
                lang = detect_language("\n".join(lines), MIN_SCORE_BARE)
                if lang:
                    blocks.append((lang, len(lines)))
    return blocks


def detect_code_type(text: str) -> str | None:
    """The language of the code in `text`: the one with the most code lines over all blocks; None if no code."""
    lines: dict[str, int] = {}
    for lang, n in code_blocks(text):
        if lang is not None:
            lines[lang] = lines.get(lang, 0) + n
    if not lines:
        return None
    return max(lines.items(), key=lambda kv: kv[1])[0]


class CodeTypeAnnotator:
    """Fills `code_type` from the code in the response (last assistant turn); left out when there is none."""

    name = "code_type:rules"
    categories = ("code_type",)

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rec in records:
            lang = detect_code_type(last_assistant(rec))
            out.append({"code_type": lang} if lang else {})
        return out

    def explain(self, records: list[dict]) -> list[dict[str, dict]]:
        """Per record: the response's code blocks and the language each was read as."""
        out = []
        for rec in records:
            blocks = [{"language": lang, "lines": n} for lang, n in code_blocks(last_assistant(rec))]
            out.append(
                {"code_type": {"code_blocks": blocks, "rule": "the language with the most code lines"}}
            )
        return out
