"""The CLIs' help: argparse's defaults, shown only where they tell something."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help only where it tells something: not where the help
    already says what the default is, nor for flags, required options or empty defaults (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if ("default" in text.lower() or flag or action.required or default is None
                or (isinstance(default, (str, list, tuple)) and not default)):
            return text
        return super()._get_help_string(action)
