"""What a /v1/chat/completions request asks for: a composition, when the last message is a user's that
names a 词牌 in the small grammar below, else a continuation of the conversation's text.

    message := [词牌] (sep key:value)*          at least one of the two; ':' or '：'
    词牌     := a name, alias or pinyin the 词谱 knows (浣溪沙, 浣溪沙 in 《》, huanxisha)
    key     := 开头 | 起句 | start      the opening characters          -> start
             | 藏头 | acrostic         the first character of each line -> acrostic
             | 主题 | 题 | theme       characters to favour             -> theme
             | 作者 | author           the author's name                -> author
             | 体 | variant            the 词谱 variant, 0-based        -> variant (needs a 词牌)
    sep     := spaces | ， | , | ； | ;

    "浣溪沙"                    compose 浣溪沙
    "水调歌头 开头:明月"          compose 水调歌头 opening with 明月 (on the first variant that admits it)
    "藏头:春花秋月"              compose the most common 词牌 with a form that admits the acrostic
    "如梦令，主题：春，作者：某"   compose 如梦令 favouring 春, by 某

Anything else continues text: one unknown word ("春风"), prose, a key the grammar does not know, or a
last message that is not the user's. A message with key:value parts whose first word is no known 词牌
("浣溪 开头:明月") is a composition request for an unknown 词牌: 404 with suggestions. The continuation's
prompt is every message's content, in order, joined by newlines (roles are not written: the model
knows only poems).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..errors import ParameterError

KEYS = {"开头": "start", "起句": "start", "start": "start", "藏头": "acrostic", "acrostic": "acrostic",
        "主题": "theme", "题": "theme", "theme": "theme", "作者": "author", "author": "author",
        "体": "variant", "variant": "variant"}
SEP = re.compile(r"[\s,，;；]+")
PART = re.compile(r"^([^:：]+)[:：](.*)$")
GRAMMAR = ("[词牌] (key:value)* with key 开头|藏头|主题|作者|体 (or start|acrostic|theme|author|variant), "
           "e.g. \"浣溪沙\", \"水调歌头 开头:明月\", \"藏头:春花秋月\"")


@dataclass(frozen=True)
class ComposeAsk:
    """A chat message's composition request; cipai None: the most common 词牌 that admits the rest."""

    cipai: str | None
    start: str | None = None
    acrostic: str | None = None
    theme: str | None = None
    author: str | None = None
    variant: int | None = None


def parse_compose(text: str, is_cipai: Callable[[str], bool]) -> ComposeAsk | None:
    """The composition `text` asks for, or None when it is not the grammar (a continuation).
    is_cipai(name): whether the 词谱 knows the name."""
    words = [w for w in SEP.split(text.strip()) if w]
    if not words:
        return None
    name = None if PART.match(words[0]) else words[0].strip("《》")
    parts: dict[str, str] = {}
    for w in words[0 if name is None else 1:]:
        m = PART.match(w)
        key = KEYS.get(m.group(1).strip().lower()) if m else None
        if key is None:
            return None  # prose, or a key the grammar does not know: not a composition request
        value = m.group(2).strip()
        if not value:
            raise ParameterError(key, value, f"a value after {m.group(1)}:", f"the grammar is {GRAMMAR}")
        if key in parts:
            raise ParameterError(key, value, "one value", f"{m.group(1)} is given twice")
        parts[key] = value
    if name is not None and not parts and not is_cipai(name):
        return None  # one word that is no 词牌: text to continue
    variant = None
    if "variant" in parts:
        if name is None:
            raise ParameterError("variant", parts["variant"], "a variant of a named 词牌",
                                 "name the 词牌 first, e.g. \"浣溪沙 体:1\"")
        if not parts["variant"].isdigit():
            raise ParameterError("variant", parts["variant"], "an integer >= 0")
        variant = int(parts["variant"])
    return ComposeAsk(name, parts.get("start"), parts.get("acrostic"), parts.get("theme"), parts.get("author"),
                      variant)


def content_text(content) -> str:
    """A message's content as text: a string, or the text of its list of {"type": "text"} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)
