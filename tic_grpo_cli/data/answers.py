"""Finding the final answer in a completion, and numbers as models write them.

The rules (docs/rewards.md states them for users; tests/data/reward_corpus.yaml pins them):

- The final answer is in the last *complete* box (``\\boxed{...}`` or ``\\fbox{...}``). An
  unfinished or empty final box means no answer: a completion cut by the length limit, or a
  model restarting, is never credited with an earlier number.
- A number may carry a sign (``-``, or the Unicode minus U+2212, figure and en dashes, small
  and full-width hyphen-minus, that LaTeX-to-text and some tokenizers produce), currency (``$``, ``\\$``) and thousands separators, which count
  only between groups of exactly three digits: ``1,234``, ``9{,}500``, ``9\\,500``, a thin
  space; ``75,00`` is the number 75 followed by 00, not 7500. A minus right after a digit,
  letter or closing bracket is subtraction (``10-8``), not a sign.
- ``\\frac{a}{b}`` and ``a/b`` of integers are one number, the fraction a/b.

Why our own code and not math-verify for the number scorers: given the gsm8k and number
cases of the corpus directly, math-verify gets 27 of 107 wrong (``9\\,500`` and thin-space
groups, ``−12`` and ``-$5`` in running text, ``25\\%``, ``\\text{18 apples}``, ``1000.``, several
boxes taken together, earlier answers credited through an unfinished final box, ``####``).
The math scorer does use math-verify (verify.py).
"""

from __future__ import annotations

import re
from fractions import Fraction

# Characters written for a minus sign besides "-": U+2212 minus, U+2012 figure dash, U+2013 en
# dash, U+FE63 small and U+FF0D full-width hyphen-minus (the em dash is punctuation).
MINUS_SIGNS = "\u2212\u2012\u2013\ufe63\uff0d"
# Thousands separators besides the comma: LaTeX `{,}` and spaces, thin spaces.
SPACE_SEPARATOR = r"(?:\{,\}|\\[,;: ]|[\u2009\u202f])"
_SEPARATOR = rf"(?:,|{SPACE_SEPARATOR})"
# Digits are not part of a number when glued to a letter, digit or dot before them.
_NUMBER = re.compile(
    rf"(?:(?<![\w)\]}}.])(?P<sign>[-+{MINUS_SIGNS}]))?"
    r"(?:\\?\$\s*)?"
    r"(?<![\w.])"
    r"(?:\\[dt]?frac\{\s*(?P<fnum>\d+)\s*\}\{\s*(?P<fden>\d+)\s*\}"
    r"|(?P<num>\d+)\s*/\s*(?P<den>\d+)(?!\d|\.\d)"
    rf"|(?P<int>\d{{1,3}}(?:{_SEPARATOR}\d{{3}})+(?!\d)|\d+)(?:\.(?P<frac>\d+))?)"
)
_SEPARATORS = re.compile(_SEPARATOR)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_PHRASE = re.compile(r"(?:final\s+)?answer\s*(?:is|:)", re.IGNORECASE)


def last_box(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched), or None
    when there is no box, or the last one is unfinished (cut off) or empty."""
    starts = [m.end() for m in _BOX.finditer(text)]
    if not starts:
        return None
    begin = starts[-1]
    depth = 0
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                content = text[begin:i].strip()
                return content or None
            depth -= 1
    return None


def has_box(text: str) -> bool:
    return _BOX.search(text) is not None


def numbers(text: str) -> list[tuple[str, Fraction]]:
    """Every number in ``text`` in order, as (the text matched, its exact value)."""
    found = []
    for match in _NUMBER.finditer(text):
        value = _value(match)
        if value is not None:
            found.append((match.group().strip(), value))
    return found


def _value(match: re.Match[str]) -> Fraction | None:
    if match["fden"] is not None or match["den"] is not None:
        num, den = (match["fnum"], match["fden"]) if match["fden"] else (match["num"], match["den"])
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
    else:
        digits = _SEPARATORS.sub("", match["int"])
        value = Fraction(f"{digits}.{match['frac']}" if match["frac"] else digits)
    return value if match["sign"] in (None, "+") else -value


def canonical(value: Fraction) -> str:
    """The one spelling of a number used for verdicts and votes: ``1234``, ``-3``, ``0.5``;
    a fraction without a finite decimal stays ``p/q`` (``1/3``)."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    text = f"{abs(value.numerator) * 10**places // value.denominator:0{places + 1}d}"
    sign = "-" if value < 0 else ""
    return f"{sign}{text[:-places]}.{text[-places:]}"


def parse_number(text: str) -> Fraction | None:
    """The value of the first number in ``text`` (a reference answer), or None."""
    found = numbers(text)
    return found[0][1] if found else None


def first_number(text: str) -> tuple[str, Fraction] | None:
    found = numbers(text)
    return found[0] if found else None


def final_number(completion: str) -> tuple[str, Fraction] | None:
    """The number a completion answers with, GSM8K style, or None:

    1. a box: the number after the last ``=`` in the last complete box (else its first);
       an unfinished or empty last box, or one without a number, is no answer;
    2. else ``####``: the first number after the first ``####`` (a model that goes on after
       its answer often writes, and answers, a question of its own);
    3. else "answer is" / "answer:": the first number after the last such phrase;
    4. else the last number.
    """
    if has_box(completion):
        box = last_box(completion)
        if box is None:
            return None
        return first_number(box.rsplit("=", 1)[-1]) or first_number(box)
    if "####" in completion:
        return first_number(completion.split("####", 1)[1])
    phrases = list(_ANSWER_PHRASE.finditer(completion))
    if phrases:
        after = first_number(completion[phrases[-1].end() :])
        if after is not None:
            return after
    found = numbers(completion)
    return found[-1] if found else None
