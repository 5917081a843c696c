"""WorkloadAware's KV hand-over on the CPU: a vLLM KV connector over a directory that the
prefill server and the decode server share. vLLM loads it through its kv-transfer
configuration (``"kv_connector": "SharedDirectoryConnector", "kv_connector_module_path":
"exegpt.runner.vllm_kv_connector"``); between GPUs the operator runs ``NixlConnector``
instead (docs/vllm.md).

It is vLLM's ``ExampleConnector`` (KV files per prompt and layer, named by a hash of the
prompt's tokens) with four things changed:

- **What it hands over**: every prompt token's KV but the last one's, partial blocks
  included. vLLM's scheduler must compute at least one token of a prompt to sample from,
  so the decode server computes the last prompt token and nothing else (as behind
  ``NixlConnector``, whose loads vLLM also shortens by one token). ``ExampleConnector``
  hands over whole 128-token blocks only, stores and looks up different prefixes for
  prompts of ``128 k + 1`` tokens, and for a one-token prompt reports ``-128`` tokens to
  load once any prompt of at most 128 tokens was stored, which fails the engine core.
  Here a one-token prompt has nothing to hand over: the decode server computes it.
- **When a prompt counts as stored**: once every worker wrote every one of its layers'
  files (each worker writes a marker file after the step that stored the prompt), and
  each file is written whole (a temporary file renamed), so a server never loads a file
  being written. Files are kept per parallel layout (``tp<T>-pp<P>`` under the shared
  directory, a file per layer and tensor-parallel rank): a server loads only what a
  server of its own layout stored, since a worker's KV heads depend on it.
- **What it loads**: only the tokens beyond the decode server's own prefix-cache hit;
  ``ExampleConnector`` rewrites the cached blocks too, which other requests may share.
- **Where a token's KV lies** in vLLM's CPU attention cache (``block_layout``): the
  kernel keeps a block's keys transposed and apart from its values, which
  ``ExampleConnector``'s copy (it indexes the cache as ``[blocks, heads, places, ...]``)
  gets right for whole blocks only. Other KV layouts (MLA models, GPU backends, a
  quantized cache) are refused.

A prompt is stored when its first scheduled step computes it up to the hand-over length;
a prompt whose prefill vLLM chunks over several steps is not stored, and the decode server
computes it whole.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata
from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import (
    ExampleConnector,
    ExampleConnectorMetadata,
    ReqMeta,
)
from vllm.distributed.parallel_state import get_pp_group, get_tensor_model_parallel_rank
from vllm.forward_context import get_forward_context

if TYPE_CHECKING:
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

STORED = "stored"
"""The marker files (``stored-<rank>``, one per worker) of a prompt whose KV is written."""


def handover_tokens(prompt_tokens: int) -> int:
    """How many of a prompt's tokens have their KV handed over: all but the last, which
    the decode server computes to sample the first output token from."""
    return max(prompt_tokens - 1, 0)


@functools.cache
def block_layout(
    isa: str, dtype: torch.dtype, heads: int, places: int, head_size: int
) -> torch.Tensor:
    """Where vLLM's CPU attention keeps each token's KV within a block: ``[places, heads,
    2, head_size]`` offsets into a block's ``heads * places * 2 * head_size`` elements
    (``[..., 0, :]`` the key, ``[..., 1, :]`` the value).

    The layout is the kernel's own (its ``isa``: keys are stored transposed, ``[head_size,
    places]`` per head, under ``vec``; other kernels pack differently), so it is read off
    the kernel: three writes of a whole block whose keys and values carry their place,
    head and element index (``+1``, keys positive and values negative; integers up to 257
    are exact in every float type the kernel takes)."""
    from vllm import _custom_ops as ops

    if max(places, heads, head_size) > 256:
        raise ValueError("a block of more than 256 places, heads or elements per head")
    p, h, c = torch.meshgrid(
        torch.arange(places), torch.arange(heads), torch.arange(head_size), indexing="ij"
    )
    seen = []
    for index in (p, h, c):
        cache = torch.zeros(1, heads, places, 2 * head_size, dtype=dtype)
        keys, values = cache.view(1, heads, 2 * places, head_size).chunk(2, dim=2)
        mark = (index + 1).to(dtype)
        ops.cpu_attn_reshape_and_cache(mark, -mark, keys, values, torch.arange(places), isa)
        seen.append(cache.flatten().float())
    kind = (seen[0] < 0).long()
    place, head, elem = (x.abs().round().long() - 1 for x in seen)
    if bool((seen[0] == 0).any()):
        raise ValueError(f"vLLM's CPU attention ({isa}) left part of a block unwritten")
    order = torch.empty(places, heads, 2, head_size, dtype=torch.long)
    order[place, head, kind, elem] = torch.arange(order.numel())
    return order


def token_kv(cache: torch.Tensor, layout: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The KV of the tokens at ``slots`` of one layer's ``cache`` (vLLM's CPU attention:
    ``[blocks, kv_heads, block_size, 2 * head_size]``), as ``[tokens, kv_heads, 2,
    head_size]``."""
    places = layout.shape[0]
    offsets = layout[slots % places].flatten(1)
    rows = cache.view(cache.shape[0], -1)
    return rows[(slots // places).unsqueeze(1), offsets].view(-1, *layout.shape[1:])


def put_token_kv(
    cache: torch.Tensor, layout: torch.Tensor, slots: torch.Tensor, kv: torch.Tensor
) -> None:
    """Write ``kv`` (``[tokens, kv_heads, 2, head_size]``) into ``cache`` at ``slots``."""
    places = layout.shape[0]
    offsets = layout[slots % places].flatten(1)
    rows = cache.view(cache.shape[0], -1)
    rows[(slots // places).unsqueeze(1), offsets] = kv.flatten(1).to(cache.dtype)


@dataclass
class HandoverReq(ReqMeta):
    """One request's store or load: ``token_ids`` (which name its files) and
    ``slot_mapping`` (their places in the paged cache) cover the hand-over; ``skip``
    leading tokens are the decode server's own prefix-cache hit and are not loaded."""

    skip: int = 0


@dataclass
class HandoverMetadata(ExampleConnectorMetadata):
    requests: list[ReqMeta] = field(default_factory=list)


def _slots(block_ids: list[int], block_size: int, tokens: int) -> torch.Tensor:
    blocks = torch.tensor(block_ids, dtype=torch.long)
    offsets = torch.arange(block_size, dtype=torch.long)
    return (blocks.reshape(-1, 1) * block_size + offsets.reshape(1, -1)).flatten()[:tokens]


class SharedDirectoryConnector(ExampleConnector):
    """``ExampleConnector`` that hands over every prompt token but the last (module
    docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parallel = self._vllm_config.parallel_config
        self._tp = int(parallel.tensor_parallel_size)
        self._head_size = int(self._vllm_config.model_config.get_head_size())
        self._workers = self._tp * int(parallel.pipeline_parallel_size)
        self._storage_path = os.path.join(
            self._storage_path, f"tp{self._tp}-pp{parallel.pipeline_parallel_size}"
        )
        self._loads: dict[str, tuple[Request, int]] = {}
        """Requests to load on the next step, with the tokens to load."""

    # the scheduler's side

    def _key(self, request_tokens: list[int], mm_hashes: list[str]) -> tuple[torch.Tensor, str]:
        """The hand-over tokens of a prompt and the folder of their files."""
        tokens = torch.tensor(request_tokens[: handover_tokens(len(request_tokens))])
        return tokens, self._generate_foldername_debug(tokens, mm_hashes, create_folder=False)

    def _stored(self, prompt: list[int], mm_hashes: list[str]) -> bool:
        _, folder = self._key(prompt, mm_hashes)
        return all(
            os.path.exists(os.path.join(folder, f"{STORED}-{rank}"))
            for rank in range(self._workers)
        )

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        prompt = list(request.prompt_token_ids or [])
        handover = handover_tokens(len(prompt))
        if handover <= num_computed_tokens:
            return 0, False
        if not self._stored(prompt, [f.identifier for f in request.mm_features]):
            return 0, False
        return handover - num_computed_tokens, False

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        if num_external_tokens > 0:
            self._loads[request.request_id] = (request, num_external_tokens)

    def _request(
        self,
        prompt: list[int],
        block_ids: list[int],
        mm_hashes: list[str],
        *,
        is_store: bool,
        skip: int = 0,
    ) -> HandoverReq:
        tokens, _ = self._key(prompt, mm_hashes)
        return HandoverReq(
            token_ids=tokens,
            slot_mapping=_slots(block_ids, self._block_size, len(tokens)),
            is_store=is_store,
            mm_hashes=mm_hashes,
            skip=skip,
        )

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = HandoverMetadata()
        for new in scheduler_output.scheduled_new_reqs:
            prompt = list(new.prompt_token_ids or [])
            mm_hashes = [f.identifier for f in new.mm_features]
            handover = handover_tokens(len(prompt))
            if new.req_id in self._loads:
                _, loaded = self._loads.pop(new.req_id)
                meta.requests.append(
                    self._request(
                        prompt, new.block_ids[0], mm_hashes, is_store=False,
                        skip=handover - loaded,
                    )
                )  # fmt: skip
                continue
            computed = new.num_computed_tokens + scheduler_output.num_scheduled_tokens[new.req_id]
            if 0 < handover <= computed and not self._stored(prompt, mm_hashes):
                meta.requests.append(
                    self._request(prompt, new.block_ids[0], mm_hashes, is_store=True)
                )
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            # a request resumed after preemption loads again what it loaded before
            if req_id not in cached.resumed_req_ids or req_id not in self._loads:
                continue
            request, loaded = self._loads.pop(req_id)
            block_ids = cached.new_block_ids[i]
            assert block_ids is not None, "a resumed request lists all its blocks"
            prompt = list(request.prompt_token_ids or [])
            meta.requests.append(
                self._request(
                    prompt, block_ids[0], [f.identifier for f in request.mm_features],
                    is_store=False, skip=handover_tokens(len(prompt)) - loaded,
                )
            )  # fmt: skip
        self._loads.clear()
        return meta

    # the worker's side

    @staticmethod
    def _rank() -> tuple[int, int]:
        """This worker's pipeline-stage and tensor-parallel ranks."""
        return get_pp_group().rank_in_group, get_tensor_model_parallel_rank()

    def _generate_filename_debug(
        self, layer_name: str, token_ids: torch.Tensor, mm_hashes: list[str]
    ) -> str:
        folder = self._generate_foldername_debug(token_ids, mm_hashes, create_folder=True)
        return os.path.join(folder, f"{layer_name}.tp{self._rank()[1]}.safetensors")

    def _metadata(self) -> HandoverMetadata:
        meta = self._get_connector_metadata()
        assert isinstance(meta, HandoverMetadata)
        return meta

    def _layout(self, layer: Any, cache: torch.Tensor) -> torch.Tensor:
        """Where ``layer``'s kernel keeps a token's KV within a block of ``cache``."""
        isa = getattr(layer, "isa", None)
        shape = tuple(cache.shape)
        if (
            isa is None
            or len(shape) != 4
            or shape[2:] != (self._block_size, 2 * self._head_size)
            or self._vllm_config.cache_config.cache_dtype != "auto"
        ):
            raise ValueError(
                "SharedDirectoryConnector knows the KV cache of vLLM's CPU attention only "
                f"([blocks, kv_heads, {self._block_size}, {2 * self._head_size}], not "
                f"quantized), not {list(shape)}; between GPUs use NixlConnector"
            )
        return block_layout(str(isa), cache.dtype, shape[1], shape[2], self._head_size)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        if getattr(forward_context, "attn_metadata", None) is None:  # no forward pass
            return
        for req in self._metadata().requests:
            if req.is_store:
                continue
            assert isinstance(req, HandoverReq)
            slots = req.slot_mapping[req.skip :]
            for name, layer in forward_context.no_compile_layers.items():
                cache = getattr(layer, "kv_cache", None)
                if not isinstance(cache, torch.Tensor):
                    continue
                path = self._generate_filename_debug(name, req.token_ids, req.mm_hashes)
                kv = safetensors.torch.load_file(path)["kv_cache"][req.skip :]
                at = slots.to(cache.device)
                put_token_kv(cache, self._layout(layer, cache), at, kv.to(cache.device))

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any
    ) -> None:
        for req in self._metadata().requests:
            if not req.is_store:
                continue
            at = req.slot_mapping.to(kv_layer.device)
            layer = get_forward_context().no_compile_layers[layer_name]
            kv = token_kv(kv_layer, self._layout(layer, kv_layer), at)
            path = self._generate_filename_debug(layer_name, req.token_ids, req.mm_hashes)
            fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".partial")
            os.close(fd)
            safetensors.torch.save_file({"kv_cache": kv.detach().cpu().contiguous()}, partial)
            os.replace(partial, path)

    def wait_for_save(self) -> None:
        stores = [req for req in self._metadata().requests if req.is_store]
        if not stores:
            return
        pp_rank, tp_rank = self._rank()
        for req in stores:
            folder = self._generate_foldername_debug(
                req.token_ids, req.mm_hashes, create_folder=True
            )
            with open(os.path.join(folder, f"{STORED}-{pp_rank * self._tp + tp_rank}"), "w"):
                pass
