#!/usr/bin/env python3
"""Prints the public API of a crate, one item per line, sorted, from its rustdoc JSON.

    python3 scripts/public_api.py target/api/doc/tower_outbound.json

Every public path is listed with its kind (`pub mod`, `pub struct`, `pub fn`, ...); functions
and methods with their generics, parameters, return type and where-clauses; struct fields,
enum variants with their fields, trait items; and every impl of the crate: inherent impls,
trait impls (the associated types and constants they define included), and the auto traits
(Send, Sync, Unpin, UnwindSafe, RefUnwindSafe) each public type implements, with their
conditions. Blanket impls of other crates (`impl<T> From<T> for T`, ...) are left out: they
are not the crate's decision. Types are named by their canonical path, not as the source
spells them, so moving a `use` changes nothing; adding a parameter, changing a type, removing
a method or adding a variant changes the listing. `scripts/public-api.sh` runs it.

Python 3 standard library only. Written against rustdoc JSON format 57 (Rust 1.95); a shape
it does not know stops it with the format version, rather than printing something wrong.
"""

import json
import sys

# The stable auto traits. rustdoc also reports unstable ones (`Freeze`, `UnsafeUnpin`, ...),
# whose list changes with the toolchain, not with the crate.
AUTO_TRAITS = {"Send", "Sync", "Unpin", "UnwindSafe", "RefUnwindSafe"}


class Unknown(Exception):
    """A shape of rustdoc JSON this script does not render."""


def only(tagged):
    """The one (tag, value) of an externally tagged enum: `{"tag": value}` or `"tag"`."""
    if isinstance(tagged, str):
        return tagged, None
    if isinstance(tagged, dict) and len(tagged) == 1:
        return next(iter(tagged.items()))
    raise Unknown(f"not a tagged value: {json.dumps(tagged)[:200]}")


class Api:
    def __init__(self, doc):
        self.doc = doc
        self.index = doc["index"]
        self.paths = doc["paths"]
        self.root = str(doc["root"])
        self.crate = self.index[self.root]["name"]
        # id -> every public path of that item (a list of segments), found from the root.
        self.public = {}
        self._walk(self.root, [self.crate], set())
        self.lines = set()

    # ---- which paths are public --------------------------------------------------------------

    def item(self, id_):
        return self.index.get(str(id_)) if id_ is not None else None

    def _add_path(self, id_, path):
        self.public.setdefault(str(id_), [])
        if path not in self.public[str(id_)]:
            self.public[str(id_)].append(path)

    def _walk(self, module_id, path, seen):
        if module_id in seen:
            return
        seen = seen | {module_id}
        self._add_path(module_id, path)
        kind, module = only(self.index[module_id]["inner"])
        assert kind == "module"
        for child in module["items"]:
            self._visit(str(child), path, seen)

    def _visit(self, id_, path, seen):
        item = self.index.get(id_)
        if item is None or item["visibility"] != "public":
            return
        kind, inner = only(item["inner"])
        if kind == "use":
            target = inner["id"]
            if inner["is_glob"]:
                target_item = self.item(target)
                if target_item is not None and "module" in target_item["inner"]:
                    for child in target_item["inner"]["module"]["items"]:
                        self._visit(str(child), path, seen)
                    return
                if target_item is not None:
                    # An enum's variants, glob-imported: they are listed under the enum.
                    return
            if target is None or str(target) not in self.index:
                # A re-export of another crate's item.
                self._add_path(f"use:{id_}", path + [inner["name"]])
                return
            target_item = self.index[str(target)]
            if "use" in target_item["inner"]:
                # A re-export of a re-export: follow it under this name.
                renamed = dict(target_item)
                renamed_inner = dict(target_item["inner"]["use"], name=inner["name"])
                renamed["inner"] = {"use": renamed_inner}
                self.index[f"alias:{id_}"] = dict(renamed, visibility="public")
                self._visit(f"alias:{id_}", path, seen)
                return
            self._enter(str(target), path + [inner["name"]], seen)
            return
        if item["name"] is None:
            return
        self._enter(id_, path + [item["name"]], seen)

    def _enter(self, id_, path, seen):
        kind, _ = only(self.index[id_]["inner"])
        if kind == "module":
            self._walk(id_, path, seen)
        else:
            self._add_path(id_, path)

    def canonical(self, id_):
        """The path under which an item's details are listed: the public path nearest to where
        it is defined (`retry::RetryLayer` for `retry::layer::RetryLayer`, though the crate root
        re-exports it too), so a new re-export elsewhere does not move them."""
        found = self.public.get(str(id_))
        if not found:
            return None
        defined = self.paths.get(str(id_), {}).get("path") or []

        def shared(path):
            n = 0
            while n < min(len(path), len(defined)) and path[n] == defined[n]:
                n += 1
            return n

        return min(found, key=lambda p: (-shared(p), len(p), p))

    def type_name(self, id_, written):
        """A type's or trait's canonical name."""
        path = self.canonical(id_)
        if path is None and str(id_) in self.paths:
            path = self.paths[str(id_)]["path"]
        return "::".join(path) if path else written

    # ---- rendering of types ------------------------------------------------------------------

    def ty(self, t):
        if t is None:
            return "()"
        kind, v = only(t)
        if kind == "resolved_path":
            return self.path(v)
        if kind == "dyn_trait":
            parts = [self.poly_trait(p) for p in v["traits"]]
            if v.get("lifetime"):
                parts.append(v["lifetime"])
            return "dyn " + " + ".join(parts)
        if kind in ("generic", "primitive"):
            return v
        if kind == "function_pointer":
            hrtb = self.for_lifetimes(v.get("generic_params", []))
            return hrtb + self.header(v["header"]) + "fn" + self.fn_sig(v["sig"], with_names=False)
        if kind == "tuple":
            inner = [self.ty(x) for x in v]
            return "(" + inner[0] + ",)" if len(inner) == 1 else "(" + ", ".join(inner) + ")"
        if kind == "slice":
            return "[" + self.ty(v) + "]"
        if kind == "array":
            return "[" + self.ty(v["type"]) + "; " + v["len"] + "]"
        if kind == "pat":
            return self.ty(v["type"])
        if kind == "impl_trait":
            return "impl " + self.bounds(v)
        if kind == "infer":
            return "_"
        if kind == "raw_pointer":
            return ("*mut " if v["is_mutable"] else "*const ") + self.ty(v["type"])
        if kind == "borrowed_ref":
            lifetime = v["lifetime"] + " " if v.get("lifetime") else ""
            return "&" + lifetime + ("mut " if v["is_mutable"] else "") + self.ty(v["type"])
        if kind == "qualified_path":
            args = self.generic_args(v.get("args"))
            if v.get("trait") is None:
                return self.ty(v["self_type"]) + "::" + v["name"] + args
            self_ty, trait = self.ty(v["self_type"]), self.path(v["trait"])
            return f"<{self_ty} as {trait}>::{v['name']}{args}"
        raise Unknown(f"type kind {kind!r}")

    def path(self, p):
        return self.type_name(p.get("id"), p["path"]) + self.generic_args(p.get("args"))

    def poly_trait(self, p):
        return self.for_lifetimes(p.get("generic_params", [])) + self.path(p["trait"])

    def generic_args(self, args):
        if args is None:
            return ""
        kind, v = only(args)
        if kind == "angle_bracketed":
            parts = [self.generic_arg(a) for a in v["args"]]
            parts += [self.constraint(c) for c in v["constraints"]]
            return "<" + ", ".join(parts) + ">" if parts else ""
        if kind == "parenthesized":
            out = " -> " + self.ty(v["output"]) if v.get("output") is not None else ""
            return "(" + ", ".join(self.ty(t) for t in v["inputs"]) + ")" + out
        if kind == "return_type_notation":
            return "(..)"
        raise Unknown(f"generic args kind {kind!r}")

    def generic_arg(self, a):
        kind, v = only(a)
        if kind == "lifetime":
            return v
        if kind == "type":
            return self.ty(v)
        if kind == "const":
            return v["expr"]
        if kind == "infer":
            return "_"
        raise Unknown(f"generic arg kind {kind!r}")

    def constraint(self, c):
        name = c["name"] + self.generic_args(c.get("args"))
        kind, v = only(c["binding"])
        if kind == "equality":
            return name + " = " + self.term(v)
        if kind == "constraint":
            return name + ": " + self.bounds(v)
        raise Unknown(f"constraint kind {kind!r}")

    def term(self, t):
        kind, v = only(t)
        if kind == "type":
            return self.ty(v)
        if kind == "constant":
            return v["expr"]
        raise Unknown(f"term kind {kind!r}")

    def bounds(self, bounds):
        return " + ".join(self.bound(b) for b in bounds)

    def bound(self, b):
        kind, v = only(b)
        if kind == "trait_bound":
            modifier = {"none": "", "maybe": "?", "maybe_const": "~const "}[v["modifier"]]
            hrtb = self.for_lifetimes(v.get("generic_params", []))
            return hrtb + modifier + self.path(v["trait"])
        if kind == "outlives":
            return v
        if kind == "use":
            names = []
            for arg in v:
                names.append(arg if isinstance(arg, str) else only(arg)[1])
            return "use<" + ", ".join(names) + ">"
        raise Unknown(f"bound kind {kind!r}")

    def for_lifetimes(self, params):
        if not params:
            return ""
        return "for<" + ", ".join(self.generic_param(p) for p in params) + "> "

    def generic_param(self, p):
        kind, v = only(p["kind"])
        if kind == "lifetime":
            return p["name"] + (": " + " + ".join(v["outlives"]) if v["outlives"] else "")
        if kind == "type":
            text = p["name"]
            if v["bounds"]:
                text += ": " + self.bounds(v["bounds"])
            if v.get("default") is not None:
                text += " = " + self.ty(v["default"])
            return text
        if kind == "const":
            text = "const " + p["name"] + ": " + self.ty(v["type"])
            if v.get("default") is not None:
                text += " = " + v["default"]
            return text
        raise Unknown(f"generic param kind {kind!r}")

    def generics(self, g):
        """(`<params>`, ` where predicates`) of a `Generics`."""
        params = [
            self.generic_param(p)
            for p in g["params"]
            if not (only(p["kind"])[0] == "type" and only(p["kind"])[1].get("is_synthetic"))
        ]
        preds = [self.predicate(w) for w in g["where_predicates"]]
        params = "<" + ", ".join(params) + ">" if params else ""
        return params, " where " + ", ".join(preds) if preds else ""

    def predicate(self, w):
        kind, v = only(w)
        if kind == "bound_predicate":
            hrtb = self.for_lifetimes(v.get("generic_params", []))
            return hrtb + self.ty(v["type"]) + ": " + self.bounds(v["bounds"])
        if kind == "lifetime_predicate":
            return v["lifetime"] + ": " + " + ".join(v["outlives"])
        if kind == "eq_predicate":
            return self.ty(v["lhs"]) + " = " + self.term(v["rhs"])
        raise Unknown(f"where predicate kind {kind!r}")

    def header(self, h):
        text = ""
        if h.get("is_const"):
            text += "const "
        if h.get("is_async"):
            text += "async "
        if h.get("is_unsafe"):
            text += "unsafe "
        abi = h.get("abi", "Rust")
        if abi != "Rust":
            kind, _ = only(abi)
            text += f'extern "{kind}" '
        return text

    def fn_sig(self, sig, with_names=True):
        params = []
        for name, t in sig["inputs"]:
            params.append(self.param(name, t) if with_names else self.ty(t))
        if sig.get("is_c_variadic"):
            params.append("...")
        out = " -> " + self.ty(sig["output"]) if sig.get("output") is not None else ""
        return "(" + ", ".join(params) + ")" + out

    def param(self, name, t):
        if name == "self":
            kind, v = only(t)
            if kind == "generic" and v == "Self":
                return "self"
            if kind == "borrowed_ref" and only(v["type"]) == ("generic", "Self"):
                lifetime = v["lifetime"] + " " if v.get("lifetime") else ""
                return "&" + lifetime + ("mut " if v["is_mutable"] else "") + "self"
        return name + ": " + self.ty(t)

    def field_type(self, id_):
        return self.ty(self.index[str(id_)]["inner"]["struct_field"])

    # ---- the listing -------------------------------------------------------------------------

    def emit(self, line):
        self.lines.add(line)

    def function(self, prefix, owner, name, f):
        params, where = self.generics(f["generics"])
        header, sig = self.header(f["header"]), self.fn_sig(f["sig"])
        self.emit(f"{prefix}{header}fn {owner}{name}{params}{sig}{where}")

    def list_items(self):
        for id_, found in self.public.items():
            if id_.startswith("use:"):
                use = self.index[id_[4:]]["inner"]["use"]
                for path in found:
                    self.emit(f"pub use {'::'.join(path)} = {use['source']}")
                continue
            canonical = self.canonical(id_)
            for path in found:
                self.item_line(self.index[id_], path, path == canonical)

    def item_line(self, item, path, details):
        name = "::".join(path)
        kind, v = only(item["inner"])
        non_exhaustive = "#[non_exhaustive] " if "non_exhaustive" in item["attrs"] else ""
        if kind == "module":
            self.emit(f"pub mod {name}")
        elif kind == "struct":
            params, where = self.generics(v["generics"])
            shape, fields = only(v["kind"])
            suffix = ""
            if shape == "unit":
                suffix = ";"
            elif shape == "tuple" and None in fields:
                suffix = "(/* private fields */)"
            elif shape == "plain" and fields["has_stripped_fields"]:
                suffix = " { /* private fields */ }"
            self.emit(f"{non_exhaustive}pub struct {name}{params}{where}{suffix}")
            if details:
                if shape == "tuple":
                    for i, field in enumerate(fields):
                        if field is not None:
                            self.emit(f"field {name}::{i}: {self.field_type(field)}")
                elif shape == "plain":
                    for field in fields["fields"]:
                        f = self.index[str(field)]
                        self.emit(f"field {name}::{f['name']}: {self.field_type(field)}")
        elif kind == "union":
            params, where = self.generics(v["generics"])
            self.emit(f"pub union {name}{params}{where}")
            if details:
                for field in v["fields"]:
                    f = self.index[str(field)]
                    self.emit(f"field {name}::{f['name']}: {self.ty(f['inner']['struct_field'])}")
        elif kind == "enum":
            params, where = self.generics(v["generics"])
            self.emit(f"{non_exhaustive}pub enum {name}{params}{where}")
            if details:
                for variant in v["variants"]:
                    self.variant(name, self.index[str(variant)])
        elif kind == "function":
            self.function("pub ", name[: -len(path[-1])], path[-1], v)
        elif kind == "trait":
            params, where = self.generics(v["generics"])
            supers = ": " + self.bounds(v["bounds"]) if v["bounds"] else ""
            unsafe = "unsafe " if v["is_unsafe"] else ""
            auto = "auto " if v["is_auto"] else ""
            self.emit(f"pub {unsafe}{auto}trait {name}{params}{supers}{where}")
            if details:
                for member in v["items"]:
                    self.trait_item(name, self.index[str(member)])
        elif kind == "trait_alias":
            params, where = self.generics(v["generics"])
            self.emit(f"pub trait {name}{params} = {self.bounds(v['params'])}{where}")
        elif kind == "type_alias":
            params, where = self.generics(v["generics"])
            self.emit(f"pub type {name}{params}{where} = {self.ty(v['type'])}")
        elif kind == "constant":
            self.emit(f"pub const {name}: {self.ty(v['type'])} = {v['const']['expr']}")
        elif kind == "static":
            mutable = "mut " if v["is_mutable"] else ""
            self.emit(f"pub static {mutable}{name}: {self.ty(v['type'])}")
        elif kind in ("macro", "proc_macro"):
            self.emit(f"pub macro {name}!")
        elif kind == "extern_type":
            self.emit(f"pub extern type {name}")
        elif kind == "primitive":
            self.emit(f"pub primitive {name}")
        else:
            raise Unknown(f"item kind {kind!r}")

    def variant(self, owner, item):
        kind, v = only(item["inner"])
        assert kind == "variant"
        shape, fields = only(v["kind"])
        non_exhaustive = "#[non_exhaustive] " if "non_exhaustive" in item["attrs"] else ""
        text = f"{non_exhaustive}variant {owner}::{item['name']}"
        if shape == "tuple":
            text += "(" + ", ".join(
                self.field_type(f) if f is not None else "_" for f in fields
            ) + ")"
        elif shape == "struct":
            parts = [
                self.index[str(f)]["name"] + ": " + self.field_type(f)
                for f in fields["fields"]
            ]
            if fields["has_stripped_fields"]:
                parts.append("..")
            text += " { " + ", ".join(parts) + " }"
        if v.get("discriminant"):
            text += " = " + v["discriminant"]["expr"]
        self.emit(text)

    def trait_item(self, owner, item):
        kind, v = only(item["inner"])
        if kind == "function":
            provided = " { .. }" if v["has_body"] else ""
            params, where = self.generics(v["generics"])
            self.emit(
                "pub " + self.header(v["header"]) + "fn " + owner + "::" + item["name"]
                + params + self.fn_sig(v["sig"]) + where + provided
            )
        elif kind == "assoc_type":
            params, where = self.generics(v["generics"])
            bounds = ": " + self.bounds(v["bounds"]) if v["bounds"] else ""
            default = " = " + self.ty(v["type"]) if v.get("type") is not None else ""
            self.emit(f"pub type {owner}::{item['name']}{params}{bounds}{where}{default}")
        elif kind == "assoc_const":
            default = " = " + v["value"] if v.get("value") is not None else ""
            self.emit(f"pub const {owner}::{item['name']}: {self.ty(v['type'])}{default}")
        else:
            raise Unknown(f"trait item kind {kind!r}")

    def list_impls(self):
        for id_, item in self.index.items():
            if id_.startswith("alias:") or item["crate_id"] != 0:
                continue
            kind, v = only(item["inner"])
            if kind != "impl" or v["blanket_impl"] is not None:
                continue
            trait = v["trait"]
            trait_name = trait["path"].split("::")[-1] if trait else None
            if v["is_synthetic"] and trait_name not in AUTO_TRAITS:
                continue
            if trait_name == "StructuralPartialEq":
                # An unstable marker every `#[derive(PartialEq)]` adds beside `PartialEq`.
                continue
            if not self.involves_public(v):
                continue
            params, where = self.generics(v["generics"])
            self_ty = self.ty(v["for"])
            unsafe = "unsafe " if v["is_unsafe"] else ""
            if trait is None:
                # An inherent impl is listed with its public items; one with none is not API.
                members = [self.index[str(m)] for m in v["items"]]
                members = [m for m in members if m["visibility"] == "public"]
                if members:
                    self.emit(f"impl{params} {self_ty}{where}")
                for member in members:
                    self.inherent_item(self_ty, member)
                continue
            negative = "!" if v["is_negative"] else ""
            head = f"{unsafe}impl{params} {negative}{self.path(trait)} for {self_ty}{where}"
            # The associated types and constants the impl defines are part of it (a
            # `Service`'s `Future`, a `Layer`'s `Service`); its methods are the trait's.
            defined = []
            for member in v["items"]:
                m = self.index[str(member)]
                mkind, mv = only(m["inner"])
                if mkind == "assoc_type":
                    defined.append(f"type {m['name']} = {self.ty(mv['type'])}")
                elif mkind == "assoc_const":
                    defined.append(f"const {m['name']}: {self.ty(mv['type'])} = {mv['value']}")
            self.emit(head + (" { " + "; ".join(sorted(defined)) + " }" if defined else ""))

    def involves_public(self, impl):
        """Whether an impl belongs in the listing: it is on a public type of the crate, or of a
        public trait of the crate, or of another crate's trait on a type that is not the
        crate's (`impl From<Error> for io::Error` is part of the API too)."""
        self_kind, self_ty = only(impl["for"])
        if self_kind == "resolved_path" and str(self_ty["id"]) in self.public:
            return True
        trait = impl["trait"]
        if trait is None:
            return False
        if str(trait["id"]) in self.public:
            return True
        if self_kind == "resolved_path":
            return self.paths.get(str(self_ty["id"]), {}).get("crate_id") != 0
        return True

    def inherent_item(self, owner, item):
        kind, v = only(item["inner"])
        if kind == "function":
            self.function("pub ", owner + "::", item["name"], v)
        elif kind == "assoc_const":
            self.emit(f"pub const {owner}::{item['name']}: {self.ty(v['type'])} = {v['value']}")
        elif kind == "assoc_type":
            self.emit(f"pub type {owner}::{item['name']} = {self.ty(v['type'])}")
        else:
            raise Unknown(f"inherent impl item kind {kind!r}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: public_api.py CRATE.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    try:
        api = Api(doc)
        api.list_items()
        api.list_impls()
    except (Unknown, KeyError) as e:
        sys.exit(
            f"public_api.py: unexpected rustdoc JSON ({e}) in format version "
            f"{doc.get('format_version')}; the script was written against format 57"
        )
    print(f"# The public API of the {api.crate} crate with all its features, one item per line,")
    print("# generated from its rustdoc JSON by scripts/public_api.py. `.ci/run` checks that it is")
    print("# current: after a deliberate change, `scripts/public-api.sh --bless` rewrites it.")

    def key(line):
        # Sorted by the text after any attribute, so an item stays beside its kin.
        return (line.split("] ", 1)[1] if line.startswith("#[") else line), line

    for line in sorted(api.lines, key=key):
        print(line)


if __name__ == "__main__":
    main()
