#!/usr/bin/env python3
"""Extract packstack's answer-file options from its source, without running it.

Usage: tests/support/packstack_options.py GITDIR [REV] > tests/fixtures/packstack/options.tsv

GITDIR is a git directory of packstack: https://github.com/redhat-openstack/packstack,
where packstack lives since it left OpenStack's own namespace (the GitHub copy at
openstack/packstack stops in January 2021). A bare clone works: files are read with
`git show REV:PATH`; REV defaults to HEAD. The header names the repository (from the
clone's origin remote, else the URL above), the REV and its commit. Every
packstack/plugins/*.py is parsed with Python's `ast`; packstack's code is never
imported or run.

An option is a dict literal with a "CONF_NAME" key (packstack's
installer/core/parameters.py turns each into a Parameter). One line per option:

  CONF_NAME  PLUGIN  GROUP  CONDITION  DEFAULT  REQUIRED

GROUP is the GROUP_NAME of the group the option is added with (controller.addGroup).
CONDITION says when packstack reads the group's options (its PRE_CONDITION and
PRE_CONDITION_MATCH): `always`, `never`, or atoms joined by ` && `, each
`OPTION==VALUE`, `OPTION!=VALUE`, `OPTION~VALUE` (VALUE is part of the option's
value) or `OPTION=V1|V2` (one of), translated from a plain option name or from a
condition function made of `and`, `==`, `!=` and `in` only; any other condition
function is written `code:EXPR==MATCH` (not evaluated here).
DEFAULT is DEFAULT_VALUE as a JSON string when it is a literal (or a module-level
constant set to one),
`computed:EXPR` when packstack computes it on the machine it runs on, `none` when
there is none. REQUIRED is `yes` when packstack cannot run without the option in
the answer file: when the option is read from an answer file and missing,
packstack's run_setup._loadParamFromFile takes DEFAULT_VALUE and fails when that is
None, then runs the option's VALIDATORS on it; so an option is required when its
default is missing/None, or is the empty string and one of its validators refuses an
empty value (EMPTY_REFUSED below, read from packstack/installer/validators.py).
REQUIRED only matters when the group's CONDITION holds.
"""

import ast
import json
import subprocess
import sys

# validators (packstack/installer/validators.py and the plugins' own) that raise on "".
EMPTY_REFUSED = {"validate_not_empty", "validate_multi_export", "validate_storage_size"}


def git(gitdir, *args):
    return subprocess.run(
        ["git", "--git-dir", gitdir, *args], check=True, capture_output=True
    ).stdout


def str_keys(node):
    return [k.value if isinstance(k, ast.Constant) else None for k in node.keys]


def as_dict(node):
    return dict(zip(str_keys(node), node.values))


def is_param(node):
    return isinstance(node, ast.Dict) and "CONF_NAME" in str_keys(node)


def is_group(node):
    return isinstance(node, ast.Dict) and "GROUP_NAME" in str_keys(node)


def group_condition(group, funcs):
    """The group's PRE_CONDITION/PRE_CONDITION_MATCH as a condition (see CONDITION)."""
    pre = group.get("PRE_CONDITION")
    match = group.get("PRE_CONDITION_MATCH")
    match_v = match.value if isinstance(match, ast.Constant) else None
    # run_setup: a falsy PRE_CONDITION leaves the value True; a string is an option's value.
    if pre is None or (isinstance(pre, ast.Constant) and not pre.value):
        return "always" if match_v is True else "never"
    if isinstance(pre, ast.Constant) and isinstance(pre.value, str):
        return f"{pre.value}=={match_v}"
    if isinstance(pre, ast.Lambda) and isinstance(pre.body, ast.Constant):
        return "always" if pre.body.value == match_v else "never"
    if isinstance(pre, ast.Name) and pre.id in funcs and match_v is True:
        try:
            return " && ".join(translate(funcs[pre.id], funcs))
        except Untranslatable:
            pass
    return f"code:{ast.unparse(pre)}=={match_v}"


class Untranslatable(Exception):
    pass


def translate(func, funcs):
    """A condition function `def f(config): return A and B ...` as atoms, each
    `OPTION==VALUE`, `OPTION!=VALUE`, `OPTION~VALUE` (VALUE is a substring of the
    option's value) or `OPTION=VALUE1|VALUE2` (one of). Anything else: Untranslatable."""
    body = [s for s in func.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    key_names = {}
    for stmt in body[:-1]:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant):
            key_names[stmt.targets[0].id] = stmt.value.value
        else:
            raise Untranslatable
    if not isinstance(body[-1], ast.Return):
        raise Untranslatable
    arg = func.args.args[0].arg

    def option(node):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == arg
        ):
            key = node.slice
            if isinstance(key, ast.Constant):
                return key.value
            if isinstance(key, ast.Name) and key.id in key_names:
                return key_names[key.id]
        raise Untranslatable

    def const(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        raise Untranslatable

    def atoms(node):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            return [a for v in node.values for a in atoms(v)]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in funcs:
            return translate(funcs[node.func.id], funcs)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            op, left, right = node.ops[0], node.left, node.comparators[0]
            if isinstance(op, ast.Eq):
                return [f"{option(left)}=={const(right)}"]
            if isinstance(op, ast.NotEq):
                return [f"{option(left)}!={const(right)}"]
            if isinstance(op, ast.In) and isinstance(right, (ast.List, ast.Tuple)):
                return [f"{option(left)}=" + "|".join(const(e) for e in right.elts)]
            if isinstance(op, ast.In):
                return [f"{option(right)}~{const(left)}"]
        raise Untranslatable

    return atoms(body[-1].value)


def default(param, constants):
    if "DEFAULT_VALUE" not in param:
        return "none"
    dv = param["DEFAULT_VALUE"]
    if isinstance(dv, ast.Name) and dv.id in constants:
        dv = constants[dv.id]
    if isinstance(dv, ast.Constant):
        if dv.value is None:
            return "none"
        return json.dumps(dv.value if isinstance(dv.value, str) else str(dv.value))
    return "computed:" + ast.unparse(dv)


def required(param):
    dv = param.get("DEFAULT_VALUE")
    if dv is None or (isinstance(dv, ast.Constant) and dv.value is None):
        return True
    if isinstance(dv, ast.Constant) and dv.value == "":
        validators = param.get("VALIDATORS")
        names = set()
        if isinstance(validators, (ast.List, ast.Tuple)):
            for v in validators.elts:
                names.add(v.attr if isinstance(v, ast.Attribute) else getattr(v, "id", ""))
        return bool(names & EMPTY_REFUSED)
    return False


def plugin_options(source):
    tree = ast.parse(source)
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    # module-level NAME = "literal", as some defaults are written
    constants = {
        a.targets[0].id: a.value
        for a in tree.body
        if isinstance(a, ast.Assign)
        and len(a.targets) == 1
        and isinstance(a.targets[0], ast.Name)
        and isinstance(a.value, ast.Constant)
    }
    groups = {}
    for node in ast.walk(tree):
        if is_group(node):
            g = as_dict(node)
            groups[g["GROUP_NAME"].value] = group_condition(g, funcs)

    def group_of(param_node, func):
        # {"GROUP": [param, ...]}: the key names the group.
        lst = parents.get(param_node)
        holder = parents.get(lst)
        if isinstance(holder, ast.Dict):
            for k, v in zip(holder.keys, holder.values):
                if v is lst and isinstance(k, ast.Constant):
                    return k.value
        # params = [param, ...]; group = {...}; controller.addGroup(group, params)
        if isinstance(holder, ast.Assign) and isinstance(holder.targets[0], ast.Name):
            var = holder.targets[0].id
            line = holder.lineno
            group_vars = {}
            for stmt in sorted(ast.walk(func), key=lambda n: getattr(n, "lineno", 0)):
                if isinstance(stmt, ast.Assign) and is_group(stmt.value):
                    group_vars[stmt.targets[0].id] = as_dict(stmt.value)["GROUP_NAME"].value
                if (
                    isinstance(stmt, ast.Call)
                    and getattr(stmt.func, "attr", "") == "addGroup"
                    and stmt.lineno > line
                    and isinstance(stmt.args[1], ast.Name)
                    and stmt.args[1].id == var
                ):
                    return group_vars[stmt.args[0].id]
        raise SystemExit(f"cannot find the group of {ast.unparse(param_node)[:80]}")

    out = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef):
            continue
        for node in ast.walk(func):
            if is_param(node):
                p = as_dict(node)
                group = group_of(node, func)
                out.append((p["CONF_NAME"].value, group, groups[group], default(p, constants), required(p)))
    return out


def main():
    gitdir = sys.argv[1]
    rev = sys.argv[2] if len(sys.argv) > 2 else "HEAD"
    commit = git(gitdir, "rev-parse", rev + "^{commit}").decode().strip()
    date = git(gitdir, "show", "-s", "--format=%cs", commit).decode().strip()
    names = git(gitdir, "ls-tree", "--name-only", commit, "packstack/plugins/").decode().split()
    rows = []
    for path in sorted(names):
        if not path.endswith(".py") or path.endswith("__init__.py"):
            continue
        source = git(gitdir, "show", f"{commit}:{path}")
        for name, group, cond, dflt, req in plugin_options(source):
            rows.append((name, path.rsplit("/", 1)[1], group, cond, dflt, "yes" if req else "no"))
    seen = set()
    for row in rows:
        if row[0] in seen:
            raise SystemExit(f"option {row[0]} defined twice")
        seen.add(row[0])
    today = subprocess.run(["date", "-u", "+%Y-%m-%d"], capture_output=True, text=True).stdout.strip()
    print("# packstack's answer-file options, extracted from its own source.")
    try:
        url = git(gitdir, "config", "--get", "remote.origin.url").decode().strip()
    except subprocess.CalledProcessError:
        url = ""
    url = url or "https://github.com/redhat-openstack/packstack"
    print(f"# source: {url}, packstack/plugins/*.py,")
    print(f"#   {rev} at commit {commit} (committed {date})")
    print(f"# extracted: {today}, by tests/support/packstack_options.py (ast only; packstack not run)")
    print(f"# regenerate: tests/support/packstack_options.py PACKSTACK_GITDIR {rev} > tests/fixtures/packstack/options.tsv")
    print("# columns (tab-separated): CONF_NAME PLUGIN GROUP CONDITION DEFAULT REQUIRED;")
    print("#   see tests/support/packstack_options.py for what each means.")
    print(f"# {len(rows)} options, {sum(r[5] == 'yes' for r in rows)} required without a default.")
    for row in rows:
        print("\t".join(row))


if __name__ == "__main__":
    main()
