"""Rule filters (placeholder until the filter module lands; see the config/filter work)."""
from __future__ import annotations


class Filter:
    """Placeholder: matches every file."""

    def matches(self, path: str, is_deleted: bool = False) -> bool:
        return True
