"""The `Critique` record, the one text form the critic is trained to emit, and its parser.

    Verdict: incorrect
    First wrong step: 2
    Error type: misreading
    Explanation: Step 2 reads bar C as 30, but the bar reaches 40.
    Correction: Read bar C against the gridlines: its value is 40.

A sound solution is critiqued as "Verdict: correct" plus an explanation. The parser is tolerant of
what models add around the critique (prose before and after, markdown bold, bullets, key case,
a JSON object with the same keys, error-type synonyms) and strict about what makes a critique: a
verdict, and for an incorrect verdict a step number within range. It says why when it rejects.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

VERDICTS = ("correct", "incorrect")
ERROR_TYPES = (
    "counting",         # miscounted objects in the image
    "misreading",       # read a value, label or number off the image wrongly
    "measurement",      # misjudged a length, area or angle
    "calculation",      # arithmetic slip with the right operation
    "wrong_operation",  # combined values with the wrong operation
    "reasoning",        # a conclusion that does not follow from the values
    "incomplete",       # stopped without a final answer
    "other",
)
ERROR_TYPE_SYNONYMS = {
    "count": "counting", "miscount": "counting", "miscounting": "counting",
    "misread": "misreading", "perception": "misreading", "visual": "misreading", "reading": "misreading",
    "measure": "measurement", "mismeasurement": "measurement",
    "arithmetic": "calculation", "computation": "calculation", "calculation error": "calculation",
    "operation": "wrong_operation", "wrong operation": "wrong_operation",
    "logic": "reasoning", "logical": "reasoning",
    "missing answer": "incomplete", "no answer": "incomplete",
}
FIELDS = {  # serialized key -> Critique attribute
    "verdict": "verdict",
    "first wrong step": "first_wrong_step",
    "error type": "error_type",
    "explanation": "explanation",
    "correction": "correction",
}
_KEY_LINE = re.compile(
    r"^[\s>*_#-]*(verdict|first[\s_]+wrong[\s_]+step|error[\s_]+type|explanation|correction)"
    r"[\s*_]*[:：][\s*_]*(.*)$",
    re.IGNORECASE,
)
_STEP_NUMBER = re.compile(r"^(?:step\s*#?\s*)?(\d+)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Critique:
    verdict: str
    explanation: str
    first_wrong_step: int | None = None  # 1-based; None when the verdict is correct
    error_type: str | None = None
    correction: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == "incorrect":
            if self.first_wrong_step is None or self.first_wrong_step < 1:
                raise ValueError("an incorrect verdict needs first_wrong_step >= 1")
            if self.error_type not in ERROR_TYPES:
                raise ValueError(f"error_type must be one of {ERROR_TYPES}, got {self.error_type!r}")
        elif self.first_wrong_step is not None or self.error_type is not None:
            raise ValueError("a correct verdict has no first_wrong_step or error_type")

    def to_text(self) -> str:
        """The serialized form the critic is trained to emit."""
        lines = [f"Verdict: {self.verdict}"]
        if self.verdict == "incorrect":
            lines += [f"First wrong step: {self.first_wrong_step}", f"Error type: {self.error_type}"]
        lines.append(f"Explanation: {self.explanation}")
        if self.correction:
            lines.append(f"Correction: {self.correction}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ParseResult:
    critique: Critique | None
    error: str = ""  # why it is not a critique, when critique is None

    @property
    def ok(self) -> bool:
        return self.critique is not None


def _normalise_error_type(raw: str) -> str | None:
    key = re.sub(r"[\s_-]+", " ", raw.strip().strip(".").lower())
    if key.replace(" ", "_") in ERROR_TYPES:
        return key.replace(" ", "_")
    return ERROR_TYPE_SYNONYMS.get(key)


def _fields_from_text(text: str) -> dict[str, str]:
    """Key lines, the last occurrence of each key winning; a value may continue on following
    lines until the next key (explanations wrap)."""
    fields: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := _KEY_LINE.match(line):
            current = FIELDS[re.sub(r"[\s_]+", " ", m.group(1).lower())]
            fields[current] = m.group(2).strip().strip("*_").strip()
        elif current in ("explanation", "correction") and line.strip():
            fields[current] = f"{fields[current]} {line.strip()}".strip()
        elif not line.strip():
            current = None
    return fields


def _fields_from_json(text: str) -> dict[str, str] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data: Any = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    by_key = {re.sub(r"[\s_]+", " ", str(k).lower()): v for k, v in data.items()}
    return {attr: "" if by_key[key] is None else str(by_key[key])
            for key, attr in FIELDS.items() if key in by_key}


def parse_critique(text: str, num_steps: int | None = None) -> ParseResult:
    """Read a critique from model output. `num_steps` (when known) bounds the step number."""
    if not text or not text.strip():
        return ParseResult(None, "empty output")
    fields = _fields_from_text(text)
    if "verdict" not in fields:
        fields = _fields_from_json(text) or fields
    if "verdict" not in fields:
        return ParseResult(None, "no 'Verdict:' line")
    verdict_words = re.findall(r"[a-z]+", fields["verdict"].lower())
    verdict = next((w for w in verdict_words if w in VERDICTS), None)
    if verdict is None:
        return ParseResult(None, f"verdict {fields['verdict'][:40]!r} is neither correct nor incorrect")
    explanation = fields.get("explanation", "").strip()
    if not explanation:
        return ParseResult(None, "no explanation")
    if verdict == "correct":
        return ParseResult(Critique("correct", explanation, correction=fields.get("correction", "")))
    step_text = fields.get("first_wrong_step", "").strip()
    m = _STEP_NUMBER.match(step_text)
    if not m:
        return ParseResult(None, f"incorrect verdict without a step number (got {step_text[:40]!r})")
    step = int(m.group(1))
    if step < 1 or (num_steps is not None and step > num_steps):
        return ParseResult(None, f"first wrong step {step} is outside 1..{num_steps or '?'}")
    error_type = _normalise_error_type(fields.get("error_type", "other") or "other")
    if error_type is None:
        return ParseResult(None, f"unknown error type {fields['error_type'][:40]!r}; allowed {ERROR_TYPES}")
    return ParseResult(Critique("incorrect", explanation, step, error_type, fields.get("correction", "")))
