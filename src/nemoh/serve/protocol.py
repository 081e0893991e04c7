"""Request bodies of the OpenAI-compatible API as pydantic models (OpenAI's and vLLM's field names and types).

Strict types (no "5" for 5, no true for 1, no NaN), bounds on every number and list, and message shapes checked
per role. A violation becomes a 400 naming the field (`messages[2].content`, see errors.py). Fields OpenAI defines
that nemoh's engine cannot honour (penalties, logit_bias, echo, ...) are accepted at their neutral value and
rejected with a 400 otherwise, never silently ignored. What depends on the loaded model (vocabulary, context,
slots) is checked afterwards by `LLM.validate_request`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..engine import SamplingParams

GREEDY_BELOW = 1e-5          # temperatures below this sample greedily (vLLM's rule: 1/T would overflow the logits)
MAX_STOP, MAX_STOP_LEN = 32, 1024
MAX_MESSAGES, MAX_TOOLS = 4096, 128
INT64 = 2**63
JSON_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
RESERVED_TEMPLATE_KWARGS = {"messages", "tools", "add_generation_prompt"}


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


# ---- messages ------------------------------------------------------------------------------------------------
class TextPart(_Model):
    type: Literal["text"]
    text: str


class FunctionCall(_Model):
    name: str = Field(min_length=1, max_length=256)
    arguments: str | dict[str, Any] = "{}"     # a JSON string (OpenAI) or an object; parsed by the template path


class ToolCall(_Model):
    id: str | None = Field(None, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, validate_default=True)
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(None, validate_default=True)
    tool_call_id: str | None = Field(None, max_length=256)
    reasoning_content: str | None = None

    @field_validator("content")
    @classmethod
    def _content_for_role(cls, v: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if v is None and role in ("system", "developer", "user", "tool"):
            raise ValueError(f"required for a {role} message (a string or a list of text parts)")
        return v

    @field_validator("tool_calls")
    @classmethod
    def _calls_for_role(cls, v: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if v and role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {role} messages")
        if role == "assistant" and info.data.get("content", 0) is None and not v:
            raise ValueError("an assistant message needs content or tool_calls")
        return v


# ---- tools ---------------------------------------------------------------------------------------------------
def check_json_schema(schema: Any, path: str = "", depth: int = 0) -> None:
    """The structure the template and the tool parser rely on: objects, `type` names JSON Schema knows,
    `properties` a mapping of schemas, `required` a list of names. Raises ValueError naming the place."""
    where = path or "schema"
    if isinstance(schema, bool):
        return                                     # true / false are valid JSON Schemas
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: a JSON Schema must be an object, got {type(schema).__name__}")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or not all(isinstance(k, str) and k in JSON_TYPES for k in kinds):
            raise ValueError(f"{where}.type: must be one of {sorted(JSON_TYPES)} or a list of them, got {kind!r}")
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise ValueError(f"{where}.properties: must be an object mapping names to schemas")
        for name, sub in props.items():
            check_json_schema(sub, f"{path}.properties.{name}" if path else f"properties.{name}", depth + 1)
    items = schema.get("items")
    if items is not None:
        for i, sub in enumerate(items if isinstance(items, list) else [items]):
            check_json_schema(sub, f"{path}.items" + (f"[{i}]" if isinstance(items, list) else ""), depth + 1)
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        raise ValueError(f"{where}.required: must be a list of property names")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise ValueError(f"{where}.enum: must be a list")


class FunctionDef(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            if v.get("type", "object") != "object":
                raise ValueError(
                    f"type: a function's parameters must be a JSON Schema of type 'object', got {v['type']!r}")
            check_json_schema(v)
        return v


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Model):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ResponseFormat(_Model):
    type: Literal["text"]                      # json_object / json_schema need constrained decoding: not supported


def _neutral(value: Any, neutral: Any, field: str) -> Any:
    if value is not None and value != neutral:
        raise ValueError(f"not supported by nemoh's engine (only {neutral!r}); leave {field} out")
    return value


# ---- sampling fields shared by both routes ------------------------------------------------------------------
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LEN)]
TokenId = Annotated[int, Field(ge=0, lt=INT64)]


class _Sampling(_Model):
    model: str | None = Field(None, max_length=512)
    n: int = Field(1, ge=1, le=256)
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1, lt=2**31)
    min_p: float = Field(0.0, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, lt=2**31)
    min_tokens: int = Field(0, ge=0, lt=2**31)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=256)] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=512)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    logit_bias: dict[str, float] | None = None
    max_thinking_tokens: int | None = Field(None, ge=0, lt=2**31)

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None, info: ValidationInfo) -> float | None:
        return _neutral(v, 0.0, info.field_name or "")

    @field_validator("repetition_penalty")
    @classmethod
    def _no_repetition_penalty(cls, v: float | None) -> float | None:
        return _neutral(v, 1.0, "repetition_penalty")

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict | None) -> dict | None:
        if v:
            raise ValueError("not supported by nemoh's engine; leave logit_bias out")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed with stream: true")
        return self

    def _params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        temperature = 1.0 if self.temperature is None else self.temperature
        return SamplingParams(
            n=self.n, temperature=0.0 if temperature < GREEDY_BELOW else temperature, top_p=self.top_p,
            top_k=self.top_k, min_p=self.min_p, max_tokens=max_tokens, min_tokens=self.min_tokens,
            stop=self.stop, stop_token_ids=list(self.stop_token_ids or []), ignore_eos=self.ignore_eos,
            include_stop_str_in_output=self.include_stop_str_in_output, seed=self.seed, logprobs=logprobs,
            max_thinking_tokens=self.max_thinking_tokens, skip_special_tokens=self.skip_special_tokens)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, lt=2**31)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    separate_reasoning: bool = True
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = Field(None, max_length=64)

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        clash = sorted(set(v or {}) & RESERVED_TEMPLATE_KWARGS)
        if clash:
            raise ValueError(f"{clash[0]} is set by the server, not by chat_template_kwargs")
        bad = [k for k in v or {} if not k.isidentifier()]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a valid template variable name")
        return v

    @model_validator(mode="after")
    def _cross_fields(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs: true")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice: 'required' or a named function needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice: function {self.tool_choice.function.name!r} is not in tools")
        return self

    def sampling_params(self) -> SamplingParams:
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as the client spelled them (unset fields left out) for the chat template."""
        return [m.model_dump(exclude_unset=True) for m in self.messages]

    def forced_function(self) -> str | None:
        """What tool_choice forces: a function's name, "" for any function ("required"), None for nothing."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return "" if self.tool_choice == "required" else None

    def template_tools(self) -> list[dict[str, Any]] | None:
        if not self.tools or self.tool_choice == "none":
            return None
        return [t.model_dump(exclude_unset=True) for t in self.tools]


MAX_PROMPTS = 256     # prompts in one /v1/completions batch (each is a request of n samples to the engine)
TextPrompt = Annotated[str, Field(min_length=1)]
IdsPrompt = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: (TextPrompt | IdsPrompt | Annotated[list[TextPrompt], Field(min_length=1, max_length=MAX_PROMPTS)]
             | Annotated[list[IdsPrompt], Field(min_length=1, max_length=MAX_PROMPTS)])
    max_tokens: int | None = Field(16, ge=1, lt=2**31)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=256)
    suffix: str | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        return _neutral(v, False, "echo")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("not supported by nemoh's engine; leave suffix out")
        return v

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of == n is supported")
        return self

    def sampling_params(self) -> SamplingParams:
        return self._params(self.max_tokens, self.logprobs)

    def prompts(self) -> list[tuple[str, str | list[int]]]:
        """(field name for errors, prompt) per prompt: one string or id list is `prompt`, a batch `prompt[i]`.
        Choices come back prompt-major, as in OpenAI: choice index = prompt index * n + sample index."""
        p = self.prompt
        if isinstance(p, list) and isinstance(p[0], (str, list)):
            return [(f"prompt[{i}]", x) for i, x in enumerate(cast(list[str | list[int]], p))]
        return [("prompt", cast(str | list[int], p))]
