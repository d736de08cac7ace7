#!/usr/bin/env bash
# build-candidate: the versioned sdist and wheel of stemforge and the BOSH release tarball of the CPI job.
# In:  stemforge-src/, version/version (semver, e.g. 0.2.0-rc.3).  Out: candidate/stemforge-<v>.tar.gz,
#      candidate/stemforge-<v>-py3-none-any.whl, candidate/stemforge-cpi-<semver>.tgz, candidate/version.
. "$(dirname "$0")/common.sh"

VERSION=$(tr -d '[:space:]' < "$TASK_DIR/version/version")
[ -n "$VERSION" ] || fail "version/version is empty"
PY_VERSION=$("$PY" - "$VERSION" <<'PY'
import re, sys
m = re.fullmatch(r"(\d+\.\d+\.\d+)(?:-(rc|alpha|beta|dev)\.?(\d+))?", sys.argv[1])
if not m:
    sys.exit(f"version {sys.argv[1]!r} is not MAJOR.MINOR.PATCH[-rc.N]")
base, pre, n = m.groups()
print(base + ({"rc": "rc", "alpha": "a", "beta": "b", "dev": ".dev"}[pre] + n if pre else ""))
PY
)
OUT="$TASK_DIR/candidate"
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

say "copying the tracked tree of $SRC"
"$PY" - "$SRC" "$WORK/src" <<'PY'
import os, shutil, subprocess, sys
src, dst = sys.argv[1:]
names = subprocess.run(["git", "-C", src, "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
for name in filter(None, (n.decode() for n in names)):
    path = os.path.join(src, name)
    if os.path.isfile(path):
        os.makedirs(os.path.dirname(os.path.join(dst, name)), exist_ok=True)
        shutil.copy2(path, os.path.join(dst, name))
PY
sed -i -E "0,/^version = \".*\"/s//version = \"$PY_VERSION\"/" "$WORK/src/pyproject.toml"
grep -q "^version = \"$PY_VERSION\"" "$WORK/src/pyproject.toml" || fail "could not set the version in pyproject.toml"

say "sdist and wheel $PY_VERSION"
(cd "$WORK/src" && "$PY" -c "from setuptools import build_meta as b; b.build_sdist('$OUT')" > "$WORK/build.log" 2>&1 \
  && "$PY" -m pip wheel --no-deps --wheel-dir "$OUT" . >> "$WORK/build.log" 2>&1) \
  || { tail -30 "$WORK/build.log"; fail "python build"; }
WHEEL=$(ls "$OUT"/stemforge-"$PY_VERSION"-*.whl)
SDIST=$(ls "$OUT"/stemforge-"$PY_VERSION".tar.gz)
say "built $(basename "$SDIST") $(basename "$WHEEL")"

BLOBS=(--blob "stemforge/$(basename "$WHEEL")=$WHEEL")
if [ "${VENDOR_WHEELS:-true}" = true ]; then
  say "vendoring dependency wheels"
  # the core and every provider's extra: the package's packaging makes one venv per provider from these
  "$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir "$WORK/wheels" "$WHEEL[libvirt,aws,metal]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  for wheel in "$WORK"/wheels/*.whl; do
    case "$(basename "$wheel")" in stemforge-*) continue ;; esac
    BLOBS+=(--blob "stemforge/wheels/$(basename "$wheel")=$wheel")
  done
  say "$(( ${#BLOBS[@]} / 2 - 1 )) dependency wheels"
fi

say "BOSH release stemforge-cpi/$VERSION"
COMMIT=$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)
DIRTY=()
[ -z "$(git -C "$SRC" status --porcelain --untracked-files=no 2>/dev/null)" ] || DIRTY=(--uncommitted-changes)
(cd "$SRC" && "$PY" -m ci.bosh_release create --release-dir "$SRC/release" --version "$VERSION" \
  --commit-hash "$COMMIT" ${DIRTY[@]+"${DIRTY[@]}"} "${BLOBS[@]}" --out "$OUT/stemforge-cpi-$VERSION.tgz")
echo "$VERSION" > "$OUT/version"
say "candidate $VERSION ready"
