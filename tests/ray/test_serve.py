"""The critic service on a real local Ray Serve (127.0.0.1 only), with the tiny random-weight critic."""

import base64
import dataclasses
import io
import json
import shutil
import socket
import struct
import time
import zlib

import httpx
import pytest
from PIL import Image
from serve_payloads import (
    B64_IMAGE,
    PROBLEM,
    check_with_the_official_openai_client,
    critique_body,
    free_port,
    replies_across_a_kill,
    replies_across_redeploy,
)

from mmc_ray.config import Config, EngineConfig, RefineConfig, ServeConfig, SimulatorConfig
from mmc_ray.critique.prompts import critic_messages
from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.engines.openai import OpenAIEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.errors import BadInput
from mmc_ray.refine.loop import RefinementLoop
from mmc_ray.tasks.synthetic import generate_problems


@pytest.fixture(scope="module")
def service(ray_local, tiny_vlm_path, tmp_path_factory):
    """The app deployed twice: open at /, and with a bearer token at /secure."""
    from ray import serve

    from mmc_ray.serve.deploy import deploy
    from tests.engines.test_adapters import random_adapter

    port = free_port()
    serve_cfg = ServeConfig(checkpoint=str(tiny_vlm_path), port=port, num_cpus=0.25, max_batch_size=8,
                            max_ongoing_requests=16, max_steps=6, max_tokens=64, default_max_tokens=24,
                            max_body_bytes=1 << 20, max_image_bytes=200_000, max_image_pixels=512 * 512)
    adapter = random_adapter(tiny_vlm_path, tmp_path_factory.mktemp("adapters") / "r1", seed=1)
    cfg = Config(serve=serve_cfg, critic=EngineConfig(kind="hf", device="cpu", dtype="float32",
                                                      min_pixels=3136, max_pixels=12544,
                                                      adapters=(f"critic-r1={adapter}",)))
    url = deploy(cfg)
    key_file = tmp_path_factory.mktemp("secret") / "key"
    key_file.write_text("s3cret\n")
    secure = dataclasses.replace(cfg, serve=dataclasses.replace(serve_cfg, api_key_file=str(key_file),
                                                                api_key_env="MMC_TEST_UNSET_KEY"))
    secure_url = deploy(secure, app_name="secure", route_prefix="/secure")
    client = httpx.Client(timeout=120)
    pid = client.get(f"{url}/healthz").json()["pid"]
    yield {"url": url, "secure": secure_url, "cfg": cfg, "client": client, "pid": pid}
    serve.shutdown()


def test_health_models_and_a_critique(service):
    client, url = service["client"], service["url"]
    assert client.get(f"{url}/healthz").json()["status"] == "ok"
    models = client.get(f"{url}/v1/models").json()["data"]
    assert models[0]["id"] == "mmc-critic" and models[0]["version"] >= 1
    reply = client.post(f"{url}/v1/critique", json=critique_body(image="data:image/png;base64," + B64_IMAGE))
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["model"] == "mmc-critic" and data["usage"]["completion_tokens"] <= 16
    # random weights: the text rarely parses; either way the reply says what happened
    assert (data["critique"] is None) == bool(data["parse_error"])
    spec = client.get(f"{url}/openapi.json").json()
    assert {"/v1/critique", "/v1/score_steps", "/v1/chat/completions", "/v1/models", "/healthz"} <= set(spec["paths"])


def test_a_lora_adapter_is_served_beside_the_base_by_model_name(service):
    client, url = service["client"], service["url"]
    models = {m["id"]: m for m in client.get(f"{url}/v1/models").json()["data"]}
    assert set(models) == {"mmc-critic", "critic-r1"} and models["critic-r1"]["parent"] == "mmc-critic"

    def chat(model):
        reply = client.post(f"{url}/v1/chat/completions", json={
            "model": model, "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Is step 2 right?"}]})
        assert reply.status_code == 200, reply.text
        return reply.json()

    base, tuned = chat("mmc-critic"), chat("critic-r1")
    assert tuned["model"] == "critic-r1" and base["model"] == "mmc-critic"
    assert tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    assert chat("critic-r1")["choices"] == tuned["choices"]  # greedy: the adapter answers the same again
    critique = client.post(f"{url}/v1/critique", json={**critique_body(), "model": "critic-r1"})
    assert critique.status_code == 200 and critique.json()["model"] == "critic-r1"
    unknown = client.post(f"{url}/v1/critique", json={**critique_body(), "model": "critic-r9"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert "critic-r1" in unknown.json()["error"]["message"]


def test_score_steps_gives_a_soundness_probability_per_step(service):
    reply = service["client"].post(f"{service['url']}/v1/score_steps",
                                   json=critique_body(steps=["a", "b", "c"]))
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert len(data["step_sound"]) == len(data["first_wrong_step"]) == 3
    assert data["p_correct"] + sum(data["first_wrong_step"]) == pytest.approx(1.0)
    assert data["step_sound"] == sorted(data["step_sound"], reverse=True)
    assert all(0 < p <= 1 for p in data["step_sound"])


def test_openai_engine_talks_to_the_service(service):
    engine = OpenAIEngine(f"{service['url']}/v1", "mmc-critic")
    request = GenerationRequest(messages=critic_messages(PROBLEM, ["a", "b"], "3"), images=(PROBLEM.image,),
                                n=2, max_new_tokens=8, temperature=1.0, seed=1)
    (result,) = engine.generate([request])
    assert [c.finish_reason for c in result.completions] in (["length", "length"], ["stop", "length"],
                                                             ["length", "stop"], ["stop", "stop"])
    assert all(c.completion_tokens >= 0 for c in result.completions) and result.prompt_tokens > 100


def bomb_png(width=30_000, height=30_000) -> str:
    """A valid PNG header claiming 900 M pixels (the pixels are never sent)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def big_png() -> str:
    buf = io.BytesIO()
    Image.effect_noise((600, 600), 100).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(("overrides", "status", "field"), [
    ({"steps": [f"step {i}" for i in range(7)]}, 422, "steps"),
    ({"steps": ["x" * 2001]}, 422, "steps[0]"),
    ({"image": "https://example.com/cat.png"}, 422, "image"),
    ({"image": "not base64 at all!"}, 422, "image"),
    ({"image": base64.b64encode(b"GIF89a but not really").decode()}, 422, "image"),
    ({"image": bomb_png()}, 422, "image"),
    ({"max_tokens": 65}, 422, "max_tokens"),
])
def test_limits_are_4xx_naming_the_field(service, overrides, status, field):
    reply = service["client"].post(f"{service['url']}/v1/critique", json=critique_body(**overrides))
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["field"] == field


def test_schema_errors_and_oversized_bodies_are_4xx(service):
    client, url = service["client"], service["url"]
    for body in ({"question": "q"}, {"question": 3, "steps": "abc"}, {"question": "q", "steps": ["a"], "x": 1}):
        assert client.post(f"{url}/v1/critique", json=body).status_code == 422
    assert client.post(f"{url}/v1/critique", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422
    assert client.post(f"{url}/v1/critique", json=critique_body(image=big_png() * 3)).status_code == 413
    assert client.get(f"{url}/healthz").status_code == 200  # the replica is still serving


def test_the_official_openai_client_streams_and_gets_openai_errors(service):
    check_with_the_official_openai_client(f"{service['url']}/v1")


FUZZ_SECONDS = 60


def test_schema_driven_fuzzing_finds_nothing(service, tmp_path):
    """schemathesis against the running app's own OpenAPI document, every operation, with its bearer
    token: no 5xx, every response (SSE events included) valid against the document, every status
    documented, malformed data refused, no operation answering without the token. Not run:
    positive_data_acceptance, since "a decodable image" or "a chat ending in a user turn" are checks
    no JSON schema states (those bodies get a 422 naming the field, as documented)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    url = service["secure"]
    run = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json", "--url", url,
         "--checks", "all", "--exclude-checks", "positive_data_acceptance", "-H", "Authorization: Bearer s3cret",
         "--max-time", str(FUZZ_SECONDS), "--max-examples", "50", "--workers", "1", "--seed", "1",
         "--request-timeout", "60", "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    cases = int(re.search(r"(\d+) generated", run.stdout).group(1))
    print(f"schemathesis: {cases} cases in {FUZZ_SECONDS} s, no failures")
    assert cases >= 300, run.stdout[-2000:]
    ok = service["client"].post(f"{url}/v1/critique", json=critique_body(),
                                headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200, ok.text  # the replica still serves


def test_every_error_has_openais_shape(service):
    client, url = service["client"], service["url"]
    replies = [client.post(f"{url}/v1/critique", content=b"\xff\xfe{", headers={"content-type": "application/json"}),
               client.post(f"{url}/v1/critique", json={"question": "q"}),
               client.get(f"{url}/v1/nothing-here"),
               client.post(f"{url}/v1/chat/completions", json={"model": "x", "messages": [{"role": "user",
                                                                                           "content": "hi"}]}),
               client.get(f"{service['secure']}/v1/models")]
    assert [r.status_code for r in replies] == [422, 422, 404, 404, 401]
    for reply in replies:
        error = reply.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error) and error["message"], error
    assert replies[0].json()["error"]["code"] == "json_invalid"
    assert replies[3].json()["error"]["code"] == "model_not_found"


BODY = '{"question": "How many?", "steps": ["Count: 3."], "temperature": 0}'
CHAT_IMAGE = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:text/plain;base64,"
                                                                                       + B64_IMAGE}}]


@pytest.mark.parametrize(("path", "raw", "field"), [
    ("/v1/critique", BODY.replace('"temperature": 0', '"temperature": NaN'), "temperature"),
    ("/v1/critique", BODY.replace('"temperature": 0', '"temperature": 1e999'), "temperature"),
    ("/v1/score_steps", BODY.replace('"temperature": 0', '"temperature": -Infinity'), "temperature"),
    ("/v1/critique", BODY.replace("How many?", "\\ud800"), "question"),
    ("/v1/critique", BODY.replace("Count: 3.", "\\udfff and more"), "steps[0]"),
    ("/v1/critique", BODY.replace('"temperature"', '"\\ud800"'), "body"),  # a key that is no text
    ("/v1/critique", '{"question": "q", "steps": ["a"],, }', "body"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "assistant", "content": "I think"}]}), "messages"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "system", "content": "be brief"}]}), "messages"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                      {"role": "assistant", "content": "a"},
                                                      {"role": "assistant", "content": "b"}]}), "messages"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": CHAT_IMAGE}]}),
     "messages[0].content[1].image_url.url"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}], "top_p": float("nan")}),
     "top_p"),
])
def test_malformed_input_is_a_4xx_naming_the_field(service, path, raw, field):
    reply = service["client"].post(f"{service['url']}{path}", content=raw.encode(),
                                   headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["field"] == field and error["message"].startswith(f"{field}: ")


def test_an_oversized_chunked_body_is_refused_before_it_is_all_sent(service):
    """The limit (1 MiB here) holds while the body is read: the 413 comes back while the client is
    still sending (a body read in full first would wait for the end that never comes)."""
    with socket.create_connection(("127.0.0.1", service["cfg"].serve.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/critique HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range(20):  # 1.25 MiB, and never the last chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):  # headers and body may come apart
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    text = reply.decode(errors="replace")
    assert text.startswith("HTTP/1.1 413"), text[:200]
    assert '"field":"body"' in text.replace(" ", "")
    assert service["client"].get(f"{service['url']}/healthz").status_code == 200


def test_bearer_token_is_required_when_configured(service):
    client, url = service["client"], service["secure"]
    assert client.get(f"{url}/healthz").status_code == 200  # probes need no token
    assert client.get(f"{url}/v1/models").status_code == 401
    assert client.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post(f"{url}/v1/critique", json=critique_body(), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200, ok.text
    assert client.post(f"{url}/v1/critique", json=critique_body()).status_code == 401


def test_hot_swap_under_load_fails_no_request(service, tmp_path):
    from mmc_ray.serve.deploy import deploy

    client, url, cfg = service["client"], service["url"], service["cfg"]
    before = client.get(f"{url}/v1/models").json()["data"][0]
    new_checkpoint = shutil.copytree(before["checkpoint"], tmp_path / "critic-v2")
    statuses = [r.status_code for r in replies_across_redeploy(
        client, url,
        redeploy=lambda: deploy(dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve,
                                                                                  checkpoint=str(new_checkpoint)))),
        swapped=lambda: client.get(f"{url}/v1/models").json()["data"][0]["version"] != before["version"],
        timeout_s=60, every_s=0.2, never="the replica never swapped", sent_after=8)]
    assert statuses == [200] * len(statuses)
    after = client.get(f"{url}/v1/models").json()["data"][0]
    assert after["checkpoint"] == str(new_checkpoint) and after["version"] == before["version"] + 1
    assert service["pid"] == client.get(f"{url}/healthz").json()["pid"]  # swapped in place, not restarted


def test_a_new_rounds_adapter_is_swapped_in_under_an_alias_under_load_failing_no_request(
        service, tiny_vlm_path, tmp_path):
    from mmc_ray.serve.checkpoints import change_adapters
    from mmc_ray.serve.deploy import APP_NAME
    from tests.engines.test_adapters import random_adapter

    client, url = service["client"], service["url"]
    r1 = dict(spec.split("=", 1) for spec in service["cfg"].critic.adapters)["critic-r1"]
    r2 = str(random_adapter(tiny_vlm_path, tmp_path / "r2", seed=2))

    def models() -> dict:
        return {m["id"]: m for m in client.get(f"{url}/v1/models").json()["data"]}

    def following(check) -> None:  # replicas follow the registry within a poll or two
        deadline = time.time() + 30
        while not check(models()):
            assert time.time() < deadline, models()
            time.sleep(0.2)

    change_adapters(APP_NAME, aliases={"critic": "critic-r1"})
    following(lambda m: m.get("critic", {}).get("alias_of") == "critic-r1")
    replies = replies_across_redeploy(
        client, url, model="critic",
        redeploy=lambda: change_adapters(APP_NAME, load={"critic-r2": r2}, aliases={"critic": "critic-r2"},
                                         unload=["critic-r1"]),
        swapped=lambda: "critic-r1" not in models(), timeout_s=60, every_s=0.2,
        never="the replica never unloaded critic-r1", sent_after=8)
    assert [r.status_code for r in replies] == [200] * len(replies), [r.text for r in replies if r.status_code != 200]
    answered_by = [r.json()["model"] for r in replies]
    assert answered_by[0] == "critic-r1", answered_by
    # The last reply of the load may still be r1's (sent just before the swap, answered within one
    # poll); a request sent once r1 is gone is r2's.
    now = client.post(f"{url}/v1/critique", json={**critique_body(max_tokens=8), "model": "critic"})
    assert now.status_code == 200 and now.json()["model"] == "critic-r2", now.text
    after = models()
    assert set(after) == {"mmc-critic", "critic-r2", "critic"} and after["critic"]["alias_of"] == "critic-r2"
    gone = client.post(f"{url}/v1/critique", json={**critique_body(), "model": "critic-r1"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    with pytest.raises(BadInput, match="alias critic points at it"):
        change_adapters(APP_NAME, unload=["critic-r2"])
    # as the other tests found it
    change_adapters(APP_NAME, load={"critic-r1": r1}, unload=["critic", "critic-r2"])
    following(lambda m: set(m) == {"mmc-critic", "critic-r1"})


def test_refinement_loop_through_the_served_critic(service):
    problems = list(generate_problems(3, seed=8))
    critic = OpenAIEngine(f"{service['url']}/v1", "mmc-critic")
    actor = SimulatedActorEngine(SimulatorConfig())
    rows = RefinementLoop(actor, critic, RefineConfig(max_rounds=1, critic_max_new_tokens=24)).run(problems)
    assert {r.problem_id for r in rows} == {p.problem_id for p in problems}
    assert all(r.critic_text and not r.critic_parse_error.startswith("openai") for r in rows)
    assert sum(r.final for r in rows) == 3


def fuzz_bodies():
    from hypothesis import strategies as st

    text = st.text(max_size=50) | st.just("x" * 5000)
    image = st.one_of(st.none(), text, st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
                      st.just(bomb_png()), st.just("data:image/png;base64,@@@"), st.just("http://10.0.0.1/a.png"))
    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text)  # NaN and Infinity too
    well_typed = st.fixed_dictionaries({
        "question": text, "steps": st.lists(text, max_size=8), "image": image,
        "max_tokens": st.integers(min_value=-5, max_value=4) | st.just(10**9),
        "temperature": st.floats(min_value=-1, max_value=3) | st.sampled_from([float("nan"), float("inf")])})
    junk = st.dictionaries(st.text(max_size=10), st.recursive(scalar, lambda c: st.lists(c, max_size=3)
                                                             | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                                             max_leaves=8), max_size=5)
    return well_typed | junk | st.lists(scalar, max_size=3)


def test_fuzzed_bodies_never_get_a_5xx(service):
    from hypothesis import HealthCheck, given, settings

    client, url = service["client"], service["url"]

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=fuzz_bodies())
    def check(body):
        for path in ("/v1/critique", "/v1/score_steps"):  # json.dumps writes NaN as JSON's NaN
            reply = client.post(f"{url}{path}", content=json.dumps(body).encode(),
                                headers={"content-type": "application/json"})
            assert reply.status_code < 500, (path, body, reply.text)

    check()
    chat = client.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + bomb_png()}}]}]})
    assert chat.status_code == 422
    assert client.get(f"{url}/healthz").json()["pid"] == service["pid"]  # same replica, still up


def test_eval_critic_on_the_service_scores_steps_through_score_steps(service, tmp_path):
    """`mmc-ray eval-critic --critic-url`: critiques through the OpenAI-compatible API, step soundness
    through /v1/score_steps."""
    from user_data import write_visual_process_bench

    from mmc_ray.config import OpenAIConfig
    from mmc_ray.orchestration import commands

    cfg = service["cfg"]
    served = EngineConfig(kind="openai", openai=OpenAIConfig(base_url=f"{service['url']}/v1",
                                                             served_model="mmc-critic"))
    cfg = dataclasses.replace(cfg, critic=served,
                              refine=dataclasses.replace(cfg.refine, critic_max_new_tokens=16))
    report = commands.eval_critic(cfg, write_visual_process_bench(tmp_path), tmp_path / "out").report
    assert report.solutions == report.scored_solutions == 3
    assert report.step_macro_f1_from_scores.overall.steps == 7  # the neutral step left out


def test_a_replica_killed_under_load_costs_only_its_requests_in_flight_and_clients_retry(service):
    """Last in this file: it replaces the open app's replica. A replica killed (as by the OOM killer)
    with requests in flight: Serve sends some of them again to the replica it starts; the rest get a
    JSON 503 to retry (the proxy's middleware, tests/unit/test_proxy_errors.py), never a plain 500.
    `OpenAIEngine` retries those with backoff: nothing is lost to a client that retries."""
    import os
    import signal

    client, url = service["client"], service["url"]
    engine = OpenAIEngine(f"{url}/v1", "mmc-critic", max_retries=8, retry_backoff_s=1.0)
    request = GenerationRequest(messages=critic_messages(PROBLEM, ["a", "b"], "3"), images=(PROBLEM.image,),
                                max_new_tokens=48)
    replies, results, open_across = replies_across_a_kill(
        client, url, critique_body(max_tokens=64), engine, request,
        kill=lambda: os.kill(service["pid"], signal.SIGKILL))
    assert open_across >= 1, "nothing was in flight when the replica was killed"
    for reply in replies:  # Serve's retry on the new replica, or the proxy's retryable answer
        if reply.status_code != 200:
            assert (reply.status_code, reply.headers["retry-after"]) == (503, "1"), reply.text
            assert reply.json()["error"]["code"] == "replica_lost"
    assert results and [c.finish_reason for r in results for c in r.completions if c.finish_reason == "error"] == []
    assert client.get(f"{url}/healthz").json()["pid"] != service["pid"]  # a new replica answers
