"""`yui_compressor.YUICompressor`: CSS and JavaScript through the real YUI Compressor.

Where the compressor comes from, first found wins:
1. the processor's `<jar>` setting in config.xml
   (`<processor name="yui_compressor.YUICompressor"><jar>/opt/yui.jar</jar></processor>`);
2. the jar named by the environment variable FILECONVEYOR_YUI_JAR (run with `java -jar`), the
   fallback for a whole machine;
3. `yuicompressor.jar` in this package's directory, where the original told users to put it;
4. Debian's `yui-compressor` command (`apt-get install yui-compressor`).

Fixed from the original: no shell and no command line built from a file name (a list of arguments,
absolute paths, so a name starting with `-` is never an option); a timeout; the exit status decides
failure, and warnings on stderr (YUI prints `[WARNING]` for e.g. `eval`) are logged, not fatal (the
original failed, and so retried forever, on any stderr output); a missing compressor is reported once
at start-up by `check_available`. `--charset utf-8` is passed because the JVM's default charset in a
daemon's C locale is ASCII, which would mangle non-ASCII text. The output is never larger than the
input. For a faster in-process alternative see `minify.CSS` / `minify.JS`.

`find_java_tool` is shared with google_closure_compiler."""
from __future__ import annotations

import abc
import logging
import os
import shutil
from typing import Callable, ClassVar, Mapping

from fileconveyor.processors.base import Processor, ProcessorUnavailable, existing_file, run_tool

log = logging.getLogger(__name__)

#: Seconds a JVM tool may take for one file (the JVM start alone is about a second).
JAVA_TOOL_TIMEOUT = 300.0
PROCESSORS_DIR = os.path.dirname(os.path.abspath(__file__))


def find_java_tool(env_var: str, jar_name: str, command: str, what: str, debian_package: str,
                   configured_jar: str | None = None) -> list[str]:
    """The argv prefix that runs a Java tool (see the module docstring for the order), or
    ProcessorUnavailable saying how to install it."""
    jar = configured_jar or os.environ.get(env_var)
    if jar is not None and not os.path.isfile(jar):
        raise ProcessorUnavailable(
            f"{what}: {env_var}={jar!r} does not exist; point it at the jar, or unset it and "
            f"apt-get install {debian_package}")
    if jar is None and os.path.isfile(os.path.join(PROCESSORS_DIR, jar_name)):
        jar = os.path.join(PROCESSORS_DIR, jar_name)
    if jar is not None:
        java = shutil.which("java")
        if java is None:
            raise ProcessorUnavailable(f"{what}: {jar} needs Java: apt-get install default-jre-headless")
        return [java, "-jar", os.path.abspath(jar)]
    found = shutil.which(command)
    if found is None:
        raise ProcessorUnavailable(
            f"{what} is not installed: apt-get install {debian_package}, or set {env_var} to the "
            f"path of its jar, or put it at {os.path.join(PROCESSORS_DIR, jar_name)}")
    return [found]


class JavaToolProcessor(Processor):
    """Runs a Java minifier on the file; subclasses give the tool and its arguments."""

    env_var: ClassVar[str] = ""
    jar_name: ClassVar[str] = ""
    command: ClassVar[str] = ""
    debian_package: ClassVar[str] = ""
    accepted_settings: ClassVar[Mapping[str, Callable[[str], object]]] = {"jar": existing_file}

    @classmethod
    def tool(cls, settings: Mapping[str, object] | None = None) -> list[str]:
        jar = (settings or {}).get("jar")
        return find_java_tool(cls.env_var, cls.jar_name, cls.command,
                              f"{cls.__module__}.{cls.__name__}", cls.debian_package,
                              str(jar) if jar else None)

    @classmethod
    def check_available(cls) -> None:
        cls.tool()

    @classmethod
    def check_available_with(cls, settings: Mapping[str, object]) -> None:
        cls.tool(settings)

    @abc.abstractmethod
    def arguments(self, input_file: str, output_file: str) -> list[str]:
        """The tool's arguments after its command, for absolute input and output paths."""

    def run(self, input_file: str) -> str:
        output = self.context.output_path(os.path.basename(input_file))
        tmp = output + ".minified"
        argv = self.tool(self.settings) + self.arguments(os.path.abspath(input_file), tmp)
        try:
            result = run_tool(argv, timeout=JAVA_TOOL_TIMEOUT)
            if result.stderr.strip():
                log.warning("%s: %s: %s", self.context.original_file, argv[0],
                            result.stderr.decode("utf-8", "replace").strip()[-1000:])
            if os.path.getsize(tmp) >= os.path.getsize(input_file):
                return input_file
            os.replace(tmp, output)
            return output
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class YUICompressor(JavaToolProcessor):
    """CSS and JavaScript through YUI Compressor."""

    valid_extensions = (".css", ".js")
    env_var = "FILECONVEYOR_YUI_JAR"
    jar_name = "yuicompressor.jar"
    command = "yui-compressor"
    debian_package = "yui-compressor"

    def arguments(self, input_file: str, output_file: str) -> list[str]:
        kind = "css" if input_file.lower().endswith(".css") else "js"
        return ["--type", kind, "--charset", "utf-8", "-o", output_file, input_file]
