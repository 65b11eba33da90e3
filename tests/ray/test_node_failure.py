"""A whole node lost mid-search, mid-annotation and under Serve load (mid-training: tests/ray/test_train.py),
on a multi-node local Ray (a head and two worker nodes as separate raylets, roles kept on their nodes by
custom resources). Each scenario runs in its own process (tests/ray/multinode.py): the session's own Ray
is a single node."""

import pytest
from multinode import run_scenario

pytestmark = pytest.mark.slow


def test_a_node_lost_mid_search_loses_duplicates_and_poisons_nothing(tmp_path):
    """The lost node's policy worker cannot come back (no other node has the policy resource): its
    batches are sent again to the worker on the other node, and every tree is written once, clean."""
    got = run_scenario("search", tmp_path)
    assert got["workers_on_distinct_nodes"] and got["node_killed"]
    assert got["trees"] == got["unique_trees"] == got["problems"]
    assert got["failed_generations"] == 0 and got["failed_batches"] >= 1  # it did lose work in flight


def test_a_node_lost_mid_annotation_gives_the_dataset_annotating_locally_gives(tmp_path):
    got = run_scenario("annotate", tmp_path)
    assert got["node_killed"] and got["tree_shards"] > 2 and got["local_critiques"] > 0
    assert got["rows"] == got["unique_critiques"] == got["critiques"] == got["local_critiques"]
    assert got["drops"] == got["local_drops"] and got["same_pairs_as_local"]


def test_a_node_lost_under_serve_load_costs_only_its_requests_and_serve_recovers(tmp_path, tiny_vlm_path):
    """The critic's replica is on a worker node; the node is killed with requests in flight. Each is
    answered by the replica Serve starts on the other node or gets the JSON 503 to retry; the
    engine's requests are all answered."""
    got = run_scenario("serve", tmp_path, str(tiny_vlm_path))
    assert got["replica_on_a_worker_node"] and got["new_replica"] and got["open_across_the_kill"] >= 1
    assert set(got["plain_statuses"]) <= {200, 503} and got["failed_are_json_503"]
    assert got["engine_errors"] == 0
