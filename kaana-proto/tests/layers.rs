//! The crate's shape, checked: its folders are layers, and each imports only those below it
//! (`protocol` ← `store`, `net` ← `node`; `store` and `net` do not import each other); the pure
//! layer reads no file, socket, clock or randomness of its own; no two modules import each
//! other, directly or around a loop; and no file is longer than 400 lines unless it says why
//! near its top (a line with "Longer than 400 lines:").
//!
//! Imports are read from the source text: every `crate::…` and `super::…` path (groups in braces
//! included), resolved to the module file it names.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may import from its own layer's folder and from lower
/// ranks only.
const LAYERS: &[(&str, u8)] = &[("protocol", 0), ("store", 1), ("net", 1), ("node", 2)];
const MAX_LINES: usize = 400;
const LONG_REASON: &str = "Longer than 400 lines:";

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as (module path, file).
fn find_modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            find_modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut p = prefix.to_vec();
            if name != "mod" && name != "lib" {
                p.push(name);
            }
            out.insert(p, path);
        }
    }
}

/// The paths a file's text names through `crate::` or `super::`, expanded from brace groups,
/// each as segments (with `super` resolved against `module`, the file's own module path).
fn imported_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    for anchor in ["crate::", "super::"] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            rest = &rest[at + anchor.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let base: Vec<String> = if anchor == "crate::" {
                Vec::new()
            } else {
                // `super` of module a::b (`a/b.rs`) is a, of module a (`a/mod.rs`) the root.
                // (`use super::*` is a test module's view of its own file: not an import.)
                if rest.starts_with('*') {
                    continue;
                }
                let mut m = module.to_vec();
                m.pop();
                let mut r = rest;
                while let Some(more) = r.strip_prefix("super::") {
                    m.pop();
                    r = more;
                }
                rest = r;
                m
            };
            expand(rest, base, &mut out);
        }
    }
    out
}

/// Reads a path (or a brace group of paths) at the start of `text`, after `base`.
fn expand(text: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = base;
    let mut rest = text;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = &group[..end];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices().chain(std::iter::once((inner.len(), ','))) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let item = inner[start..i].trim();
                        if !item.is_empty() {
                            expand(item, path.clone(), out);
                        }
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        path.push(rest[..len].to_owned());
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out.push(path);
}

/// The module (among `known`) that `path` names: its longest prefix that is a module.
fn resolve(path: &[String], known: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| known.contains_key(p))
}

fn layer(module: &[String]) -> Option<(&'static str, u8)> {
    let top = module.first()?;
    LAYERS.iter().find(|(name, _)| name == top).copied()
}

struct Crate {
    modules: BTreeMap<Vec<String>, PathBuf>,
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn read_crate() -> Crate {
    let mut modules = BTreeMap::new();
    find_modules(&src(), &[], &mut modules);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = fs::read_to_string(file).unwrap();
        for path in imported_paths(&text, module) {
            if let Some(to) = resolve(&path, &modules)
                && &to != module
                && !to.is_empty()
                // A module's own submodules (its `tests`, its children) are its own.
                && !to.starts_with(module)
            {
                edges.entry(module.clone()).or_default().insert(to);
            }
        }
    }
    Crate { modules, edges }
}

fn name(m: &[String]) -> String {
    if m.is_empty() { "crate".into() } else { m.join("::") }
}

#[test]
fn every_module_lives_in_a_layer_and_imports_only_lower_ones() {
    let krate = read_crate();
    let mut wrong = Vec::new();
    for module in krate.modules.keys().filter(|m| !m.is_empty()) {
        let Some((_, rank)) = layer(module) else {
            wrong.push(format!("{} is in no layer's folder", name(module)));
            continue;
        };
        for to in krate.edges.get(module).into_iter().flatten() {
            match layer(to) {
                Some((_, r)) if to[0] == module[0] || r < rank => {}
                _ => wrong.push(format!("{} imports {}", name(module), name(to))),
            }
        }
    }
    assert!(wrong.is_empty(), "{} imports across layers:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn no_modules_import_each_other_around_a_loop() {
    let krate = read_crate();
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on_stack: BTreeSet<Vec<String>>,
        loops: Vec<Vec<String>>,
    }
    impl Walk<'_> {
        fn visit(&mut self, v: &Vec<String>) {
            let n = self.index.len();
            self.index.insert(v.clone(), n);
            self.low.insert(v.clone(), n);
            self.stack.push(v.clone());
            self.on_stack.insert(v.clone());
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[v].min(self.low[w]);
                    self.low.insert(v.clone(), l);
                } else if self.on_stack.contains(w) {
                    let l = self.low[v].min(self.index[w]);
                    self.low.insert(v.clone(), l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(&w);
                    let done = &w == v;
                    component.push(name(&w));
                    if done {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.loops.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges: &krate.edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        loops: Vec::new(),
    };
    for m in krate.modules.keys() {
        if !walk.index.contains_key(m) {
            walk.visit(m);
        }
    }
    let shown: Vec<String> = walk.loops.iter().map(|c| c.join(" ⇄ ")).collect();
    assert!(shown.is_empty(), "modules that import each other:\n{}", shown.join("\n"));
}

#[test]
fn no_file_is_long_without_saying_why() {
    let krate = read_crate();
    let mut long = Vec::new();
    for file in krate.modules.values() {
        let text = fs::read_to_string(file).unwrap();
        let lines = text.lines().count();
        let says_why = text.lines().take(30).any(|l| l.contains(LONG_REASON));
        if lines > MAX_LINES && !says_why {
            long.push(format!("{} ({lines} lines)", file.strip_prefix(src()).unwrap().display()));
        }
    }
    assert!(long.is_empty(), "files over {MAX_LINES} lines that do not say why:\n{}", long.join("\n"));
}

/// What the pure layer must not touch, outside its tests: files, sockets, processes, the
/// environment, the clock, the OS's randomness, threads, and people's terminals.
const IMPURE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
    "SystemTime::now",
    "Instant::now",
    "getrandom",
    "tokio",
    "quinn",
    "println!",
    "eprintln!",
    "indicatif",
];

#[test]
fn the_pure_layer_touches_no_file_socket_clock_or_randomness() {
    let krate = read_crate();
    let mut found = Vec::new();
    for (module, file) in &krate.modules {
        if module.first().is_none_or(|top| top != "protocol") {
            continue;
        }
        let text = fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or("");
            for word in IMPURE.iter().filter(|w| line.contains(*w)) {
                found.push(format!("{}:{}: {word}", file.strip_prefix(src()).unwrap().display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "the pure layer reaches out:\n{}", found.join("\n"));
}

/// The library prints nothing of its own: what a run says goes through the `Report` a tool or
/// the server passes in (`node/report.rs`); only the tools' edge (`node/cli.rs`: errors, JSON
/// lines) writes to stdout or stderr.
#[test]
fn only_the_edge_prints() {
    let krate = read_crate();
    let edge = ["node/cli.rs", "node/report.rs"];
    let mut found = Vec::new();
    for file in krate.modules.values() {
        let rel = file.strip_prefix(src()).unwrap().display().to_string();
        if edge.contains(&rel.as_str()) {
            continue;
        }
        let text = fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            if ["println!", "eprintln!", "print!(", "indicatif"].iter().any(|w| line.contains(w)) {
                found.push(format!("{rel}:{}", n + 1));
            }
        }
    }
    assert!(found.is_empty(), "the library prints:\n{}", found.join("\n"));
}

/// Settings come from the environment once, at the edge (`node/machine.rs`, into `Settings`),
/// and reach the rest as typed values: no other module reads a variable.
#[test]
fn only_the_edge_reads_the_environment() {
    let krate = read_crate();
    let mut found = Vec::new();
    for file in krate.modules.values() {
        let rel = file.strip_prefix(src()).unwrap().display().to_string();
        if rel == "node/machine.rs" {
            continue;
        }
        let text = fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            if ["env::var", "env::vars"].iter().any(|w| line.contains(w)) {
                found.push(format!("{rel}:{}", n + 1));
            }
        }
    }
    assert!(found.is_empty(), "the environment is read in:\n{}", found.join("\n"));
}

#[test]
fn the_reader_finds_imports_in_every_form() {
    let text =
        "use crate::a::b;\nuse crate::{c::d, e::{f, g::h}};\nuse super::sib;\nlet x = crate::i::j(); // crate::not\n";
    let module = vec!["p".to_owned(), "q".to_owned()];
    let mut found = imported_paths(text, &module);
    found.sort();
    let want: Vec<Vec<String>> =
        [vec!["a", "b"], vec!["c", "d"], vec!["e", "f"], vec!["e", "g", "h"], vec!["i", "j"], vec!["p", "sib"]]
            .iter()
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .collect();
    assert_eq!(found, want);
}
