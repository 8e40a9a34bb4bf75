"""Request and response schemas of `tianci serve`, built per app from its Limits so that the OpenAPI
schema states the very caps the server enforces, and the translation of validation errors into
OpenAI-style 400s that name the parameter and its allowed range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..sampling import COMPOSE_SAMPLING as S, PENALTY_RANGE
from .limits import Limits, error_body

MAX_SEED = 2**63 - 1
MIN_P = ("extension (llama.cpp, vLLM): keep the tokens at least min_p times as likely as the likeliest; "
         "0 or null = off")
PENALTY_LO, PENALTY_HI = PENALTY_RANGE
PRESENCE = "OpenAI's: subtracted from the logit of every token already drawn (negative: repeats favoured)"
FREQUENCY = "OpenAI's: times how often a token was already drawn, subtracted from its logit"
CHAT_MAX_TOKENS = 128  # a chat continuation's length when the request names none
# strict: no "5" -> 5 or true -> 1 coercions; forbid: a misspelt parameter is an error, not a no-op
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ApiError(Exception):
    """An error answered with `status` and the OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None, **extra):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code, **extra)
        self.headers = headers


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    allowed: str | None = Field(None, description="the parameter's allowed values or range, when known")
    suggestions: list[str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tianci"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class Choice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    compose: list[dict] | None = Field(None, description="tianci extension, when the request composed: per "
                                       "choice, the /api/compose result (form, rhyme, seed, note)")


class CipaiEntry(BaseModel):
    name: str
    aliases: list[str]
    source: Literal["词谱", "corpus"]
    count: int = Field(description="poems of this 词牌 in the corpus the run was trained on")
    pinyin: list[str]
    form: dict | None = None


class CipaiList(BaseModel):
    total: int
    data: list[CipaiEntry]


class FormInfo(BaseModel):
    name: str
    title: str
    source: str
    variant: int | None
    n_variants: int
    n_chars: int
    lines: list[str] = Field(description="skeleton per line: '*' a character, then punctuation")
    line_lengths: list[int]
    slots: list[str] = Field(description="○ 平, ● 仄, ◐ either; a rhyme slot is followed by its group letter")
    tones: str
    rhyme: list[int]
    rhyme_groups: int
    example: str
    corpus_count: int


class ComposeResultModel(BaseModel):
    cipai: str
    title: str
    author: str
    text: str
    lines: list[str]
    rhyme: list[str]
    backoffs: list[str]
    seconds: float
    seed: int = Field(description="the seed used (a random one when the request gave none)")
    note: str = Field("", description="why a variant other than the default was taken (\"\" when it was not)")
    theme: list[str] = Field([], description="the theme words asked for")
    theme_found: list[str] = Field([], description="the theme words the poem holds")
    form: FormInfo


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    cipai: bool
    queue: dict[str, int]


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one app, built from its Limits (so the schema states the caps)."""

    completion: type[BaseModel]
    compose: type[BaseModel]
    chat: type[BaseModel]

    @classmethod
    def build(cls, lim: Limits) -> "RequestModels":
        return cls(*request_models(lim))

    def schema(self, path: str) -> dict | None:
        """The JSON schema of the body a route takes, for naming a parameter's allowed range."""
        model = {"/v1/completions": self.completion, "/api/compose": self.compose,
                 "/v1/chat/completions": self.chat}.get(path)
        return None if model is None else model.model_json_schema()


def request_models(lim: Limits):
    """The request bodies, with this server's caps as schema constraints."""
    Prompt = Annotated[str, Field(max_length=lim.max_prompt_chars)]
    Stop = Annotated[str, Field(min_length=1, max_length=lim.max_stop_chars)]

    class CompletionRequest(BaseModel):
        """OpenAI /v1/completions. Unsupported OpenAI options are accepted only at their no-op value."""
        model_config = STRICT
        prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=lim.max_prompts)]
        model: str | None = Field(None, max_length=200)
        max_tokens: int | None = Field(16, ge=0, le=lim.max_tokens)
        temperature: float | None = Field(1.0, ge=0, le=2)
        top_p: float | None = Field(1.0, gt=0, le=1)
        top_k: int | None = Field(None, ge=0, le=100_000, description="tianci extension; 0 or null = off")
        min_p: float | None = Field(None, ge=0, lt=1, description=MIN_P)
        n: int | None = Field(1, ge=1, le=lim.max_n)
        stop: Stop | Annotated[list[Stop], Field(max_length=lim.max_stop)] | None = None
        seed: int | None = Field(None, ge=0, le=MAX_SEED)
        stream: bool | None = False
        stream_options: StreamOptions | None = None
        echo: bool | None = False
        user: str | None = Field(None, max_length=256)
        # OpenAI options this server does not implement: only their neutral value is accepted
        logprobs: int | None = Field(None, ge=0, le=0, description="not supported: null or 0")
        best_of: int | None = Field(None, ge=1, le=lim.max_n, description="must equal n when given")
        suffix: str | None = Field(None, max_length=0, description="not supported: null or empty")
        presence_penalty: float | None = Field(0.0, ge=PENALTY_LO, le=PENALTY_HI, description=PRESENCE)
        frequency_penalty: float | None = Field(0.0, ge=PENALTY_LO, le=PENALTY_HI, description=FREQUENCY)
        logit_bias: dict[str, float] | None = Field(None, max_length=0, description="not supported")

    class ComposeRequest(BaseModel):
        """Compose a ci to a 词牌 with guaranteed form, tone and rhyme."""
        model_config = STRICT
        cipai: str = Field(min_length=1, max_length=40, description="name, alias or pinyin")
        start: str | None = Field(None, max_length=64, description="opening characters")
        acrostic: str | None = Field(None, max_length=64, description="first character of each line (藏头)")
        theme: str | None = Field(None, max_length=16, description="1-3 words to write about, e.g. "
                                  "春雨,归舟 (a preference among what the form allows)")
        author: str | None = Field(None, max_length=8, description="null: the model writes one")
        temperature: float = Field(S.temperature, ge=0, le=2)
        top_p: float | None = Field(S.top_p, gt=0, le=1)
        top_k: int | None = Field(S.top_k, ge=0, le=100_000)
        min_p: float | None = Field(S.min_p, ge=0, lt=1, description=MIN_P)
        presence_penalty: float = Field(S.presence_penalty, ge=PENALTY_LO, le=PENALTY_HI, description=PRESENCE)
        frequency_penalty: float = Field(S.frequency_penalty, ge=PENALTY_LO, le=PENALTY_HI, description=FREQUENCY)
        seed: int | None = Field(None, ge=0, le=MAX_SEED)
        variant: int | None = Field(None, ge=0, le=999)
        stream: bool = True

    class TextPart(BaseModel):
        model_config = STRICT
        type: Literal["text"]
        text: Prompt

    class ChatMessage(BaseModel):
        model_config = STRICT
        role: Literal["system", "developer", "user", "assistant"]
        content: Prompt | Annotated[list[TextPart], Field(max_length=16)] | None = None
        name: str | None = Field(None, max_length=64)

    class ChatRequest(BaseModel):
        """OpenAI /v1/chat/completions: a last user message naming a 词牌 composes (see the route), any
        other conversation is continued. Unsupported OpenAI options are accepted only at their no-op value."""
        model_config = STRICT
        messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=lim.max_messages)]
        model: str | None = Field(None, max_length=200)
        max_completion_tokens: int | None = Field(None, ge=0, le=lim.max_tokens,
                                                  description=f"continuations (null: {CHAT_MAX_TOKENS} capped by "
                                                  "the server's limit); a composition is always the whole form")
        max_tokens: int | None = Field(None, ge=0, le=lim.max_tokens, description="the older name of "
                                       "max_completion_tokens")
        temperature: float | None = Field(None, ge=0, le=2, description=f"null: 1 for continuations, "
                                          f"{S.temperature} to compose")
        top_p: float | None = Field(None, gt=0, le=1, description=f"null: 1 for continuations, {S.top_p} to compose")
        top_k: int | None = Field(None, ge=0, le=100_000, description="tianci extension; 0 or null = off")
        min_p: float | None = Field(None, ge=0, lt=1, description=MIN_P + f"; null: off for continuations, "
                                    f"{S.min_p or 'off'} to compose")
        n: int | None = Field(1, ge=1, le=lim.max_n)
        stop: Stop | Annotated[list[Stop], Field(max_length=lim.max_stop)] | None = Field(
            None, description="continuations only")
        seed: int | None = Field(None, ge=0, le=MAX_SEED)
        stream: bool | None = False
        stream_options: StreamOptions | None = None
        user: str | None = Field(None, max_length=256)
        logprobs: Literal[False] | None = Field(None, description="not supported: null or false")
        top_logprobs: int | None = Field(None, ge=0, le=0, description="not supported: null or 0")
        presence_penalty: float | None = Field(None, ge=PENALTY_LO, le=PENALTY_HI, description=PRESENCE +
                                               f"; null: 0 for continuations, {S.presence_penalty:g} to compose")
        frequency_penalty: float | None = Field(None, ge=PENALTY_LO, le=PENALTY_HI, description=FREQUENCY +
                                                f"; null: 0 for continuations, {S.frequency_penalty:g} to compose")
        logit_bias: dict[str, float] | None = Field(None, max_length=0, description="not supported")

    return CompletionRequest, ComposeRequest, ChatRequest


# ----------------------------------------------------------------------------- validation errors

def allowed(prop: dict) -> str:
    """'0..512', '(0, 1]', 'at most 64 characters' ... from a JSON-schema property."""
    for alt in [prop, *prop.get("anyOf", [])]:
        lo = alt.get("minimum", alt.get("exclusiveMinimum"))
        hi = alt.get("maximum", alt.get("exclusiveMaximum"))
        if lo is not None or hi is not None:
            left = "(" if "exclusiveMinimum" in alt else "["
            right = ")" if "exclusiveMaximum" in alt else "]"
            if left == "[" and right == "]" and lo is not None and hi is not None:
                return f"{lo}..{hi}"
            return f"{left}{'' if lo is None else lo}, {'' if hi is None else hi}{right}"
    parts = []
    for alt in [prop, *prop.get("anyOf", [])]:
        if "maxLength" in alt:
            parts.append(f"a string of at most {alt['maxLength']} characters")
        if "maxItems" in alt:
            parts.append(f"a list of at most {alt['maxItems']} items")
    return " or ".join(dict.fromkeys(parts))


def describe_validation_error(errors: list[dict], schema: dict | None) -> tuple[str, str | None]:
    """(message, param) for the first pydantic error of a request body."""
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = list(e.get("loc", ()))
    where = loc.pop(0) if loc and loc[0] in ("body", "query", "path") else "body"
    if where != "body":
        schema = None  # a query/path parameter: its constraint is in pydantic's message
    if e.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}", None
    if not loc:
        return f"the request body must be a JSON object ({e.get('msg')})", None
    top = str(loc[0])
    # drop pydantic's union tags ('str', 'list[str]'), keep list indices
    param = top + "".join(f"[{x}]" for x in loc[1:] if isinstance(x, int))
    props = (schema or {}).get("properties", {})
    if top == "prompt" and any(isinstance(x.get("input"), int) for x in errors):
        return ("prompt: token-id arrays are not supported by this server; send text (a string or a list "
                "of strings)"), "prompt"
    if e.get("type") == "missing":
        return f"{param} is required", param
    if e.get("type") == "extra_forbidden":
        known = ", ".join(sorted(props)) if props else ""
        return f"unknown parameter {param!r}" + (f" (known: {known})" if known else ""), param
    msg = f"{param}: {e.get('msg', 'invalid value')}"
    if "input" in e and not isinstance(e["input"], (dict, list)):
        msg += f" (got {e['input']!r})"
    rng = allowed(props.get(top, {})) if top in props else ""
    if rng:
        msg += f"; allowed: {rng}"
    desc = props.get(top, {}).get("description")
    if desc and "not supported" in desc:
        msg += f" ({desc})"
    return msg, param


def form_info(form) -> dict:
    from ..ci.cipai import render, rhyme_group_count

    return {"name": form.name, "title": form.title, "source": form.source, "variant": form.variant,
            "n_variants": form.n_variants, "n_chars": form.n_chars, "lines": list(form.lines),
            "line_lengths": [s.count("*") for s in form.lines], "slots": render(form).split("\n"),
            "tones": form.tones, "rhyme": list(form.rhyme), "rhyme_groups": rhyme_group_count(form),
            "example": form.example, "corpus_count": form.corpus_count}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
