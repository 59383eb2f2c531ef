#!/bin/sh
# FAKE ksvalidator, for the one test that needs a kickstart refused
# (tests/base_build.rs, a_kickstart_that_fails_validation_is_a_clear_error) on a host where
# pykickstart cannot be installed (no PyPI). It does not validate anything: it refuses the
# first line that starts with `frobnicate`, the unknown command that test writes, in the
# words pykickstart's ksvalidator uses for an unknown command, and accepts anything else.
# Where the real ksvalidator is installed the test uses it instead.
#
#   fake_ksvalidator.sh [-v VERSION] FILE
while [ $# -gt 1 ]; do
    shift
done
line=$(grep -n '^frobnicate' "$1" | head -n 1 | cut -d: -f1)
if [ -n "$line" ]; then
    printf 'The following problem occurred on line %s of the kickstart file:\n\nUnknown command: frobnicate\n\n' "$line"
    exit 1
fi
exit 0
