#!/usr/bin/env bash
# Create (or reuse) .venv-<line> from requirements/ci-<line>.txt and install the plugin.
# Usage: source-free; prints the venv path. MEGATRON_POWER_LINE picks the line
# (py311-mcore016, the default, or py312-mcore019).
set -euo pipefail
cd "$(dirname "$0")/.."

line="${MEGATRON_POWER_LINE:-py311-mcore016}"
case "${line}" in
  py311-mcore016) python_version=3.11 ;;
  py312-mcore019) python_version=3.12 ;;
  *) echo "MEGATRON_POWER_LINE: unknown line '${line}' (py311-mcore016 or py312-mcore019)" >&2; exit 2 ;;
esac

find_python() {
  # pyenv shims exist for every installed version but fail unless selected, so each
  # candidate must actually run and report the wanted version.
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"${python_version}".*/bin/python \
      "python${python_version}"; do
    if "${candidate}" -c "import sys; assert sys.version_info[:2] == (${python_version/./, })" \
        >/dev/null 2>&1; then
      echo "${candidate}"
      return
    fi
  done
  echo "no working Python ${python_version} found for line ${line}" >&2
  exit 1
}

venv=".venv-${line}"
stamp="${venv}/.requirements"
requirements="requirements/ci-${line}.txt"
if [ ! -f "${stamp}" ] || ! cmp -s "${stamp}" "${requirements}"; then
  rm -rf "${venv}"
  "$(find_python)" -m venv "${venv}" >&2
  "${venv}/bin/python" -m pip install -q --disable-pip-version-check -r "${requirements}" >&2
  cp "${requirements}" "${stamp}"
fi
"${venv}/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >&2
echo "${venv}"
