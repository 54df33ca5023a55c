"""Tool calls in local models' text: one incremental parser per family, chosen by the chat template.

``choose_parser`` picks the family (``--tool-parser NAME`` or the template's markers); a parser
instance consumes answer text piece by piece and reports content, reasoning and tool-call
events to a ``Sink`` (workers/chat.py turns them into Deltas); ``grammar.tool_call_grammar``
builds the GBNF that forces a call in the family's syntax for ``tool_choice`` required/named.
"""

from workers.tool_calls.base import Sink, ToolCallParser
from workers.tool_calls.registry import NAMES, PARSERS, choose_parser, detect_family, parser_named

__all__ = ["NAMES", "PARSERS", "Sink", "ToolCallParser", "choose_parser", "detect_family", "parser_named"]
