#!/usr/bin/env bash
# A self-contained local demo: installs File Conveyor into .venv, creates demo/site (a small web
# site) and starts the daemon in the background, syncing it to demo/www through a processor chain.
# Then it shows what happened. Stop it with:  .venv/bin/fileconveyor stop --config demo/config.xml
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .

demo="$(pwd)/demo"
mkdir -p "$demo/site/css" "$demo/site/images" "$demo/site/js" "$demo/www" "$demo/state"
cat > "$demo/config.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<config>
  <settings>
    <PID_FILE>state/fileconveyor.pid</PID_FILE>
    <LOG_FILE>state/fileconveyor.log</LOG_FILE>
    <PERSISTENT_DATA_DB>state/persistent_data.db</PERSISTENT_DATA_DB>
    <SYNCED_FILES_DB>state/synced_files.db</SYNCED_FILES_DB>
    <FSMONITOR_DB>state/fsmonitor.db</FSMONITOR_DB>
    <WORKING_DIR>state/work</WORKING_DIR>
  </settings>
  <sources ignoredDirs=".git:.svn:CVS">
    <source name="site" scanPath="$demo/site" documentRoot="$demo" basePath="/site/" />
  </sources>
  <servers>
    <server name="www" transporter="symlink_or_copy" maxConnections="4">
      <location>$demo/www</location>
      <url>http://localhost/</url>
    </server>
  </servers>
  <rules>
    <rule for="site" label="Static files with cache-busting names">
      <filter><extensions>css:js:png:jpg:gif:svg:woff2</extensions></filter>
      <processorChain>
        <processor name="filename.SpacesToDashes" />
        <processor name="link_updater.CSSURLUpdater" />
        <processor name="unique_filename.MD5" />
      </processorChain>
      <destinations><destination server="www" path="static" /></destinations>
    </rule>
    <rule for="site" label="Everything else, linked">
      <filter><extensions>html:txt</extensions></filter>
      <destinations><destination server="www" /></destinations>
    </rule>
  </rules>
</config>
XML
echo "body { background: url(../images/logo.svg); }" > "$demo/site/css/site.css"
echo '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>' > "$demo/site/images/logo.svg"
echo "console.log('hello');" > "$demo/site/js/my script.js"
echo "<h1>Hello</h1>" > "$demo/site/index.html"

fc=.venv/bin/fileconveyor
$fc check-config --config "$demo/config.xml"
if ! $fc status --config "$demo/config.xml" | grep -q "is running"; then
    $fc start --config "$demo/config.xml"
fi
echo "demo $(date)" > "$demo/site/changed-while-running.txt"
for _ in $(seq 1 50); do
    [ "$($fc status --json --config "$demo/config.xml" | .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin); print(r["waiting"] + r["in_flight"] + r["failed"])')" = 0 ] \
        && [ -e "$demo/www/changed-while-running.txt" ] && break
    sleep 0.2
done
echo
$fc status --config "$demo/config.xml"
echo
echo "Published in demo/www:"
(cd "$demo/www" && find . \( -type f -o -type l \) | sort)
echo
echo "Recorded URLs (demo/state/synced_files.db):"
.venv/bin/python - "$demo/state/synced_files.db" <<'PY'
import sqlite3, sys
for input_file, url in sqlite3.connect(sys.argv[1]).execute("SELECT input_file, url FROM synced_files ORDER BY input_file"):
    print(f"  {input_file} -> {url}")
PY
echo
echo "The published stylesheet refers to the image's published URL:"
cat "$demo"/www/static/css/site_*.css 2>/dev/null || echo "(not published yet; see: .venv/bin/fileconveyor status --config demo/config.xml)"
echo
echo "The daemon keeps running. Change files in demo/site and watch demo/www; the log is demo/state/fileconveyor.log."
echo "Stop it with: .venv/bin/fileconveyor stop --config demo/config.xml"
