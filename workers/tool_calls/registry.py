"""Which parser a model gets: named by ``--tool-parser NAME``, else recognised in its chat template.

The template says how the model was taught to call tools (it renders the tool results and the
example calls), so its markers identify the family; a template that shows none gets Hermes,
the most common (and what acore understood before there was a choice).
"""

from __future__ import annotations

from workers.tool_calls.base import ToolCallParser
from workers.tool_calls.deepseek import DeepSeekParser
from workers.tool_calls.gemma import GemmaParser
from workers.tool_calls.harmony import HarmonyParser
from workers.tool_calls.hermes import HermesParser
from workers.tool_calls.llama3 import Llama3Parser
from workers.tool_calls.mistral import MistralParser
from workers.tool_calls.qwen3_coder import Qwen3CoderParser

PARSERS: dict[str, type[ToolCallParser]] = {p.family: p for p in (
    HermesParser, Qwen3CoderParser, Llama3Parser, MistralParser, HarmonyParser, DeepSeekParser, GemmaParser)}
ALIASES = {"qwen": "hermes", "qwen2.5": "hermes", "qwen3": "hermes", "qwen3-xml": "qwen3-coder",
           "llama": "llama3", "llama3-json": "llama3", "gpt-oss": "harmony", "deepseek-v3": "deepseek",
           "deepseek-r1": "deepseek", "deepseek-v3.1": "deepseek"}
AUTO = "auto"
DEFAULT = "hermes"
NAMES = (AUTO, *PARSERS, *ALIASES)


def parser_named(name: str) -> type[ToolCallParser]:
    """The parser for a --tool-parser value; ValueError listing the names for an unknown one."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in PARSERS:
        raise ValueError(f"unknown tool parser {name!r}; choose one of: {', '.join(NAMES)}")
    return PARSERS[key]


def detect_family(template: str | None) -> str:
    """The family whose markers the chat template uses (checked most specific first)."""
    t = template or ""
    if "<|channel|>" in t and "<|message|>" in t:
        return HarmonyParser.family
    if "tool▁calls▁begin" in t or "tool▁call▁begin" in t:
        return DeepSeekParser.family
    if "<function=" in t and "<parameter=" in t:
        return Qwen3CoderParser.family
    if "<tool_call>" in t:
        return HermesParser.family
    if "[TOOL_CALLS]" in t:
        return MistralParser.family
    if "<|python_tag|>" in t or ("<|start_header_id|>" in t and "ipython" in t):
        return Llama3Parser.family
    if "tool_code" in t:
        return GemmaParser.family
    return DEFAULT


def choose_parser(option: str | None, template: str | None) -> type[ToolCallParser]:
    """``option`` (a --tool-parser value; None or "auto": by the template)."""
    if option and option.strip().lower() != AUTO:
        return parser_named(option)
    return PARSERS[detect_family(template)]
