# Shared by the .ci/install-*.sh scripts (sourced): a virtualenv holding pinned PyPI packages.

# venv_has VENV REQUIREMENT...: whether VENV has every requirement, each `name==version`
# (exactly that version) or `name<version` (below it, compared numerically).
venv_has() {
  local venv="$1"; shift
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "$@" <<'PY' >/dev/null 2>&1
import re, sys
from importlib.metadata import PackageNotFoundError, version
def key(v):
    return tuple(int(x) for x in re.findall(r"\d+", v))
for req in sys.argv[1:]:
    name, op, want = re.fullmatch(r"([A-Za-z0-9_.-]+)(==|<)(.+)", req).groups()
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if not (have == want if op == "==" else key(have) < key(want)):
        sys.exit(1)
PY
}

# pinned_venv VENV PYTHON REQUIREMENT...: creates VENV with PYTHON if needed and installs the
# requirements unless they are all there already; fails if the install does not yield them.
pinned_venv() {
  local venv="$1" python="$2"; shift 2
  if venv_has "$venv" "$@"; then
    echo "$* already in $venv" >&2
    return 0
  fi
  echo "installing $* into $venv" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  venv_has "$venv" "$@" || { echo "error: the install in $venv did not produce $*" >&2; return 1; }
}
