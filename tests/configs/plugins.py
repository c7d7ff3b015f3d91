"""A third-party transporter and processors, as a user's own package would define them.

They let the config tests exercise name resolution and settings checks without depending on the
built-in backends (which need network libraries) and prove that dotted third-party names work."""
from __future__ import annotations

from typing import ClassVar

from fileconveyor.processors.base import Processor, ProcessorUnavailable
from fileconveyor.transporters.base import Transporter

TRANSPORTER_CLASS = "DemoTransporter"


class DemoTransporter(Transporter):
    name: ClassVar[str] = "tests.configs.plugins"
    valid_settings: ClassVar[frozenset[str]] = frozenset({"location", "url", "port"})
    required_settings: ClassVar[frozenset[str]] = frozenset({"location", "url"})

    @classmethod
    def check_settings(cls, settings: dict[str, str]) -> list[str]:  # type: ignore[override]
        problems = super().check_settings(settings)
        port = settings.get("port")
        if port is not None and not port.isdigit():
            problems.append(f"<port> {port!r} is not a port number; write a number such as 21")
        return problems

    def upload(self, local_path: str, remote_path: str) -> str:
        return self.url_for(remote_path)

    def delete(self, remote_path: str) -> None:
        return None

    def exists(self, remote_path: str) -> bool:
        return False

    def url_for(self, remote_path: str) -> str:
        return self.settings["url"] + remote_path


class Upper(Processor):
    """Available everywhere."""

    def run(self, input_file: str) -> str:
        return input_file


class NeedsMissingTool(Processor):
    """Reports itself unavailable, like image_optimizer on a machine without its tools."""

    @classmethod
    def check_available(cls) -> None:
        raise ProcessorUnavailable("NeedsMissingTool needs the tool 'frobnicate'; install it with "
                                   "apt-get install frobnicate")

    def run(self, input_file: str) -> str:
        return input_file
