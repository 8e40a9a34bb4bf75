"""Typed errors. Library code raises these with a message that names the thing (file, poem, parameter
and its allowed range) in words that suit every front end; each front end renders them:

- the CLI prints `tianci CMD: error: <message>` (plus `hints["cli"]`) as one line and exits 2;
- the server answers `status` with the OpenAI error body, `param` in its `param` field (plus
  `hints["api"]`), and never edits the message text.

`status` says whose fault it is: 4xx for what the caller sent, 5xx for the server's own run or data.
"""

from __future__ import annotations


class TianciError(Exception):
    """Bad input from the user, or a file tianci cannot use; the message is one clear line."""

    status = 400

    def __init__(self, message: str, *, param: str | None = None, allowed: str | None = None,
                 hints: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param        # the offending parameter, by its plain name ("variant", "top_p")
        self.allowed = allowed    # its allowed values or range, in words ("0..3", "strict|skip")
        self.hints = dict(hints or {})  # front end ("cli", "api") -> what to do about it

    def render(self, front_end: str) -> str:
        hint = self.hints.get(front_end)
        return f"{self.message}; {hint}" if hint else self.message


class ParameterError(TianciError, ValueError):
    """A parameter's value is outside its allowed range."""

    def __init__(self, param: str, value, allowed: str, why: str | None = None, **kw):
        self.value = value
        text = f"{param}={value!r} is not allowed: expected {allowed}"
        super().__init__(f"{text} ({why})" if why else text, param=param, allowed=allowed, **kw)


class NotFoundError(TianciError):
    """A name (词牌, run, preset) that nothing knows."""

    status = 404


class DataError(TianciError):
    """A data file (corpus, 词谱, rhyme table) is missing or malformed; the message names the file."""

    status = 500


class RunError(DataError):
    """A run directory cannot be used as it is (files that do not belong together, non-finite
    weights, a foreign tokenizer). Served, it is the server's own fault."""


class Interrupted(TianciError):
    """SIGTERM or SIGINT stopped a run after it saved its state; the front end exits 128 + signum."""

    def __init__(self, signum: int, step: int, run_dir):
        import signal
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint saved in {run_dir}",
                         hints={"cli": f"continue with `tianci train --resume {run_dir}`"})


class Diverged(TianciError):
    """The loss (or the weights) became non-finite; nothing was saved after the last finite checkpoint."""

    status = 500
