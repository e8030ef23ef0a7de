"""The JSON the simulator answers with, shaped like OpenAI's (errors, completions, responses)."""

from __future__ import annotations

from typing import Any

from .headers import format_duration
from .limits import Refusal

__all__ = [
    "RATE_LIMITS_URL",
    "chat_completion",
    "error_body",
    "quota_error",
    "refusal_error",
    "response_object",
]

RATE_LIMITS_URL = "https://platform.openai.com/account/rate-limits"
_EPOCH = 1_700_000_000  # "created" is this plus the simulator's clock, so runs are reproducible
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
    "username) if you're accessing the API from your browser and are prompted for a username and "
    "password. You can obtain an API key from https://platform.openai.com/account/api-keys."
)
BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)"
)
SERVER_ERROR = (
    "The server had an error while processing your request. Sorry about that! You can retry your "
    "request, or contact us through our help center at help.openai.com if the error persists."
)
OVERLOADED = "The engine is currently overloaded, please try again later."
BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def refusal_error(refusal: Refusal, *, model: str, organization: str) -> dict[str, Any]:
    """The 429 body for a refused request: "Rate limit reached" or "Request too large"."""
    if refusal.kind == "requests":
        what, unit = "requests per min (RPM)", "requests"
    else:
        what, unit = "tokens per min (TPM)", "tokens"
    where = f"for {model} in organization {organization} on {what}"
    if refusal.kind == "too_large":
        message = (
            f"Request too large {where}: Limit {refusal.limit}, Requested {refusal.requested}. "
            "The input or output tokens must be reduced in order to run successfully. "
            f"Visit {RATE_LIMITS_URL} to learn more."
        )
    else:
        message = (
            f"Rate limit reached {where}: Limit {refusal.limit}, Used {refusal.used}, "
            f"Requested {refusal.requested}. Please try again in "
            f"{format_duration(refusal.retry_after)}. Visit {RATE_LIMITS_URL} to learn more."
        )
    return error_body(message, type=unit, code="rate_limit_exceeded")


def quota_error() -> dict[str, Any]:
    """The 429 body once the budget is spent."""
    return error_body(
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def _text(tokens: int) -> str:
    """Filler text of about ``tokens`` tokens (one word each)."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(tokens))


def _usage_details(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def chat_completion(
    *,
    number: int,
    model: str,
    now: float,
    prompt_tokens: int,
    completions: list[int],
    max_tokens: int,
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice per drawn completion length."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": _text(tokens), "refusal": None},
            "logprobs": None,
            "finish_reason": "length" if tokens >= max_tokens else "stop",
        }
        for i, tokens in enumerate(completions)
    ]
    return {
        "id": f"chatcmpl-sim{number:08d}",
        "object": "chat.completion",
        "created": _EPOCH + int(now),
        "model": model,
        "choices": choices,
        "usage": _usage_details(prompt_tokens, sum(completions)),
        "service_tier": "default",
        "system_fingerprint": "fp_vsched_sim",
    }


def response_object(
    *,
    number: int,
    model: str,
    now: float,
    prompt_tokens: int,
    completion_tokens: int,
    max_tokens: int,
) -> dict[str, Any]:
    """A Responses API ``response`` object with one output message."""
    truncated = completion_tokens >= max_tokens
    return {
        "id": f"resp_sim{number:08d}",
        "object": "response",
        "created_at": _EPOCH + int(now),
        "status": "incomplete" if truncated else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": None,
        "max_output_tokens": max_tokens,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_sim{number:08d}",
                "status": "incomplete" if truncated else "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": _text(completion_tokens), "annotations": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "metadata": {},
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
