"""VQA answer normalisation: the rules and tables of the official VQA evaluation (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` as of its last change, March 2021), written from its code.

:func:`normalize_answer` applies, in this order:

1. newlines and tabs become spaces; surrounding whitespace is stripped;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted if the text has that character
   next to a space, or the text has a digit-comma-digit group anywhere (``1,000``); otherwise it is replaced by
   a space. Apostrophes and colons are kept. A period is deleted unless a digit follows it (``3.5`` keeps it,
   ``dog.`` loses it), at most 32 of them (the official call passes ``re.UNICODE``, 32, as the count);
3. lowercase and split on whitespace; number words ``none zero one ... ten`` become digits (``none`` ->
   ``0``); articles ``a an the`` are dropped; contractions missing one apostrophe are restored (``dont`` ->
   ``don't``, ``couldn'tve`` -> ``couldn't've``).

The official table writes its contractions with ASCII apostrophes since October 2016 (its 2015 releases used
the typographic U+2019 in most entries, and listed ``'`` and ``:`` as punctuation). OpenFlamingo's
``vqa_metric.py`` carries the same tables; when the rules are applied differs (see :mod:`frozenvl.eval.metrics`).
"""

from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32  # the official code's re.sub(..., re.UNICODE): the flag lands in the count argument
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(["a", "an", "the"])

# The contractions the official table restores: each spelling that lacks exactly one of a form's apostrophes
# maps to the form (``couldnt've`` and ``couldn'tve`` -> ``couldn't've``; ``couldntve`` stays as it is). The
# capitalised forms never match a lowercased word; they are kept so that the table is the official one.
_CONTRACTION_FORMS = (
    "'ow's'at 'twas I'd've I'm I've ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't "
    "hadn't've hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am might've "
    "mightn't mightn't've must've mustn't needn't not've o'clock oughtn't shan't she'd've should've shouldn't "
    "shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd "
    "something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd "
    "who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'd've "
    "y'all'll you'd you'd've you'll you're you've"
).split()
CONTRACTIONS = {form[:i] + form[i + 1:]: form for form in _CONTRACTION_FORMS for i, c in enumerate(form) if c == "'"}
# Entries of the official table outside that rule: two that map a form to itself (``lets`` and ``shes`` are
# not restored) and one written backwards.
CONTRACTIONS.update({"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"})


def strip_whitespace(text: str) -> str:
    """Step 1 above: newlines and tabs become spaces, surrounding whitespace is removed."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Step 2 above: punctuation deleted or turned into spaces, periods not followed by a digit deleted."""
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        # the decision looks at the original text, not at the text rewritten so far
        if has_digit_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS)


def process_digits_articles(text: str) -> str:
    """Step 3 above: lowercase, number words to digits, articles dropped, contractions restored."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The full normalisation (steps 1-3)."""
    return process_digits_articles(process_punctuation(strip_whitespace(answer)))
