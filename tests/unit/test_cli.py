"""The ``exegpt`` command line: ``plan`` (JSON and table), errors, ``bench`` dispatch,
commands of other builds, and the plan renderers."""

from __future__ import annotations

import io
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import DELETE, deployment

from exegpt import render
from exegpt.cli import main
from exegpt.operator.request import plan_request
from exegpt.operator.spec import parse_spec
from exegpt.planner import scheduler
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import (
    Candidate,
    ExecutionConfig,
    Infeasible,
    Plan,
    PlanRequest,
    Prediction,
    SearchStats,
)

ROOT = Path(__file__).resolve().parents[2]
CASE_STUDY = ROOT / "examples" / "opt-13b-summarization.yaml"
PREDICTION_FIELDS = set(Prediction.model_fields)


def write(tmp_path: Path, *docs: dict[str, Any], name: str = "d.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- exegpt plan ---------------------------------------------------------------------------------


def test_plan_json_case_study(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "plan", str(CASE_STUDY), "--json")
    assert rc == 0, err
    doc = json.loads(out)  # exactly one JSON object and nothing else
    assert isinstance(doc, dict)
    assert doc["kind"] == "Plan"
    assert doc["strategy"] in ("RoundRobin", "WorkloadAware")
    assert doc["config"]["strategy"] == doc["strategy"]
    assert doc["config"]["total_gpus"] <= 16
    assert set(doc["predicted"]) >= PREDICTION_FIELDS
    assert doc["predicted"]["latency_s"] <= 3.1
    assert doc["predicted"]["throughput_qps"] > 0
    assert doc["latency_bound_s"] == pytest.approx(3.1)
    assert set(doc["baselines"]) == {"static", "continuous"}
    for name in ("static", "continuous"):
        base = doc["baselines"][name]
        if base is not None:
            assert set(base) >= PREDICTION_FIELDS
            assert "config" in base
            ratio = doc["ratios"][f"over_{name}"]
            assert ratio == pytest.approx(
                doc["predicted"]["throughput_qps"] / base["throughput_qps"]
            )
    assert doc["baselines"]["static"] is not None
    assert doc["ratios"]["over_static"] > 1
    assert {"seconds", "evaluated", "space"} <= set(doc["search"])
    assert isinstance(doc["alternatives"], list)
    assert doc["request"]["model"] == "opt-13b"
    assert doc["request"]["gpus"] == 16
    assert err == ""


def test_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "plan", str(CASE_STUDY))
    assert rc == 0, err
    assert "opt-13b" in out
    assert "16 x nvidia-a100-80gb" in out
    assert "Chosen plan: " in out
    assert any(s in out for s in ("RoundRobin", "WorkloadAware"))
    assert "Static" in out and "Continuous" in out
    assert "x over Static" in out
    assert "B_E" in out and "B_D" in out
    assert "search:" in out and "configurations simulated" in out


def test_plan_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(
        sys, "stdin", io.StringIO(yaml.safe_dump(deployment(**{"hardware.gpus": 2})))
    )
    rc, out, err = run(capsys, "plan", "-", "--json")
    assert rc == 0, err
    assert json.loads(out)["request"]["gpus"] == 2


def test_bad_manifest_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, deployment(**{"hardware.gpus": DELETE, "slo.latency": "3 parsecs"}))
    rc, out, err = run(capsys, "plan", path, "--json")
    assert rc == 2
    assert out == ""
    assert f"error: {path}: spec.hardware.gpus: required field is missing" in err
    assert f"error: {path}: spec.slo.latency: invalid duration" in err
    assert "Traceback" not in err


def test_wrong_kind_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = deployment()
    body["kind"] = "Deployment"
    rc, _, err = run(capsys, "plan", write(tmp_path, body))
    assert rc == 2
    assert ": kind:" in err


def test_unplannable_workload_is_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    too_long = {
        "input": {"mean": 1900, "std": 50, "max": 2000},
        "output": {"mean": 200, "std": 20, "max": 300},
    }
    rc, _, err = run(capsys, "plan", write(tmp_path, deployment(workload=too_long)))
    assert rc == 2
    assert "% of queries (input + output tokens) exceed opt-13b's context window" in err


def test_warnings_go_to_stderr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    some_long = {
        "input": {"mean": 800, "std": 500, "max": 2000},
        "output": {"mean": 150, "std": 50, "max": 300},
    }
    body = deployment(workload=some_long, **{"hardware.gpus": 2, "slo": {}})
    path = write(tmp_path, body)
    rc, out, err = run(capsys, "plan", path, "--json")
    assert rc == 0, err
    json.loads(out)
    assert f"warning: {path}: spec.workload: " in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [("a: [1, 2\n", "invalid YAML"), ("", "no YAML document"), ("---\n---\n", "no YAML document")],
)
def test_unreadable_yaml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    rc, out, err = run(capsys, "plan", str(path))
    assert rc == 2 and out == ""
    assert expected in err


def test_non_utf8_file_exits_2_naming_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = yaml.safe_dump(deployment("café", **{"hardware.gpus": 2}), allow_unicode=True)
    path = tmp_path / "latin1.yaml"
    path.write_bytes(text.encode("latin-1"))
    rc, out, err = run(capsys, "plan", str(path))
    assert rc == 2 and out == ""
    assert err.startswith(f"error: {path}: not UTF-8 text (byte ")
    assert "is 0xe9" in err and "save the manifest as UTF-8" in err
    assert "Traceback" not in err

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("latin-1"))))
    rc, out, err = run(capsys, "plan", "-")
    assert rc == 2 and out == ""
    assert err.startswith("error: <stdin>: not UTF-8 text")


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "plan", str(tmp_path / "nope.yaml"))
    assert rc == 2
    assert "cannot read" in err


def test_multi_document_file_plans_each_deployment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    path = write(
        tmp_path,
        service,
        deployment("a", **{"hardware.gpus": 2}),
        deployment("b", **{"hardware.gpus": 4, "slo": {}}),
    )
    rc, out, err = run(capsys, "plan", path, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["kind"] == "PlanList"
    assert [item["deployment"] for item in doc["items"]] == ["a", "b"]
    assert [item["request"]["gpus"] for item in doc["items"]] == [2, 4]

    rc, out, _ = run(capsys, "plan", path)
    assert rc == 0
    assert "== ExeGPTDeployment/a ==" in out and "== ExeGPTDeployment/b ==" in out


def test_multi_document_errors_name_the_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, deployment("a"), deployment("b", **{"hardware.gpuType": "tpu"}))
    rc, out, err = run(capsys, "plan", path)
    assert rc == 2 and out == ""
    assert f"error: {path}: ExeGPTDeployment/b: spec.hardware.gpuType: unknown GPU type" in err


def test_multi_document_without_deployments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, {"kind": "Service"}, {"kind": "ConfigMap"})
    rc, _, err = run(capsys, "plan", path)
    assert rc == 2
    assert "none of its 2 documents is an ExeGPTDeployment" in err


def test_infeasible_bound_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, deployment(**{"hardware.gpus": 2, "slo.latency": "1ms"}))
    rc, out, err = run(capsys, "plan", path, "--json")
    assert rc == 1, err
    doc = json.loads(out)
    assert doc["kind"] == "Infeasible"
    assert doc["latency_bound_s"] == pytest.approx(0.001)
    assert doc["best_latency_s"] is None or doc["best_latency_s"] > 0.001
    assert doc["message"]

    rc, out, _ = run(capsys, "plan", path)
    assert rc == 1
    assert "INFEASIBLE" in out


def test_profile_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "opt.json"
    analytic_profile(get_architecture("opt-13b"), get_gpu("nvidia-a100-80gb")).save(good)
    other = tmp_path / "llama.json"
    analytic_profile(get_architecture("llama-2-7b"), get_gpu("nvidia-a100-80gb")).save(other)
    path = write(tmp_path, deployment(**{"hardware.gpus": 2}))

    rc, out, err = run(capsys, "plan", path, "--json", "--profile", str(good))
    assert rc == 0, err
    assert json.loads(out)["kind"] == "Plan"

    rc, out, err = run(capsys, "plan", path, "--profile", str(other))
    assert rc == 2 and out == ""
    assert "does not match the deployment (model llama-2-7b vs opt-13b)" in err

    (tmp_path / "junk.json").write_text("{}")
    rc, _, err = run(capsys, "plan", path, "--profile", str(tmp_path / "junk.json"))
    assert rc == 2
    assert "not a valid profile" in err


def test_search_options_reach_the_scheduler(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake(request: PlanRequest, profile: Any, **kw: Any) -> Plan:
        seen.update(kw)
        return fake_plan(request)

    monkeypatch.setattr(scheduler, "schedule", fake)
    path = write(tmp_path, deployment(**{"hardware.gpus": 2}))
    rc, _, err = run(capsys, "plan", path, "--exhaustive", "--time-limit", "2.5")
    assert rc == 0, err
    assert seen == {"exhaustive": True, "time_limit_s": 2.5}

    rc, _, err = run(capsys, "plan", path, "--time-limit", "-1")
    assert rc == 2
    assert "must be positive" in err


def test_time_limit_running_out_is_not_an_infeasible_bound(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # a bound that plans easily (exit 0 without a limit), and a limit no search meets
    path = write(tmp_path, deployment(**{"hardware.gpus": 2}))
    assert run(capsys, "plan", path)[0] == 0
    rc, out, err = run(capsys, "plan", path, "--json", "--time-limit", "1e-9")
    assert rc == 2, err
    doc = json.loads(out)  # the result is still printed
    assert doc["kind"] == "Infeasible" and doc["search"]["truncated"] is True
    assert f"error: {path}: the search stopped at --time-limit 1e-09 s" in err
    assert "raise --time-limit or leave it out" in err

    rc, out, err = run(capsys, "plan", path, "--time-limit", "1e-9")
    assert rc == 2
    assert "NOT PLANNED: the search stopped at its time limit" in out
    assert "(branch and bound; stopped at the time limit, the rest unsearched)" in out
    assert "INFEASIBLE" not in out


# -- other commands --------------------------------------------------------------------------------


BENCHES = (
    "calibration, operator, paper, profile, replan, repricing, runner, simulator, vllm, "
    "vllm_profile"
)
"""Every benchmark ``exegpt bench`` runs, as it lists them."""


def test_unknown_bench_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "bench", "no_such_bench", "--x")
    assert rc == 2 and out == ""
    assert "error: unknown benchmark 'no_such_bench'" in err
    # the benchmarks, not the modules they are built from (speed, records, ...)
    assert f"available: {BENCHES}\n" in err


def test_bench_without_a_name_lists_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "bench")
    assert rc == 2 and out == ""
    assert err.startswith("error: name a benchmark: exegpt bench NAME [ARGS...]; ")
    assert f"available: {BENCHES} " in err


def test_bench_name_is_not_a_module_path(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "bench", "..cli")
    assert rc == 2
    assert "unknown benchmark" in err


def test_bench_dispatches_to_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    module = types.ModuleType("exegpt.bench.fakebench")

    def fake_run(argv: list[str]) -> int:
        calls.append(argv)
        return 7

    module.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "exegpt.bench.fakebench", module)
    rc, _, _ = run(capsys, "bench", "fakebench", "--json", "--scenarios", "3")
    assert rc == 7
    assert calls == [["--json", "--scenarios", "3"]]


# -- crd ---------------------------------------------------------------------------------------


def test_crd_prints_the_generated_crd(capsys: pytest.CaptureFixture[str]) -> None:
    from exegpt.operator.crd import render_crd

    rc, out, err = run(capsys, "crd")
    assert (rc, err) == (0, "")
    assert out == render_crd()
    assert yaml.safe_load(out)["kind"] == "CustomResourceDefinition"


def test_crd_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from exegpt.operator.crd import render_crd

    target = tmp_path / "crd.yaml"
    rc, out, err = run(capsys, "crd", "--output", str(target))
    assert (rc, out, err) == (0, "", "")
    assert target.read_text(encoding="utf-8") == render_crd()
    rc, out, _ = run(capsys, "crd", "-o", "-")
    assert rc == 0 and out == render_crd()


def test_crd_output_unwritable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "crd", "--output", str(tmp_path / "missing" / "crd.yaml"))
    assert rc == 2 and out == ""
    assert "cannot write" in err and err.startswith("error: ")


def test_serve_needs_a_plan_and_a_role_or_a_local_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out, err = run(capsys, "serve")
    assert rc == 2 and out == ""
    assert "give --plan FILE and --role ROLE (in a pod), or --local FILE" in err
    monkeypatch.delenv("POD_NAME", raising=False)
    rc, out, err = run(capsys, "serve", "--plan", "plan.json", "--role", "worker")
    assert rc == 2 and "POD_NAME is not set" in err


def test_serve_local_deployment_without_a_plan_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, deployment(**{"hardware.gpus": 2, "slo.latency": "1ms"}))
    rc, out, err = run(capsys, "serve", "--local", path)
    assert rc == 2 and out == ""
    assert err.startswith(f"error: {path}: nothing to serve: no configuration meets the ")
    assert "loosen spec.slo.latency" in err


TINY = str(ROOT / "examples" / "local-tiny.yaml")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--port", "99999"], "argument --port: not a TCP port: '99999': give one from 1 to 65535"),
        (["--port", "-5"], "argument --port: not a TCP port: '-5'"),
        (["--port", "http"], "argument --port: not a port number: 'http'"),
        (["--max-slots", "0"], "argument --max-slots: must be at least 1: '0'"),
        (["--max-slots", "-3"], "argument --max-slots: must be at least 1: '-3'"),
        (["--threads", "0"], "argument --threads: must be at least 1: '0'"),
    ],
)
def test_serve_options_out_of_range_exit_2(
    capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    rc, out, err = run(capsys, "serve", "--local", TINY, *flags)
    assert rc == 2 and out == ""
    assert expected in err


def test_serve_local_checks_where_it_listens_before_loading(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    rc, out, err = run(capsys, "serve", "--local", TINY, "--host", "999.1.1.1")
    assert rc == 2 and out == ""
    # (a note on the plan's replicas may come first)
    assert "\nerror: --host 999.1.1.1: not an address or a host name that resolves (" in err
    assert "127.0.0.1" in err and "Traceback" not in err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out, err = run(capsys, "serve", "--local", TINY, "--port", str(port))
    assert rc == 2 and out == ""
    assert err.splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is in use (another server, or an earlier exegpt "
        "serve still running): stop it, or choose another --port"
    )


def test_serve_local_refuses_a_slot_cap_below_one() -> None:
    from exegpt.cli import _local_plan_document
    from exegpt.runner.errors import RunnerError
    from exegpt.runner.serve import serve_local
    from exegpt.runner.workerplan import WorkerPlan

    plan = WorkerPlan.parse(_local_plan_document(TINY))
    for bad in (0, -3):
        with pytest.raises(RunnerError, match=f"--max-slots {bad}: give at least 1"):
            serve_local(plan, port=0, max_slots=bad)


def test_profile_help_needs_no_torch(capsys: pytest.CaptureFixture[str]) -> None:
    # the profile command's options parse before the runner (and torch) is imported;
    # tests/runner/ runs the command itself
    assert main(["profile", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--configmap" in out and "--max-seconds" in out and "--tensor-parallel" in out
    assert main(["profile", "--gpu-type", "cpu"]) == 2
    assert "--model" in capsys.readouterr().err


def test_operator_rejects_bad_settings_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXEGPT_RESYNC_SECONDS", "often")
    rc, out, err = run(capsys, "operator", "--namespace", "default")
    assert rc == 2 and out == ""
    assert "EXEGPT_RESYNC_SECONDS" in err


def test_operator_without_a_cluster_exits_2_naming_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import exegpt.operator.app

    started: list[object] = []

    async def never(*args: object, **kwargs: object) -> None:
        started.append(args)

    monkeypatch.setattr(exegpt.operator.app, "run", never)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    rc, out, err = run(capsys, "operator")
    assert rc == 2 and out == ""
    assert err.startswith("error: no cluster to run against (")
    assert "KUBECONFIG" in err and "--kube-host URL" in err
    assert "Traceback" not in err and started == []

    # with a (test-only, insecure) API server named, the operator starts (a stand-in here)
    rc, _, err = run(capsys, "operator", "--kube-host", "http://127.0.0.1:1", "--kube-insecure")
    assert rc == 0, err
    assert len(started) == 1


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--version"]) == 0
    assert "exegpt" in capsys.readouterr().out
    assert main(["plan"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["plan", "--help"]) == 0
    assert "--exhaustive" in capsys.readouterr().out


# -- renderers -------------------------------------------------------------------------------------


def small_request() -> PlanRequest:
    return plan_request(parse_spec(deployment(**{"hardware.gpus": 2})["spec"]))


def prediction(qps: float, latency: float = 1.0) -> Prediction:
    return Prediction(
        throughput_qps=qps,
        throughput_tps=qps * 30,
        latency_s=latency,
        e2e_p99_s=latency * 1.1,
        memory_per_gpu_bytes=30 * 1024**3,
        decode_batch=64.0,
        feasible=True,
    )


def fake_plan(request: PlanRequest, static: float | None = 2.0) -> Plan:
    rr = ExecutionConfig(
        strategy="RoundRobin",
        tensor_parallel=2,
        encode_batch=8,
        decode_batch=128,
        decode_steps_per_encode=4,
    )
    base = (
        Candidate(
            config=ExecutionConfig(strategy="Static", replicas=2), predicted=prediction(static)
        )
        if static is not None
        else None
    )
    return Plan(
        strategy="RoundRobin",
        config=rr,
        predicted=prediction(6.0),
        baselines={"Static": base, "Continuous": None},
        latency_bound_s=request.latency_bound_s,
        search=SearchStats(seconds=0.5, evaluated=10, space=100),
        reason="RoundRobin wins",
    )


def test_plan_to_dict_ratios_and_missing_baselines() -> None:
    req = small_request()
    doc = render.plan_to_dict(fake_plan(req), req)
    assert doc["ratios"] == {"over_static": pytest.approx(3.0), "over_continuous": None}
    assert doc["baselines"]["continuous"] is None
    assert doc["baselines"]["static"]["config"]["strategy"] == "Static"
    assert doc["baselines"]["static"]["throughput_qps"] == 2.0
    assert doc["predicted"]["memory_per_gpu_gib"] == pytest.approx(30.0)
    json.dumps(doc, allow_nan=False)

    table = render.plan_to_table(fake_plan(req, static=None), req)
    assert "no configuration meets the bound" in table
    assert "n/a over Static" in table
    assert "N_D" in table


def test_plan_to_dict_never_writes_nan() -> None:
    req = small_request()
    p = fake_plan(req)
    bad = p.model_copy(update={"predicted": prediction(6.0, latency=math.inf)})
    doc = render.plan_to_dict(bad, req)
    assert doc["predicted"]["latency_s"] is None
    json.dumps(doc, allow_nan=False)


def test_infeasible_rendering() -> None:
    req = small_request()
    result = Infeasible(
        latency_bound_s=0.001,
        best_latency_s=0.8,
        best=Candidate(
            config=ExecutionConfig(strategy="RoundRobin"), predicted=prediction(1.0, 0.8)
        ),
        message="the lowest latency is 0.8 s: loosen the bound",
        search=SearchStats(seconds=0.1, evaluated=5, space=5),
    )
    doc = render.plan_to_dict(result, req)
    assert doc["kind"] == "Infeasible"
    assert doc["best_latency_s"] == 0.8
    assert doc["best"]["latency_s"] == 0.8
    table = render.plan_to_table(result, req)
    assert "INFEASIBLE" in table and "loosen the bound" in table and "800 ms" in table
    assert "no configuration meets the latency bound" in table
    no_fit = result.model_copy(update={"latency_bound_s": None, "best_latency_s": None})
    assert "INFEASIBLE: no configuration fits in memory" in render.plan_to_table(no_fit, req)


def test_config_summary_per_strategy() -> None:
    waa = ExecutionConfig(
        strategy="WorkloadAware",
        encode_gpus=2,
        encode_tp=2,
        decode_gpus=6,
        pipeline_stages=3,
        tensor_parallel=2,
        encode_batch=4,
        decode_batch=120,
        replicas=2,
    )
    assert render.config_summary(waa) == (
        "encode 2 (PP1 x TP2) / decode 6 (PP3 x TP2), B_E=4 B_D=120, x2 replicas"
    )
    rr = ExecutionConfig(strategy="RoundRobin", encode_batch=49, decode_steps_per_encode=7)
    assert render.config_summary(rr) == "TP1 x PP1, B_E=49 N_D=7"
    assert render.config_summary(rr, prediction(1.0)) == "TP1 x PP1, B_E=49 B_D~64 N_D=7"
    assert "batch=16" in render.config_summary(ExecutionConfig(strategy="Static", encode_batch=16))


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    # the case study is planned by test_plan_json_case_study
    [p for p in sorted((ROOT / "examples").glob("*.yaml")) if p != CASE_STUDY],
    ids=lambda p: p.stem,
)
def test_every_example_plans(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    rc, out, err = run(capsys, "plan", str(path), "--json")
    assert rc == 0, err
    assert err == ""
    doc = json.loads(out)
    assert doc["kind"] == "Plan"
    bound = doc["latency_bound_s"]
    assert bound is None or doc["predicted"]["latency_s"] <= bound
