"""Every Parquet schema in one place. Images travel as PNG bytes inside the rows, never as paths."""

from __future__ import annotations

import pyarrow as pa

SOLUTION_STEP_TYPE = pa.struct(
    [
        ("op", pa.string()),
        ("template", pa.string()),
        ("value", pa.string()),
        ("inputs", pa.list_(pa.int32())),
        ("label", pa.string()),
    ]
)

PROBLEM_SCHEMA = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("family", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("answer_type", pa.string(), nullable=False),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("difficulty", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("steps", pa.list_(SOLUTION_STEP_TYPE)),
        pa.field("source", pa.string()),
    ]
)

# One row per sampled answer of `mmc-ray generate`.
GENERATION_SCHEMA = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("family", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("text", pa.string()),
        pa.field("extracted_answer", pa.string()),
        pa.field("correct", pa.bool_()),
        pa.field("finish_reason", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
    ]
)
