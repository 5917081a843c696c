"""The ``exegpt`` command line.

``exegpt plan FILE.yaml`` plans ExeGPTDeployments offline; ``exegpt crd`` prints the
ExeGPTDeployment CRD; ``exegpt profile`` measures a profile (the profiling Job's
entrypoint); ``exegpt bench NAME`` runs a benchmark from ``exegpt.bench``. Exit codes: 0
success, 1 a deployment whose latency bound no configuration meets (``plan``) or a
profiling failure (``profile``), 2 bad input or usage, or a ``plan --time-limit`` that ran
out before any plan was found (the bound may still be met).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pkgutil
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ValidationError

from exegpt import __version__
from exegpt.operator.request import SpecError, plan_request, request_warnings
from exegpt.operator.spec import KIND, ExeGPTDeployment, format_errors, parse_manifest
from exegpt.planner.architecture import Architecture
from exegpt.planner.plan import Infeasible, Plan, PlanRequest
from exegpt.planner.profile import Profile
from exegpt.render import plan_to_dict, plan_to_table

EXIT_OK = 0
EXIT_INFEASIBLE = 1
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A user error: each message is printed as ``error: <message>``; exit code 2."""

    def __init__(self, *messages: str) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


# -- plan ---------------------------------------------------------------------------------


def _read_text(file: str) -> str:
    label = "<stdin>" if file == "-" else file
    try:
        if file == "-":
            raw = getattr(sys.stdin, "buffer", None)  # bytes, whatever the locale
            return raw.read().decode("utf-8") if raw is not None else sys.stdin.read()
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{label}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}): "
            "save the manifest as UTF-8"
        ) from None


def load_documents(file: str) -> list[tuple[str, object]]:
    """The documents of ``file`` to plan, each with the label errors are reported under.

    A single-document file is planned whatever its kind (so a wrong ``kind`` is
    reported); from a multi-document file only the ExeGPTDeployment documents are.
    """
    text = _read_text(file)
    label = "<stdin>" if file == "-" else file
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CliError(f"{label}: invalid YAML: {exc}") from None
    if not docs:
        raise CliError(f"{label}: no YAML document found")
    if len(docs) == 1:
        return [(label, docs[0])]
    picked: list[tuple[str, object]] = []
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and doc.get("kind") == KIND:
            meta = doc.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            picked.append((f"{label}: {KIND}/{name or f'document {i + 1}'}", doc))
    if not picked:
        raise CliError(f"{label}: none of its {len(docs)} documents is an {KIND}")
    return picked


def _load_profile(path: str) -> Profile:
    try:
        return Profile.load(path)
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValidationError as exc:
        lines = format_errors(exc)
        raise CliError(f"{path}: not a valid profile: " + "; ".join(lines[:5])) from None
    except ValueError as exc:
        raise CliError(f"{path}: not a valid profile: {exc}") from None


def _check_profile(profile: Profile, request: PlanRequest, label: str, path: str) -> None:
    prov = profile.provenance
    mismatches = []
    if prov.architecture != request.architecture:
        mismatches.append(f"model {prov.architecture.name} vs {request.architecture.name}")
    if prov.gpu_type != request.gpu.name:
        mismatches.append(f"GPU {prov.gpu_type} vs {request.gpu.name}")
    if prov.dtype != request.dtype:
        mismatches.append(f"dtype {prov.dtype} vs {request.dtype}")
    if mismatches:
        raise CliError(
            f"{label}: profile {path} does not match the deployment ("
            + ", ".join(mismatches)
            + "): profile this model on this GPU type, or omit --profile"
        )


def _cmd_plan(args: argparse.Namespace) -> int:
    from exegpt.planner.analytic import analytic_profile
    from exegpt.planner.scheduler import schedule

    documents = load_documents(args.file)
    errors: list[str] = []
    todo: list[tuple[str, ExeGPTDeployment, PlanRequest]] = []
    for label, raw in documents:
        try:
            manifest = parse_manifest(raw)
        except ValidationError as exc:
            errors += [f"{label}: {line}" for line in format_errors(exc)]
            continue
        try:
            todo.append((label, manifest, plan_request(manifest.spec)))
        except SpecError as exc:
            errors.append(f"{label}: {exc.path}: {exc.message}")
    if errors:
        raise CliError(*errors)
    for label, _, request in todo:
        for warning in request_warnings(request):
            print(f"warning: {label}: {warning}", file=sys.stderr)

    given = _load_profile(args.profile) if args.profile else None
    profiles: dict[tuple[str, str, str], Profile] = {}
    results: list[tuple[ExeGPTDeployment, PlanRequest, Plan | Infeasible]] = []
    unfinished: list[str] = []  # stopped at --time-limit before any plan was found
    for label, manifest, request in todo:
        if given is not None:
            _check_profile(given, request, label, args.profile)
            profile = given
        else:
            key = (request.architecture.model_dump_json(), request.gpu.name, request.dtype)
            if key not in profiles:
                profiles[key] = analytic_profile(
                    request.architecture, request.gpu, dtype=request.dtype
                )
            profile = profiles[key]
        try:
            result = schedule(
                request, profile, exhaustive=args.exhaustive, time_limit_s=args.time_limit
            )
        except (ValueError, KeyError) as exc:
            raise CliError(f"{label}: cannot plan: {str(exc).strip(chr(39))}") from None
        results.append((manifest, request, result))
        if isinstance(result, Infeasible) and result.search.truncated:
            unfinished.append(label)

    out: IO[str] = sys.stdout
    if args.json:
        if len(results) == 1:
            _, request, result = results[0]
            doc: dict[str, Any] = plan_to_dict(result, request)
        else:
            doc = {
                "kind": "PlanList",
                "items": [{"deployment": m.name, **plan_to_dict(r, req)} for m, req, r in results],
            }
        out.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    else:
        for i, (manifest, request, result) in enumerate(results):
            if len(results) > 1:
                out.write(("\n" if i else "") + f"== {KIND}/{manifest.name} ==\n")
            out.write(plan_to_table(result, request))
    for label in unfinished:
        print(
            f"error: {label}: the search stopped at --time-limit {args.time_limit:g} s "
            "before finding a plan, so whether the bound can be met is unknown: "
            "raise --time-limit or leave it out",
            file=sys.stderr,
        )
    if unfinished:
        return EXIT_USAGE
    infeasible = any(isinstance(r, Infeasible) for _, _, r in results)
    return EXIT_INFEASIBLE if infeasible else EXIT_OK


# -- profile ---------------------------------------------------------------------------------


def _profile_architecture(args: argparse.Namespace) -> Architecture:
    from exegpt.planner.architecture import get_architecture

    if args.architecture_json:
        try:
            return Architecture.model_validate_json(args.architecture_json)
        except ValidationError as exc:
            raise CliError("--architecture-json: " + "; ".join(format_errors(exc)[:5])) from None
    try:
        return get_architecture(args.model)
    except KeyError as exc:
        raise CliError(str(exc).strip("\"'")) from None


def _tp_degrees(text: str) -> tuple[int, ...]:
    try:
        degrees = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not degrees or min(degrees) < 1:
        raise argparse.ArgumentTypeError(f"TP degrees must be positive: {text!r}")
    return degrees


def _cmd_profile(args: argparse.Namespace) -> int:
    import os

    architecture = _profile_architecture(args)
    try:
        from exegpt.runner.errors import RunnerError
        from exegpt.runner.job import profile_command
        from exegpt.runner.profiler import ProfileOptions
    except ModuleNotFoundError as exc:
        raise CliError(
            f"exegpt profile needs PyTorch (module {exc.name!r} is missing): "
            "pip install 'exegpt[runner]'"
        ) from None
    quick = args.quick
    options = ProfileOptions(
        tensor_parallel=args.tensor_parallel,
        max_seconds=args.max_seconds,
        max_batch=args.max_batch or (16 if quick else 256),
        max_length=args.max_length or (256 if quick else None),
        max_tokens=args.max_tokens,
        warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
        repeats=args.repeats or (3 if quick else 5),
        comm=args.comm,
        seed=args.seed,
        midpoints=not quick,
    )
    namespace = args.namespace or (os.environ.get("POD_NAMESPACE") if args.configmap else None)
    try:
        profile_command(
            architecture,
            gpu_type=args.gpu_type,
            dtype=args.dtype,
            options=options,
            device=args.device,
            weights=args.weights,
            output=args.output,
            configmap=args.configmap,
            namespace=namespace,
            check_gpu=not args.any_gpu,
            threads=args.threads,
            engine=args.engine,
        )
    except RunnerError as exc:
        print(f"error: exegpt profile: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# -- bench ---------------------------------------------------------------------------------


_ENTRY_POINT = re.compile(r"^def run\(argv", re.MULTILINE)


def _bench_names() -> list[str]:
    """The benchmarks: the modules of ``exegpt.bench`` with a ``run(argv)`` entry point
    (read from their source: importing them would load torch; the others are parts)."""
    import exegpt.bench

    names = []
    for m in pkgutil.iter_modules(exegpt.bench.__path__):
        if m.name.startswith("_") or m.ispkg:
            continue
        spec = importlib.util.find_spec(f"exegpt.bench.{m.name}")
        if spec is None or spec.origin is None:
            continue
        if _ENTRY_POINT.search(Path(spec.origin).read_text(encoding="utf-8")):
            names.append(m.name)
    return sorted(names)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.name is None:
        known = _bench_names()
        raise CliError(
            "name a benchmark: exegpt bench NAME [ARGS...]; available: "
            + (", ".join(known) if known else "none is installed")
            + " (exegpt bench NAME --help shows a benchmark's arguments)"
        )
    name: str = args.name
    module_name = f"exegpt.bench.{name}"

    def unknown() -> CliError:
        known = _bench_names()
        hint = f"available: {', '.join(known)}" if known else "none is installed"
        return CliError(f"unknown benchmark {name!r}; {hint}")

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise unknown()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise unknown() from None
        raise CliError(
            f"benchmark {name!r} needs the module {exc.name!r}, which is not installed"
        ) from None
    run: Callable[[list[str]], int] | None = getattr(module, "run", None)
    if not callable(run):
        raise CliError(f"benchmark {name!r} has no run(argv) entry point")
    return int(run(list(args.args)))


# -- crd ------------------------------------------------------------------------------------


def _cmd_crd(args: argparse.Namespace) -> int:
    from exegpt.operator.crd import render_crd

    text = render_crd()
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{args.output}: cannot write: {exc.strerror or exc}") from None
    return EXIT_OK


# -- operator ----------------------------------------------------------------------------------


def _cmd_operator(args: argparse.Namespace) -> int:
    import asyncio
    import os

    import kopf
    import kubernetes

    from exegpt.operator.app import run
    from exegpt.operator.kube import Kube
    from exegpt.operator.logs import configure_logging
    from exegpt.operator.settings import OperatorSettings

    try:
        settings = OperatorSettings.from_env(
            os.environ,
            namespaces=tuple(args.namespace) if args.namespace else None,
            kube_host=args.kube_host,
            kube_insecure=True if args.kube_insecure else None,
            liveness_endpoint=args.liveness,
            log_format=args.log_format,
            metrics_port=args.metrics_port,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:  # reads the credentials only; kopf would retry a missing kubeconfig forever
        kube = Kube.connect(settings.kube_host)
    except (kubernetes.config.ConfigException, yaml.YAMLError) as exc:
        raise CliError(
            f"no cluster to run against ({str(exc).strip() or type(exc).__name__}): run "
            "in a pod with a service account, point KUBECONFIG (or ~/.kube/config) at a "
            "kubeconfig with a current context, or give --kube-host URL"
        ) from None
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run(settings, memo=kopf.Memo(kube=kube)))
    return EXIT_OK


# -- commands of other builds ----------------------------------------------------------------

# -- serve ---------------------------------------------------------------------------------------


def _local_plan_document(file: str) -> dict[str, object]:
    """The worker plan of ``file``: a WorkerPlan JSON document as is, or an
    ExeGPTDeployment planned here (analytic profile) into the document the operator
    would write."""
    from exegpt.operator.plandoc import plan_document
    from exegpt.planner.analytic import analytic_profile
    from exegpt.planner.scheduler import schedule

    documents = load_documents(file)
    if len(documents) != 1:
        raise CliError(f"{file}: give one document (a WorkerPlan or an ExeGPTDeployment)")
    label, raw = documents[0]
    if isinstance(raw, dict) and raw.get("kind") == "WorkerPlan":
        return raw
    try:
        manifest = parse_manifest(raw)
    except ValidationError as exc:
        raise CliError(*[f"{label}: {line}" for line in format_errors(exc)]) from None
    try:
        request = plan_request(manifest.spec)
    except SpecError as exc:
        raise CliError(f"{label}: {exc.path}: {exc.message}") from None
    profile = analytic_profile(request.architecture, request.gpu, dtype=request.dtype)
    result = schedule(request, profile)
    if not isinstance(result, Plan):
        raise CliError(f"{label}: nothing to serve: {result.message}")
    name = str(manifest.metadata.get("name") or "local")
    return plan_document(name, manifest.spec, result).document()


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    try:
        from exegpt.runner.errors import RunnerError
        from exegpt.runner.serve import serve_local, serve_pod
        from exegpt.runner.topology import UnsupportedPlan
        from exegpt.runner.workerplan import parse_plan
    except ModuleNotFoundError as exc:
        raise CliError(
            f"exegpt serve needs PyTorch (module {exc.name!r} is missing): "
            "pip install 'exegpt[runner]'"
        ) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.local:
            plan = parse_plan(_local_plan_document(args.local), args.local)
            if plan.config.replicas > 1:
                print(
                    f"note: the plan has {plan.config.replicas} replicas; --local runs one",
                    file=sys.stderr,
                )
            return serve_local(
                plan, host=args.host or "127.0.0.1", port=args.port or 8000,
                threads=args.threads, grace_seconds=args.grace_seconds,
                max_slots=args.max_slots,
            )  # fmt: skip
        if not (args.plan and args.role):
            raise CliError("give --plan FILE and --role ROLE (in a pod), or --local FILE")
        pod = os.environ.get("POD_NAME")
        if not pod:
            raise CliError("POD_NAME is not set: --plan runs in a worker pod; use --local here")
        return serve_pod(
            args.plan, args.role, args.port or 8000, pod_name=pod,
            namespace=os.environ.get("POD_NAMESPACE"), host=args.host or "0.0.0.0",
            grace_seconds=args.grace_seconds, timeout_s=args.peer_timeout,
        )  # fmt: skip
    except (RunnerError, UnsupportedPlan) as exc:
        raise CliError(str(exc)) from None


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exegpt",
        description="ExeGPT: the highest-throughput LLM serving plan under a latency bound.",
    )
    parser.add_argument("--version", action="version", version=f"exegpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    plan = sub.add_parser(
        "plan",
        help="plan an ExeGPTDeployment offline",
        description="Plan the ExeGPTDeployment(s) in FILE (YAML; '-' reads stdin) and print "
        "the plan, its prediction and the Static and Continuous batching baselines. "
        "Exit code: 0 planned, 1 the latency bound cannot be met, 2 invalid input or "
        "--time-limit ran out before any plan was found.",
    )
    plan.add_argument(
        "file",
        metavar="FILE.yaml",
        help="manifest; multi-document files plan each ExeGPTDeployment in them",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument(
        "--exhaustive",
        action="store_true",
        help="search the whole discretised space (slow; to verify the branch and bound)",
    )
    plan.add_argument(
        "--profile",
        metavar="P.json",
        help="a measured profile to plan from (default: the analytic profile)",
    )
    plan.add_argument(
        "--time-limit",
        metavar="S",
        type=_positive_float,
        default=None,
        help="stop searching after S seconds and return the best plan found",
    )
    plan.set_defaults(func=_cmd_plan)

    crd = sub.add_parser(
        "crd",
        help="print the ExeGPTDeployment CRD",
        description="Print the ExeGPTDeployment CustomResourceDefinition generated from the "
        "resource's models (crds/ holds this output).",
    )
    crd.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        default=None,
        help="write the CRD to FILE instead of stdout ('-': stdout)",
    )
    crd.set_defaults(func=_cmd_crd)

    prof = sub.add_parser(
        "profile",
        help="measure a profile of a model on this machine (the profiling Job's entrypoint)",
        description="Measure the per-layer encode and decode times of a model over a grid of "
        "batch sizes and lengths for each TP degree, communication times and memory, and "
        "write the planner's profile JSON (to stdout, --output, or the ConfigMap "
        "--configmap in --namespace). Weights are random unless --weights names a local "
        "Hugging Face directory; nothing is downloaded. Exit code: 0 written, 1 profiling "
        "failed (no GPU of the requested type, out of memory, the ConfigMap could not be "
        "written), 2 usage.",
    )
    which = prof.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="NAME", help="a preset (opt-13b, llama-2-7b, ...)")
    which.add_argument(
        "--architecture-json", metavar="JSON", help="an explicit architecture (the CRD's fields)"
    )
    prof.add_argument(
        "--gpu-type", required=True, metavar="TYPE",
        help="the GPU type measured (nvidia-h100-80gb, ...); 'cpu' profiles the CPU",
    )  # fmt: skip
    prof.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    prof.add_argument(
        "--tensor-parallel", type=_tp_degrees, default=(1,), metavar="1,2,4",
        help="TP degrees to time (1 is always included)",
    )  # fmt: skip
    prof.add_argument(
        "--max-seconds", "--budget", type=_positive_float, default=3600.0, metavar="S",
        help="time budget: the grid is refined until it runs out (default 3600)",
    )  # fmt: skip
    prof.add_argument("--configmap", metavar="NAME", help="write the profile into this ConfigMap")
    prof.add_argument(
        "--namespace", metavar="NS", help="the ConfigMap's namespace (default $POD_NAMESPACE)"
    )
    prof.add_argument(
        "--output", "-o", metavar="FILE", help="write the profile to FILE ('-': stdout)"
    )
    prof.add_argument("--weights", metavar="DIR", help="a local Hugging Face safetensors directory")
    prof.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    prof.add_argument(
        "--engine", default="exegpt", choices=["exegpt", "vllm"],
        help="whose steps to time: the own engine's (default) or vLLM's (needs vllm)",
    )  # fmt: skip
    prof.add_argument("--max-batch", type=int, metavar="B", help="largest batch (default 256)")
    prof.add_argument(
        "--max-length", type=int, metavar="N", help="longest length (default: max positions)"
    )
    prof.add_argument(
        "--max-tokens", type=int, metavar="N",
        help="skip encode points with more tokens (default 65536 on a GPU, 8192 on the CPU)",
    )  # fmt: skip
    prof.add_argument("--warmup", type=int, metavar="N", help="untimed runs per point (default 2)")
    prof.add_argument("--repeats", type=int, metavar="N", help="timed runs per point (default 5)")
    prof.add_argument("--comm", default="auto", choices=["auto", "measured", "analytic"])
    prof.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    prof.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads of torch (default: torch's)"
    )
    prof.add_argument(
        "--quick", action="store_true",
        help="a small grid (batch <= 16, length <= 256, fewer repeats), for a smoke test",
    )  # fmt: skip
    prof.add_argument(
        "--any-gpu", action="store_true", help="do not check the GPU is of --gpu-type"
    )
    prof.set_defaults(func=_cmd_profile)

    bench = sub.add_parser(
        "bench",
        help="run a benchmark",
        description="Run the benchmark exegpt.bench.NAME with the remaining arguments.",
    )
    bench.add_argument(
        "name", metavar="NAME", nargs="?", default=None,
        help="benchmark (e.g. paper, calibration); without one, lists them",
    )  # fmt: skip
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    bench.set_defaults(func=_cmd_bench)

    op = sub.add_parser(
        "operator",
        help="run the operator against the current kubeconfig",
        description="Run the ExeGPTDeployment operator (kopf) against the cluster of the "
        "in-cluster service account or the current kubeconfig context. Settings come from "
        "EXEGPT_* environment variables (see docs/operator.md); flags override them.",
    )
    op.add_argument(
        "--namespace", "-n", action="append", metavar="NS",
        help="watch this namespace (repeatable); default: every namespace",
    )  # fmt: skip
    op.add_argument(
        "--kube-host", metavar="URL",
        help="test only: an API server reached with no authentication and no TLS "
        "verification (needs --kube-insecure)",
    )  # fmt: skip
    op.add_argument(
        "--kube-insecure", action="store_true",
        help="test only: allow --kube-host / EXEGPT_KUBE_HOST",
    )  # fmt: skip
    op.add_argument(
        "--log-format", choices=("text", "json"), default=None,
        help="log lines as text (default) or JSON objects (EXEGPT_LOG_FORMAT)",
    )  # fmt: skip
    op.add_argument(
        "--metrics-port", type=int, metavar="PORT", default=None,
        help="serve the operator's Prometheus /metrics on PORT; 0: none (EXEGPT_METRICS_PORT)",
    )  # fmt: skip
    op.add_argument(
        "--liveness", metavar="URL", default=None,
        help="health endpoint (default http://0.0.0.0:8080/healthz)",
    )  # fmt: skip
    op.set_defaults(func=_cmd_operator)

    serve = sub.add_parser(
        "serve",
        help="run an XRunner worker (the workers' entrypoint), or a whole plan locally",
        description="In a worker pod: run this pod's processes of the plan (--plan, --role; "
        "POD_NAME gives the ordinal). With --local FILE: run one replica of a plan on this "
        "machine (a WorkerPlan JSON, or an ExeGPTDeployment planned here), with the "
        "OpenAI-compatible API on --host:--port. See docs/serving.md.",
    )
    serve.add_argument("--plan", metavar="FILE", help="the plan document (plan.json)")
    serve.add_argument(
        "--role", choices=["worker", "encoder", "decoder"], help="this pod's role in the plan"
    )
    serve.add_argument("--local", metavar="FILE", help="run one replica of FILE on this machine")
    serve.add_argument("--host", default=None, help="listen address (local: 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, default=None, help="HTTP port, 1 to 65535 (default 8000)"
    )
    serve.add_argument(
        "--threads", type=_positive_int, default=1,
        help="torch threads per local process (default 1)",
    )  # fmt: skip
    serve.add_argument(
        "--max-slots", type=_positive_int, default=64,
        help="local: at most this many sequences per KV cache (default 64; at least 1)",
    )  # fmt: skip
    serve.add_argument(
        "--grace-seconds", type=_positive_float, default=60.0,
        help="how long a shutdown waits for requests in flight (default 60)",
    )  # fmt: skip
    serve.add_argument(
        "--peer-timeout", type=_positive_float, default=300.0,
        help="seconds a process waits for its peers before giving up (default 300)",
    )  # fmt: skip
    serve.set_defaults(func=_cmd_serve)

    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}: give one from 1 to 65535")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        for message in exc.messages:
            print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
