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

# Actor SFT on the actor's own reasoning (the flywheel's `pipeline.retrain_actor`): a problem row and
# the solution text to imitate, one of its correct MCTS paths. A null `solution` means the problem's
# reference solution, so a plain problems file trains the same way.
ACTOR_SFT_SCHEMA = PROBLEM_SCHEMA.append(pa.field("solution", pa.string()))

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

# One row of the MMC dataset: a reasoning path, its critique, and the problem it answers.
CRITIQUE_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("family", pa.string()),
        pa.field("source", pa.string()),
        pa.field("difficulty", pa.int32()),
        pa.field("split", pa.string()),
        pa.field("kind", pa.string()),               # divergent | no_error | refined (a refinement answer)
        pa.field("divergence_depth", pa.int32()),    # shared steps before the paths split; -1 for no_error
        pa.field("question", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("answer", pa.string()),
        pa.field("answer_type", pa.string()),
        pa.field("path_steps", pa.list_(pa.string())),       # the critiqued path, "Step k:" stripped
        pa.field("path_answer", pa.string()),
        pa.field("path_correct", pa.bool_()),
        pa.field("reference_steps", pa.list_(pa.string())),  # the correct sibling path (divergent)
        pa.field("reference_answer", pa.string()),
        pa.field("verdict", pa.string()),
        pa.field("first_wrong_step", pa.int32()),
        pa.field("error_type", pa.string()),
        pa.field("explanation", pa.string()),
        pa.field("correction", pa.string()),
        pa.field("critique_text", pa.string()),              # what the critic is trained to emit
        pa.field("annotator", pa.string()),
        pa.field("reference_first_wrong_step", pa.int32()),  # strict ground-truth check, synthetic only
        pa.field("agrees_with_reference", pa.bool_()),
    ]
)

# A pair that got no critique, and why (counted in the dataset card, never silently lost).
DROP_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("family", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("annotator", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw_output", pa.string()),
    ]
)

# A mined pair on its way to the annotator: the problem (ground truth included) and the paths.
PAIR_SCHEMA = pa.schema(
    [
        *PROBLEM_SCHEMA,
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("kind", pa.string()),
        pa.field("divergence_depth", pa.int32()),
        pa.field("path_steps", pa.list_(pa.string())),
        pa.field("path_answer", pa.string()),
        pa.field("path_correct", pa.bool_()),
        pa.field("reference_steps", pa.list_(pa.string())),
        pa.field("reference_answer", pa.string()),
        # each path step's node value in its search tree (None for a rollout's steps; empty for
        # paths from no tree): what annotate.method=mc judges by
        pa.field("path_step_values", pa.list_(pa.float64())),
    ]
)

# One answer of the actor, as refinement and best-of-N records both hold it.
_ANSWER_FIELDS = (
    pa.field("family", pa.string()),
    pa.field("source", pa.string()),
    pa.field("text", pa.string()),
    pa.field("num_steps", pa.int32()),
    pa.field("extracted_answer", pa.string()),
    pa.field("correct", pa.bool_()),
)

# One of the N sampled answers to a problem with the critic's scores (refine.strategy best_of_n|both).
BEST_OF_N_SCHEMA = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("sample", pa.int32(), nullable=False),       # sampling order: prefixes of it make each N
        *_ANSWER_FIELDS,
        pa.field("actor_finish_reason", pa.string()),
        pa.field("critic_verdict", pa.string()),             # its greedy critique (None: unparseable)
        pa.field("critic_first_wrong_step", pa.int32()),
        pa.field("scored_by", pa.string()),                  # likelihood | verdict | error
        pa.field("p_correct", pa.float64()),
        pa.field("step_sound", pa.list_(pa.float64())),
    ]
)

# One round of refinement for one problem: the actor's answer and the critic's critique of it.
# Round 0 is the single-pass answer; the row marked `final` is the answer the loop returns, and the
# problem's last round carries why the loop stopped.
REFINE_SCHEMA = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        *_ANSWER_FIELDS,
        # Synthetic tasks: the first step that disagrees with the ground truth (a right answer can
        # rest on a wrong step); null when every step agrees or there is no ground truth.
        pa.field("true_first_wrong_step", pa.int32()),
        pa.field("temperature", pa.float32()),
        pa.field("answer_repeated", pa.bool_()),  # every revision sample repeated a tried answer
        pa.field("actor_finish_reason", pa.string()),
        pa.field("actor_tokens", pa.int32()),
        pa.field("critic_text", pa.string()),
        pa.field("critic_verdict", pa.string()),  # correct | incorrect | null (unparseable)
        pa.field("critic_first_wrong_step", pa.int32()),
        pa.field("critic_error_type", pa.string()),
        pa.field("critic_parse_error", pa.string()),
        pa.field("critic_tokens", pa.int32()),
        pa.field("final", pa.bool_()),
        pa.field("stop_reason", pa.string()),
    ]
)
