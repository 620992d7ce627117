"""Caption tokenisation for CIDEr: the Stanford PTB tokenizer shipped in pycocoevalcap, or a Python stand-in.

Published CIDEr numbers tokenise captions with the Java ``edu.stanford.nlp.process.PTBTokenizer`` (options
``-preserveLines -lowerCase``) and then drop punctuation tokens. When Java is missing we use
:func:`python_ptb_tokenize`, which reproduces the rules that matter for captions: lowercasing;
punctuation split off and dropped; clitics such as ``n't`` and ``'s`` split off; brackets written as
``-lrb-`` and friends (``-lowerCase`` lowercases them too, so they survive the punctuation filter); numbers
such as ``1,000``, ``3:00``, ``3.5`` and abbreviations such as ``u.s.a.`` kept whole. Results record which
tokenizer ran, so a number computed with the stand-in is never mistaken for a reference-exact one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

PTB_JAVA = "ptb-java"
PYTHON_FALLBACK = "python-fallback"

# Tokens the pycocoevalcap wrapper removes after tokenisation. (It also lists -LRB- etc. in upper case, which
# never match because of -lowerCase; we keep that behaviour: brackets survive as "-lrb-".)
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITICS = ("n't", "'s", "'re", "'ll", "'ve", "'m", "'d")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "wanna": ("wan", "na"),
                "gotta": ("got", "ta")}
_ABBREVIATIONS = frozenset(["mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "inc.", "co.",
                            "ltd.", "prof.", "mt.", "no."])
_ALNUM = r"[^\W_]"
_TOKEN = re.compile(
    rf"""
      \d+(?:[.,:]\d+)+                          # 1,000  3:00  3.5
    | (?:{_ALNUM}\.){{2,}}                      # u.s.a.  e.g.  p.m.
    | {_ALNUM}+\.(?=\s|$)                       # a word with a period: kept only for known abbreviations
    | {_ALNUM}+(?:[-/'&]{_ALNUM}+)*             # words, inner hyphens, slashes and apostrophes included
    | \.{{2,}} | -{{2,}} | `` | ''              # ellipsis, dashes, quotes
    | \S                                        # any other single character
    """,
    re.VERBOSE,
)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def _split_clitic(word: str) -> list[str]:
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    for clitic in _CLITICS:
        if word.endswith(clitic) and len(word) > len(clitic):
            return [word[: -len(clitic)], clitic]
    return [word]


def python_ptb_tokenize_line(text: str) -> str:
    """Tokenise one caption like the PTB tokenizer + pycocoevalcap punctuation removal, without Java."""
    text = text.replace("\n", " ").translate(_QUOTES).lower()
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token.endswith(".") and token.count(".") == 1 and len(token) > 1 and token not in _ABBREVIATIONS:
            tokens.extend([*_split_clitic(token[:-1]), "."])
        elif token == '"':
            continue  # PTB turns double quotes into `` or '', both removed
        elif token in _BRACKETS:
            tokens.append(_BRACKETS[token])
        else:
            tokens.extend(_split_clitic(token) if "'" in token or token in _SPLIT_WORDS else [token])
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION)


def python_ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Tokenise ``{key: [caption, ...]}`` with the Python stand-in."""
    return {key: [python_ptb_tokenize_line(c) for c in caps] for key, caps in captions.items()}


def ptb_jar_path() -> Path | None:
    """The Stanford CoreNLP jar shipped inside pycocoevalcap, or None when pycocoevalcap is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        jar = Path(root, "tokenizer", "stanford-corenlp-3.4.1.jar")
        if jar.is_file():
            return jar
    return None


def java_available() -> bool:
    return shutil.which("java") is not None and ptb_jar_path() is not None


def java_ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Tokenise ``{key: [caption, ...]}`` with pycocoevalcap's Stanford PTB tokenizer (one Java process).

    Same command line and punctuation removal as ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer``; the
    input file goes to the system temp folder instead of the package folder, which may be read-only.
    """
    jar = ptb_jar_path()
    if jar is None or shutil.which("java") is None:
        raise RuntimeError("the PTB tokenizer needs Java and pycocoevalcap's stanford-corenlp jar")
    keys = [key for key, caps in captions.items() for _ in caps]
    lines = [c.replace("\n", " ").replace("\r", " ") for caps in captions.values() for c in caps]
    if not lines:
        return {key: [] for key in captions}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as handle:
        handle.write("\n".join(lines))
        path = handle.name
    try:
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", path]
        proc = subprocess.run(cmd, capture_output=True, check=False, timeout=600)
    finally:
        os.remove(path)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode()[-500:]}")
    out_lines = proc.stdout.decode("utf-8").split("\n")
    if len(out_lines) < len(lines):
        raise RuntimeError(f"PTB tokenizer returned {len(out_lines)} lines for {len(lines)} captions")
    result: dict[str, list[str]] = {key: [] for key in captions}
    for key, line in zip(keys, out_lines):
        result[key].append(" ".join(w for w in line.rstrip().split(" ") if w and w not in PTB_PUNCTUATION))
    return result


def ptb_tokenize(captions: Mapping[str, Sequence[str]],
                 tokenizer: str = "auto") -> tuple[dict[str, list[str]], str]:
    """Tokenise with Java when possible (``"auto"``), or as asked (``"ptb-java"`` / ``"python-fallback"``).

    Returns the tokenised captions and the name of the tokenizer that ran.
    """
    if tokenizer not in ("auto", PTB_JAVA, PYTHON_FALLBACK):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; expected 'auto', {PTB_JAVA!r} or "
                         f"{PYTHON_FALLBACK!r}")
    if tokenizer == PTB_JAVA or (tokenizer == "auto" and java_available()):
        return java_ptb_tokenize(captions), PTB_JAVA
    return python_ptb_tokenize(captions), PYTHON_FALLBACK
