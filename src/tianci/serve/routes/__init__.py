"""The routes of `tianci serve`, one router per concern: `openai` (/v1: models, completions), `chat`
(/v1/chat/completions: 填词 or continuation, by `serve.chat`'s grammar), `cipai` (/api: 词牌 and 填词),
`page` (the playground, its files, /healthz). Each route reads the app's `state.AppState` through
`state_of(request)`. The routers that take a request body are built per app (`router(models)`),
because the body's schema carries that app's limits."""

from . import chat, cipai, openai, page

__all__ = ["chat", "cipai", "openai", "page"]
