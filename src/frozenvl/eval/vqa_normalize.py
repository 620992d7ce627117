"""VQA answer normalisation: the rules of the official VQAv2 evaluation, written from their description.

Applied to a predicted answer, in this order:

1. newlines and tabs become spaces; surrounding whitespace is stripped;
2. punctuation: each of ``; : / ' [ ] " ( ) = + \\ _ > < @ ` , ?`` is deleted if the text has that character
   next to a space, or the text has a digit-comma-digit group anywhere (``1,000``); otherwise it is replaced
   by a space. A period is deleted unless a digit follows it (``3.5`` keeps it, ``dog.`` loses it);
3. lowercase and split on whitespace; number words ``none zero one ... ten`` become digits (``none`` ->
   ``0``); articles ``a an the`` are dropped; apostrophe-less contractions are restored (``dont`` ->
   ``don't``).

The official code writes most restored contractions with a typographic apostrophe (U+2019) and a few with an
ASCII one; we use ASCII throughout. Reference answers are only put through step 2, and only when the
annotators disagree: that is what the official scorer does, so ``vqa_accuracy`` does the same by default.
"""

from __future__ import annotations

import re

_PUNCTUATION = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`",
                ",", "?")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(["a", "an", "the"])

# Contractions as they are written. A predicted word equal to one of them without its apostrophes is
# restored (ASCII apostrophes are gone after step 2, so only the apostrophe-less spelling can match). These
# are the apostrophe-less spellings the official table maps, less those that never match a lowercased word.
_CONTRACTION_FORMS = (
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll "
    "how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't "
    "should've shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll "
    "that's there'd there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll "
    "what're what's what've when's where'd where's where've who'd who'll who's who've why'll why're why's "
    "won't would've wouldn't y'all you'd you'll you're you've"
).split()
CONTRACTIONS = {form.replace("'", ""): form for form in _CONTRACTION_FORMS}


def process_punctuation(text: str) -> str:
    """Step 2 above: punctuation deleted or turned into spaces, periods not followed by a digit deleted."""
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        # the decision looks at the original text, not at the text rewritten so far
        if has_digit_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digits_articles(text: str) -> str:
    """Step 3 above: lowercase, number words to digits, articles dropped, contractions restored."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The full normalisation applied to a predicted answer (steps 1-3)."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_articles(process_punctuation(answer))
