"""SGLang's native API on `nemoh serve`, as RL frameworks (miles, slime) drive it: token ids in, token ids, per-token
log-probs and routed experts out, weight reloads from disk, pause/continue.

Shapes follow sglang/srt/managers/io_struct.py (GenerateReqInput, UpdateWeightFromDiskReqInput,
PauseGenerationReqInput) and tokenizer_manager.py (meta_info): `output_token_logprobs` is a list of
`[logprob, token_id, text|null]`; `routed_experts` is base64 of little-endian int32, shape
(prompt_len + output_len - 1 - routed_experts_start_len, num_hidden_layers, top_k), rows of non-MoE layers zero
(SGLang's capture buffer is zero-initialised and only MoE layers write to it).
Legend: T positions with routing, L model layers, m MoE layers, k experts per token.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engine import CompletionOutput, SamplingParams
from ..engine.scoring import sequence_logprobs
from .async_engine import DoneEvent
from .body import parse_json
from .errors import APIError, from_validation_errors


class SGLangSamplingParams(BaseModel):
    """sglang/srt/sampling/sampling_params.py names; penalties nemoh does not implement must stay neutral."""
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(128, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1
    min_p: float = Field(0.0, ge=0, le=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True      # accepted; the built-in tokenizer has one spacing
    no_stop_trim: bool = False
    n: int = Field(1, ge=1)
    sampling_seed: int | None = None
    frequency_penalty: Literal[0, 0.0] = 0.0  # type: ignore[valid-type]  # pydantic takes float literals
    presence_penalty: Literal[0, 0.0] = 0.0  # type: ignore[valid-type]  # pydantic takes float literals
    repetition_penalty: Literal[1, 1.0] = 1.0  # type: ignore[valid-type]  # pydantic takes float literals


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_ids: list[int] | None = None
    text: str | None = None
    # the model class is a valid zero-argument factory; pydantic's overloads (no plugin) infer Never
    sampling_params: SGLangSamplingParams = Field(default_factory=SGLangSamplingParams)  # type: ignore[arg-type]
    return_logprob: bool = False
    logprob_start_len: int = -1                     # -1: no input log-probs; k: input log-probs from position k
    top_logprobs_num: int = Field(0, ge=0, le=20)
    return_text_in_logprobs: bool = False
    return_routed_experts: bool = False
    routed_experts_start_len: int = Field(0, ge=0)
    rid: str | None = None
    stream: Literal[False] = False


class UpdateWeightsFromDiskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")        # SGLang's GPU-only knobs (is_async, recapture_cuda_graph, ...)
    model_path: str
    load_format: str | None = None
    abort_all_requests: bool = False
    weight_version: str | None = None
    flush_cache: bool = True


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["abort", "retract", "in_place"] = "abort"


def _parse(model: type[BaseModel], body: Any) -> Any:
    """A pydantic model from a JSON body; the first problem becomes a 400 naming its field."""
    try:
        return model.model_validate(body if body is not None else {})
    except ValidationError as e:
        raise from_validation_errors(e.errors()) from e


async def _json(request: Request) -> Any:
    """The body through the server's strict JSON reader (no NaN/Infinity, depth and surrogate limits)."""
    raw = await request.body()
    return parse_json(raw, request.app.state.server.limits.max_json_depth) if raw else None


def finish_reason(c: CompletionOutput) -> dict[str, Any]:
    """SGLang's finish_reason object: {"type": "stop", "matched": id|str} | {"type": "length", "length": n} | abort."""
    if c.finish_reason == "length":
        return {"type": "length", "length": len(c.token_ids)}
    if c.finish_reason == "stop":
        return {"type": "stop", "matched": c.stop_reason if c.stop_reason is not None else c.token_ids[-1]}
    return {"type": "abort", "message": "aborted"}


def encode_routed_experts(routed: torch.Tensor, moe_layers: list[int], num_layers: int, start: int) -> str:
    """(m, T, k) expert ids of the MoE layers -> base64 int32 (T - start, L, k) over all layers, zero elsewhere."""
    _, T, k = routed.shape
    full = np.zeros((T, num_layers, k), dtype="<i4")
    full[:, moe_layers, :] = routed.permute(1, 0, 2).cpu().numpy()
    return base64.b64encode(full[start:].tobytes()).decode("ascii")


class SGLangState:
    """What SGLang keeps beside the engine: the weight version and where the weights came from."""

    def __init__(self, model_path: str):
        self.weight_version = "default"
        self.model_path = model_path


def sglang_router(server: Any) -> APIRouter:
    """The routes, bound to a `serve.app.Server` (its engine, LLM and tokenizer)."""
    router = APIRouter()
    llm, tok = server.llm, server.tok
    state = SGLangState(str(llm.model.source_dir or server.name))
    cfg = llm.model.config

    def logprob_rows(ids: list[int], lps: Sequence[float | None], with_text: bool) -> list[list[Any]]:
        return [[lp, t, tok.decode([t], skip_special_tokens=False) if with_text else None] for lp, t in zip(lps, ids)]

    def one_output(c: CompletionOutput, req: GenerateRequest, prompt: list[int], rid: str, t0: float,
                   input_lps: list[float | None] | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": rid, "finish_reason": finish_reason(c), "prompt_tokens": len(prompt),
            "completion_tokens": len(c.token_ids), "cached_tokens": 0, "weight_version": state.weight_version,
            "e2e_latency": time.perf_counter() - t0}
        if req.return_logprob:
            meta["output_token_logprobs"] = logprob_rows(c.token_ids, c.logprobs, req.return_text_in_logprobs)
            if input_lps is not None:
                start = max(0, req.logprob_start_len)
                meta["input_token_logprobs"] = logprob_rows(prompt[start:], input_lps[start:],
                                                            req.return_text_in_logprobs)
            if req.top_logprobs_num:
                meta["output_top_logprobs"] = [[[v, k, None] for k, v in d.items()] for d in (c.top_logprobs or [])]
        if req.return_routed_experts and c.routed_experts is not None:
            meta["routed_experts"] = encode_routed_experts(c.routed_experts, llm.model.moe_layers,
                                                           cfg.num_hidden_layers, req.routed_experts_start_len)
        return {"text": c.text, "output_ids": list(c.token_ids), "meta_info": meta}

    @router.post("/generate")
    async def generate(request: Request):
        req: GenerateRequest = _parse(GenerateRequest, await _json(request))
        if (req.input_ids is None) == (req.text is None):
            raise APIError(400, "input_ids: give exactly one of input_ids or text", "input_ids")
        ids = req.input_ids if req.input_ids is not None else tok.encode(req.text or "")
        if not ids or min(ids) < 0 or max(ids) >= cfg.vocab_size:
            raise APIError(400, f"input_ids: expected a non-empty list of ids in [0, {cfg.vocab_size})", "input_ids")
        if req.return_routed_experts and req.routed_experts_start_len > len(ids):
            raise APIError(400, "routed_experts_start_len: must be <= the prompt length", "routed_experts_start_len")
        sp = req.sampling_params
        try:
            params = SamplingParams(
                n=sp.n, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k, min_p=sp.min_p,
                max_tokens=sp.max_new_tokens, min_tokens=sp.min_new_tokens, stop=sp.stop,
                stop_token_ids=list(sp.stop_token_ids or []), ignore_eos=sp.ignore_eos,
                include_stop_str_in_output=sp.no_stop_trim, seed=sp.sampling_seed,
                logprobs=req.top_logprobs_num or None, return_routed_experts=req.return_routed_experts,
                skip_special_tokens=sp.skip_special_tokens)
        except ValueError as e:
            raise APIError(400, f"sampling_params.{e}", "sampling_params") from e
        t0 = time.perf_counter()
        input_lps = None
        if req.return_logprob and req.logprob_start_len >= 0:
            scores = await server.engine.call(lambda e: sequence_logprobs(e.model, ids, sp.temperature))
            input_lps = [None, *scores]                 # the first token has no log-prob (SGLang sends null)
        try:
            rid, q = server.engine.submit(ids, params)
        except ValueError as e:
            raise APIError(400, str(e), "input_ids") from e
        while True:
            ev = await q.get()
            if isinstance(ev, DoneEvent):
                break
        if ev.error:
            raise APIError(500, ev.error, type_="server_error")
        assert ev.output is not None  # no error: the engine set its output
        outs = [one_output(c, req, ids, req.rid or rid, t0, input_lps) for c in ev.output.outputs]
        return outs[0] if sp.n == 1 else outs

    @router.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request):
        req: UpdateWeightsFromDiskRequest = _parse(UpdateWeightsFromDiskRequest, await _json(request))
        if req.load_format not in (None, "auto", "safetensors"):
            raise APIError(400, f"load_format: nemoh reads safetensors, got {req.load_format!r}", "load_format")
        if req.abort_all_requests:
            server.engine.pause(abort=True)
            server.engine.resume()
        try:
            await server.engine.call(lambda e: e.reload_weights(req.model_path))
        except (ValueError, OSError) as e:
            return JSONResponse({"success": False, "message": f"{req.model_path}: {e}"}, status_code=400)
        state.model_path = req.model_path
        if req.weight_version is not None:
            state.weight_version = req.weight_version
        return {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}

    @router.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache():
        return PlainTextResponse("Cache flushed.\n")   # nemoh keeps no prefix cache across requests

    @router.post("/pause_generation")
    async def pause_generation(request: Request):
        req: PauseRequest = _parse(PauseRequest, await _json(request))
        server.engine.pause(abort=req.mode == "abort")  # retract and in_place both keep requests and their state
        return {"status": "ok", "message": f"Generation paused ({req.mode})."}

    @router.post("/continue_generation")
    async def continue_generation():
        server.engine.resume()
        return {"status": "ok", "message": "Generation continued."}

    @router.get("/get_model_info")
    async def get_model_info():
        return {"model_path": state.model_path, "tokenizer_path": state.model_path, "is_generation": True,
                "preferred_sampling_params": None, "weight_version": state.weight_version,
                "has_image_understanding": False, "has_audio_understanding": False, "model_type": "nemotron_h",
                "architectures": ["NemotronHForCausalLM"], "num_hidden_layers": cfg.num_hidden_layers,
                "num_experts_per_tok": cfg.num_experts_per_tok}

    @router.get("/get_weight_version")
    async def get_weight_version():
        return {"weight_version": state.weight_version}

    return router

