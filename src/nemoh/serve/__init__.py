from .app import ServeLimits, build_app
from .launchers import build_command
from .tool_parser import parse_tool_calls

__all__ = ["ServeLimits", "build_app", "build_command", "parse_tool_calls"]
