"""Gradio pieces every tab uses: the error boundary of an endpoint, sliders whose range
errors name the parameter (`slider`), and a theme that loads nothing from the network.

`endpoint(fn)` is the one place where exceptions become what the page shows: a
`UserError` (the library's "your input is wrong", `requests.RequestError` included) becomes
a `gr.Error` with its message; anything else is logged with its traceback on the server
and reaches the page as one line naming the exception type — never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

import gradio as gr

from voxforge.errors import UserError

__all__ = ["endpoint", "slider", "theme"]

log = logging.getLogger("voxforge.app")


def endpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an event handler so that every failure is a clear message in the page."""

    @functools.wraps(fn)  # gradio reads the signature (gr.Progress) through __wrapped__
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # noqa: BLE001 - the boundary: log it, show one line
            print(f"voxforge app: {fn.__name__} failed:\n{traceback.format_exc()}", file=sys.stderr)
            raise gr.Error(
                f"internal error in {fn.__name__} ({type(err).__name__}: {err}); the server log has the details",
                print_exception=False,
            ) from None

    return wrapper


def slider(minimum: float, maximum: float, value: float, *, step: float, label: str) -> gr.Slider:
    """A gr.Slider whose out-of-range message names the parameter (an HTTP client can send any
    value; gradio's own message does not say which). The check wraps the instance's
    `preprocess`: subclassing a gradio component makes gradio write a .pyi type file beside this one."""
    component = gr.Slider(minimum, maximum, value, step=step, label=label)
    preprocess = component.preprocess

    def checked(payload: Any) -> Any:
        if isinstance(payload, bool) or not isinstance(payload, int | float):
            raise gr.Error(f"{label}: expected a number, got {payload!r}", print_exception=False)
        if not minimum <= payload <= maximum:
            raise gr.Error(
                f"{label} must be between {minimum:g} and {maximum:g}, got {payload:g}", print_exception=False
            )
        return preprocess(payload)

    component.preprocess = checked
    return component


def theme() -> gr.themes.Base:
    """The default theme with system fonts: the page fetches no web fonts (closed networks)."""
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "monospace"]
    return gr.themes.Default(font=system, font_mono=mono)
