"""Find the final answer in free model text and decide whether it matches the reference.

Model output is untrusted data: nothing here evaluates it (no eval/exec/sympy), every regex is
linear, and only a bounded tail of the text is scanned so a megabyte of garbage costs milliseconds.
This module must stay importable without ray or torch (the CLI and tests use it on a laptop).

Rules (see the function docstrings for details):

* `extract_answer` priority: last balanced `\\boxed{...}` > last "Answer:" / "answer is" /
  "final answer" phrase > (choice questions) last lone choice letter ("B", "(B)", "[B]", "option B")
  > (text answers) the final sentence > last number in the text.
* `normalize_number` accepts plain, signed, comma-grouped, scientific, percent ("50%" -> 50.0:
  the sign is dropped, not divided by 100), currency, unit-suffixed, `a/b`, `\\frac{a}{b}` and
  mixed numbers ("3 1/2" -> 3.5, the usual reading in math answers). Anything else -> None.
* `answers_match`: integer -> equal within `abs_tol` (rel_tol ignored, so 10000 != 10001);
  float -> `math.isclose(rel_tol=1e-4, abs_tol=1e-6)`, deliberately strict: "3.14" does not match
  "3.1416" in either direction; choice -> letter, "(B)", "B) text", choice text or the choice's
  number; text -> case/whitespace/punctuation-insensitive token equality.

Conventions of real benchmark files (MathVista, MathVerse, MMMU):
* A multiple-choice reference is the choice's text or its letter ("B"; MathVerse and MMMU-style
  files write `answer: "B"` with the choices listed): both name the same choice, and the prediction
  may name it either way too (letter, "(B)", "[B]", "B.", "B)", "option B", the choice's text, or its
  number). A prediction that names two choices ("B or C") or whose letter and text disagree
  ("(B) 18 cm" when B is 15 cm) names none and is wrong.
* A short text answer may be stated in a final sentence without an answer phrase: "So the tallest
  bar is red." matches "red" when the sentence ends in the reference right after a copula ("is",
  "are", "was", "were", "equals") and an optional article, and says neither "not"/"no"/"never"/"n't"
  nor "or": "It is not red", "It is dark red" and "It is blue or red" do not match "red".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation; keeps this module free of pyarrow at import time
    from mmc_ray.tasks.problem import Problem

# Answers sit at the end of a generation; scanning only the tail bounds the work on huge inputs.
_SCAN_CHARS = 20_000
_NUMBER_SCAN_CHARS = 4_000
# A longer "answer" is a paragraph, not an answer; cap what we store and compare.
_MAX_ANSWER_CHARS = 200
# Adversarial text ("\boxed{" x 10k, never closed) must not make candidate scanning quadratic.
_MAX_CANDIDATES = 20
_MAX_BOXED_CHARS = 1_000

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Matches up to where the answer starts; the answer is the rest of that line (or the next line).
_ANSWER_PHRASE = re.compile(
    r"\b(?:final[ \t]+)?answer\b(?:[ \t]*\*\*)?[ \t]*(?:is\b|[:：=])[ \t]*(?:\*\*)?[ \t]*:?[ \t]*",
    re.IGNORECASE,
)
_NEXT_LINE = re.compile(r"\s*([^\n]*)")
# The answer phrase runs to the end of its sentence: "Answer: B. The red bar is ..." -> "B".
_SENTENCE_END = re.compile(r"[.!?。](?:\s|$)|,\s+(?:because|since|as|which|so)\b", re.IGNORECASE)
_CHOICE_PATTERNS = (
    re.compile(r"\((?P<l>[A-Z])\)|\[(?P<l2>[A-Z])\]"),  # "(B)", "[B]"
    re.compile(r"\b(?i:option|choice)\s*\(?(?P<l>[A-Z])\b"),  # "option B", "choice (B)"
    re.compile(r"^[ \t*]*(?P<l>[A-Z])[ \t]*[.):]?[ \t*]*$", re.MULTILINE),  # "B" / "B." alone on a line
    re.compile(r"^[ \t*]*(?P<l>[A-Z])[.)][ \t]", re.MULTILINE),  # "B. 12 cm" / "B) 12 cm"
)
# A minus counts only when it is not a hyphen inside a word or expression ("x-2" -> "2").
_FALLBACK_NUMBER = re.compile(r"(?:(?<![\w)])[-−])?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?(?:/\d+)?%?")

_MINUS_SIGNS = str.maketrans({"−": "-", "－": "-", "﹣": "-", "–": "-"})
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*(?:\{([^{}]*)\}\s*\{([^{}]*)\}|(\d)(\d))")
_APPROX_PREFIX = re.compile(r"^(?:about|approximately|approx\.?|roughly|around|~|≈)\s*", re.IGNORECASE)
_DEC = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(
    rf"""(?P<sign>[-+]?)\s*
    (?:(?P<whole>\d+)\s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)      # mixed number: 3 1/2
      |(?P<num>{_DEC})(?:\s*/\s*(?P<den>{_DEC}))?)            # decimal, or a/b
    \s*%?\s*
    (?P<unit>(?:[^\W\d_]|[°'"])[^\d]*(?:\^?[23])?)?            # trailing unit: cm, m^2, km/h, °
    """,
    re.VERBOSE,
)
_TEXT_ABBREV = re.compile(r"(?<=[^\W\d_])[.'’](?=[^\W\d_])")  # U.S. -> US, don't -> dont
_TEXT_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
_CHOICE_LETTER = re.compile(r"^(?:\((?P<p>[A-Za-z])\)|\[(?P<s>[A-Za-z])\]|(?P<l>[A-Za-z]))[.):]?$")
_CHOICE_LETTER_TEXT = re.compile(r"^(?:\((?P<a>[A-Z])\)|\[(?P<c>[A-Z])\]|(?P<b>[A-Z])[.):])\s*(?P<rest>.+)$")
# A final sentence naming a short text answer: "... is (a|an|the) <reference>", nothing negated or
# offered as an alternative.
_SENTENCE_PIECES = re.compile(r"[^.!?。\n]+")
_COPULAS = frozenset({"is", "are", "was", "were", "equals"})
_ARTICLES = frozenset({"a", "an", "the"})
_HEDGES = frozenset({"not", "no", "never", "or", "nor", "cannot", "cant", "isnt", "arent", "wasnt", "werent",
                     "doesnt", "dont"})
_MAX_SENTENCE_TOKENS = 30
_CHOICE_OPTION = re.compile(r"^(?:option|choice)\s*\(?(?P<l>[A-Za-z])\)?$", re.IGNORECASE)


@dataclass(frozen=True)
class ScoreResult:
    extracted: str | None
    correct: bool


def _clean(answer: str) -> str:
    """Strip the wrapping models put around answers: markdown, `$...$`, `\\text{}`, end punctuation."""
    s = _LATEX_TEXT.sub(r"\1", answer).strip()
    for _ in range(3):  # wrappers nest ("**$5$**"); a few passes are enough
        before = s
        s = s.strip().strip("*_`\"'").strip()
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s.strip("$")
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        s = s.rstrip(".,;:!。 \t")
        if s == before:
            break
    return s[:_MAX_ANSWER_CHARS].strip()


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` whose braces balance (nested braces allowed)."""
    for m in reversed(list(_BOXED.finditer(text))[-_MAX_CANDIDATES:]):
        depth, start = 1, m.end()
        for i in range(start, min(len(text), start + _MAX_BOXED_CHARS)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    content = _clean(text[start:i])
                    if content:
                        return content
                    break
        # unbalanced (a truncated generation), too long or empty: try the previous one
    return None


def _last_answer_phrase(text: str) -> str | None:
    matches = list(_ANSWER_PHRASE.finditer(text))[-_MAX_CANDIDATES:]
    end = len(text)  # a candidate's answer stops at the next candidate ("answer is 3, no, answer is 5")
    for m in reversed(matches):
        line_end = text.find("\n", m.end(), end)
        ans = text[m.end(): end if line_end < 0 else line_end]
        if not ans.strip() and end == len(text):  # "Answer:\n5": the answer is on the next line
            ans = _NEXT_LINE.match(text, m.end()).group(1)
        end = m.start()
        if cut := _SENTENCE_END.search(ans):
            ans = ans[: cut.start()]
        cleaned = _clean(ans)
        if cleaned:
            return cleaned
    return None


def _last_choice_letter(text: str, n_choices: int) -> str | None:
    valid = {chr(ord("A") + i) for i in range(min(n_choices, 26))}
    best: tuple[int, str] | None = None
    for pattern in _CHOICE_PATTERNS:
        for m in pattern.finditer(text):
            letter = next(v for k, v in m.groupdict().items() if v is not None)
            if letter in valid and (best is None or m.start() >= best[0]):
                best = (m.start(), letter)
    return best[1] if best else None


def _final_sentence(text: str) -> str | None:
    """The last sentence of the text (cleaned), or None when it is too long to be an answer."""
    pieces = [p for p in _SENTENCE_PIECES.findall(text[-_NUMBER_SCAN_CHARS:]) if p.strip()]
    if not pieces:
        return None
    sentence = _clean(pieces[-1])
    return sentence if sentence and len(normalize_text(sentence).split()) <= _MAX_SENTENCE_TOKENS else None


def extract_answer(text: str, choices: Sequence[str] = (), explicit_only: bool = False,
                   answer_type: str | None = None) -> str | None:
    """The final answer in free model text, or None if there is none.

    Looks at the last `_SCAN_CHARS` characters (the last `_NUMBER_SCAN_CHARS` for the bare-number
    and final-sentence fallbacks). Returns the answer as written (cleaned of markup), not mapped to
    a choice text. `explicit_only` accepts only a `\\boxed{}` or an answer phrase: search uses it so
    that a path cut off mid-reasoning never counts as answered because its last number happens to
    match. With `answer_type="text"` the fallback is the final sentence, not the last number.
    """
    if not text:
        return None
    tail = text[-_SCAN_CHARS:]
    if (boxed := _last_boxed(tail)) is not None:
        return boxed
    if (phrase := _last_answer_phrase(tail)) is not None:
        return phrase
    if explicit_only:
        return None
    if choices and (letter := _last_choice_letter(tail, len(choices))) is not None:
        return letter
    if answer_type == "text" and not choices:
        return _final_sentence(text)
    numbers = _FALLBACK_NUMBER.findall(text[-_NUMBER_SCAN_CHARS:])
    return numbers[-1] if numbers else None


def normalize_number(s: str) -> float | None:
    """The value of a numeric answer string, or None if it is not exactly one finite number.

    Accepted: "1,234", "−3", "+7", "3.50", ".5", "1e3", "1/2", "\\frac{1}{2}", "3 1/2" (mixed
    number, 3.5), "50%" (50.0), "$12", "12 units", "5 m^2", "x = 5", "about 5". Rejected: "1.2.3",
    "1,23", "3 4", "nan", "inf", "1/0", an expression like "2+3".
    """
    if not s or len(s) > _MAX_ANSWER_CHARS:
        return None
    t = _clean(s.translate(_MINUS_SIGNS))
    t = t.replace("\\%", "%").replace("\\$", "$").replace("{,}", ",").replace("\\!", "")
    t = _LATEX_TEXT.sub(r" \1", t)
    t = _LATEX_FRAC.sub(lambda m: f" {m.group(1) or m.group(3)}/{m.group(2) or m.group(4)} ", t)
    t = re.split(r"[=≈]", t)[-1]  # "x = 5", "3 + 2 = 5": the value is after the last "="
    t = _APPROX_PREFIX.sub("", t.strip())
    t = re.sub(r"^([-+]?)\s*[$€£¥]", r"\1", t)  # currency sign, possibly after the sign: -$5
    m = _NUMBER.fullmatch(t.strip())
    if m is None:
        return None
    try:
        if m.group("whole") is not None:
            den = float(m.group("mden"))
            value = float(m.group("whole")) + float(m.group("mnum")) / den
        else:
            value = float(m.group("num").replace(",", ""))
            if m.group("den") is not None:
                value /= float(m.group("den").replace(",", ""))
    except (ZeroDivisionError, ValueError, OverflowError):
        return None
    if m.group("sign") == "-":
        value = -value
    return value if math.isfinite(value) else None


def normalize_text(s: str) -> str:
    """Lower-case word/number tokens joined by single spaces: punctuation and markup are ignored,
    but a decimal point inside a number is kept ("3.5" != "35")."""
    s = _TEXT_ABBREV.sub("", _clean(s).casefold())
    return " ".join(_TEXT_TOKEN.findall(s))


def _choice_index(predicted: str, choices: Sequence[str]) -> int | None:
    """Which choice a predicted answer names, or None if it names none (or is ambiguous)."""
    pred = _clean(predicted)
    norm_pred = normalize_text(pred)
    by_text = [i for i, c in enumerate(choices) if normalize_text(c) == norm_pred]
    if len(by_text) == 1:  # exact choice text wins, so choices that are themselves letters work
        return by_text[0]
    letter = None
    if m := _CHOICE_LETTER.fullmatch(pred):
        letter = (m.group("p") or m.group("s") or m.group("l")).upper()
    elif m := _CHOICE_OPTION.fullmatch(pred):
        letter = m.group("l").upper()
    elif m := _CHOICE_LETTER_TEXT.fullmatch(pred):
        letter = m.group("a") or m.group("b") or m.group("c")
        index = ord(letter) - ord("A")
        if index >= len(choices):  # "(F) 12" with four choices: judge the text part instead
            return _choice_index(m.group("rest"), choices)
        named = _choice_index(m.group("rest"), choices)
        if named is not None and named != index:  # "(B) 18 cm" when B is 15 cm: contradicts itself
            return None
    if letter is not None:
        index = ord(letter) - ord("A")
        return index if index < len(choices) else None
    value = normalize_number(pred)
    if value is not None:  # "12" for the choice "12 cm"
        hits = [i for i, c in enumerate(choices)
                if (v := normalize_number(c)) is not None and math.isclose(v, value, abs_tol=1e-9)]
        if len(hits) == 1:
            return hits[0]
    return None


def _reference_index(reference: str, choices: Sequence[str]) -> int | None:
    """The choice a reference names: its text, else its letter ("B", "(B)"), else None."""
    by_text = [i for i, c in enumerate(choices) if normalize_text(c) == normalize_text(reference)]
    if len(by_text) == 1:
        return by_text[0]
    if m := _CHOICE_LETTER.fullmatch(reference.strip()):
        index = ord((m.group("p") or m.group("s") or m.group("l")).upper()) - ord("A")
        return index if index < len(choices) else None
    return None


def _names(sentence: str, reference: str) -> bool:
    """Whether an answer sentence states a short text reference: "(... is) (a) <reference>", with no
    negation or alternative in it."""
    said, wanted = normalize_text(sentence).split(), normalize_text(reference).split()
    if not wanted or len(wanted) > 4 or len(said) > _MAX_SENTENCE_TOKENS or said[-len(wanted):] != wanted:
        return False
    before = said[: -len(wanted)]
    if before and before[-1] in _ARTICLES:
        before = before[:-1]
    # "a triangle" states "triangle"; otherwise a copula must introduce it ("dark red" is not "red")
    return (not before or before[-1] in _COPULAS) and not _HEDGES.intersection(said)


def answers_match(predicted: str | None, reference: str, answer_type: str, choices: Sequence[str] = (),
                  rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """Whether `predicted` is the reference answer under the rule for `answer_type`.

    integer: numeric, |p - r| <= abs_tol ("5.0" matches "5"; rel_tol is not used so large
    integers must match exactly). float: `math.isclose(p, r, rel_tol, abs_tol)`. choice: the
    prediction may be the letter ("B", "(B)", "option B"), "B) text", the choice text, or a number
    equal to exactly one numeric choice. text: `normalize_text` equality. None never matches.
    """
    if predicted is None or not predicted.strip():
        return False
    if answer_type in ("integer", "float"):
        p, r = normalize_number(predicted), normalize_number(reference)
        if r is None:  # a non-numeric reference in a numeric problem: the best we can do is text
            return normalize_text(predicted) == normalize_text(reference)
        if p is None:
            return False
        if answer_type == "integer":
            return abs(p - r) <= abs_tol
        return math.isclose(p, r, rel_tol=rel_tol, abs_tol=abs_tol)
    if answer_type == "choice":
        if not choices:
            return normalize_text(predicted) == normalize_text(reference)
        index, wanted = _choice_index(predicted, choices), _reference_index(reference, choices)
        if wanted is None:  # a reference that is neither a choice's text nor its letter
            return index is not None and normalize_text(choices[index]) == normalize_text(reference)
        return index == wanted
    if answer_type == "text":
        return normalize_text(predicted) == normalize_text(reference) or _names(predicted, reference)
    raise ValueError(f"unknown answer_type {answer_type!r}")


def score_text(text: str, problem: Problem) -> ScoreResult:
    """Extract the answer from a generation and check it against `problem`."""
    extracted = extract_answer(text, problem.choices, answer_type=problem.answer_type)
    correct = answers_match(extracted, problem.answer, problem.answer_type, problem.choices)
    return ScoreResult(extracted=extracted, correct=correct)
