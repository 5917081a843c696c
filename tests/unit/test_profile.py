"""The profile data contract: interpolation, validation, identity and persistence."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from exegpt.planner.analytic import ANALYTIC_PROFILER_VERSION, analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.hardware import get_gpu
from exegpt.planner.profile import (
    MEASURED_PROFILER_VERSION,
    SCHEMA_VERSION,
    VLLM_PROFILER_VERSION,
    VLLM_VERSION,
    Comm,
    Curve,
    Grid,
    MemoryProfile,
    PhaseTables,
    Profile,
    Provenance,
    measured_profile_key,
    profile_key,
)


@pytest.fixture(scope="module")
def profile() -> Profile:
    return analytic_profile(get_architecture("opt-13b"), get_gpu("nvidia-a100-80gb"))


def _bilinear(b: float, length: float) -> float:
    return 1.0 + 2.0 * b + 0.5 * length + 0.25 * b * length


def _grid(batch: list[int], length: list[int]) -> Grid:
    return Grid(
        batch=batch,
        length=length,
        seconds=[[_bilinear(b, x) for x in length] for b in batch],
    )


def _tables() -> PhaseTables:
    g = _grid([1, 2, 4], [16, 32])
    return PhaseTables(encode=g, decode=g, head=Curve(x=[1, 8], seconds=[1e-4, 2e-4]))


def _small_profile(
    tp: dict[int, PhaseTables], all_reduce: dict[int, Curve] | None = None
) -> Profile:
    arch = get_architecture("opt-13b")
    line = Curve(x=[1024, 2048], seconds=[1e-5, 2e-5])
    return Profile(
        provenance=Provenance(
            model=arch.name,
            architecture=arch,
            gpu_type="nvidia-a100-80gb",
            source="measured",
            profiler_version="test-1",
        ),
        tensor_parallel=tp,
        comm=Comm(
            all_reduce=all_reduce if all_reduce is not None else {},
            send_recv_intra=line,
            send_recv_inter=line,
        ),
        memory=MemoryProfile(
            encode_layer_weight_bytes=1,
            decode_layer_weight_bytes=1,
            embedding_bytes=1,
            kv_bytes_per_token=1,
            activation_bytes_per_token=1,
        ),
    )


# -- Curve -----------------------------------------------------------------------------------
class TestCurve:
    def test_exact_at_points(self) -> None:
        c = Curve(x=[1, 10, 100], seconds=[0.5, 2.0, 3.0])
        for x, y in zip(c.x, c.seconds, strict=True):
            assert c.at(x) == pytest.approx(y, rel=0, abs=1e-15)

    def test_linear_between(self) -> None:
        c = Curve(x=[1, 10, 100], seconds=[0.5, 2.0, 3.0])
        assert c.at(5.5) == pytest.approx(1.25)
        assert c.at(55) == pytest.approx(2.5)

    def test_linear_extrapolation_and_clamp(self) -> None:
        c = Curve(x=[10, 20], seconds=[1.0, 2.0])
        assert c.at(40) == pytest.approx(4.0)
        assert c.at(5) == pytest.approx(0.5)
        assert c.at(-100) == 0.0  # never negative

    def test_single_point_scales_as_a_rate(self) -> None:
        c = Curve(x=[4], seconds=[2.0])
        assert c.at(8) == pytest.approx(4.0)

    @pytest.mark.parametrize(
        ("x", "seconds", "message"),
        [
            ([1, 2], [1.0], "same length"),
            ([2, 1], [1.0, 2.0], "strictly increasing"),
            ([1, 1], [1.0, 2.0], "strictly increasing"),
            ([1, 2], [1.0, -2.0], "non-negative"),
            ([], [], "at least 1"),
        ],
    )
    def test_validation(self, x: list[float], seconds: list[float], message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            Curve(x=x, seconds=seconds)


# -- Grid ------------------------------------------------------------------------------------
class TestGrid:
    def test_exact_at_grid_points(self) -> None:
        g = Grid(batch=[1, 4, 16], length=[8, 64], seconds=[[1, 2], [3, 5], [7, 11]])
        for i, b in enumerate(g.batch):
            for j, x in enumerate(g.length):
                assert g.at(b, x) == pytest.approx(g.seconds[i][j], rel=0, abs=1e-15)

    def test_bilinear_between_and_beyond(self) -> None:
        # bilinear interpolation reproduces a bilinear function everywhere, including
        # the linear extrapolation beyond the edges
        g = _grid([1, 4, 16], [8, 64, 512])
        rng = np.random.default_rng(7)
        for b, x in zip(rng.uniform(0.5, 40, 50), rng.uniform(2, 1500, 50), strict=True):
            assert g.at(b, x) == pytest.approx(_bilinear(b, x), rel=1e-12)

    def test_midpoint_is_mean_of_corners(self) -> None:
        g = Grid(batch=[1, 3], length=[10, 30], seconds=[[1, 2], [3, 10]])
        assert g.at(2, 20) == pytest.approx((1 + 2 + 3 + 10) / 4)

    def test_clamped_at_zero(self) -> None:
        g = Grid(batch=[1, 2], length=[1, 2], seconds=[[1, 1], [5, 5]])
        assert g.at(0.01, 1) == 0.0

    @pytest.mark.parametrize(
        ("batch", "length", "seconds", "message"),
        [
            ([2, 1], [1], [[1], [1]], "batch must be strictly increasing"),
            ([1, 2], [3, 3], [[1, 1], [1, 1]], "length must be strictly increasing"),
            ([0, 1], [1], [[1], [1]], "batch values must be >= 1"),
            ([1, 2], [1], [[1]], r"shape \[len\(batch\)\]\[len\(length\)\]"),
            ([1], [1, 2], [[1]], r"shape"),
            ([1], [1], [[-1.0]], "finite and non-negative"),
            ([1], [1], [[float("nan")]], "finite and non-negative"),
        ],
    )
    def test_validation(
        self, batch: list[int], length: list[int], seconds: list[list[float]], message: str
    ) -> None:
        with pytest.raises(ValidationError, match=message):
            Grid(batch=batch, length=length, seconds=seconds)


# -- Profile -----------------------------------------------------------------------------------
class TestProfile:
    def test_json_round_trip_identical(self, profile: Profile) -> None:
        text = profile.to_json()
        again = Profile.from_json(text)
        assert again == profile
        assert again.to_json() == text
        assert again.key == profile.key
        assert again.encode_layer(2, 7, 300) == profile.encode_layer(2, 7, 300)
        assert again.comm.all_reduce_at(4, 1e6) == profile.comm.all_reduce_at(4, 1e6)

    def test_save_and_load(self, profile: Profile, tmp_path: Path) -> None:
        path = tmp_path / "p.json"
        profile.save(path)
        assert Profile.load(path) == profile

    def test_key_stable_and_dns_safe(self, profile: Profile) -> None:
        again = analytic_profile(get_architecture("opt-13b"), get_gpu("nvidia-a100-80gb"))
        assert again.key == profile.key
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", profile.key)
        assert len(profile.key) <= 63
        assert profile.key.startswith("opt-13b-nvidia-a100-80gb-")

    def test_key_changes_with_identity(self, profile: Profile) -> None:
        arch = get_architecture("opt-13b")
        base = profile_key(arch, "nvidia-a100-80gb", "float16", ANALYTIC_PROFILER_VERSION)
        assert base == profile.key
        others = {
            profile_key(arch, "nvidia-h100-80gb", "float16", ANALYTIC_PROFILER_VERSION),
            profile_key(arch, "nvidia-a100-80gb", "bfloat16", ANALYTIC_PROFILER_VERSION),
            profile_key(arch, "nvidia-a100-80gb", "float16", "analytic-999"),
            profile_key(
                get_architecture("llama-2-7b"),
                "nvidia-a100-80gb",
                "float16",
                ANALYTIC_PROFILER_VERSION,
            ),
            profile_key(
                arch.model_copy(update={"num_layers": 41}),
                "nvidia-a100-80gb",
                "float16",
                ANALYTIC_PROFILER_VERSION,
            ),
        }
        assert base not in others
        assert len(others) == 5

    def test_schema_version_mismatch_rejected(self, profile: Profile) -> None:
        doc = json.loads(profile.to_json())
        doc["schema_version"] = SCHEMA_VERSION + 1
        with pytest.raises(ValidationError) as err:
            Profile.from_json(json.dumps(doc))
        text = str(err.value)
        assert f"schema_version {SCHEMA_VERSION + 1} is not supported" in text
        assert "exegpt profile" in text

    def test_missing_tp_degree(self, profile: Profile) -> None:
        with pytest.raises(KeyError, match=r"no times for TP degree 3; it has \[1, 2, 4, 8\]"):
            profile.tables(3)
        with pytest.raises(KeyError, match="TP degree 3"):
            profile.decode_layer(3, 1, 100)
        with pytest.raises(KeyError, match="all-reduce times for TP degree 16"):
            profile.comm.all_reduce_at(16, 1e6)
        assert profile.comm.all_reduce_at(1, 1e9) == 0.0

    def test_degree_one_required(self) -> None:
        with pytest.raises(ValidationError, match="must include degree 1"):
            _small_profile({2: _tables()}, {2: Curve(x=[1, 2], seconds=[1, 2])})

    def test_all_reduce_required_for_each_degree(self) -> None:
        with pytest.raises(ValidationError, match=r"lacks TP degrees \[2\]"):
            _small_profile({1: _tables(), 2: _tables()})

    def test_lookups(self) -> None:
        p = _small_profile({1: _tables()})
        assert p.tp_degrees == [1]
        assert p.encode_layer(1, 2, 16) == pytest.approx(_bilinear(2, 16))
        assert p.decode_layer(1, 3, 24) == pytest.approx(_bilinear(3, 24))
        assert p.head(1, 4.5) == pytest.approx(1.5e-4)
        assert p.comm.send_recv_at(1536, inter_node=True) == pytest.approx(1.5e-5)
        assert p.architecture.name == "opt-13b"


class TestEngineInKey:
    """A profile of vLLM's steps is addressed by the engine and its version; the own
    engine's keys stay those of profiles made before engines were told apart."""

    def test_own_engine_key_unchanged(self) -> None:
        arch = get_architecture("opt-13b")
        doc = {
            "architecture": arch.model_dump(mode="json"),
            "gpu_type": "nvidia-a100-80gb",
            "dtype": "float16",
            "profiler_version": MEASURED_PROFILER_VERSION,
        }
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
        key = profile_key(arch, "nvidia-a100-80gb", "float16", MEASURED_PROFILER_VERSION)
        assert key == f"opt-13b-nvidia-a100-80gb-{digest}"
        assert measured_profile_key(arch, "nvidia-a100-80gb", "float16", "ExeGPT") == key

    def test_vllm_key_names_engine_and_version(self) -> None:
        arch = get_architecture("llama-2-7b")
        gpu = "nvidia-h100-80gb"
        own = profile_key(arch, gpu, "float16", VLLM_PROFILER_VERSION)
        vllm = profile_key(
            arch, gpu, "float16", VLLM_PROFILER_VERSION, engine="vLLM", engine_version="0.32.0"
        )
        newer = profile_key(
            arch, gpu, "float16", VLLM_PROFILER_VERSION, engine="vLLM", engine_version="0.33.0"
        )
        assert len({own, vllm, newer}) == 3
        assert measured_profile_key(arch, gpu, "float16", "vLLM") == profile_key(
            arch, gpu, "float16", VLLM_PROFILER_VERSION, engine="vLLM", engine_version=VLLM_VERSION
        )
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", vllm)

    def test_profile_key_follows_its_provenance(self) -> None:
        p = _small_profile({1: _tables()})
        prov = p.provenance.model_copy(
            update={"engine": "vLLM", "engine_version": "0.32.0", "profiler_version": "v"}
        )
        q = p.model_copy(update={"provenance": prov})
        assert q.key == profile_key(
            p.architecture, prov.gpu_type, prov.dtype, "v", engine="vLLM", engine_version="0.32.0"
        )
        assert q.key != profile_key(p.architecture, prov.gpu_type, prov.dtype, "v")

    def test_profile_without_engine_fields_reads_as_own_engine(self) -> None:
        doc = json.loads(_small_profile({1: _tables()}).to_json())
        for name in ("engine", "engine_version", "measured_points"):
            doc["provenance"].pop(name)
        p = Profile.from_json(json.dumps(doc))
        assert p.provenance.engine == "ExeGPT"
        assert p.provenance.measured_points == {}

    def test_unknown_engine_rejected(self) -> None:
        doc = json.loads(_small_profile({1: _tables()}).to_json())
        doc["provenance"]["engine"] = "TGI"
        with pytest.raises(ValidationError, match="engine"):
            Profile.from_json(json.dumps(doc))
