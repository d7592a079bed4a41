"""Reading OAuth endpoint responses without ever echoing more than the error code and description."""

from __future__ import annotations

from typing import Any

import httpx2


def json_object(response: httpx2.Response) -> dict[str, Any]:
    """The response's JSON object, or an empty dict when it is not one."""
    try:
        document = response.json()
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def oauth_error(document: dict[str, Any]) -> str:
    """An OAuth error response's ``error`` and ``error_description`` (nothing else it holds).

    >>> oauth_error({"error": "invalid_grant", "error_description": "expired", "refresh_token": "x"})
    'invalid_grant: expired'
    """
    error = document.get("error")
    description = document.get("error_description")
    text = error if isinstance(error, str) else "no OAuth error code"
    return f"{text}: {description}" if isinstance(description, str) else text
