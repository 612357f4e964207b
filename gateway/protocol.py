"""The OpenAI wire models the gateway reads.

Only the fields the gateway looks at are modelled; everything else passes through untouched
(``extra="allow"``), and requests are forwarded from the client's own JSON, never from a
``model_dump`` that could inject defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class OpenAIModel(BaseModel):
    """Base of every wire model: unknown fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow")


class ContentPart(OpenAIModel):
    """One part of a multi-part message content (text, image_url, input_audio, file ...)."""

    type: str


class ChatMessage(OpenAIModel):
    """A chat message; ``content`` may be a string, a list of parts, or absent (tool calls)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


class ChatCompletionRequest(OpenAIModel):
    """``POST /v1/chat/completions`` body, validated once at the edge."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    # strict: "true" would be read as a stream but forwarded as a string the upstream ignores
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None


class EmbeddingRequest(OpenAIModel):
    """``POST /v1/embeddings`` body."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: an outcome for an earlier request (accepted, a score, or both)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=200)
    accepted: bool | None = None
    score: float | None = Field(None, ge=0.0, le=1.0)
