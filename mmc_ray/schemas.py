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

ROLLOUT_TYPE = pa.struct(
    [("text", pa.string()), ("answer", pa.string()), ("correct", pa.bool_()), ("tokens", pa.int32())]
)

# One MCTS node; a tree is a list of these with node_id 0..N-1 and parent_id -1 at the root.
NODE_TYPE = pa.struct(
    [
        ("node_id", pa.int32()),
        ("parent_id", pa.int32()),
        ("depth", pa.int32()),
        ("step", pa.string()),
        ("prior", pa.float32()),
        ("visits", pa.int32()),
        ("value_sum", pa.float32()),
        ("terminal", pa.bool_()),
        ("invalid", pa.bool_()),
        ("answer", pa.string()),
        ("correct", pa.bool_()),
        ("tokens", pa.int32()),
        ("rollouts", pa.list_(ROLLOUT_TYPE)),
    ]
)

# One row per searched problem: the problem itself (so later stages stream without a join),
# search statistics, and the node table.
TREE_SCHEMA = pa.schema(
    [
        *PROBLEM_SCHEMA,
        pa.field("simulations", pa.int32()),
        pa.field("num_nodes", pa.int32()),
        pa.field("generated_tokens", pa.int64()),
        pa.field("terminal_correct", pa.int32()),
        pa.field("terminal_wrong", pa.int32()),
        pa.field("invalid_nodes", pa.int32()),
        pa.field("failed_generations", pa.int32()),
        pa.field("root_value", pa.float32()),
        pa.field("nodes", pa.list_(NODE_TYPE)),
    ]
)
