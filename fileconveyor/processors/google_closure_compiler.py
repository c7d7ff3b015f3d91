"""`google_closure_compiler.GoogleClosureCompiler`: JavaScript through the Closure Compiler.

Found like YUI Compressor (see yui_compressor): the processor's `<jar>` setting, else the jar in
FILECONVEYOR_CLOSURE_JAR, else
`compiler.jar` in this package's directory (the original's location), else Debian's
`closure-compiler` command. Default compilation level (SIMPLE_OPTIMIZATIONS: renames locals, keeps
the program's meaning). `valid_extensions` is the tuple `(".js",)`: the original wrote `(".js")`, a
string, which made the extension test a substring test that also matched files without one.
A syntax error makes the compiler exit non-zero: the file fails (retried with backoff) with the
compiler's message; warnings are logged."""
from __future__ import annotations

from fileconveyor.processors.yui_compressor import JavaToolProcessor


class GoogleClosureCompiler(JavaToolProcessor):
    """JavaScript through the Google Closure Compiler."""

    valid_extensions = (".js",)
    env_var = "FILECONVEYOR_CLOSURE_JAR"
    jar_name = "compiler.jar"
    command = "closure-compiler"
    debian_package = "closure-compiler"

    def arguments(self, input_file: str, output_file: str) -> list[str]:
        return ["--charset", "UTF-8", "--js", input_file, "--js_output_file", output_file]
