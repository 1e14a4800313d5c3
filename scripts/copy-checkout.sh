# Sourced by the check scripts. copy_checkout SRC DEST copies the files git tracks in
# SRC, as they are in the working tree, into DEST (outside a git checkout: everything
# but virtualenvs and build products), so that nothing else (a virtualenv, the
# _ffi*.so of an editable install) can leak into a build.
copy_checkout() {
    if git -C "$1" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$1" && git ls-files -z --cached \
            | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
            | tar --null -T - -cf -) | tar -C "$2" -xf -
    else
        tar -C "$1" --exclude='.venv*' --exclude=build --exclude=dist --exclude='*.so' \
            --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$2" -xf -
    fi
}
