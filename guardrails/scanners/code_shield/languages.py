"""The languages Code Shield knows: canonical names, the tags people write on fences, and evidence to detect them.

A language is detected from a fence tag when there is one, else from a shebang, else from syntax and keyword
evidence scored per language (:func:`detect`). Nothing is ever "every language": code with no clear evidence gets
``None`` and only the language-agnostic rules (secrets, Trojan-Source characters) run on it.
"""

from __future__ import annotations

import regex

__all__ = ["LANGUAGES", "EXTENSIONS", "SEMGREP_LANGUAGE", "canonical", "detect"]

# canonical name -> fence tags and file names that mean it
_ALIASES: dict[str, tuple[str, ...]] = {
    "python": ("python", "py", "python3", "py3", "pycon", "ipython", "sage"),
    "javascript": ("javascript", "js", "node", "nodejs", "jsx", "mjs", "cjs", "typescript", "ts", "tsx", "deno"),
    "c": ("c", "h"),
    "cpp": ("cpp", "c++", "cxx", "cc", "hpp", "hxx", "hh", "arduino", "ino", "cuda", "cu"),
    "csharp": ("csharp", "c#", "cs", "dotnet", ".net"),
    "java": ("java",),
    "php": ("php", "php5", "php7", "php8"),
    "go": ("go", "golang"),
    "rust": ("rust", "rs"),
    "ruby": ("ruby", "rb", "erb", "rails"),
    "shell": ("shell", "sh", "bash", "zsh", "ksh", "console", "shell-session", "shellscript", "terminal", "dash"),
}
LANGUAGES: tuple[str, ...] = tuple(_ALIASES)
_BY_ALIAS = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}

# file extension for temp files (semgrep picks its parser by the rule's language; the name only has to be valid)
EXTENSIONS = {
    "python": ".py",
    "javascript": ".ts",  # TypeScript is a superset: semgrep's TS parser takes plain JavaScript too
    "c": ".c",
    "cpp": ".cpp",
    "csharp": ".cs",
    "java": ".java",
    "php": ".php",
    "go": ".go",
    "rust": ".rs",
    "ruby": ".rb",
    "shell": ".sh",
}
SEMGREP_LANGUAGE = {
    "python": "python",
    "javascript": "typescript",
    "c": "c",
    "cpp": "cpp",
    "csharp": "csharp",
    "java": "java",
    "php": "php",
    "go": "go",
    "rust": "rust",
    "ruby": "ruby",
    "shell": "bash",
}


def canonical(tag: str | None) -> str | None:
    """The canonical language for a fence tag or a language name (``"py"`` -> ``"python"``); None if unknown."""
    if not tag:
        return None
    tag = tag.strip().lower()
    tag = tag.split(":", 1)[0].split(",", 1)[0].strip("{}. ")  # ```python:main.py, ```{.python}
    if tag in _BY_ALIAS:
        return _BY_ALIAS[tag]
    if "." in tag:  # a file name: ```main.rs
        return _BY_ALIAS.get(tag.rsplit(".", 1)[1])
    return None


_SHEBANG = regex.compile(r"\A#![ \t]*(?:/usr)?(?:/local)?/bin/(?:env[ \t]+(?:-\S+[ \t]+)*)?([A-Za-z0-9_.+-]+)")
_SHEBANG_LANG = {
    "python": "python", "python2": "python", "python3": "python", "node": "javascript", "deno": "javascript",
    "bun": "javascript", "ts-node": "javascript", "sh": "shell", "bash": "shell", "zsh": "shell", "ksh": "shell",
    "dash": "shell", "ruby": "ruby", "php": "php",
}  # fmt: skip

# (language, weight, pattern): evidence is summed per language over distinct patterns that occur
_EVIDENCE: list[tuple[str, float, str]] = [
    # Python
    ("python", 3, r"^\s*def \w+\(.*\)\s*(?:->\s*[^:]+)?:\s*(?:#.*)?$"),
    ("python", 2, r"^\s*(?:from [\w.]+ import \w|import [\w.]+(?: as \w+)?\s*$)"),
    ("python", 2, r"^\s*(?:elif .*|else|try|except(?: [\w.]+(?: as \w+)?)?|finally)\s*:\s*$"),
    ("python", 2, r"^\s*class \w+(?:\([^)]*\))?:\s*$"),
    ("python", 1, r"\bself\.\w+|\bNone\b|\bTrue\b|\bFalse\b|\bprint\(|__name__|\bf\"|\bf'"),
    ("python", 1, r"^\s*(?:for \w+(?:, \w+)* in .*|while .*|if .*|with .*)\s*:\s*$"),
    # JavaScript / TypeScript
    ("javascript", 3, r"\b(?:const|let) \w+\s*=|=>\s*[{(]?|\bfunction\s*\w*\s*\("),
    ("javascript", 2, r"\brequire\(\s*['\"]|^\s*import .* from ['\"]|\bmodule\.exports\b|\bexport (?:default|const)"),
    ("javascript", 2, r"\bconsole\.log\(|\bdocument\.\w+|\bwindow\.\w+|\bJSON\.(?:parse|stringify)\("),
    ("javascript", 1, r"===|!==|\bundefined\b|\basync function\b|\bawait\b|\bnew Promise\("),
    ("javascript", 1, r"^\s*(?:interface|type) \w+\s*(?:=|\{)|:\s*(?:string|number|boolean)\b"),
    # C and C++
    ("c", 3, r"^\s*#\s*include\s*<(?:stdio|stdlib|string|unistd|stdint|stdbool|fcntl|sys/\w+|errno|time)\.h>"),
    ("c", 2, r"\b(?:printf|fprintf|sprintf|snprintf|malloc|calloc|free|memcpy|strcpy|strcat|strlen|scanf)\s*\("),
    ("c", 1, r"\bint main\s*\(|\bstruct \w+\s*[{*]|\bsizeof\s*\(|->\w+|\bNULL\b|\b(?:unsigned|uint\d+_t|size_t)\b"),
    (
        "cpp",
        4,
        r"(?<!use )\bstd::(?!\w+::\w+::)"
        r"|#\s*include\s*<(?:iostream|vector|string|map|memory|algorithm|cstring|cstdio|cstdlib)>",
    ),
    ("cpp", 3, r"\bcout\s*<<|\bcin\s*>>|\btemplate\s*<|\bnamespace \w+\s*\{|\busing namespace\b|::\w+\("),
    ("cpp", 1, r"\bnew \w+[\[(]|\bdelete(?:\[\])? \w+|\bnullptr\b|\bclass \w+\s*(?::\s*public|\{)|\bauto\b"),
    # C#
    ("csharp", 4, r"^\s*using System(?:\.\w+)*;|\bConsole\.Write(?:Line)?\(|\bnamespace [\w.]+\s*(?:;|\{)"),
    ("csharp", 2, r"\bpublic (?:static |override |async |virtual )*\w+(?:<[\w, ]+>)? \w+\s*\(|\bvar \w+ = new\b"),
    ("csharp", 2, r"\[(?:HttpGet|HttpPost|Route|Authorize|Serializable|TestMethod|Fact)\b|\bstring\[\]|\.ToString\("),
    ("csharp", 1, r"\bget;\s*set;|\b(?:IEnumerable|List|Dictionary|Task)<|\bawait\b|\bforeach\s*\(var\b"),
    # Java
    ("java", 4, r"^\s*import java(?:x)?\.|\bSystem\.out\.print|\bpublic static void main\s*\(\s*String"),
    ("java", 2, r"^\s*package [\w.]+;|@Override\b|\bextends \w+|\bimplements \w+|\bthrows \w+"),
    ("java", 1, r"\bString \w+\s*=|\bnew \w+(?:<[\w, <>]*>)?\(|\bprivate final\b|\bArrayList<|\bHashMap<"),
    # PHP
    ("php", 6, r"<\?php|^\s*\$\w+\s*=|\$_(?:GET|POST|REQUEST|SERVER|COOKIE|SESSION|FILES)\b"),
    ("php", 2, r"\becho\b.*;|\bfunction \w+\s*\(\s*(?:\$|\))|->\w+\(|\bmysqli_|\barray\(|\bisset\("),
    # Go
    ("go", 5, r"^\s*package \w+\s*$|^\s*func (?:\(\w+ \*?\w+\) )?\w+\(|\bfmt\.\w+\("),
    ("go", 2, r":=|\berr != nil\b|^\s*import \(|\bgo func\b|\bchan \w+|\bdefer \w+"),
    # Rust
    ("rust", 4, r"^\s*(?:pub(?:\(crate\))? )?(?:async )?fn \w+(?:<[^>]*>)?\("),
    ("rust", 3, r"^\s*use (?:std|crate|super|self)::|\b(?:println|format|vec|panic|assert_eq|write)!\s*[(\[]"),
    ("rust", 2, r"\blet (?:mut )?\w+(?:: [\w<>&\[\]; ]+)? =|\bfn \w+\(.*\) -> "),
    ("rust", 2, r"\bimpl(?:<[^>]*>)? \w+|\b(?:Vec|Option|Result|Box)<|\.unwrap\(\)|&mut \w+|\bmatch \w+ \{|::new\("),
    # Ruby
    ("ruby", 3, r"^\s*def \w+[?!]?(?:\(.*\))?\s*$|^\s*end\s*$|\bputs\b|^\s*require ['\"]"),
    ("ruby", 2, r"\bdo \|\w+(?:, \w+)*\|| \.each\b|\battr_(?:accessor|reader|writer)\b|@\w+\s*="),
    # shell
    ("shell", 3, r"^\s*(?:sudo |apt(?:-get)? |yum |brew |pip3? |npm |curl |wget |chmod |chown |export \w+=)"),
    ("shell", 2, r"^\s*(?:if \[|fi\s*$|then\s*$|done\s*$|do\s*$|esac\s*$|for \w+ in )|\$\(|\$\{\w+|\becho \"?\$"),
]
_COMPILED = [(lang, weight, regex.compile(p, regex.MULTILINE)) for lang, weight, p in _EVIDENCE]
_MIN_EVIDENCE = 3.0


def detect(code: str) -> str | None:
    """The most likely language of ``code`` from its shebang or its syntax; None when the evidence is too thin."""
    head = code.lstrip()[:200]
    shebang = _SHEBANG.match(head)
    if shebang:
        name = regex.sub(r"[\d.]+$", "", shebang.group(1)) or shebang.group(1)
        found = _SHEBANG_LANG.get(shebang.group(1)) or _SHEBANG_LANG.get(name)
        if found:
            return found
    if head.startswith("<?php"):
        return "php"
    sample = code[:20_000]
    scores: dict[str, float] = {}
    for lang, weight, pattern in _COMPILED:
        if pattern.search(sample):
            scores[lang] = scores.get(lang, 0.0) + weight
    if scores.get("cpp", 0) and "c" in scores:
        scores["cpp"] += scores["c"]  # C evidence is C++ evidence too; C++-only evidence decides between them
    if not scores:
        return None
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] >= _MIN_EVIDENCE else None
