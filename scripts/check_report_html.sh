#!/usr/bin/env bash
# scripts/check_report_html.sh: load a clipgen report.html in headless Chromium and check it the way a reader sees it.
#
# Passes (exit 0, one line "ok: ...") when the page loads, every <img> has decoded (naturalWidth > 0) and no script
# error or console error was reported; otherwise prints "error: ..." and exits 1 (2 for bad usage). The report
# itself is not changed: a copy with a small checking script appended is loaded from a temporary folder.
#
# Usage:   scripts/check_report_html.sh REPORT.html
# Variables: CHROMIUM (the browser, default: chromium, chromium-browser or google-chrome on PATH).
# Example: scripts/check_report_html.sh demo-out/report.html
set -euo pipefail

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -eq 1 ]] && exit 0
    exit 2
fi
report=$1
[[ -f $report ]] || { echo "error: $report: no such file" >&2; exit 2; }
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
[[ -n $browser ]] || { echo "error: no chromium found (set CHROMIUM)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
page=$work/report.html
# the checking script: records script errors, then (after load) every image's natural size, into the DOM
sed 's#</body></html>##' "$report" > "$page"
cat >> "$page" <<'JS'
<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message || e)); }, true);
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var out = document.createElement("pre");
  out.id = "clipgen-check";
  out.textContent = "CLIPGEN-" + "RESULT images=" + imgs.length + " broken=" + bad.length + " errors=" +
    window.__errors.length + (window.__errors.length ? " first=" + window.__errors[0] : "");
  document.body.appendChild(out);
});
</script>
</body></html>
JS
dom=$work/dom.html
log=$work/console.log
"$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --user-data-dir="$work/profile" \
    --enable-logging=stderr --v=0 --virtual-time-budget=10000 --dump-dom "file://$page" > "$dom" 2> "$log" || {
    echo "error: $browser failed on $report: $(tail -n 1 "$log")" >&2; exit 1; }
line=$(grep -oE 'CLIPGEN-RESULT images=[0-9]+ broken=[0-9]+ errors=[0-9]+' "$dom" | head -n 1 || true)
[[ -n $line ]] || { echo "error: $report: the page did not finish loading in chromium" >&2; exit 1; }
console=$(grep -E 'CONSOLE.*(Uncaught|Error|error)' "$log" | head -n 1 || true)
read -r images broken errors <<< "$(sed -E 's/.*images=([0-9]+) broken=([0-9]+) errors=([0-9]+)/\1 \2 \3/' <<< "$line")"
if [[ $broken != 0 || $errors != 0 || -n $console ]]; then
    echo "error: $report: $broken of $images images did not load, $errors script errors${console:+; console: $console}" >&2
    exit 1
fi
echo "ok: $report: all $images images loaded in $(basename "$browser"), no console errors"
