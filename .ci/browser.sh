# Sourced by .ci/run: a Chromium for the browser suite (the HTML report rendered headless).
# Installs Debian's `chromium` with apt-get when none is on PATH; when that cannot work it
# prints why and returns, and the browser tests skip with their own reason.
browser_install() {
  local found log="${ELSPETH_CACHE:-$HOME/.cache/elspeth_beam}/browser-apt.log" sudo=""
  found=$(command -v "${ELSPETH_CHROMIUM:-chromium}" chromium chromium-browser google-chrome 2>/dev/null | head -n 1 || true)
  if [ -n "$found" ]; then
    echo "Chromium: $found"
    return 0
  fi
  if ! command -v apt-get >/dev/null; then
    echo "Chromium unavailable: no apt-get here; install Chromium and put it on PATH (or set ELSPETH_CHROMIUM)"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "Chromium unavailable: apt-get needs root and there is no passwordless sudo"
      return 0
    fi
  fi
  mkdir -p "$(dirname "$log")"
  # the package lists may be missing or stale on a fresh machine: update once and retry
  if ! { $sudo apt-get install -y -q chromium || { $sudo apt-get update -q && $sudo apt-get install -y -q chromium; }; } >"$log" 2>&1; then
    echo "Chromium unavailable: apt-get install -y -q chromium failed:"
    grep -m1 "^E:" "$log" || tail -n 1 "$log"
    return 0
  fi
  echo "Chromium: $(command -v chromium)"
}
